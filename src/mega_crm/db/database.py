"""The Database facade: one engine, its read and write sessions, raw reads for the hot paths,
and the lanes of threads request work runs on.

Reads use a plain transaction. Writes go through `write_session()`: on SQLite it takes the
database write lock up front (BEGIN IMMEDIATE, behind an in-process lock so threads queue
instead of spinning on busy_timeout), so a burst of parallel writes never ends in
"database is locked".

Request work runs on the database's own threads (`run()`), in lanes. On SQLite each lane has
one thread: Python's sqlite3 releases the GIL around every statement, so each extra thread
running SQL at the same time makes every request pay for GIL hand-offs (two threads instead of
one cost createLead 60% more CPU). Writes get their own lane (SQLite has one writer anyway),
and work that may take long (reads that may scan, outbound DNS lookups) a lane of two threads:
a bulk import or a slow search never holds up a page read. On PostgreSQL reads and writes share
`threads` threads (MEGA_DB_THREADS, 4), and slow work has two of its own. The threads wait on
the network, but each answer needs the GIL back: past a few, threads only queue for it (with
10, createLead and the bare create reached a third fewer requests/s than with 3 or 4).

SQLite's write lane commits in groups (lanes.WriteLane): the writes that queued while one ran
share one transaction, each in its own savepoint, and answer once it commits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from mega_crm.db import lanes, memos, raw
from mega_crm.db.engines import connection_options, normalize_database_url, postgresql_engine, sqlite_engine
from mega_crm.db.lanes import Lane
from mega_crm.db.raw import RawConnection

T = TypeVar("T")
DEFAULT_TIMEOUT_SECONDS = 5.0  # MEGA_DB_TIMEOUT_SECONDS


class Database:
    """The engine, its read and write sessions, raw reads for the hot paths, and the lanes of
    threads request work runs on."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        threads: int = 4,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        statement_timeout: float = 0.0,
    ) -> None:
        """`pool_size`: PostgreSQL connections kept open; `threads`: PostgreSQL's request threads
        (see the module docstring). `timeout` (seconds) bounds the waits of a connection that
        does not answer: PostgreSQL's connect timeout and the pool's checkout, SQLite's busy
        timeout (a lock held by another process). `statement_timeout` (seconds, 0 = none) is
        PostgreSQL's, for every statement of this engine. Each fails with an OperationalError
        or sqlalchemy.exc.TimeoutError, which the API answers 503 (mega_crm.failures)."""
        self.url = normalize_database_url(url)
        # `url` keeps pool_mode (for migrations and the CLI); the engine gets the URL without it.
        _, self.transaction_pooling = connection_options(self.url)
        self.timeout = timeout
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._batch = threading.local()  # the write lane's group transaction, on its thread
        if self.is_sqlite:
            self.engine = sqlite_engine(self.url, busy_timeout=timeout)
        else:
            self.engine = postgresql_engine(
                self.url,
                pool_size=pool_size,
                timeout=timeout,
                statement_timeout=statement_timeout,
                transaction_pooling=self.transaction_pooling,
                # A request's thread holds two connections at most: its key check's and its write's.
                at_once=2 * (threads + lanes.Lanes.SLOW_THREADS),
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._write_engine = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE") if self.is_sqlite else self.engine
        )
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False, autoflush=False)
        memos.watch_writes(self.engine, self._sessions, self._write_sessions)
        raw.watch_pipelines(self.engine)
        self._lanes = lanes.Lanes(self.engine, threads=threads, run_group=self.run_group)

    @contextmanager
    def checkpoints(self, every: float = 1.0) -> Iterator[None]:
        """While open (a serving process), copy SQLite's write-ahead log into the database every
        `every` seconds on a background thread, so commits never do it: a checkpoint inside a
        commit (SQLite's default, every 1,000 pages) made a single-lead write 30% slower. Each
        page is then copied once per period, however many commits touched it. A failing round
        is logged once and retried. On PostgreSQL, nothing."""
        if not self.is_sqlite:
            yield
            return
        with lanes.checkpoints(self.engine, every):
            yield

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """`fn(*args)` on a thread of `lane` (see the module docstring).

        With `deadline` (seconds), raises DatabaseTimeout (503) when the answer takes longer,
        queueing included. A statement cannot be interrupted on a server that stopped answering
        (a stopped or partitioned PostgreSQL: the socket just waits), so the thread is left to
        finish when the server comes back; work still queued is cancelled and never runs.
        PostgreSQL: a read that meets a lost connection runs once more on a fresh pool."""
        return await self._lanes.run(lane, fn, *args, deadline=deadline)

    @contextmanager
    def raw_read(self) -> Iterator[RawConnection]:
        """A pooled DBAPI connection for the per-request hot path (the key lookup, a page of
        leads): SQLAlchemy's per-statement bookkeeping cost as much as those queries, and every
        statement hands the GIL over twice. Everything else uses sessions. On SQLite each
        statement is its own snapshot unless run inside `RawConnection.snapshot()`; on
        PostgreSQL each is its own transaction (autocommit)."""
        with raw.raw_read(self.engine) as reader:
            yield reader

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads; its objects stay readable after the block."""
        # close() (not rollback) on exit: loaded objects stay readable after the block.
        with self._sessions() as session:
            yield session

    @contextmanager
    def write_session(self, *, commit: bool = True, pipelined: bool = False) -> Iterator[Session]:
        """One write transaction: commits on success (unless `commit` is False, for dry runs),
        rolls back on any exception. On the write lane's thread during a group commit, a
        savepoint of the group's transaction, released or rolled back the same way.
        `pipelined` (PostgreSQL): raw statements are queued and answered together (see
        raw.pipelined), for the request paths written for it (the lead writes)."""
        group = self.group_session()
        if group is not None:
            savepoint = group.begin_nested()
            try:
                yield group
            except BaseException:
                savepoint.rollback()
                raise
            if commit:
                savepoint.commit()
            else:
                savepoint.rollback()
            return
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self._write_sessions() as session:
                try:
                    if pipelined and not self.is_sqlite:
                        with raw.pipelined(session, commit=commit):
                            yield session
                    else:
                        yield session
                    if commit:
                        session.commit()
                    else:
                        session.rollback()
                except BaseException:
                    session.rollback()
                    raise
        finally:
            if lock is not None:
                lock.release()

    def group_session(self) -> Session | None:
        """The group commit's session, on the write lane's thread while it runs one."""
        return getattr(self._batch, "session", None)

    def run_group(self, jobs: list[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
        """The write lane's group commit: every job on this thread, in one write transaction,
        their write sessions savepoints of it. -> (result, exception) per job; if the commit
        fails, that exception for every job (nothing they wrote is there)."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            with self.write_session() as session:
                self._batch.session = session
                try:
                    for job in jobs:
                        try:
                            outcomes.append((job(), None))
                        except BaseException as exc:  # the job's savepoint was rolled back
                            outcomes.append((None, exc))
                finally:
                    self._batch.session = None
        except BaseException as exc:
            return [(None, exc) for _ in jobs]
        return outcomes

    def dispose(self) -> None:
        """Stop the lanes' threads (after their queued work), then close every pooled connection."""
        self._lanes.shutdown()
        self.engine.dispose()
