"""The delivery worker: claims due deliveries, attempts them concurrently, records the outcomes.

Runs inside `mega-crm serve` (a thread with its own event loop, started by the app's lifespan)
or alone as `mega-crm worker`. Any number may run against one PostgreSQL: claims are leased
rows taken with FOR UPDATE SKIP LOCKED, and a claim whose worker died is taken again when its
lease ends. The worker sleeps until the next delivery is due, and is woken early by a commit
in this process that added deliveries, or by PostgreSQL NOTIFY from any other process.

One task (the pump) does all the database writing: each transaction records the attempts
that have finished since the last one (one executemany) and claims due deliveries for the free
slots, so under load a transaction serves many deliveries, and the event loop, which does the
HTTP, competes with little Python in the database thread for the GIL.

Shutdown (SIGTERM): stop claiming, let in-flight attempts finish for a grace period, then
hand the unfinished ones back (due at once, for any worker). Nothing is lost either way: an
unrecorded attempt is attempted again.

Beside this module: the pump's decisions (pump_policy.py), the queue's SQL (queue.py), waking by
NOTIFY (listen.py), the SQLite worker lock (worker_lock.py), the delivery log's retention
(retention.py), the graceful stop (shutdown.py), and running a worker (running.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from mega_crm.config import Settings
from mega_crm.db import Database, utcnow
from mega_crm.events.outbox import add_wake_listener, remove_wake_listener
from mega_crm.observability.logging import get_logger
from mega_crm.observability.metrics import observe_webhook_attempt
from mega_crm.webhooks import queue
from mega_crm.webhooks.delivery import AttemptResult, ClientPool, attempt_delivery, retry_delay, ssl_context
from mega_crm.webhooks.endpoint_health import Disabled, log_disabled
from mega_crm.webhooks.listen import listen_for_notifications, listen_url
from mega_crm.webhooks.models import FAILED, PENDING, SUCCEEDED
from mega_crm.webhooks.pump_policy import (
    Action,
    PumpState,
    Step,
    after_failure,
    after_sync,
    next_due_wait,
    next_step,
)
from mega_crm.webhooks.retention import purge_delivery_log, purge_periodically
from mega_crm.webhooks.shutdown import drain_in_flight, record_last
from mega_crm.webhooks.signing import SecretBox
from mega_crm.webhooks.urls import Resolver
from mega_crm.webhooks.worker_lock import take_over_sqlite

log = logging.getLogger("mega_crm.webhooks")
attempt_log = get_logger("mega_crm.webhooks")  # one structured line per delivery attempt


class DeliveryWorker:
    """Delivers the webhook deliveries of one database: `run(stop)` on an event loop until `stop`
    is set (webhooks/running.py runs it). `resolver`: how target host names are resolved
    (tests pass a fake; None: the system's)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        server_key: bytes,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.box = SecretBox(server_key)
        self.resolver = resolver
        self.concurrency = max(1, settings.webhook_worker_concurrency)
        self.per_webhook = settings.webhook_endpoint_concurrency or max(1, self.concurrency // 4)
        self.allow_private = settings.webhook_allow_private_targets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._in_flight: dict[asyncio.Task[None], queue.ClaimedDelivery] = {}
        self._busy: dict[uuid.UUID, int] = {}
        self._records: list[queue.AttemptRecord] = []
        self._listen_stop = threading.Event()
        self._closing = False
        self._disable_after = max(0, settings.webhook_disable_after_failures)

    # --- waking ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Thread-safe: look for due deliveries now."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(wake.set)

    # --- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then stop gracefully (see the module's docstring)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        tls = ssl_context(self.settings.webhook_ca_file)
        # Several webhooks may share one origin: its client must not be the bottleneck.
        pool = ClientPool(tls=tls, per_client_connections=self.concurrency)
        add_wake_listener(self.wake)
        listener: threading.Thread | None = None
        url = listen_url(self.db, self.settings)
        if url is not None:
            listener = threading.Thread(
                target=listen_for_notifications,
                args=(url, self.db.timeout, self.wake, self._listen_stop),
                name="webhook-listen",
                daemon=True,
            )
            listener.start()
        elif not self.db.is_sqlite:
            log.info(
                "webhook worker: behind a transaction pooler and no MEGA_DATABASE_LISTEN_URL; "
                "polling every %gs",
                self.settings.webhook_poll_seconds,
            )
        owner_lock = await asyncio.to_thread(take_over_sqlite, self.db)
        pump = asyncio.create_task(self._pump(stop, pool))
        purger = asyncio.create_task(
            purge_periodically(self.db, self.settings.webhook_log_retention_days, stop)
        )
        log.info(
            "webhook worker started (concurrency %d, %d per webhook)", self.concurrency, self.per_webhook
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([pump, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            purger.cancel()
            remove_wake_listener(self.wake)
            self._listen_stop.set()
            await drain_in_flight(self._in_flight, self.settings.webhook_shutdown_grace_seconds, self.db)
            # Let the pump finish its current write and the queued records, then stop it.
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(pump), timeout=30)
            except TimeoutError:
                pump.cancel()
            except Exception:
                log.exception("webhook worker: the delivery pump failed")
            # The last outcomes, recorded.
            records, self._records = self._records, []
            await record_last(self.db, records, self._disable_after)
            await pool.aclose()
            if owner_lock is not None:
                owner_lock.close()  # releases the flock
            if listener is not None:
                await asyncio.to_thread(listener.join, 5.0)
            log.info("webhook worker stopped")

    async def _pump(self, stop: asyncio.Event, pool: ClientPool) -> None:
        """All of the worker's database writes: each transaction records the attempts that have
        finished and claims due deliveries for the free slots, so under load one transaction
        serves many deliveries. After `stop` it only records, until the worker is closing.
        What to do next is webhooks/pump_policy.py's decision; this loop only performs it."""
        assert self._wake is not None
        poll = max(0.05, self.settings.webhook_poll_seconds)
        # Under load, claim several slots' worth at once rather than one transaction per slot.
        batch = max(1, self.concurrency // 4)
        failures = 0
        while True:
            self._wake.clear()
            state = PumpState(
                concurrency=self.concurrency,
                batch=batch,
                in_flight=len(self._in_flight),
                records=len(self._records),
                oldest_record_at=self._records[0].at if self._records else None,
                stopping=stop.is_set(),
                closing=self._closing,
                now=utcnow(),
                poll=poll,
            )
            step = next_step(state)
            if step.action is Action.SYNC:
                step, failures = await self._sync_step(state, step.claim, failures, pool)
            if step.action is Action.FINISH:
                return
            if step.action is Action.WAIT_NEXT_DUE:
                step = replace(step, action=Action.WAIT, seconds=await self._until_next_due(step.seconds))
            if step.action is Action.WAIT:
                await self._wait(stop, step)

    async def _sync_step(
        self, state: PumpState, claim: int, failures: int, pool: ClientPool
    ) -> tuple[Step, int]:
        """Perform a SYNC: one transaction recording the pending outcomes and claiming `claim`
        deliveries, whose attempts start at once. -> (the next step, failed transactions in a
        row, `failures` being those before this one). A failed transaction keeps the outcomes."""
        records, self._records = self._records, []
        try:
            claims = await asyncio.to_thread(self._sync, records, claim, dict(self._busy))
        except Exception:
            log.exception("webhook worker: recording %d attempt(s) / claiming failed; retrying", len(records))
            self._records = records + self._records
            return after_failure(state, failures + 1), failures + 1
        for delivery, secret in claims:
            self._start_attempt(delivery, secret, pool)
        return after_sync(state, claim, len(claims), len(self._records)), 0

    def purge_delivery_log(self) -> int:
        """The delivery log's retention, one round now (webhooks/retention.py). -> deliveries deleted."""
        return purge_delivery_log(self.db, self.settings.webhook_log_retention_days)

    async def _wait(self, stop: asyncio.Event, step: Step) -> None:
        """Sleep up to `step.seconds`, until a wake-up (`step.on_wake`) or `stop` (`step.on_stop`)."""
        assert self._wake is not None
        events = [e for e, on in ((stop, step.on_stop), (self._wake, step.on_wake)) if on]
        if not events:
            await asyncio.sleep(step.seconds)
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=step.seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _sync(
        self, records: list[queue.AttemptRecord], limit: int, busy: dict[uuid.UUID, int]
    ) -> list[tuple[queue.ClaimedDelivery, str | None]]:
        """One write transaction: record `records`, claim up to `limit` due deliveries."""
        now = utcnow()
        if limit and not records and self.db.is_sqlite:
            # Look before taking SQLite's write lock: an idle worker should not block writers.
            with self.db.read_session() as session:
                if not queue.any_due(session, now):
                    return []
        disabled: list[Disabled] = []
        claims: list[queue.ClaimedDelivery] = []
        with self.db.write_session() as session:
            if records:
                disabled = queue.record_attempts(session, records, disable_after=self._disable_after)
            if limit:
                claims = queue.claim_due_deliveries(
                    session,
                    now,
                    limit=limit,
                    lease_seconds=self.settings.webhook_lease_seconds,
                    per_webhook=self.per_webhook,
                    busy=busy,
                )
        log_disabled(disabled)  # committed
        return self._with_secrets(claims)

    def _with_secrets(
        self, claims: list[queue.ClaimedDelivery]
    ) -> list[tuple[queue.ClaimedDelivery, str | None]]:
        """Each claim with its webhook's signing secret, decrypted once per webhook and secret
        version in this batch (None when it does not decrypt: the attempt reports why)."""
        opened: dict[tuple[uuid.UUID, str], str | None] = {}
        out = []
        for claim in claims:
            key = (claim.webhook_id, claim.secret_encrypted)
            if key not in opened:
                try:
                    opened[key] = self.box.open(*key)
                except ValueError:
                    opened[key] = None
            out.append((claim, opened[key]))
        return out

    async def _until_next_due(self, poll: float) -> float:
        """Seconds until the next delivery is due, at most `poll` (`poll` when the read fails)."""
        try:
            nxt = await asyncio.to_thread(self._next_due)
        except Exception:  # noqa: BLE001 - fall back to polling
            return poll
        return next_due_wait(nxt, utcnow(), poll)

    def _next_due(self) -> datetime | None:
        with self.db.read_session() as session:
            return queue.next_due_at(session)

    # --- attempts -------------------------------------------------------------------------

    def _start_attempt(self, claim: queue.ClaimedDelivery, secret: str | None, pool: ClientPool) -> None:
        self._busy[claim.webhook_id] = self._busy.get(claim.webhook_id, 0) + 1
        task = asyncio.create_task(self._attempt(claim, secret, pool), name=f"delivery-{claim.id}")
        self._in_flight[task] = claim
        task.add_done_callback(self._attempt_done)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        claim = self._in_flight.pop(task, None)
        if claim is not None:
            left = self._busy.get(claim.webhook_id, 1) - 1
            if left > 0:
                self._busy[claim.webhook_id] = left
            else:
                self._busy.pop(claim.webhook_id, None)
        if self._wake is not None:
            self._wake.set()  # a slot is free

    async def _attempt(self, claim: queue.ClaimedDelivery, secret: str | None, pool: ClientPool) -> None:
        try:
            if secret is None:
                secret = self.box.open(claim.webhook_id, claim.secret_encrypted)  # raises: says why
            result = await attempt_delivery(
                pool,
                url=claim.url,
                secret=secret,
                previous_secret=self._previous_secret(claim),
                signature_scheme=claim.signature_scheme,
                details=claim.details,
                delivery_id=str(claim.id),
                event_type=claim.event_type,
                lead=claim.lead,
                timeout_seconds=claim.timeout_seconds,
                allow_private=self.allow_private,
                resolver=self.resolver,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("webhook delivery %s: unexpected error", claim.id)
            result = AttemptResult(False, None, f"internal error: {type(exc).__name__}", None)
        self._records.append(self._judge(claim, result))  # _attempt_done wakes the pump

    def _previous_secret(self, claim: queue.ClaimedDelivery) -> str | None:
        """The secret before the last rotation while its overlap lasts (then it signs too)."""
        until = claim.previous_secret_expires_at
        if claim.previous_secret_encrypted is None or until is None or until <= utcnow():
            return None
        try:
            return self.box.open(claim.webhook_id, claim.previous_secret_encrypted)
        except ValueError:
            return None  # the current secret still signs

    def _judge(self, claim: queue.ClaimedDelivery, result: AttemptResult) -> queue.AttemptRecord:
        now = utcnow()
        attempts = claim.attempts + 1
        next_attempt_at = None
        if result.succeeded:
            status = SUCCEEDED
        elif result.refused or result.gone or attempts > claim.retry_attempts:
            status = FAILED
        else:
            status = PENDING
            delay = retry_delay(attempts, self.settings.webhook_retry_base_seconds)
            if result.retry_after is not None:  # the receiver's 429/503 Retry-After, capped
                delay = max(delay, result.retry_after)
            next_attempt_at = now + timedelta(seconds=delay)
        observe_webhook_attempt(result.succeeded, status != PENDING, result.latency_ms)
        attempt_log.info(
            "webhook_attempt",
            delivery_id=str(claim.id),
            webhook_id=str(claim.webhook_id),
            attempt=attempts,
            outcome=status,
            status_code=result.status_code,
            error=result.error,
            latency_ms=result.latency_ms,
        )
        return queue.AttemptRecord(
            delivery_id=claim.id,
            lease_token=claim.lease_token,
            status=status,
            attempts=attempts,
            at=now,
            next_attempt_at=next_attempt_at,
            status_code=result.status_code,
            error=result.error,
            latency_ms=result.latency_ms,
            webhook_id=claim.webhook_id,
            gone=result.gone,
        )
