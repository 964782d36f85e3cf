"""Pipelined write transactions (Database.write_session(pipelined=True), mega_crm.db.raw.pipelined):
raw statements are queued and answered together, yet the transaction means what a plain one
means: a failing queued statement rolls everything back, SQLAlchemy statements still answer at
once, and the connection goes back to the pool in psycopg's own transaction handling. On SQLite
the flag changes nothing."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import bindparam, select, text

from mega_crm.customers.models import Customer
from mega_crm.db import Database, Query, RawConnection, utcnow

_NEW_CUSTOMER = Query(
    text(
        "INSERT INTO customers (id, name, created_at, leads_version, leads_clock_us) "
        "VALUES (:id, :name, :created_at, 0, 0)"
    )
)
_NAME = Query(select(Customer.name).where(Customer.id == bindparam("id")))


def names(db: Database, *ids: uuid.UUID) -> list[str]:
    with db.read_session() as session:
        return list(session.scalars(select(Customer.name).where(Customer.id.in_(ids))))


def test_queued_writes_commit_and_reads_see_them(db: Database) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    with db.write_session(pipelined=True) as session:
        raw = RawConnection.of(session)
        raw.run(_NEW_CUSTOMER, {"id": first, "name": "pipelined one", "created_at": utcnow()})
        seen = raw.send(_NAME, {"id": first})
        raw.run(_NEW_CUSTOMER, {"id": second, "name": "pipelined two", "created_at": utcnow()})
        assert seen.first() == ("pipelined one",)
        # a statement through SQLAlchemy is answered at once, rows and all
        assert session.execute(text("SELECT 41 + 1")).scalar_one() == 42
    assert sorted(names(db, first, second)) == ["pipelined one", "pipelined two"]


def test_a_failing_queued_statement_rolls_the_transaction_back(db: Database) -> None:
    first = uuid.uuid4()

    def insert_twice() -> None:
        with db.write_session(pipelined=True) as session:
            raw = RawConnection.of(session)
            raw.run(_NEW_CUSTOMER, {"id": first, "name": "rolled back", "created_at": utcnow()})
            raw.run(_NEW_CUSTOMER, {"id": first, "name": "the same id again", "created_at": utcnow()})

    with pytest.raises(Exception) as raised:  # noqa: PT011 - psycopg's or sqlite3's IntegrityError
        insert_twice()
    assert "unique" in str(raised.value).lower() or "duplicate" in str(raised.value).lower()
    assert names(db, first) == []
    # the pooled connection is usable, in a plain transaction, afterwards
    again = uuid.uuid4()
    with db.write_session() as session:
        RawConnection.of(session).run(_NEW_CUSTOMER, {"id": again, "name": "after", "created_at": utcnow()})
    assert names(db, again) == ["after"]


def test_an_error_in_the_block_rolls_the_queued_writes_back(db: Database) -> None:
    first = uuid.uuid4()

    def fail_after_writing() -> None:
        with db.write_session(pipelined=True) as session:
            row = {"id": first, "name": "never", "created_at": utcnow()}
            RawConnection.of(session).run(_NEW_CUSTOMER, row)
            raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        fail_after_writing()
    assert names(db, first) == []


@pytest.mark.parametrize(
    ("sqlstate", "lost"),
    [
        (None, True),  # the client's own: the socket closed
        ("08006", True),  # connection_failure
        ("57P01", True),  # admin_shutdown (pg_terminate_backend, a restart)
        ("40P01", False),  # deadlock_detected: a statement refused, the connection fine
        ("40001", False),  # serialization_failure
        ("53300", False),  # too_many_connections: refused, nothing to drop
        ("57014", False),  # query_canceled (statement_timeout)
    ],
)
def test_only_a_gone_connection_counts_as_lost(sqlstate: str | None, lost: bool) -> None:
    """A lost connection empties the pool (db.lanes); a deadlock taken for one did, and every
    request then paid a new connection (found from outside: two workers and creates)."""
    import psycopg

    from mega_crm.db.engines import lost_connection

    error = psycopg.OperationalError("server said no")
    error.sqlstate = sqlstate
    assert lost_connection(error) is lost


# PostgreSQL's pipeline (mega_crm.db.pipeline): libpq's pipeline mode driven directly, its
# statements prepared through psycopg's own record of them.


def _pg(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("the pipeline is PostgreSQL's")


_PREPARED = text("SELECT count(*) FROM pg_prepared_statements")
_DUPLICATE = Query(
    text(
        "INSERT INTO customers (id, name, created_at, leads_version, leads_clock_us) "
        "VALUES (:id, 'dup', now(), 0, 0)"
    )
)


def _taken(db: Database) -> uuid.UUID:
    """A customer id already in the table."""
    taken = uuid.uuid4()
    with db.write_session() as session:
        RawConnection.of(session).run(_NEW_CUSTOMER, {"id": taken, "name": "taken", "created_at": utcnow()})
    return taken


def test_the_first_error_is_what_every_later_read_raises(db: Database) -> None:
    """A statement queued after a failing one is never run: reading it raises the failure
    itself (a unique violation here), not psycopg's PipelineAborted, and so does the commit."""
    _pg(db)
    import psycopg

    taken, fresh = _taken(db), uuid.uuid4()

    def duplicate_then_read() -> None:
        with db.write_session(pipelined=True) as session:
            raw = RawConnection.of(session)
            raw.run(_DUPLICATE, {"id": taken})
            after = raw.send(_NAME, {"id": taken})
            raw.run(_NEW_CUSTOMER, {"id": fresh, "name": "never", "created_at": utcnow()})
            after.all()

    with pytest.raises(psycopg.errors.UniqueViolation):
        duplicate_then_read()
    assert names(db, fresh) == []


