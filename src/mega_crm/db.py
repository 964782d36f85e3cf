"""Engine and sessions for SQLite (embedded default) and PostgreSQL.

Reads use a plain transaction. Writes go through `write_session()`: on SQLite it takes the
database write lock up front (BEGIN IMMEDIATE, behind an in-process lock so threads queue
instead of spinning on busy_timeout), so a burst of parallel writes never ends in
"database is locked".

Request work runs on the database's own threads (`run()`), in lanes. On SQLite each lane has
one thread: Python's sqlite3 releases the GIL around every statement, so each extra thread
running SQL at the same time makes every request pay for GIL hand-offs (two threads instead of
one cost createLead 60% more CPU). Writes get their own lane (SQLite has one writer anyway),
and work that may take long (reads that may scan, outbound DNS lookups) a lane of two threads:
a bulk import or a slow search never holds up a page read. On PostgreSQL the threads mostly
wait on the network: every lane shares one pool of `pool_size` threads.

SQLite's write lane commits in groups (`_WriteLane`): the writes that queued while one ran share
one transaction, each in its own savepoint, and answer once it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
from sqlalchemy import DateTime, Dialect, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from mega_crm import failures
from mega_crm.errors import ServiceUnavailableError

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


T = TypeVar("T")
DEFAULT_TIMEOUT_SECONDS = 5.0  # MEGA_DB_TIMEOUT_SECONDS
Lane = Literal["read", "write", "slow"]  # see the module docstring
log = logging.getLogger("mega_crm")


class DatabaseTimeout(ServiceUnavailableError):
    """The database did not answer a request's work within its deadline (503 api_error)."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def normalize_database_url(url: str) -> str:
    """Accept the forms people write (postgres://, postgresql://, sqlite:///x.db) and pick our drivers."""
    url = url.strip()
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", ""):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.drivername != "sqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


# A query parameter of MEGA_DATABASE_URL (ours, never sent to PostgreSQL): the server at that
# address is a pooler in transaction mode (PgBouncer's pool_mode=transaction), so one client's
# consecutive transactions may run on different server connections. Then psycopg prepares no
# named statements (a later transaction would not find them, or another client would meet
# them), and no `options` startup parameter is sent (PgBouncer refuses it).
POOL_MODE_PARAM = "pool_mode"


def connection_options(url: str) -> tuple[str, bool]:
    """-> (the URL without our `pool_mode` parameter, whether it says `transaction`).
    Raises ValueError for any other pool_mode value (a typo must not pass silently)."""
    parsed = make_url(url)
    mode = parsed.query.get(POOL_MODE_PARAM)
    if mode is None:
        return url, False
    if mode not in ("transaction", "session"):
        raise ValueError(f"{POOL_MODE_PARAM} in the database URL must be 'transaction' or 'session'")
    stripped = parsed.difference_update_query([POOL_MODE_PARAM]).render_as_string(hide_password=False)
    return stripped, mode == "transaction"


def driver_connect_args(transaction_pooling: bool) -> dict[str, Any]:
    """psycopg's arguments for a URL behind a transaction pooler: no named prepared statements
    (PgBouncer before 1.21 cannot track them; Debian 12 ships 1.18)."""
    return {"prepare_threshold": None} if transaction_pooling else {}


