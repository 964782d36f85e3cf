"""Raw DBAPI access for the hot paths: statements compiled once per dialect (Query), run
straight on the driver's cursor (RawConnection), and their column values converted back to
Python values (as_uuid, as_datetime, as_json). SQLAlchemy's per-statement bookkeeping cost as
much as the hot queries themselves, and every statement hands the GIL over twice."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg.adapt import Loader
from sqlalchemy import Dialect, Engine, event
from sqlalchemy.orm import Session

from mega_crm.db.memos import Memos, memos_of
from mega_crm.db.pipeline import Pipeline, Slot


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
    """A DBAPI connection running Query objects: raw_read()'s, or a session's (`of(session)`,
    inside its transaction, where its writes make the transaction's memos stale: see memos.py)."""

    def __init__(self, connection: Any, dialect: Dialect, memos: Memos | None = None) -> None:
        self.connection = connection
        self.dialect = dialect
        self.is_sqlite = dialect.name == "sqlite"
        self.memos = memos

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        """-> the DBAPI cursor that ran `sql` with `parameters` (in the driver's paramstyle).
        In a pipelined transaction, every statement queued before it is answered first."""
        if self.memos is not None:
            self.memos.saw(sql)
        pipeline = self._pipeline()
        if pipeline is not None:
            pipeline.suspend()
        cursor = self.connection.cursor()
        cursor.execute(sql, parameters)
        return cursor

    def all_as_bytes(self, query: Query, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """all(), its text columns read as their UTF-8 bytes, not decoded: for a page of stored
        JSON documents that go out as they are (decoding and encoding 100 documents again cost
        100-250 µs a page once any of them held a character beyond ASCII)."""
        sql, parameters = self._bind(query, params)
        if self.memos is not None:
            self.memos.saw(sql)
        if self.is_sqlite:  # sqlite3 applies the connection's text_factory as rows are fetched
            driver = self.connection.driver_connection
            driver.text_factory = bytes
            try:
                cursor = driver.cursor()
                cursor.execute(sql, parameters)
                return list(cursor.fetchall())
            finally:
                driver.text_factory = str
        cursor = self.connection.cursor()
        if cursor.connection.info.encoding != "utf-8":  # a client_encoding other than UTF-8
            cursor.execute(sql, parameters)
            return [tuple(v.encode() if type(v) is str else v for v in row) for row in cursor.fetchall()]
        cursor.adapters.register_loader("text", _TextAsBytes)  # this cursor's only
        cursor.execute(sql, parameters)
        return list(cursor.fetchall())

    @staticmethod
    def of(session: Session) -> RawConnection:
        """The session's connection, raw (one per transaction: asking the session again costs)."""
        transaction = session.get_transaction()
        cached = session.info.get("raw")
        if transaction is not None and cached is not None and cached[0] is transaction:
            raw: RawConnection = cached[1]
            return raw
        connection = session.connection()
        raw = RawConnection(connection.connection, connection.dialect, memos_of(session, connection))
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
        """-> every row `query` answers with `params` (by name), as tuples of raw column values."""
        return self.send(query, params).all()

    def run(self, query: Query, params: dict[str, Any]) -> None:
        """Run `query` (a write) with `params`; no rows back (in a pipelined transaction it is
        only queued: its error, if any, is raised at the next answer read, or at COMMIT)."""
        self.send(query, params)

    def run_many(self, query: Query, rows: list[dict[str, Any]]) -> None:
        """One statement per row, in one DBAPI call (pipelined: queued one after another)."""
        if rows:
            bound = [self._bind(query, row) for row in rows]
            if self.memos is not None:
                self.memos.saw(bound[0][0])
            pipeline = self._pipeline()
            if pipeline is not None:
                for sql, parameters in bound:
                    pipeline.send(sql, parameters)
                return
            self.connection.cursor().executemany(bound[0][0], [parameters for _, parameters in bound])

    def run_values(self, statement: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """SQLite: `statement` with its `{values}` replaced by one `(?, …)` group per row (the
        row's `columns` in order, bound as run() binds them), run once per chunk of rows rather
        than once per row. FTS5 flushes its pending index data when each statement ends, so one
        statement per row cost ~50 µs a row more on `leads` (its search index, migration 0005)."""
        if not rows:
            return
        if self.memos is not None:
            self.memos.saw(statement)  # the template: the expanded text differs with each size
        per_chunk = max(1, _SQLITE_MAX_VARIABLES // len(columns))
        group = "(" + ", ".join(["?"] * len(columns)) + ")"
        cursor = self.connection.cursor()
        for start in range(0, len(rows), per_chunk):
            chunk = rows[start : start + per_chunk]
            params = [
                v if type(v) in _SQLITE_AS_IS else _sqlite_value(v)
                for row in chunk
                for v in (row[name] for name in columns)
            ]
            cursor.execute(statement.format(values=", ".join([group] * len(chunk))), params)

    def first(self, query: Query, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """-> the first row `query` answers, or None."""
        rows = self.all(query, params)
        return rows[0] if rows else None

    def send(self, query: Query, params: dict[str, Any]) -> Pending:
        """Run `query` with `params`; its rows are read from the returned Pending. In a pipelined
        transaction (`pipelined`) the statement is only queued: statements sent one after another,
        then read, share one round trip. Elsewhere it has run and been read when this returns."""
        sql, parameters = self._bind(query, params)
        pipeline = self._pipeline()
        if pipeline is None:
            cursor = self.execute(sql, parameters)
            return Pending(rows=list(cursor.fetchall()) if cursor.description else [])
        if self.memos is not None:
            self.memos.saw(sql)
        return Pending(slot=pipeline.send(sql, parameters))

    def _pipeline(self) -> Pipeline | None:
        """The connection's open pipelined transaction (PostgreSQL, `pipelined`), else None."""
        return None if self.is_sqlite else self.connection.info.get(_PIPELINE)


class Pending:
    """The rows of a statement sent by RawConnection.send, read on first use."""

    __slots__ = ("_rows", "_slot")

    def __init__(self, *, rows: list[tuple[Any, ...]] | None = None, slot: Slot | None = None) -> None:
        self._rows = rows
        self._slot = slot

    def all(self) -> list[tuple[Any, ...]]:
        """-> every row (PostgreSQL, pipelined: waits for the answers of what was sent so far;
        raises the transaction's first statement error, a psycopg.Error)."""
        if self._rows is None:
            assert self._slot is not None
            self._rows = self._slot.rows()
            self._slot = None
        return self._rows

    def first(self) -> tuple[Any, ...] | None:
        """-> the first row, or None."""
        rows = self.all()
        return rows[0] if rows else None


class _TextAsBytes(Loader):
    """psycopg: a text value as the bytes the server sent, undecoded (see all_as_bytes)."""

    def load(self, data: Any) -> bytes:
        return bytes(data)


_PIPELINE = "mega_pipeline"  # in a pooled connection's info while its transaction is pipelined


@contextmanager
def pipelined(session: Session, *, commit: bool) -> Iterator[None]:
    """PostgreSQL: the session's transaction in libpq's pipeline mode, for the hot writes
    (mega_crm.db.pipeline: psycopg's own Pipeline cost a tenth of a createLead's CPU more).

    A raw statement (RawConnection.run / send) is queued, not waited for: the reads a write
    needs go out together and are answered in one round trip (Pending), and the writes after
    them go out with the COMMIT and the Sync that ends the pipeline, one more round trip. The
    transaction's BEGIN and COMMIT are our own queued statements; the session's commit() then
    finds no transaction open and sends nothing. Before a statement run through SQLAlchemy (or
    a raw one that wants a cursor) everything queued is answered and the pipeline suspended
    (`_answer_first`), the transaction still open. An error of a queued statement is raised
    when the answers are read, at the latest when the block ends; the transaction is then
    rolled back. On leaving, the connection is back in psycopg's own transaction handling."""
    from psycopg.pq import TransactionStatus

    connection = session.connection()
    fairy = connection.connection
    driver: Any = fairy.driver_connection  # a psycopg.Connection
    driver.autocommit = True  # the BEGIN below is ours, queued with what follows
    pipeline = Pipeline(driver)
    try:
        fairy.info[_PIPELINE] = pipeline
        pipeline.send("BEGIN", None)
        yield
        pipeline.finish(b"COMMIT" if commit else b"ROLLBACK")
    except BaseException:
        pipeline.abandon()
        if not (driver.closed or driver.broken) and driver.info.transaction_status != TransactionStatus.IDLE:
            try:
                # psycopg's own rollback(), which also resets its record of the statements it
                # prepared: after an aborted pipeline, a ROLLBACK sent as a statement left that
                # record out of step with the server ("prepared statement … does not exist"
                # in the connection's next transaction).
                driver.rollback()
            except Exception:  # a lost connection: the error that brought us here is raised
                pass
        raise
    finally:
        fairy.info.pop(_PIPELINE, None)
        if not (driver.closed or driver.broken):
            try:
                driver.autocommit = False
            except Exception:  # noqa: BLE001 - a connection in no state to go back to the pool
                driver.close()


def watch_pipelines(engine: Engine) -> None:
    """A statement run through SQLAlchemy in a pipelined transaction runs once the statements
    queued before it are answered, outside pipeline mode (psycopg runs it)."""
    if engine.dialect.name == "postgresql":
        event.listen(engine, "before_cursor_execute", _answer_first)


def _answer_first(connection: Any, *_: Any) -> None:
    pipeline = connection.connection.info.get(_PIPELINE)
    if pipeline is not None:
        pipeline.suspend()  # a Sync inside BEGIN … COMMIT: the transaction stays open


@contextmanager
def raw_read(engine: Engine) -> Iterator[RawConnection]:
    """A pooled DBAPI connection of `engine` for reads outside any session (see Database.raw_read)."""
    connection = engine.raw_connection()
    # PostgreSQL: each read its own transaction: no BEGIN and no ROLLBACK round trips, and
    # the connection holds no transaction while the request's write takes a second one.
    # Behind a transaction pooler an open read transaction held a server connection for
    # the whole request: with fewer server connections than twice the requests in flight,
    # every request waited on the others (PgBouncer's query_wait_timeout).
    driver = None if engine.dialect.name == "sqlite" else connection.driver_connection
    if driver is not None:
        driver.autocommit = True
    try:
        yield RawConnection(connection, engine.dialect)
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


# Raw column values as Python values (SQLite hands back text; psycopg already converts).


def as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    """A UUID column's raw value (SQLite: 32 hex digits) as a UUID."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(hex=value)


# For columns whose values recur across rows (a customer's, a stage's, an owner's id).
as_shared_uuid = functools.lru_cache(maxsize=4096)(as_uuid)


def as_datetime(value: datetime | str | None) -> datetime | None:
    """A time column's raw value (SQLite: "YYYY-MM-DD HH:MM:SS.ffffff", UTC) as an aware datetime."""
    if isinstance(value, str):  # one C call, not two
        return datetime.fromisoformat(value + "+00:00")
    return value


def as_json(value: Any) -> Any:
    """A JSON column's raw value (SQLite: text) as Python values."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value
