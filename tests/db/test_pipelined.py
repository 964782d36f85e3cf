"""Pipelined write transactions (Database.write_session(pipelined=True), mega_crm.db.raw.pipelined):
raw statements are queued and answered together, yet the transaction means what a plain one
means: a failing queued statement rolls everything back, SQLAlchemy statements still answer at
once, and the connection goes back to the pool in psycopg's own transaction handling. On SQLite
the flag changes nothing."""

from __future__ import annotations

import uuid

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
