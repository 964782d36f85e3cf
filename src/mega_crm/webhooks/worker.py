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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import signal
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import IO, Any

from fastapi import FastAPI
from sqlalchemy.engine import make_url

from mega_crm.api.state import app_state
from mega_crm.config import Settings
from mega_crm.db import Database, connection_options, normalize_database_url, utcnow
from mega_crm.observability.logging import get_logger
from mega_crm.observability.metrics import WEBHOOKS_DISABLED, observe_webhook_attempt
from mega_crm.webhooks import repository as repo
from mega_crm.webhooks.delivery import AttemptResult, ClientPool, attempt_delivery, retry_delay, ssl_context
from mega_crm.webhooks.models import DISABLED_GONE, FAILED, PENDING, SUCCEEDED
from mega_crm.webhooks.outbox import add_wake_listener, remove_wake_listener
from mega_crm.webhooks.signing import SecretBox
from mega_crm.webhooks.urls import Resolver

log = logging.getLogger("mega_crm.webhooks")
attempt_log = get_logger("mega_crm.webhooks")  # one structured line per delivery attempt

# Under load, how long a finished attempt's outcome may wait to share a transaction with the
# next claim (its lease is held meanwhile, so nothing is lost if the worker dies).
RECORD_HOLD_SECONDS = 0.1
# The delivery log's retention: how often a worker deletes what has aged out, in batches of this
# size (a short write transaction each), at most this many batches a round.
PURGE_INTERVAL_SECONDS = 3600.0
PURGE_BATCH = 1000
PURGE_MAX_BATCHES = 20


