"""Running the delivery worker: alone as `mega-crm worker` until a signal, or on a thread of
its own inside the API server's process (the app's lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator

from mega_crm.config import Settings
from mega_crm.db import Database
from mega_crm.webhooks.worker import DeliveryWorker

log = logging.getLogger("mega_crm.webhooks")


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
        """Start the thread; returns once its loop runs (or after 5 s)."""
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self, timeout: float | None = None) -> None:
        """Signal the worker to stop gracefully and wait up to `timeout` seconds for the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)


@contextlib.asynccontextmanager
async def in_process_worker(db: Database, settings: Settings, secret_key: bytes) -> AsyncIterator[None]:
    """The API server's own delivery worker for as long as the context is open (the app's
    lifespan), unless MEGA_WEBHOOK_WORKER_IN_PROCESS=0. `secret_key`: the server key that
    decrypts the webhooks' signing secrets."""
    runner: WorkerThread | None = None
    if settings.webhook_worker_in_process:
        runner = WorkerThread(DeliveryWorker(db, settings, secret_key))
        runner.start()
    try:
        yield
    finally:
        if runner is not None:
            grace = settings.webhook_shutdown_grace_seconds + 15
            await asyncio.to_thread(runner.stop, grace)
