"""A write transaction's statements on libpq's pipeline mode, driven directly (raw.pipelined).

psycopg's own Pipeline keeps a queue of commands, a queue of results, a cursor per statement and
generators around each exchange: in a createLead it cost about 170 µs of CPU more than the same
statements sent here, a tenth of the request. Here a statement is sent as it is queued
(PQsendQueryParams), its parameters adapted and its rows loaded by psycopg's own Transformer
(the connection's adapters), and the answers are read in order when one is needed.

Statements are prepared as psycopg prepares its own, through the connection's record of them
(its PrepareManager: after `prepare_threshold` uses, never behind a transaction pooler, see
db.engines), so that psycopg's DEALLOCATE ALL after a ROLLBACK, or its eviction of the least
used, keeps that record and the server in step. Unprepared, the server parsed and planned
createLead's statements on every request: four to six times the database CPU.

While a pipeline is open psycopg must not touch the connection: `suspend()` reads every answer
and leaves pipeline mode (a statement run through SQLAlchemy, or raw reads that want a cursor),
and the next `send()` enters it again. The transaction is the caller's BEGIN … COMMIT, sent as
statements, so the Sync that a suspension sends does not end it.
"""

from __future__ import annotations

import select
from collections import deque
from typing import Any, NoReturn

from psycopg import errors, pq
from psycopg._preparing import Prepare
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer

from mega_crm.db.engines import lost_connection

_FATAL = pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED


class Slot:
    """One statement's answer in a Pipeline: its rows, read on first use (`rows()`)."""

    __slots__ = ("_pipeline", "_result", "_rows", "prepared")

    def __init__(self, pipeline: Pipeline, prepared: tuple[Any, Prepare, bytes] | None = None) -> None:
        self._pipeline: Pipeline | None = pipeline
        self._result: Any = None
        self._rows: list[tuple[Any, ...]] | None = None
        self.prepared = prepared  # (key, Prepare, name) for the PrepareManager to validate

    def rows(self) -> list[tuple[Any, ...]]:
        """-> the statement's rows as tuples of Python values ([] for a statement without rows).
        Raises the pipeline's first error (psycopg.Error) if this statement, or one before it
        in the transaction, failed."""
        if self._rows is None:
            pipeline = self._pipeline
            assert pipeline is not None
            pipeline.read_until(self)
            self._rows = pipeline_rows(pipeline, self._result)  # raises again if asked again
            self._pipeline = None
        return self._rows


def pipeline_rows(pipeline: Pipeline, result: Any) -> list[tuple[Any, ...]]:
    """-> a statement's PGresult as rows (Slot.rows); its error raised."""
    if result is None or result.status in (_FATAL, _ABORTED):
        raise pipeline.failure or errors.PipelineAborted("the pipeline was aborted")
    if not result.ntuples:
        return []
    loader = pipeline.loader
    loader.set_pgresult(result)
    return list(loader.load_rows(0, result.ntuples, tuple))


