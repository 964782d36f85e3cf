"""The threads request work runs on, in lanes (see mega_crm.db.database), SQLite's group commit
(`WriteLane`), and the background WAL checkpoints of a serving SQLite process."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine

from mega_crm import failures
from mega_crm.db.engines import lost_connection
from mega_crm.errors import ServiceUnavailableError

T = TypeVar("T")
Lane = Literal["read", "write", "slow"]  # see mega_crm.db.database's docstring
log = logging.getLogger("mega_crm")

# Runs a group of write jobs in one transaction -> (result, exception) per job (Database.run_group).
GroupRunner = Callable[[list[Callable[[], Any]]], list[tuple[Any, BaseException | None]]]


class DatabaseTimeout(ServiceUnavailableError):
    """The database did not answer a request's work within its deadline (503 api_error)."""


def _expire(answer: asyncio.Future[Any], expired: list[bool]) -> None:
    if not answer.done():
        expired.append(True)
        answer.cancel()


class Lanes:
    """The thread pools of one database's lanes: on SQLite one thread per lane ("slow": two) and
    the write lane a WriteLane; on PostgreSQL `threads` threads shared by "read" and "write",
    and two for "slow"."""

    SLOW_THREADS = 2

    def __init__(self, engine: Engine, *, threads: int, run_group: GroupRunner) -> None:
        self._engine = engine
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._threads = threads
        self._executors: dict[Lane, ThreadPoolExecutor] = {}
        self._executor_lock = threading.Lock()
        self._write_lane = WriteLane(run_group) if self._is_sqlite else None

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """See Database.run."""
        job = functools.partial(fn, *args)
        if not self._is_sqlite:
            job = functools.partial(self._recovering, job, retry=lane != "write")
        if lane == "write" and self._write_lane is not None:
            future = self._write_lane.submit(job)
        else:
            key: Lane = lane if self._is_sqlite or lane == "slow" else "read"  # PostgreSQL: shared
            executor = self._executors.get(key) or self._new_executor(key)
            future = executor.submit(job)
        answer = asyncio.wrap_future(future)  # its cancellation cancels `future` if still queued
        if deadline is None or deadline <= 0:
            return await answer
        # A timer of our own rather than asyncio.timeout(), whose context manager cost ~20 µs a
        # request; a cancellation that is not the timer's (the client went away) is re-raised.
        expired: list[bool] = []
        timer = asyncio.get_running_loop().call_later(deadline, _expire, answer, expired)
        try:
            result = await answer
        except asyncio.CancelledError:
            if not expired:
                raise
            failures.database_outage.down(f"no answer within {deadline:g} s")
            raise DatabaseTimeout(failures.DATABASE_UNAVAILABLE, headers={"Retry-After": "1"}) from None
        finally:
            timer.cancel()
        failures.database_outage.up()
        return result

    def _recovering(self, job: Callable[[], T], *, retry: bool) -> T:
        """PostgreSQL: `job()`; when it meets a lost connection (the server restarted, a proxy
        or PgBouncer dropped it), every pooled connection is dropped (they were likely lost
        too), and a read runs once more on a fresh connection. A write is not run again (its
        COMMIT may have been the statement that failed): it fails (503, Retry-After) and the
        client's retry finds a fresh pool. This replaces a ping per checkout."""
        try:
            return job()
        except Exception as exc:
            if not lost_connection(exc):
                raise
            log.warning("a database connection was lost (%s); reconnecting", type(exc).__name__)
            self._engine.dispose(close=False)  # checked-in connections are dropped, not used again
            if not retry:
                raise
        return job()

    def _new_executor(self, key: Lane) -> ThreadPoolExecutor:
        with self._executor_lock:
            if key not in self._executors:
                threads = self.SLOW_THREADS if key == "slow" else 1 if self._is_sqlite else self._threads
                self._executors[key] = ThreadPoolExecutor(threads, thread_name_prefix=f"mega-db-{key}")
            return self._executors[key]

    def shutdown(self) -> None:
        """Stop every lane's threads once their queued work is done."""
        if self._write_lane is not None:
            self._write_lane.shutdown()
        for executor in self._executors.values():
            executor.shutdown(wait=True)
        self._executors.clear()


class WriteLane:
    """SQLite's write lane: one thread that commits in groups. When it takes a job and others are
    already waiting, it runs them together (`run_group`: Database.run_group), up to GROUP: one
    BEGIN, one COMMIT and one write of each page the group touched, instead of one per job. A
    job that fails rolls back its own savepoint; every job answers only once the group has
    committed."""

    GROUP = 32

    def __init__(self, run_group: GroupRunner) -> None:
        self._run_group = run_group
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Queue `job` -> the future of its result, set once its group has committed."""
        future: Future[T] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mega-db-write", daemon=True)
                self._thread.start()
        self._jobs.put((job, future))
        return future

    def shutdown(self) -> None:
        """Stop the thread after the jobs queued before this call."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _loop(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < self.GROUP:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            runnable = [(job, future) for job, future in group if future.set_running_or_notify_cancel()]
            jobs = [job for job, _ in runnable]
            outcomes = [_outcome(jobs[0])] if len(jobs) == 1 else self._run_group(jobs) if jobs else []
            for (_, future), (result, exc) in zip(runnable, outcomes, strict=True):
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)
            if stop:
                return


def _outcome(job: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return job(), None
    except BaseException as exc:
        return None, exc


@contextmanager
def checkpoints(engine: Engine, every: float) -> Iterator[None]:
    """See Database.checkpoints (SQLite only)."""
    stop = threading.Event()
    failing: str | None = None  # the error of the last round, logged once when it started

    def loop() -> None:
        nonlocal failing
        while not stop.wait(every):
            # After a failure (a full disk, typically), TRUNCATE: once space is back, it
            # empties the write-ahead log file, which a passive checkpoint never shrinks,
            # and which otherwise kept the disk full and every write failing.
            mode = "TRUNCATE" if failing else "PASSIVE"
            try:
                connection = engine.raw_connection()
                try:
                    connection.cursor().execute(f"PRAGMA wal_checkpoint({mode})")
                finally:
                    connection.close()
            except Exception as exc:  # a full disk, a busy or vanished file: retried next round
                error = f"{type(exc).__name__}: {exc}"
                if error != failing:
                    log.error("SQLite WAL checkpoint failing (retried every %gs): %s", every, error)
                failing = error
                continue
            if failing:
                log.warning("SQLite WAL checkpoint working again")
                failing = None

    thread = threading.Thread(target=loop, name="mega-db-checkpoint", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
