"""Waking the delivery worker from other processes: PostgreSQL LISTEN on the channel the
outbox NOTIFYs when it commits deliveries (webhooks/repository.py: notify_workers)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from sqlalchemy.engine import make_url

from mega_crm.config import Settings
from mega_crm.db import Database, connection_options, normalize_database_url
from mega_crm.events.outbox import NOTIFY_CHANNEL

log = logging.getLogger("mega_crm.webhooks")


def listen_url(db: Database, settings: Settings) -> str | None:
    """Where the worker LISTENs: MEGA_DATABASE_LISTEN_URL, else the database URL, except
    behind a transaction pooler (`pool_mode=transaction`), where a LISTEN would hold no
    server connection and hear nothing: then None, and the worker polls every
    MEGA_WEBHOOK_POLL_SECONDS (plus the wake-ups of commits in its own process). None on SQLite."""
    if db.is_sqlite:
        return None
    if settings.database_listen_url:
        return settings.database_listen_url
    return None if db.transaction_pooling else db.url


def listen_for_notifications(
    url: str, timeout: float, wake: Callable[[], None], stop: threading.Event
) -> None:
    """PostgreSQL LISTEN on its own connection to `url` until `stop` (run on a thread of its
    own): `wake()` on each notification and on each (re)connection. Reconnects after errors,
    2 s apart; `timeout`: the database timeout, seconds (connecting waits at least 2 s)."""
    import psycopg

    direct, _ = connection_options(normalize_database_url(url))
    conninfo = make_url(direct).set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            connect_timeout = max(2, math.ceil(timeout))  # a silent server: retry, not hang
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                wake()  # anything committed while we were not listening
                while not stop.is_set():
                    for _ in conn.notifies(timeout=1.0):
                        wake()
        except Exception as exc:  # noqa: BLE001 - keep listening; polling covers the gap
            log.warning("webhook LISTEN connection failed (%s); retrying", type(exc).__name__)
            stop.wait(2.0)
