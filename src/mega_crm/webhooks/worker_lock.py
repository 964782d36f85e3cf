"""The SQLite worker lock: one delivery worker per SQLite database, and the claims of one that
died handed back at once by the next (PostgreSQL needs neither: leases and SKIP LOCKED)."""

from __future__ import annotations

import fcntl
import logging
from typing import IO

from sqlalchemy.engine import make_url

from mega_crm.db import Database
from mega_crm.webhooks import queue

log = logging.getLogger("mega_crm.webhooks")


def take_over_sqlite(db: Database) -> IO[bytes] | None:
    """On SQLite, the worker lock (`<db file>.worker.lock`, an flock held while the worker
    runs, dropped by the kernel when its process dies) and, once held, the claims of the
    worker that died before this one: with no other worker alive they are nobody's, and
    would otherwise wait out their lease (~70 s) after a restart. -> the lock's file, to close
    when the worker stops, or None (PostgreSQL, an in-memory database, or another worker alive:
    its claims are kept). Never raises: without the lock, claims wait out their lease."""
    path = make_url(db.url).database if db.is_sqlite else None
    if not path or path == ":memory:":
        return None
    try:
        lock = open(f"{path}.worker.lock", "ab")  # noqa: SIM115 - held for the worker's lifetime
    except OSError as exc:
        log.warning("webhook worker: no worker lock beside %s (%s); claims wait out their lease", path, exc)
        return None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        log.warning(
            "another webhook worker is running on %s; one is enough on SQLite (claims are kept)", path
        )
        return None
    try:
        with db.write_session() as session:
            released = queue.release_every_claim(session)
    except Exception:  # noqa: BLE001 - they come back when their lease ends instead
        log.exception("webhook worker: handing back earlier claims failed")
        return lock
    if released:
        log.info(
            "webhook worker: %d delivery(ies) in flight when the last worker stopped are due again",
            released,
        )
    return lock