def test_a_sqlalchemy_statement_after_a_failed_one_raises_that_failure(db: Database) -> None:
    _pg(db)
    taken = _taken(db)

    def duplicate_then_sqlalchemy() -> None:
        with db.write_session(pipelined=True) as session:
            RawConnection.of(session).run(_DUPLICATE, {"id": taken})
            session.execute(text("SELECT 1"))

    with pytest.raises(Exception, match="duplicate key") as raised:  # noqa: PT011
        duplicate_then_sqlalchemy()
    assert "UniqueViolation" in repr(raised.value)


def test_statements_are_prepared_and_survive_psycopgs_deallocate_all(db: Database) -> None:
    """Past psycopg's threshold the pipeline's statements are prepared (on the connection,
    through psycopg's record); a failed transaction's ROLLBACK makes psycopg DEALLOCATE ALL and
    forget them, and the next transactions prepare them again instead of meeting "prepared
    statement … does not exist"."""
    _pg(db)
    single = Database(db.url, pool_size=1, threads=1)  # one connection: every transaction on it
    try:

        def write(*, fail: bool = False) -> int:
            with single.write_session(pipelined=True) as session:
                raw = RawConnection.of(session)
                raw.run(_NEW_CUSTOMER, {"id": uuid.uuid4(), "name": "prepared", "created_at": utcnow()})
                seen = raw.send(_NAME, {"id": uuid.uuid4()})
                if fail:
                    raw.run(_NEW_CUSTOMER, {"id": None, "name": "no id", "created_at": utcnow()})
                assert seen.all() == []
                return int(session.execute(_PREPARED).scalar_one())

        counts = [write() for _ in range(8)]
        assert counts[0] == 0
        assert counts[-1] >= 2  # BEGIN, the INSERT and the SELECT, in time
        with pytest.raises(Exception, match="null value"):  # noqa: PT011
            write(fail=True)
        after = [write() for _ in range(8)]
        assert after[-1] >= 2
    finally:
        single.dispose()


def test_behind_a_transaction_pooler_nothing_is_prepared(db: Database) -> None:
    """pool_mode=transaction (PgBouncer): psycopg prepares nothing, nor does the pipeline."""
    _pg(db)
    pooled = Database(
        db.url + ("&" if "?" in db.url else "?") + "pool_mode=transaction", pool_size=1, threads=1
    )
    try:
        for _ in range(8):
            with pooled.write_session(pipelined=True) as session:
                raw = RawConnection.of(session)
                raw.run(_NEW_CUSTOMER, {"id": uuid.uuid4(), "name": "unprepared", "created_at": utcnow()})
                assert raw.send(_NAME, {"id": uuid.uuid4()}).all() == []
                assert session.execute(_PREPARED).scalar_one() == 0
    finally:
        pooled.dispose()