class DeliveryWorker:
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
        self._in_flight: dict[asyncio.Task[None], repo.ClaimedDelivery] = {}
        self._busy: dict[uuid.UUID, int] = {}
        self._records: list[repo.AttemptRecord] = []
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

    def listen_url(self) -> str | None:
        """Where the worker LISTENs: MEGA_DATABASE_LISTEN_URL, else the database URL, except
        behind a transaction pooler (`pool_mode=transaction`), where a LISTEN would hold no
        server connection and hear nothing: then None, and the worker polls every
        MEGA_WEBHOOK_POLL_SECONDS (plus the wake-ups of commits in its own process)."""
        if self.db.is_sqlite:
            return None
        if self.settings.database_listen_url:
            return self.settings.database_listen_url
        return None if self.db.transaction_pooling else self.db.url

    def _listen_for_notifications(self, url: str) -> None:
        """PostgreSQL LISTEN on its own connection (thread); reconnects after errors."""
        import psycopg

        direct, _ = connection_options(normalize_database_url(url))
        conninfo = make_url(direct).set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._listen_stop.is_set():
            try:
                timeout = max(2, math.ceil(self.db.timeout))  # a silent server: retry, not hang
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=timeout) as conn:
                    conn.execute(f"LISTEN {repo.NOTIFY_CHANNEL}")
                    self.wake()  # anything committed while we were not listening
                    while not self._listen_stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake()
            except Exception as exc:  # noqa: BLE001 - keep listening; polling covers the gap
                log.warning("webhook LISTEN connection failed (%s); retrying", type(exc).__name__)
                self._listen_stop.wait(2.0)

    # --- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        tls = ssl_context(self.settings.webhook_ca_file)
        # Several webhooks may share one origin: its client must not be the bottleneck.
        pool = ClientPool(tls=tls, per_client_connections=self.concurrency)
        add_wake_listener(self.wake)
        listener: threading.Thread | None = None
        listen_url = self.listen_url()
        if listen_url is not None:
            listener = threading.Thread(
                target=self._listen_for_notifications, args=(listen_url,), name="webhook-listen", daemon=True
            )
            listener.start()
        elif not self.db.is_sqlite:
            log.info(
                "webhook worker: behind a transaction pooler and no MEGA_DATABASE_LISTEN_URL; "
                "polling every %gs",
                self.settings.webhook_poll_seconds,
            )
        owner_lock = await asyncio.to_thread(self._take_over_sqlite)
        pump = asyncio.create_task(self._pump(stop, pool))
        purger = asyncio.create_task(self._purge_periodically(stop))
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
            await self._drain()
            # Let the pump finish its current write and the queued records, then stop it.
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(pump), timeout=30)
            except TimeoutError:
                pump.cancel()
            except Exception:
                log.exception("webhook worker: the delivery pump failed")
            await self._write_records()
            await pool.aclose()
            if owner_lock is not None:
                owner_lock.close()  # releases the flock
            if listener is not None:
                await asyncio.to_thread(listener.join, 5.0)
            log.info("webhook worker stopped")

    def _take_over_sqlite(self) -> IO[bytes] | None:
        """On SQLite, the worker lock (`<db file>.worker.lock`, an flock held while the worker
        runs, dropped by the kernel when its process dies) and, once held, the claims of the
        worker that died before this one: with no other worker alive they are nobody's, and
        would otherwise wait out their lease (~70 s) after a restart. -> the lock's file, or None
        (PostgreSQL, an in-memory database, or another worker alive: its claims are kept)."""
        path = make_url(self.db.url).database if self.db.is_sqlite else None
        if not path or path == ":memory:":
            return None
        try:
            lock = open(f"{path}.worker.lock", "ab")  # noqa: SIM115 - held for the worker's lifetime
        except OSError as exc:
            log.warning(
                "webhook worker: no worker lock beside %s (%s); claims wait out their lease", path, exc
            )
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
            with self.db.write_session() as session:
                released = repo.release_every_claim(session)
        except Exception:  # noqa: BLE001 - they come back when their lease ends instead
            log.exception("webhook worker: handing back earlier claims failed")
            return lock
        if released:
            log.info(
                "webhook worker: %d delivery(ies) in flight when the last worker stopped are due again",
                released,
            )
        return lock

    async def _pump(self, stop: asyncio.Event, pool: ClientPool) -> None:
        """All of the worker's database writes: each transaction records the attempts that have
        finished and claims due deliveries for the free slots, so under load one transaction
        serves many deliveries. After `stop` it only records, until the worker is closing."""
        assert self._wake is not None
        poll = max(0.05, self.settings.webhook_poll_seconds)
        # Under load, claim several slots' worth at once rather than one transaction per slot.
        batch = max(1, self.concurrency // 4)
        failures = 0
        while not (self._closing and not self._records):
            self._wake.clear()
            claiming = not stop.is_set() and not self._closing
            free = self.concurrency - len(self._in_flight) if claiming else 0
            # A few free slots wait for more while attempts are in flight (they free more soon).
            want = free if free >= batch or (free > 0 and not self._in_flight) else 0
            if claiming and not want and self._records and self._in_flight:
                # Nearly every slot is busy: outcomes wait (briefly) for the next claim's
                # transaction instead of taking one of their own.
                age = (utcnow() - self._records[0].at).total_seconds()
                if age < RECORD_HOLD_SECONDS:
                    await self._wait(stop, RECORD_HOLD_SECONDS - age)
                    continue
            records, self._records = self._records, []
            if not records and not want:
                await self._wait(stop if claiming else None, poll)
                continue
            try:
                claims = await asyncio.to_thread(self._sync, records, want, dict(self._busy))
            except Exception:
                failures += 1
                log.exception(
                    "webhook worker: recording %d attempt(s) / claiming failed; retrying", len(records)
                )
                self._records = records + self._records
                # The database is unwell: keep the records and retry, a little later each time
                # (not sooner when an attempt finishes: that would hammer it).
                delay = min(5.0, float(failures))
                if claiming:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                else:
                    await asyncio.sleep(delay)
                continue
            failures = 0
            for claim, secret in claims:
                self._start_attempt(claim, secret, pool)
            if (want and len(claims) == want) or self._records:
                continue  # there may be more due already, or more attempts have finished
            timeout = poll
            if want and not claims:
                # Nothing due now: sleep until the next one is (a retry just recorded, perhaps).
                timeout = await self._until_next_due(poll)
            await self._wait(stop if claiming else None, timeout)

    # --- the delivery log's retention -------------------------------------------------------

    def purge_delivery_log(self) -> int:
        """Delete the deliveries that finished more than MEGA_WEBHOOK_LOG_RETENTION_DAYS ago, and
        the events left without any. -> how many deliveries (bounded per call)."""
        days = self.settings.webhook_log_retention_days
        if days <= 0:
            return 0
        cutoff = utcnow() - timedelta(days=days)
        deleted = 0
        for _ in range(PURGE_MAX_BATCHES):
            with self.db.write_session() as session:
                batch = repo.purge_delivery_log(session, cutoff, PURGE_BATCH)
            deleted += batch
            if batch < PURGE_BATCH:
                break
        return deleted

    async def _purge_periodically(self, stop: asyncio.Event) -> None:
        """Every worker purges, now and then every PURGE_INTERVAL_SECONDS; several doing it at once
        delete different rows or none."""
        while not stop.is_set():
            try:
                deleted = await asyncio.to_thread(self.purge_delivery_log)
                if deleted:
                    log.info("webhook delivery log: deleted %d delivery(ies) past retention", deleted)
            except Exception:
                log.exception("webhook delivery log: purge failed; retrying next round")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PURGE_INTERVAL_SECONDS)

    async def _wait(self, stop: asyncio.Event | None, timeout: float) -> None:
        assert self._wake is not None
        if stop is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        else:
            await _wait_any(stop, self._wake, timeout=timeout)

    def _sync(
        self, records: list[repo.AttemptRecord], limit: int, busy: dict[uuid.UUID, int]
    ) -> list[tuple[repo.ClaimedDelivery, str | None]]:
        """One write transaction: record `records`, claim up to `limit` due deliveries."""
        now = utcnow()
        if limit and not records and self.db.is_sqlite:
            # Look before taking SQLite's write lock: an idle worker should not block writers.
            with self.db.read_session() as session:
                if not repo.any_due(session, now):
                    return []
        disabled: list[repo.Disabled] = []
        claims: list[repo.ClaimedDelivery] = []
        with self.db.write_session() as session:
            if records:
                disabled = repo.record_attempts(session, records, disable_after=self._disable_after)
            if limit:
                claims = repo.claim_due_deliveries(
                    session,
                    now,
                    limit=limit,
                    lease_seconds=self.settings.webhook_lease_seconds,
                    per_webhook=self.per_webhook,
                    busy=busy,
                )
        self._log_disabled(disabled)  # committed
        return self._with_secrets(claims)

    def _with_secrets(
        self, claims: list[repo.ClaimedDelivery]
    ) -> list[tuple[repo.ClaimedDelivery, str | None]]:
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
        try:
            nxt = await asyncio.to_thread(self._next_due)
        except Exception:  # noqa: BLE001 - fall back to polling
            return poll
        if nxt is None:
            return poll
        return min(poll, max(0.0, (nxt - utcnow()).total_seconds()) + 0.005)

    def _next_due(self) -> Any:
        with self.db.read_session() as session:
            return repo.next_due_at(session)

    # --- attempts -------------------------------------------------------------------------

    def _start_attempt(self, claim: repo.ClaimedDelivery, secret: str | None, pool: ClientPool) -> None:
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

    async def _attempt(self, claim: repo.ClaimedDelivery, secret: str | None, pool: ClientPool) -> None:
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

    def _previous_secret(self, claim: repo.ClaimedDelivery) -> str | None:
        """The secret before the last rotation while its overlap lasts (then it signs too)."""
        until = claim.previous_secret_expires_at
        if claim.previous_secret_encrypted is None or until is None or until <= utcnow():
            return None
        try:
            return self.box.open(claim.webhook_id, claim.previous_secret_encrypted)
        except ValueError:
            return None  # the current secret still signs

    def _judge(self, claim: repo.ClaimedDelivery, result: AttemptResult) -> repo.AttemptRecord:
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
        return repo.AttemptRecord(
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

    # --- recording ------------------------------------------------------------------------

    async def _write_records(self) -> bool:
        """The last records, at shutdown."""
        records, self._records = self._records, []
        if not records:
            return True
        try:
            await asyncio.to_thread(self._write, records)
        except Exception:
            log.exception("recording %d webhook attempt(s) failed; they are attempted again", len(records))
            return False
        return True

    def _write(self, records: list[repo.AttemptRecord]) -> None:
        with self.db.write_session() as session:
            disabled = repo.record_attempts(session, records, disable_after=self._disable_after)
        self._log_disabled(disabled)

    @staticmethod
    def _log_disabled(disabled: list[repo.Disabled]) -> None:
        for d in disabled:
            WEBHOOKS_DISABLED.labels(d.reason).inc()
            why = "its endpoint answered 410 Gone" if d.reason == DISABLED_GONE else "deliveries kept failing"
            log.warning(
                "webhook %s disabled (%s): %s; %d failed delivery(ies) in a row; pending ones cancelled",
                d.webhook_id,
                d.reason,
                why,
                d.consecutive_failures,
            )

    async def _drain(self) -> None:
        """Shutdown: give in-flight attempts the grace period, then release what is left."""
        tasks = list(self._in_flight)
        if not tasks:
            return
        grace = max(0.0, self.settings.webhook_shutdown_grace_seconds)
        log.info("webhook worker stopping: waiting up to %gs for %d attempt(s)", grace, len(tasks))
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        unfinished = [(self._in_flight[t].id, self._in_flight[t].lease_token) for t in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if unfinished:
            try:
                await asyncio.to_thread(self._release, unfinished)
            except Exception:  # noqa: BLE001 - their leases lapse instead
                log.exception(
                    "releasing %d webhook claim(s) failed; they return after the lease", len(unfinished)
                )

    def _release(self, claims: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        with self.db.write_session() as session:
            repo.release_claims(session, claims)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, *, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


# --- running it -----------------------------------------------------------------------------


async def run_until_signalled(worker: DeliveryWorker) -> None:
    """`mega-crm worker`: run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)


class WorkerThread:
    """The worker on its own thread and event loop, inside the API server's process."""

    def __init__(self, worker: DeliveryWorker) -> None:
        self.worker = worker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="webhook-worker", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self.worker.run(self._stop)

        try:
            asyncio.run(main())
        except Exception:
            log.exception("webhook worker crashed")
        finally:
            self._ready.set()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self, timeout: float | None = None) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)


@contextlib.asynccontextmanager
async def webhook_worker_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The in-process worker, unless MEGA_WEBHOOK_WORKER_IN_PROCESS=0."""
    state = app_state(app)
    settings = state.settings
    runner: WorkerThread | None = None
    if settings.webhook_worker_in_process:
        runner = WorkerThread(DeliveryWorker(state.db, settings, state.secret_key))
        runner.start()
    try:
        yield
    finally:
        if runner is not None:
            grace = settings.webhook_shutdown_grace_seconds + 15
            await asyncio.to_thread(runner.stop, grace)
