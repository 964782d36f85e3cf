"""The delivery log's retention: every delivery worker deletes, now and then, the deliveries
that finished more than MEGA_WEBHOOK_LOG_RETENTION_DAYS ago and the events left without any."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from mega_crm.db import Database, utcnow
from mega_crm.webhooks import repository as repo

log = logging.getLogger("mega_crm.webhooks")

# How often a worker deletes what has aged out, in batches of this size (a short write
# transaction each), at most this many batches a round.
PURGE_INTERVAL_SECONDS = 3600.0
PURGE_BATCH = 1000
PURGE_MAX_BATCHES = 20


def purge_delivery_log(db: Database, retention_days: float) -> int:
    """Delete the deliveries that finished more than `retention_days` ago (0 or less: keep
    them all), and the events left without any. -> how many deliveries (bounded per call:
    PURGE_MAX_BATCHES * PURGE_BATCH)."""
    if retention_days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=retention_days)
    deleted = 0
    for _ in range(PURGE_MAX_BATCHES):
        with db.write_session() as session:
            batch = repo.purge_delivery_log(session, cutoff, PURGE_BATCH)
        deleted += batch
        if batch < PURGE_BATCH:
            break
    return deleted


async def purge_periodically(db: Database, retention_days: float, stop: asyncio.Event) -> None:
    """Until `stop`: purge now and then every PURGE_INTERVAL_SECONDS. Every worker does; several
    doing it at once delete different rows or none. A failed round is logged and retried next."""
    while not stop.is_set():
        try:
            deleted = await asyncio.to_thread(purge_delivery_log, db, retention_days)
            if deleted:
                log.info("webhook delivery log: deleted %d delivery(ies) past retention", deleted)
        except Exception:
            log.exception("webhook delivery log: purge failed; retrying next round")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PURGE_INTERVAL_SECONDS)
