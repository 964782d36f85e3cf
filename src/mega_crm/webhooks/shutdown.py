"""The delivery worker's graceful stop: in-flight attempts get a grace period
(MEGA_WEBHOOK_SHUTDOWN_GRACE_SECONDS), then those unfinished are cancelled and their claims
handed back, due at once for any worker. Nothing is lost either way: an unrecorded attempt is
attempted again."""

from __future__ import annotations

import asyncio
import logging
import uuid

from mega_crm.db import Database
from mega_crm.webhooks import queue
from mega_crm.webhooks.endpoint_health import log_disabled

log = logging.getLogger("mega_crm.webhooks")


async def drain_in_flight(
    in_flight: dict[asyncio.Task[None], queue.ClaimedDelivery], grace_seconds: float, db: Database
) -> None:
    """Wait up to `grace_seconds` for the `in_flight` attempts (task -> its claim), then cancel
    the rest and release their claims. Never raises: a failed release leaves the claims to
    come back when their lease ends."""
    tasks = list(in_flight)
    if not tasks:
        return
    grace = max(0.0, grace_seconds)
    log.info("webhook worker stopping: waiting up to %gs for %d attempt(s)", grace, len(tasks))
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    unfinished = [(in_flight[t].id, in_flight[t].lease_token) for t in pending]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if unfinished:
        try:
            await asyncio.to_thread(_release, db, unfinished)
        except Exception:  # noqa: BLE001 - their leases lapse instead
            log.exception(
                "releasing %d webhook claim(s) failed; they return after the lease", len(unfinished)
            )


def _release(db: Database, claims: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    with db.write_session() as session:
        queue.release_claims(session, claims)


async def record_last(db: Database, records: list[queue.AttemptRecord], disable_after: int) -> bool:
    """The outcomes left when the pump has stopped, recorded. -> False when that failed (logged;
    those deliveries are attempted again)."""
    if not records:
        return True
    try:
        await asyncio.to_thread(_write, db, records, disable_after)
    except Exception:
        log.exception("recording %d webhook attempt(s) failed; they are attempted again", len(records))
        return False
    return True


def _write(db: Database, records: list[queue.AttemptRecord], disable_after: int) -> None:
    with db.write_session() as session:
        disabled = queue.record_attempts(session, records, disable_after=disable_after)
    log_disabled(disabled)