class Pipeline:
    """A psycopg connection's libpq in pipeline mode: statements sent at once (`send`), their
    answers read in order as they are asked for (Slot.rows), `finish()` sends the last statement
    and a Sync and reads everything. `failure`: the first statement error met (a psycopg.Error),
    raised by every read after it, and by finish()."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver  # a psycopg.Connection, not used by psycopg while the pipeline is on
        self.pgconn = driver.pgconn
        self._prepared = driver._prepared  # psycopg's PrepareManager of the connection
        self._dumper = Transformer(driver)
        self.loader = Transformer(driver)  # the rows of one answer at a time (pipeline_rows)
        self._poll: Any = None  # a select.poll on the connection's socket, made on first wait
        self._expected: deque[Slot | None] = deque()  # a Slot per statement; None: a Sync
        self._on = False
        self.failure: BaseException | None = None

    def send(self, sql: str, params: Any) -> Slot:
        """Queue `sql` with `params` (psycopg's placeholders and values) -> its Slot."""
        self._check()
        self._enter()
        query = PostgresQuery(self._dumper)
        query.convert(sql, params)
        pgconn = self.pgconn
        prepare, name = self._prepared.get(query)
        if prepare is Prepare.NO:
            pgconn.send_query_params(
                query.query,
                query.params,
                param_formats=query.formats,
                param_types=query.types,
                result_format=0,
            )
        else:
            if prepare is Prepare.SHOULD:
                pgconn.send_prepare(name, query.query, param_types=query.types)
                self._expected.append(Slot(self))  # the Parse's answer
            pgconn.send_query_prepared(name, query.params, param_formats=query.formats, result_format=0)
        key = self._prepared.maybe_add_to_cache(query, prepare, name)
        slot = Slot(self, None if key is None else (key, prepare, name))
        self._expected.append(slot)
        return slot

    def _enter(self) -> None:
        if not self._on:
            if self._prepared._to_flush:  # statements psycopg evicted, deallocated as it would
                self.driver.wait(self._prepared.maintain_gen(self.driver))
            self.pgconn.enter_pipeline_mode()
            self._on = True

    def read_until(self, slot: Slot) -> None:
        """Read the answers up to `slot`'s (asking the server to send what it has: a flush
        request, which leaves the pipeline open)."""
        if slot in self._expected:
            self._check()
            self.pgconn.send_flush_request()
            self._read(slot)

    def suspend(self) -> None:
        """Read every answer and leave pipeline mode, the transaction still open (for a
        statement psycopg runs itself). Raises `failure` if a statement failed."""
        if self._on:
            self._check()
            self._sync()
            self.pgconn.exit_pipeline_mode()
            self._on = False
        if self.failure is not None:
            raise self.failure

    def finish(self, last: bytes) -> None:
        """Send `last` (COMMIT or ROLLBACK), read every answer, leave pipeline mode. Raises the
        first statement error met (the transaction is then still open, aborted)."""
        self._check()
        self._enter()
        self.pgconn.send_query_params(last, None)
        self._expected.append(Slot(self))
        self.suspend()

    def abandon(self) -> None:
        """After an error: read and drop every answer and leave pipeline mode, so that psycopg
        can roll the transaction back (a lost connection: nothing to read, nothing raised)."""
        if not self._on or self.driver.broken or self.driver.closed:
            return
        try:
            self._sync()
            self.pgconn.exit_pipeline_mode()
            self._on = False
        except Exception:  # noqa: BLE001 - the error that brought us here is the one raised
            self._close()  # never back into the pool in pipeline mode

    def _wait(self, event: int) -> None:
        """Until the connection's socket is ready for `event` (select.POLLIN, POLLOUT)."""
        if self._poll is None:
            self._poll = select.poll()
        self._poll.register(self.pgconn.socket, event)  # registering again modifies
        self._poll.poll()

    def _check(self) -> None:
        """Raise the error that closed the connection, if one did."""
        if self.driver.closed:
            raise self.failure or errors.OperationalError("the connection is closed")

    def _close(self) -> None:
        """Close the connection (its pool then drops it): lost, or out of step with libpq."""
        self._on = False
        self.driver.close()

    def _lost(self, error: BaseException) -> NoReturn:
        self.failure = self.failure or error
        self._close()
        raise error

    def _sync(self) -> None:
        self.pgconn.pipeline_sync()
        self._expected.append(None)
        self._read(None)

    def _read(self, until: Slot | None) -> None:
        """Read answers in order until `until`'s (None: the last Sync's)."""
        pgconn = self.pgconn
        while pgconn.flush():  # a nonblocking connection with more to send than the socket took
            self._wait(select.POLLOUT)
        ended = False
        while True:
            while pgconn.is_busy():
                self._wait(select.POLLIN)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:  # the end of one statement's answer; twice running: nothing more
                if ended or pgconn.status == pq.ConnStatus.BAD:  # will come (a lost connection)
                    self._lost(errors.OperationalError(f"the connection was lost: {_message(pgconn)}"))
                ended = True
                continue
            ended = False
            if not self._expected or (self._expected[0] is None) != (result.status == _SYNC):
                # An answer nothing asked for: PgBouncer keeps the client's connection when the
                # server's dies and sends an error of its own ("server conn crashed?").
                self._lost(errors.OperationalError(f"the connection was lost: {_message(pgconn)}"))
            item = self._expected.popleft()
            if item is not None:
                item._result = result
                if item.prepared is not None:
                    self._prepared.validate(*item.prepared, [result])
                if result.status == _FATAL:
                    error = errors.error_from_result(result, encoding=self.driver.info.encoding)
                    if lost_connection(error):  # the server's end of it (57P01, class 08…)
                        self._lost(error)
                    self.failure = self.failure or error
            if (item is until) if until is not None else not self._expected:
                return


def _message(pgconn: Any) -> str:
    return bytes(pgconn.error_message or b"").decode("utf-8", "replace").strip() or "no answer"
