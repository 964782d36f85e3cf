"""Per-transaction caches ("memos"), for what each write of a group commit would otherwise read
again (a customer's pipeline, its webhook subscriptions, an API key).

Each cache is declared once as a typed `Memo` key naming the tables it is read from; its entries
live as long as the session's transaction. A write to one of those tables in the transaction
(an INSERT, UPDATE or DELETE through the session, its connection or RawConnection.of(session))
drops the cache, so what is read next sees the write; a rolled-back savepoint drops every cache
on a table written so far in the transaction (what was read inside it may be gone).

    SUBSCRIPTIONS = Memo[UUID, list[Row]]("webhook_subscriptions", tables={"webhooks"})
    rows = memoized(session, SUBSCRIPTIONS, customer_id, lambda: read(session, customer_id))

Writes the database makes itself (ON DELETE CASCADE, triggers) are not seen: a memo's tables
must name the tables such a write lands in too. Today none does: the triggers write
lead_counts, and the cascades run from the operator CLI, outside any request's transaction.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

K = TypeVar("K")
V = TypeVar("V")

_KEY = "mega_memos"  # in session.info and in the transaction's connection's info


class Memo(Generic[K, V]):
    """The key of one per-transaction cache: `name` (for reading), and the `tables` (names as in
    SQL) whose writes make its entries stale. Entries map K -> V; declare each memo once, at
    module level: a memo is its own identity."""

    __slots__ = ("name", "tables")

    def __init__(self, name: str, *, tables: Iterable[str]) -> None:
        self.name = name
        self.tables = frozenset(tables)

    def __repr__(self) -> str:
        return f"Memo({self.name!r}, tables={sorted(self.tables)})"


class Memos:
    """The memos of one transaction (`memos_of(session)`), and the tables it has written."""

    __slots__ = ("_entries", "_registry", "transaction", "written")

    def __init__(self, transaction: SessionTransaction) -> None:
        self.transaction = transaction
        self.written: set[str] = set()
        self._entries: dict[Memo[Any, Any], dict[Any, Any]] = {}
        self._registry: dict[Any, Any] | None = None  # the connection's info that names this

    def entries(self, memo: Memo[K, V]) -> dict[K, V]:
        """The entries of `memo` (empty at first and after a write to its tables), to read and fill."""
        found = self._entries.get(memo)
        if found is None:
            found = self._entries[memo] = {}
        return found

    def get_or_load(self, memo: Memo[K, V], key: K, load: Callable[[], V]) -> V:
        """`memo`'s entry for `key`, from `load()` the first time."""
        entries = self.entries(memo)
        try:
            return entries[key]
        except KeyError:
            value = entries[key] = load()
            return value

    def saw(self, sql: str) -> None:
        """Note a statement run in the transaction: a write drops the memos of the tables it writes."""
        if sql.startswith("SELECT"):  # the common case, decided without a lookup
            return
        tables = written_tables(sql)
        if tables:
            self.wrote(tables)

    def wrote(self, tables: frozenset[str]) -> None:
        """Drop the memos read from `tables`, which the transaction has just written."""
        self.written |= tables
        if self._entries:
            for memo in [m for m in self._entries if not m.tables.isdisjoint(tables)]:
                del self._entries[memo]

    def rolled_back(self) -> None:
        """A savepoint was rolled back: drop the memos of every table written so far."""
        if self.written and self._entries:
            self.wrote(frozenset(self.written))


def memos_of(session: Session, connection: Connection | None = None) -> Memos | None:
    """The memos of `session`'s current transaction; None outside one. `connection`: the
    session's connection, when the caller already has it (asking the session again costs)."""
    transaction = session.get_transaction()
    if transaction is None:
        return None
    store: Memos | None = session.info.get(_KEY)
    if store is None or store.transaction is not transaction:
        store = session.info[_KEY] = Memos(transaction)
        # Where the engine's statement hook finds it (see watch_writes).
        registry = (connection if connection is not None else session.connection()).info
        registry[_KEY] = store
        store._registry = registry
    return store


def memoized(session: Session, memo: Memo[K, V], key: K, load: Callable[[], V]) -> V:
    """`memo`'s entry for `key` in `session`'s transaction, from `load()` the first time;
    outside a transaction, `load()` every time."""
    store = memos_of(session)
    return load() if store is None else store.get_or_load(memo, key, load)


# INSERT [OR …] INTO t, UPDATE [OR …] t, DELETE FROM t; a name may be quoted. It may also match
# more than a target (the SET of an upsert's DO UPDATE): a memo dropped too often costs a read,
# one kept too long a wrong answer.
_WRITE = re.compile(
    r'\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM)\s+(?:\w+\.)?"?(\w+)',
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1024)  # statements are few; a batch's may differ in length only
def written_tables(sql: str) -> frozenset[str]:
    """-> the names (lowercase) of the tables `sql` may write; empty for a read."""
    return frozenset(name.lower() for name in _WRITE.findall(sql))


def watch_writes(engine: Engine, *factories: sessionmaker[Session]) -> None:
    """Let the memos of the sessions `factories` make see the writes their transactions run on
    `engine` (RawConnection.of(session) reports its own), and end with them."""
    event.listen(engine, "before_cursor_execute", _on_statement)
    for factory in factories:
        event.listen(factory, "after_soft_rollback", _on_rollback)
        event.listen(factory, "after_transaction_end", _on_end)


def _on_statement(
    conn: Connection, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
) -> None:
    if statement.startswith("SELECT"):
        return
    store: Memos | None = conn.info.get(_KEY)
    if store is not None:
        store.saw(statement)


def _on_rollback(session: Session, previous: SessionTransaction) -> None:
    if previous.nested:
        store: Memos | None = session.info.get(_KEY)
        if store is not None:
            store.rolled_back()


def _on_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        store: Memos | None = session.info.pop(_KEY, None)
        registry = store._registry if store is not None else None
        if registry is not None and registry.get(_KEY) is store:
            del registry[_KEY]
