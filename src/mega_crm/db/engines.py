"""Engines per dialect: the database URL's accepted forms, PostgreSQL's connection options
(timeouts, a transaction pooler), and SQLite's file, pragmas and BEGIN mode."""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


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


def postgresql_engine(
    url: str,
    *,
    pool_size: int,
    timeout: float,
    statement_timeout: float,
    transaction_pooling: bool,
    at_once: int = 0,
) -> Engine:
    """The engine for `url` (normalized, with our pool_mode still in it). `timeout` (seconds):
    the connect timeout and the pool's checkout wait; `statement_timeout` (seconds, 0 = none):
    PostgreSQL's, for every statement (not behind a transaction pooler: see below). `at_once`:
    the connections its users may hold at the same time; the pool keeps `pool_size` and opens
    more (overflow) up to twice that, or `at_once` if more, so they never wait on each other."""
    engine_url, _ = connection_options(url)
    connect_args: dict[str, Any] = {
        # libpq counts whole seconds, at least 2; psycopg enforces it client-side, so it
        # also bounds a server that accepted the TCP connection and then went silent.
        "connect_timeout": max(2, math.ceil(timeout)),
        **driver_connect_args(transaction_pooling),
    }
    # Behind a transaction pooler, statement_timeout is the role's or the database's
    # setting (ALTER ROLE … SET statement_timeout): PgBouncer refuses `options`.
    if statement_timeout > 0 and not transaction_pooling:
        # Beside any `options` of the URL (e.g. a search_path), which this would replace.
        given = make_url(url).query.get("options")
        given = given if isinstance(given, str) else " ".join(given or ())
        setting = f"-c statement_timeout={int(statement_timeout * 1000)}"
        connect_args["options"] = f"{given} {setting}".strip()
    return create_engine(
        engine_url,
        pool_size=pool_size,
        max_overflow=max(pool_size * 2, at_once - pool_size),
        # No ping per checkout (a round trip on every request): a connection found dead
        # on use is dropped with the rest of the pool, and a read is retried once on a
        # fresh one (Database.run).
        pool_pre_ping=False,
        pool_timeout=timeout,
        connect_args=connect_args,
        future=True,
    )


def lost_connection(exc: BaseException) -> bool:
    """A PostgreSQL connection that is gone (not a timeout, not a refused statement): an
    OperationalError with no SQLSTATE (the client's own: the socket closed) or one of class 08
    (connection exception) or 57P01-57P03 (the server shutting down or starting). A statement
    the server refused (a deadlock, 40P01, was taken for a lost connection and emptied the pool)
    is not one."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated)
    if not isinstance(exc, psycopg.OperationalError) or "timeout" in str(exc).lower():
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def write_conflict(exc: BaseException) -> bool:
    """A PostgreSQL statement refused with SQLSTATE 40001 (serialization_failure): what a write
    that checks its reads under a lock raises when they changed (migration 0011's
    mega_crm_write_conflict); the transaction is rolled back and may be run again."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        exc = exc.orig or exc
    return getattr(exc, "sqlstate", None) == "40001"


WAL_AUTOCHECKPOINT_PAGES = 10_000
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def _create_owner_only(url: str) -> None:
    """Create the SQLite file readable by its owner only (it holds contact details and keys);
    SQLite gives its -wal and -shm files the database file's mode."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):  # no directory: SQLite says so
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def sqlite_engine(url: str, *, busy_timeout: float) -> Engine:
    """The engine for a SQLite `url`, its file created owner-only. `busy_timeout` (seconds): how
    long a statement waits on a lock another process holds. Connections begin DEFERRED, or as
    the execution option `sqlite_begin` says (the write sessions': IMMEDIATE)."""
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