class Database:
    """The engine, its read and write sessions, raw reads for the hot paths, and the lanes of
    threads request work runs on."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        statement_timeout: float = 0.0,
    ) -> None:
        """`timeout` (seconds) bounds the waits of a connection that does not answer: PostgreSQL's
        connect timeout and the pool's checkout, SQLite's busy timeout (a lock held by another
        process). `statement_timeout` (seconds, 0 = none) is PostgreSQL's, for every statement
        of this engine. Each fails with an OperationalError or sqlalchemy.exc.TimeoutError, which
        the API answers 503 (mega_crm.failures)."""
        self.url = normalize_database_url(url)
        # `url` keeps pool_mode (for migrations and the CLI); the engine gets the URL without it.
        engine_url, self.transaction_pooling = connection_options(self.url)
        self.timeout = timeout
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._pool_size = pool_size
        self._executors: dict[Lane, ThreadPoolExecutor] = {}
        self._executor_lock = threading.Lock()
        self._write_lane = _WriteLane(self) if self.is_sqlite else None
        self._batch = threading.local()  # the write lane's group transaction, on its thread
        if self.is_sqlite:
            self.engine = _sqlite_engine(self.url, busy_timeout=timeout)
        else:
            connect_args: dict[str, Any] = {
                # libpq counts whole seconds, at least 2; psycopg enforces it client-side, so it
                # also bounds a server that accepted the TCP connection and then went silent.
                "connect_timeout": max(2, math.ceil(timeout)),
                **driver_connect_args(self.transaction_pooling),
            }
            # Behind a transaction pooler, statement_timeout is the role's or the database's
            # setting (ALTER ROLE … SET statement_timeout): PgBouncer refuses `options`.
            if statement_timeout > 0 and not self.transaction_pooling:
                # Beside any `options` of the URL (e.g. a search_path), which this would replace.
                given = make_url(self.url).query.get("options")
                given = given if isinstance(given, str) else " ".join(given or ())
                setting = f"-c statement_timeout={int(statement_timeout * 1000)}"
                connect_args["options"] = f"{given} {setting}".strip()
            self.engine = create_engine(
                engine_url,
                pool_size=pool_size,
                max_overflow=pool_size * 2,
                # No ping per checkout (a round trip on every request): a connection found dead
                # on use is dropped with the rest of the pool, and a read is retried once on a
                # fresh one (Database.run).
                pool_pre_ping=False,
                pool_timeout=timeout,
                connect_args=connect_args,
                future=True,
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._write_engine = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE") if self.is_sqlite else self.engine
        )
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False, autoflush=False)

    @contextmanager
    def checkpoints(self, every: float = 1.0) -> Iterator[None]:
        """While open (a serving process), copy SQLite's write-ahead log into the database every
        `every` seconds on a background thread, so commits never do it: a checkpoint inside a
        commit (SQLite's default, every 1,000 pages) made a single-lead write 30% slower. Each
        page is then copied once per period, however many commits touched it."""
        if not self.is_sqlite:
            yield
            return
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
                    connection = self.engine.raw_connection()
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

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """`fn(*args)` on a thread of `lane` (see the module docstring).

        With `deadline` (seconds), raises DatabaseTimeout (503) when the answer takes longer,
        queueing included. A statement cannot be interrupted on a server that stopped answering
        (a stopped or partitioned PostgreSQL: the socket just waits), so the thread is left to
        finish when the server comes back; work still queued is cancelled and never runs."""
        job = functools.partial(fn, *args)
        if not self.is_sqlite:
            job = functools.partial(self._recovering, job, retry=lane != "write")
        if lane == "write" and self._write_lane is not None:
            future = self._write_lane.submit(job)
        else:
            key: Lane = lane if self.is_sqlite else "read"  # PostgreSQL: one pool for every lane
            executor = self._executors.get(key) or self._new_executor(key)
            future = executor.submit(job)
        if deadline is None or deadline <= 0:
            return await asyncio.wrap_future(future)
        try:
            async with asyncio.timeout(deadline):
                result = await asyncio.wrap_future(future)  # cancelled (if still queued) on timeout
        except TimeoutError:
            failures.database_outage.down(f"no answer within {deadline:g} s")
            raise DatabaseTimeout(failures.DATABASE_UNAVAILABLE, headers={"Retry-After": "1"}) from None
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
            if not _lost_connection(exc):
                raise
            log.warning("a database connection was lost (%s); reconnecting", type(exc).__name__)
            self.engine.dispose(close=False)  # checked-in connections are dropped, not used again
            if not retry:
                raise
        return job()

    def _new_executor(self, key: Lane) -> ThreadPoolExecutor:
        with self._executor_lock:
            if key not in self._executors:
                threads = self._pool_size if not self.is_sqlite else 2 if key == "slow" else 1
                self._executors[key] = ThreadPoolExecutor(threads, thread_name_prefix=f"mega-db-{key}")
            return self._executors[key]

    @contextmanager
    def raw_read(self) -> Iterator[RawConnection]:
        """A pooled DBAPI connection for the per-request hot path (the key lookup, a page of
        leads): SQLAlchemy's per-statement bookkeeping cost as much as those queries, and every
        statement hands the GIL over twice. Everything else uses sessions. On SQLite each
        statement is its own snapshot unless run inside `RawConnection.snapshot()`."""
        connection = self.engine.raw_connection()
        # PostgreSQL: each read its own transaction: no BEGIN and no ROLLBACK round trips, and
        # the connection holds no transaction while the request's write takes a second one.
        # Behind a transaction pooler an open read transaction held a server connection for
        # the whole request: with fewer server connections than twice the requests in flight,
        # every request waited on the others (PgBouncer's query_wait_timeout).
        driver = None if self.is_sqlite else connection.driver_connection
        if driver is not None:
            driver.autocommit = True
        try:
            yield RawConnection(connection, self.engine.dialect)
        finally:
            try:
                if driver is None:
                    connection.rollback()
                elif driver.closed or driver.broken:  # lost: never back into the pool
                    connection.invalidate()
                else:
                    try:
                        driver.autocommit = False
                    except Exception:  # a broken connection: never back into the pool
                        connection.invalidate()
                        raise
            finally:
                connection.close()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        # close() (not rollback) on exit: loaded objects stay readable after the block.
        with self._sessions() as session:
            yield session

    @contextmanager
    def write_session(self, *, commit: bool = True) -> Iterator[Session]:
        """One write transaction: commits on success (unless `commit` is False, for dry runs),
        rolls back on any exception. On the write lane's thread during a group commit, a
        savepoint of the group's transaction, released or rolled back the same way."""
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
        if self._write_lane is not None:
            self._write_lane.shutdown()
        for executor in self._executors.values():
            executor.shutdown(wait=True)
        self._executors.clear()
        self.engine.dispose()


def _lost_connection(exc: BaseException) -> bool:
    """A connection that is gone (not a timeout, not a refused statement)."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated)
    return (
        isinstance(exc, psycopg.OperationalError)
        and not isinstance(exc, psycopg.errors.QueryCanceled)
        and "timeout" not in str(exc).lower()
    )


class _WriteLane:
    """SQLite's write lane: one thread that commits in groups. When it takes a job and others are
    already waiting, it runs them together (Database.run_group), up to GROUP: one BEGIN, one
    COMMIT and one write of each page the group touched, instead of one per job. A job that
    fails rolls back its own savepoint; every job answers only once the group has committed."""

    GROUP = 32

    def __init__(self, db: Database) -> None:
        self._db = db
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mega-db-write", daemon=True)
                self._thread.start()
        self._jobs.put((job, future))
        return future

    def shutdown(self) -> None:
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
            outcomes = [_outcome(jobs[0])] if len(jobs) == 1 else self._db.run_group(jobs) if jobs else []
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


class Query:
    """A statement compiled once per dialect, run by RawConnection straight on the DBAPI cursor."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, list[str] | None, dict[str, Any]]] = {}

    def compiled(self, dialect: Dialect) -> tuple[str, list[str] | None, dict[str, Any]]:
        """-> (SQL text, the parameter names in order for a positional paramstyle, else None,
        the values of the statement's own literals)."""
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            names = list(compiled.positiontup or ()) if compiled.positional else None
            literals = {k: v for k, v in compiled.params.items() if v is not None}
            found = self._compiled[dialect.name] = (compiled.string, names, literals)
        return found


class RawConnection:
    """A DBAPI connection running Query objects: Database.raw_read()'s, or a session's
    (`of(session)`, inside its transaction)."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect
        self.is_sqlite = dialect.name == "sqlite"

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """The statements inside read one state of the database (SQLite; PostgreSQL's default
        isolation gives each statement its own snapshot, as in a session)."""
        if not self.is_sqlite:
            yield
            return
        self.execute("BEGIN")
        try:
            yield
        finally:
            self.connection.rollback()

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        cursor = self.connection.cursor()
        cursor.execute(sql, parameters)
        return cursor

    @staticmethod
    def of(session: Session) -> RawConnection:
        """The session's connection, raw (one per transaction: asking the session again costs)."""
        transaction = session.get_transaction()
        cached = session.info.get("raw")
        if transaction is not None and cached is not None and cached[0] is transaction:
            return cached[1]  # type: ignore[no-any-return]
        connection = session.connection()
        raw = RawConnection(connection.connection, connection.dialect)
        session.info["raw"] = (session.get_transaction(), raw)
        return raw

    def _bind(self, query: Query, params: dict[str, Any]) -> tuple[str, Any]:
        sql, names, literals = query.compiled(self.dialect)
        if literals:
            params = {**literals, **params}
        if names is None:
            return sql, params
        values = [params[name] for name in names]
        if self.is_sqlite:  # what SQLAlchemy's types would bind: UUIDs as hex, UTC times as text
            return sql, tuple([v if type(v) in _SQLITE_AS_IS else _sqlite_value(v) for v in values])
        return sql, tuple(values)

    def all(self, query: Query, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(self.execute(*self._bind(query, params)).fetchall())

    def run(self, query: Query, params: dict[str, Any]) -> None:
        self.execute(*self._bind(query, params))

    def run_many(self, query: Query, rows: list[dict[str, Any]]) -> None:
        """One statement per row, in one DBAPI call."""
        if rows:
            bound = [self._bind(query, row) for row in rows]
            self.connection.cursor().executemany(bound[0][0], [parameters for _, parameters in bound])

    def run_values(self, statement: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """SQLite: `statement` with its `{values}` replaced by one `(?, …)` group per row (the
        row's `columns` in order, bound as run() binds them), run once per chunk of rows rather
        than once per row. FTS5 flushes its pending index data when each statement ends, so one
        statement per row cost ~50 µs a row more on `leads` (its search index, migration 0005)."""
        per_chunk = max(1, _SQLITE_MAX_VARIABLES // len(columns))
        group = "(" + ", ".join(["?"] * len(columns)) + ")"
        for start in range(0, len(rows), per_chunk):
            chunk = rows[start : start + per_chunk]
            params = [
                v if type(v) in _SQLITE_AS_IS else _sqlite_value(v)
                for row in chunk
                for v in (row[name] for name in columns)
            ]
            self.execute(statement.format(values=", ".join([group] * len(chunk))), params)

    def first(self, query: Query, params: dict[str, Any]) -> tuple[Any, ...] | None:
        rows = self.all(query, params)
        return rows[0] if rows else None


_SQLITE_AS_IS = frozenset({str, int, float, type(None)})  # what sqlite3 binds unchanged
_SQLITE_MAX_VARIABLES = 32766  # SQLite's default bound on ? per statement since 3.32


def _sqlite_value(value: Any) -> Any:
    kind = type(value)
    if kind is uuid.UUID:
        return value.hex
    if isinstance(value, datetime):
        return _sqlite_time(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


@functools.lru_cache(maxsize=1024)  # a write stores one `now` in many rows and columns
def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def per_transaction(session: Session, name: str) -> dict[Any, Any] | None:
    """A dict named `name` that lives as long as the session's current transaction (None outside
    one): for what each write of a group commit would otherwise read again."""
    transaction = session.get_transaction()
    if transaction is None:
        return None
    memo = session.info.get(name)
    if memo is None or memo[0] is not transaction:
        memo = session.info[name] = (transaction, {})
    return memo[1]  # type: ignore[no-any-return]


# Raw column values as Python values (SQLite hands back text; psycopg already converts).


def as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    """A UUID column's raw value (SQLite: 32 hex digits) as a UUID."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(hex=value)


# For columns whose values recur across rows (a customer's, a stage's, an owner's id).
as_shared_uuid = functools.lru_cache(maxsize=4096)(as_uuid)


def as_datetime(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):  # SQLite: "YYYY-MM-DD HH:MM:SS.ffffff", UTC (one C call, not two)
        return datetime.fromisoformat(value + "+00:00")
    return value


def as_json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


WAL_AUTOCHECKPOINT_PAGES = 10_000
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def _create_owner_only(url: str) -> None:
    """Create the SQLite file readable by its owner only (it holds contact details and keys);
    SQLite gives its -wal and -shm files the database file's mode."""
    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):  # no directory: SQLite says so
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_engine(url: str, *, busy_timeout: float) -> Engine:
    _create_owner_only(url)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout},
        pool_size=20,
        # The connection used last is the one used next: each keeps its own page cache, and
        # rotating through them (the pool's default) met cold caches at a million leads.
        pool_use_lifo=True,
        max_overflow=20,
        future=True,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred-only).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        # 32 MB of page cache per connection (SQLite's default is 2 MB): a write touches a dozen
        # B-trees, and at a million leads their upper levels no longer fitted. Filled only as
        # pages are read; a server keeps a handful of connections busy.
        cur.execute("PRAGMA cache_size=-32000")
        # A serving process checkpoints in the background (Database.checkpoints); this is the
        # backstop for any other writer: a checkpoint inside a commit at most every ~40 MB.
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        # When a checkpoint lets the log start over, the file is cut back to this size: it is
        # otherwise never smaller than its largest burst, space a full disk needs back.
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        # Temporary storage in memory, not in temp files. Every UPDATE of a lead runs its trigger
        # (migration 0003), and each such statement needs some: a 500-lead merge's UPDATEs took
        # 15 ms with it on disk, 8.5 ms in memory. The largest scratch data a request makes is
        # the sort of a page no index serves, bounded by limit + offset rows.
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
