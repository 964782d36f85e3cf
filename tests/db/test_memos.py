"""Per-transaction memos (mega_crm.db.memos): an entry lives as long as its transaction, and a
write to one of its tables, by the ORM, by Core or raw, drops it (so does rolling back a savepoint
that wrote one)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import bindparam, insert, update

from mega_crm.customers.models import Customer
from mega_crm.db import Database, Memo, Query, RawConnection, memoized, memos_of
from mega_crm.db.memos import written_tables

CUSTOMERS = Memo[str, int]("test_customers", tables={"customers"})
KEYS = Memo[str, int]("test_keys", tables={"api_keys"})
_RENAME = Query(update(Customer).where(Customer.id == bindparam("id")).values(name=bindparam("name")))


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT id FROM customers", set()),
        ("INSERT INTO customers (id) VALUES (?)", {"customers"}),
        ('INSERT OR IGNORE INTO "webhooks" (id) VALUES (?)', {"webhooks"}),
        ("UPDATE webhooks SET updated_at=? WHERE id=?", {"webhooks"}),
        ("DELETE FROM stages WHERE id = %(id)s", {"stages"}),
        ("WITH x AS (SELECT 1) UPDATE public.api_keys SET revoked_at = now()", {"api_keys"}),
        (
            "INSERT INTO lead_counts (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET n = n + 1",
            {"lead_counts", "set"},
        ),
    ],
)
def test_written_tables(sql: str, tables: set[str]) -> None:
    assert written_tables(sql) == tables


def _counter() -> tuple[list[int], Callable[[], int]]:
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    return loads, load


def test_an_entry_lives_as_long_as_its_transaction(db: Database) -> None:
    _, load = _counter()
    with db.write_session(commit=False) as session:
        assert memoized(session, CUSTOMERS, "k", load) == 1  # no transaction yet: nothing kept
        assert memos_of(session) is None
        session.connection()
        assert memoized(session, CUSTOMERS, "k", load) == 2
        assert memoized(session, CUSTOMERS, "k", load) == 2
    with db.write_session(commit=False) as session:
        session.connection()
        assert memoized(session, CUSTOMERS, "k", load) == 3


def test_writes_to_its_tables_drop_a_memo_and_others_do_not(db: Database) -> None:
    _, load = _counter()
    with db.write_session(commit=False) as session:
        session.connection()
        store = memos_of(session)
        assert store is not None
        memoized(session, CUSTOMERS, "k", load)
        memoized(session, KEYS, "k", load)
        customer = Customer(name=f"memo-{uuid.uuid4().hex[:8]}")
        session.add(customer)
        session.flush()  # the ORM
        assert store.entries(CUSTOMERS) == {}
        assert store.entries(KEYS) == {"k": 2}
        memoized(session, CUSTOMERS, "k", load)
        session.execute(update(Customer).where(Customer.id == customer.id).values(name="x"))  # Core
        assert store.entries(CUSTOMERS) == {}
        memoized(session, CUSTOMERS, "k", load)
        session.connection().execute(insert(Customer).values(id=uuid.uuid4(), name="y"))  # the connection
        assert store.entries(CUSTOMERS) == {}
        memoized(session, CUSTOMERS, "k", load)
        RawConnection.of(session).run(_RENAME, {"id": customer.id, "name": "z"})  # raw
        assert store.entries(CUSTOMERS) == {}
        assert store.entries(KEYS) == {"k": 2}


def test_a_rolled_back_savepoint_that_wrote_drops_what_was_read_inside_it(db: Database) -> None:
    _, load = _counter()
    with db.write_session(commit=False) as session:
        session.connection()
        store = memos_of(session)
        assert store is not None
        savepoint = session.begin_nested()
        session.add(Customer(name=f"memo-{uuid.uuid4().hex[:8]}"))
        session.flush()
        memoized(session, CUSTOMERS, "k", load)  # would see the row the rollback takes away
        memoized(session, KEYS, "k", load)
        savepoint.rollback()
        assert store.entries(CUSTOMERS) == {}
        assert store.entries(KEYS) == {"k": 2}