def test_a_failed_transaction_logs_nothing(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """psycopg's own Pipeline warned "error ignored terminating <Pipeline>" beside the error it
    raised (about one createLead retry in twenty); the error is raised here, and only raised."""
    _pg(db)
    caplog.set_level(logging.DEBUG, logger="psycopg")
    taken = _taken(db)

    def duplicate() -> None:
        with db.write_session(pipelined=True) as session:
            RawConnection.of(session).run(_DUPLICATE, {"id": taken})
            RawConnection.of(session).send(_NAME, {"id": taken}).all()

    for _ in range(3):
        with pytest.raises(Exception, match="duplicate key"):  # noqa: PT011
            duplicate()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


def test_a_connection_lost_mid_pipeline_fails_fast_and_the_next_write_works(db: Database) -> None:
    _pg(db)
    lost_mid_pipeline(db.url, db.url)


def lost_mid_pipeline(url: str, upstream: str) -> None:
    """The backend terminated (through `upstream`) while a pipelined write through `url` awaits
    its answers: the read raises an error taken for a lost connection (db.engines.
    lost_connection: the pool is then dropped) at once, never a wait on a socket that will
    not answer, the connection is closed (never back into the pool in pipeline mode: behind
    PgBouncer the client's connection outlives the server's, and PgBouncer sends an error of
    its own that no statement asked for), and the next write gets a working one."""
    import threading
    import time

    from sqlalchemy import create_engine

    from mega_crm.db.engines import lost_connection

    single = Database(url, pool_size=1, threads=1)
    killer = create_engine(upstream)
    drivers: list[Any] = []
    try:

        def terminated_mid_read() -> None:
            with single.write_session(pipelined=True) as session:
                pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                drivers.append(session.connection().connection.driver_connection)
                raw = RawConnection.of(session)
                slow = raw.send(Query(text("SELECT pg_sleep(2), 1")), {})
                raw.run(_NEW_CUSTOMER, {"id": uuid.uuid4(), "name": "never", "created_at": utcnow()})

                def kill() -> None:
                    with killer.connect() as conn:
                        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

                threading.Timer(0.2, kill).start()
                slow.all()

        started = time.monotonic()
        with pytest.raises(Exception) as raised:  # noqa: PT011 - psycopg's, or SQLAlchemy's wrapping it
            terminated_mid_read()
        assert time.monotonic() - started < 1.9  # not the statement's 2 s, nor a hang
        assert lost_connection(raised.value)
        assert drivers[0].closed
        single.engine.dispose(close=False)  # what Database.run does on a lost connection
        again = uuid.uuid4()
        with single.write_session(pipelined=True) as session:
            RawConnection.of(session).run(
                _NEW_CUSTOMER, {"id": again, "name": "after", "created_at": utcnow()}
            )
        with single.read_session() as session:
            assert session.scalar(select(Customer.name).where(Customer.id == again)) == "after"
    finally:
        killer.dispose()
        single.dispose()


def test_a_failed_answer_raises_every_time_it_is_read(db: Database) -> None:
    """A Pending whose statement failed raises again when read again: never [] the second time."""
    _pg(db)
    import psycopg

    taken = _taken(db)
    reads: list[str] = []

    def read_twice() -> None:
        with db.write_session(pipelined=True) as session:
            failed = RawConnection.of(session).send(_DUPLICATE, {"id": taken})
            for _ in range(2):
                try:
                    failed.all()
                except psycopg.errors.UniqueViolation:
                    reads.append("raised")
                else:
                    reads.append("answered")

    with pytest.raises(psycopg.errors.UniqueViolation):  # and at COMMIT
        read_twice()
    assert reads == ["raised", "raised"]
