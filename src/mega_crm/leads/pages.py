"""listLeads' reads: a page of stored documents (with the total when the counts give it) in one
statement, and the count of a filter the counts cannot give."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    tuple_,
    union_all,
)

from mega_crm.auth.access import KeyCheck, key_state_column
from mega_crm.customers.models import Customer
from mega_crm.db import Query, RawConnection
from mega_crm.leads.counts import countable, counted_total
from mega_crm.leads.cursor import CursorPosition
from mega_crm.leads.documents import sql_document, sql_document_with_fields
from mega_crm.leads.filters import (
    FILTER_NAMES,
    GRAMS,
    LEADS,
    LeadFilters,
    filter_clause,
    filter_params,
    filter_shape,
    only_searched,
    search_terms,
    searched,
)
from mega_crm.leads.search import MORE_GRAMS

# Statements are built once per shape (which filters are set, the sort, the cursor) and cached:
# building an SQLAlchemy expression per request cost more CPU than running it.
# The most recently used ones are kept: callers choose the shape, and there are thousands.
_STATEMENTS: OrderedDict[tuple[Any, ...], Query] = OrderedDict()
_STATEMENTS_KEPT = 512
_STATEMENTS_LOCK = threading.Lock()


def _cached(key: tuple[Any, ...], build: Any) -> Query:
    with _STATEMENTS_LOCK:
        query = _STATEMENTS.get(key)
        if query is not None:
            _STATEMENTS.move_to_end(key)
            return query
    query = Query(build())  # outside the lock: two threads may build the same one, harmlessly
    with _STATEMENTS_LOCK:
        _STATEMENTS[key] = query
        while len(_STATEMENTS) > _STATEMENTS_KEPT:
            _STATEMENTS.popitem(last=False)
    return query


def _count_of(dialect: str, shape: tuple[bool, ...]) -> Any:
    """A scalar subquery: how many of the customer's leads the filters of `shape` match, counted
    over the leads (filters the counts cannot give: see countable())."""
    return select(func.count()).select_from(LEADS).where(filter_clause(dialect, shape)).scalar_subquery()


# The customer's lead-write counter (leads.repository.begin_customer_write bumps it), read in a
# page's statement: the snapshot a cached total must match.
_VERSION = select(Customer.leads_version).where(Customer.id == bindparam("customer_id")).scalar_subquery()


@dataclass(frozen=True)
class Page:
    """Up to `limit` + 1 leads in page order (the one past the page tells that another follows):
    their `Lead` JSON texts, UTF-8, joined by SEPARATOR (b"" for none: `documents`), how many
    (`count`), the position a next page starts after (`next_after`: the sort value and id of
    the page's last lead, when a lead follows it), and `total` when the filters are countable(),
    searched, or `count` was asked (page_of_leads)."""

    documents: bytes
    count: int
    next_after: CursorPosition | None = None
    total: int | None = None
    version: int | None = None  # the customer's leads_version in the page's snapshot, if asked

    def json_items(self, count: int) -> bytes | memoryview:
        """The first `count` documents joined by commas (the items of a JSON array), cut from
        the joined text: no document is taken apart or decoded. One copy of the page's text
        (the separators replaced, same length), then cut by a memoryview, not copied: each
        copy of a 100 KB page costs 15-40 µs (pages are large enough for every allocation
        to fault its memory in afresh)."""
        documents = self.documents
        if count <= 0:
            return b""
        end = len(documents)
        if self.count > count:
            if self.count == count + 1:  # a page read one lead past its end, to find the next
                end = documents.rfind(SEPARATOR)
            else:
                documents = SEPARATOR.join(documents.split(SEPARATOR)[:count])
                end = len(documents)
        items = documents.replace(SEPARATOR, b",")
        return items if end == len(items) else memoryview(items)[:end]


# ASCII 30 (record separator) can appear in no JSON text: it joins the page's documents.
SEPARATOR = b"\x1e"


def page_of_leads(
    reader: RawConnection,
    customer_id: uuid.UUID,
    f: LeadFilters,
    *,
    sort_by: str,
    descending: bool,
    limit: int,
    offset: int,
    after: CursorPosition | None,
    with_custom_fields: bool,
    key_check: KeyCheck | None = None,
    count: bool = False,
) -> Page:
    """A page of `limit` leads (and the one after it, if any: see Page), read as their stored
    documents in one row: the page's rows aggregated into one string, so the database driver
    steps once, not once per lead (Python's sqlite3 hands the GIL over at every step). With
    countable() filters, or a search, the same statement reads the total, so both come from one
    snapshot. Other filters (dates): the statement reads the customer's leads_version (Page.
    version), and with `count` the total too, counted over the leads, so that a total cached
    for the filters can be checked against the page's own snapshot. `key_check`: the statement
    reads the cached key's state too, and confirms it (StaleKey if it changed)."""
    limit += 1  # one lead past the page: a next page follows when it is there
    dialect = reader.dialect.name
    after_kind = None if after is None else ("null" if after.value is None else "value")
    shape = (dialect, filter_shape(f), sort_by, descending, after_kind, with_custom_fields)
    checked = key_check is not None
    if searched(f):
        search = _search_page_statement
        query = _cached(("search", *shape, checked), lambda: _checked(search(*shape), checked))
    else:  # countable() and the total's filters depend on the shape only
        counted = countable(f)
        count = count and not counted
        first = limit if offset == 0 else None  # see _page_statement's `first`

        def build() -> Any:
            total = counted_total(f) if counted else _count_of(dialect, shape[1]) if count else None
            statement = _page_statement(*shape, total=total, first=first)
            return _checked(statement if counted else statement.add_columns(_VERSION), checked)

        query = _cached(("page", *shape, first, checked, count), build)
    params = filter_params(customer_id, f, reader)
    if key_check is not None:
        params.update(key_check.params)
    params.update(limit=limit, offset=offset, part_limit=limit + offset)
    if after is not None:
        params["after_id"] = after.lead_id
        if after.value is not None:
            params["after_value"] = after.value
    (row,) = reader.all_as_bytes(query, params)  # an aggregate without GROUP BY: one row
    documents, keys, rows, next_value, next_id, total = row[:6]
    version = None if searched(f) or countable(f) or row[6] is None else int(row[6])
    if key_check is not None:
        key_check.confirm(row[-1])
    total = None if total is None else int(total)
    if documents is None:
        return Page(b"", 0, None, total, version)
    if keys is not None:  # SQLite: every row's sort key, to check the order by
        documents, sort_keys = in_page_order(documents, keys.decode().split("\x1e"), descending)
        next_after = position_of_key(sort_keys[limit - 2]) if len(sort_keys) == limit else None
        return Page(documents, len(sort_keys), next_after, total, version)
    next_after = None
    if rows == limit:  # PostgreSQL: the position of the row before the last, read as it is
        when = None if next_value is None else next_value.astimezone(UTC)
        next_after = CursorPosition(when, next_id)
    return Page(documents, rows, next_after, total, version)


def _checked(statement: Any, checked: bool) -> Any:
    """`statement`, reading the cached key's state (auth.access.key_state_column) when `checked`."""
    return statement.add_columns(key_state_column()) if checked else statement


def in_page_order(documents: bytes, keys: list[str], descending: bool) -> tuple[bytes, list[str]]:
    """SQLite's group_concat keeps the order rows reach it in (the ordered subquery's), which
    SQLite does not promise (nor an ORDER BY inside an aggregate before 3.44): the documents
    (joined by SEPARATOR) and their sort keys (see _row_columns) are checked, and sorted if
    need be (both come from the same pass, so they line up) -> (documents, keys) in order."""
    if keys == sorted(keys, reverse=descending):
        return documents, keys
    pairs = sorted(zip(keys, documents.split(SEPARATOR), strict=True), reverse=descending)
    return SEPARATOR.join(d for _, d in pairs), [k for k, _ in pairs]


def position_of_key(key: str) -> CursorPosition:
    """A SQLite sort key ("<value or ~> <id hex>") as the cursor position it names."""
    value, _, lead_id = key.rpartition(" ")
    when = None if value == "~" else datetime.fromisoformat(value).replace(tzinfo=UTC)
    return CursorPosition(when, uuid.UUID(lead_id))


def _row_columns(dialect: str, sort_by: str, with_custom_fields: bool) -> tuple[Any, ...]:
    """A page row's columns: its document, its sort value and id (the page's order), and on
    SQLite its sort key, text whose string order is the page order (see in_page_order)."""
    document = f"coalesce(leads.document, {sql_document(dialect)})"
    if with_custom_fields:
        document = sql_document_with_fields(dialect, document)
    columns: tuple[Any, ...] = (
        literal_column(document).label("document"),
        LEADS.c[sort_by].label("value"),
        LEADS.c.id.label("id"),
    )
    if dialect != "sqlite":
        return columns
    # Fixed-width text whose string order is the page order; "~" sorts after every timestamp.
    key = f"coalesce(leads.{sort_by}, '~') || ' ' || leads.id"
    return (*columns, literal_column(key).label("sort_key"))


def _page_order(page: Any, nullable: bool, descending: bool) -> list[Any]:
    """The page order over a subquery's `value` and `id` columns: nulls last ascending, first
    descending (last_interaction_at; the other sort columns are never null)."""
    order = [page.c.value.is_(None), page.c.value, page.c.id] if nullable else [page.c.value, page.c.id]
    return [o.desc() for o in order] if descending else order


def _aggregates(dialect: str, page: Any, nullable: bool, descending: bool) -> list[Any]:
    """A page's rows (the subquery `page`, see _row_columns) as one row: (documents joined by
    SEPARATOR, SQLite's sort keys joined likewise or NULL, the row count, and on PostgreSQL the
    sort value and id of the row before the last, or NULLs).

    PostgreSQL orders inside the aggregates, so no key is formatted but the one a cursor needs
    (formatting every row's key as text cost about 100 µs of its CPU a page, a quarter of the
    statement); SQLite 3.40 has no ORDER BY inside an aggregate, and its keys are cheap."""
    count = "count(*)"
    if dialect == "sqlite":
        return [
            literal_column("group_concat(page.document, char(30))"),
            literal_column("group_concat(page.sort_key, char(30))"),
            literal_column(count),
            literal_column("NULL"),
            literal_column("NULL"),
        ]
    literal = {"literal_binds": True}
    order = ", ".join(str(o.compile(compile_kwargs=literal)) for o in _page_order(page, nullable, descending))
    return [
        literal_column(f"string_agg(page.document, chr(30) ORDER BY {order})"),
        literal_column("NULL"),
        literal_column(count),
        literal_column(f"(array_agg(page.value ORDER BY {order}))[{count} - 1]"),
        literal_column(f"(array_agg(page.id ORDER BY {order}))[{count} - 1]"),
    ]


_union_all: Any = union_all  # untyped: mypy 2.4 crashes inferring union_all(*selects)


def _search_page_statement(
    dialect: str,
    shape: tuple[bool, ...],
    sort_by: str,
    descending: bool,
    after_kind: str | None,
    with_custom_fields: bool,
) -> Any:
    """A search's page and total in one statement. The matches are found once, as (row, id,
    sort value) only (MATERIALIZED: both databases would otherwise search twice), counted, and
    ordered and cut to the page; only the page's rows are then read whole. Ordering the matches
    as whole rows would read every match's stored document into the sort (15 ms for the 1,233
    leads a phone's last four digits find among 1M, against 3 ms).
    The matches are the union of the search's terms (filters.search_terms), each leaving out
    the leads found before it. A query of 4 digits alone (search_gram, `0958`) in the default
    order with no other filter is lead_digit_grams' rows of it, by text and phone: counted and
    cut to the page without reading a lead."""
    columns = _row_columns(dialect, sort_by, with_custom_fields)
    gram = dict(zip(FILTER_NAMES, shape, strict=True))["search_gram"]
    covered = gram and sort_by == "updated_at" and only_searched(shape)
    # The page's rows are joined back by rowid on SQLite, by id where lead_digit_grams has no rowid.
    row = literal_column("leads.rowid") if dialect == "sqlite" and not covered else LEADS.c.id
    terms = search_terms(dialect, shape)
    sources: list[Any] = []
    earlier: list[ColumnElement[bool]] = []  # each term leaves out the leads found before it
    if covered:
        g = GRAMS.c
        found = select(g.lead_id.label("row"), g.lead_id.label("id"), g.updated_at.label("value"))
        sources.append(
            found.where(g.customer_id == bindparam("customer_id"), g.gram == bindparam("search_gram"))
        )
        # Leads whose text has more grams than it stores (MORE_GRAMS): their text read, the
        # leads that lead_digit_grams gave by phone left out. A join from lead_digit_grams' range
        # (few rows), so that no plan reads other leads' texts.
        position = func.instr if dialect == "sqlite" else func.strpos
        more = GRAMS.alias("more")
        sources.append(
            select(LEADS.c.id.label("row"), LEADS.c.id.label("id"), LEADS.c.updated_at.label("value"))
            .select_from(more.join(LEADS, LEADS.c.id == more.c.lead_id))
            .where(
                more.c.customer_id == bindparam("customer_id"),
                more.c.gram == MORE_GRAMS,
                LEADS.c.customer_id == bindparam("customer_id"),
                position(LEADS.c.search_text, bindparam("search_gram")) > 0,
                not_(func.coalesce(position(LEADS.c.search_phone, bindparam("search_gram")) > 0, false())),
            )
        )
        earlier.append(or_(*(term.test for term in terms if term.kind != "key")))
        terms = [term for term in terms if term.kind == "key"]
    for term in terms:
        sources.append(
            select(row.label("row"), LEADS.c.id.label("id"), LEADS.c[sort_by].label("value")).where(
                filter_clause(dialect, shape, by_rows=term.by_rows),
                term.clause,
                *(not_(func.coalesce(test, false())) for test in earlier),
            )
        )
        earlier.append(term.test)
    # Disjoint: UNION ALL (a UNION sorted the 1,233 matches of `7169` once more to drop none).
    found_all: Any = sources[0] if len(sources) == 1 else _union_all(*sources)
    matches = found_all.cte("matches").prefix_with("MATERIALIZED")
    value, lead_id = matches.c.value, matches.c.id
    after_id = bindparam("after_id", type_=LEADS.c.id.type)
    after = tuple_(bindparam("after_value", type_=LEADS.c[sort_by].type), after_id)
    if after_kind == "value":  # valued leads past it; ascending, the null ones after them all
        past = tuple_(value, lead_id) < after if descending else tuple_(value, lead_id) > after
        cursor = [or_(value.is_(None), past) if not descending else and_(value.is_not(None), past)]
    elif after_kind == "null":  # null leads past it (id order); descending, the valued ones after
        past = lead_id < after_id if descending else lead_id > after_id
        cursor = [or_(value.is_not(None), past) if descending else and_(value.is_(None), past)]
    else:
        cursor = []
    column, ids = LEADS.c[sort_by], LEADS.c.id
    # Nulls last ascending, first descending (last_interaction_at; the others are never null).
    nulls = column.nullable
    order = [value.is_(None), value, lead_id] if nulls else [value, lead_id]
    final = [column.is_(None), column, ids] if nulls else [column, ids]
    page_rows = (
        select(matches.c.row)
        .where(*cursor)
        .order_by(*(o.desc() for o in order) if descending else order)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery("page_rows")
    )
    rows = (
        select(*columns)
        .select_from(page_rows.join(LEADS, row == page_rows.c.row))
        .order_by(*(o.desc() for o in final) if descending else final)
        .subquery("page")
    )
    return select(
        *_aggregates(dialect, rows, bool(nulls), descending),
        select(func.count()).select_from(matches).scalar_subquery(),
    ).select_from(rows)


def _page_statement(
    dialect: str,
    shape: tuple[bool, ...],
    sort_by: str,
    descending: bool,
    after_kind: str | None,
    with_custom_fields: bool,
    *,
    total: Any,
    first: int | None,
) -> Any:
    """A page (and `total`, a scalar subquery, or NULL) in one statement. `first`: the page's
    row count when it starts at offset 0, written into the statement as `LIMIT n` with no
    OFFSET. PostgreSQL then plans a prepared statement once (a generic plan), where a bound
    LIMIT and OFFSET, unknown to the generic plan and costed at a tenth of the matches, made it
    choose a custom plan, planned again at every execution: about 0.5 ms of its CPU per page,
    as much as running it. None: LIMIT and OFFSET are bound (the `limit` and `offset` params)."""
    column = LEADS.c[sort_by]
    columns = _row_columns(dialect, sort_by, with_custom_fields)
    where = filter_clause(dialect, shape)
    if sort_by == "last_interaction_at":
        rows = _nulls_last_page(columns, where, column, descending, after_kind, first)
    else:
        if after_kind is not None:  # updated_at / created_at are never null
            where = and_(where, _after(column, descending))
        order = [column.desc(), LEADS.c.id.desc()] if descending else [column, LEADS.c.id]
        ordered = select(*columns).select_from(LEADS).where(where).order_by(*order)
        rows = _window(ordered, first).subquery("page")
    return select(
        *_aggregates(dialect, rows, bool(column.nullable), descending),
        literal_column("NULL") if total is None else total,
    ).select_from(rows)


def _nulls_last_page(
    columns: tuple[Any, ...],
    where: ColumnElement[bool],
    column: Any,
    descending: bool,
    after_kind: str | None,
    first: int | None,
) -> Any:
    """A page sorted on a nullable column, nulls after every value ascending (first descending),
    as two index range reads: the leads with a value in (column, id) order, and those without in
    id order, each cut to limit + offset, then merged on the sort key. A single ORDER BY on
    "column IS NULL" would sort every match first: 6 s for a page of a million leads."""
    lead_id = LEADS.c.id
    valued = and_(where, column.is_not(None))
    unvalued = and_(where, column.is_(None))
    parts: list[Any] = []
    if descending:
        # nulls first: after a valued cursor, only valued leads remain
        if after_kind != "value":
            cursor = [] if after_kind is None else [lead_id < bindparam("after_id", type_=lead_id.type)]
            parts.append((and_(unvalued, *cursor), [lead_id.desc()]))
        cursor = [_after(column, True)] if after_kind == "value" else []
        parts.append((and_(valued, *cursor), [column.desc(), lead_id.desc()]))
    else:
        # nulls last: after a null cursor, only null leads remain
        if after_kind != "null":
            cursor = [_after(column, False)] if after_kind == "value" else []
            parts.append((and_(valued, *cursor), [column, lead_id]))
        cursor = [lead_id > bindparam("after_id", type_=lead_id.type)] if after_kind == "null" else []
        parts.append((and_(unvalued, *cursor), [lead_id]))
    selects = []
    for i, (condition, order) in enumerate(parts):
        part = (
            select(*columns)
            .select_from(LEADS)
            .where(condition)
            .order_by(*order)
            .limit(bindparam("part_limit") if first is None else literal_column(str(first)))
            .subquery(f"part{i}")
        )
        selects.append(select(*part.c))
    merged = union_all(*selects).subquery("parts")
    order = _page_order(merged, True, descending)
    return _window(select(*merged.c).order_by(*order), first).subquery("page")


def _window(rows: Any, first: int | None) -> Any:
    """`rows` cut to the page: `LIMIT first` written out, or LIMIT and OFFSET bound (see
    _page_statement)."""
    if first is None:
        return rows.limit(bindparam("limit")).offset(bindparam("offset"))
    return rows.limit(literal_column(str(int(first))))


def _after(column: Any, descending: bool) -> ColumnElement[bool]:
    """Rows strictly after the cursor's (value, id) in (column, id) order, as a row-value
    comparison so that the (customer_id, [filter,] column, id) indexes serve it as a range."""
    key = tuple_(column, LEADS.c.id)
    value = tuple_(bindparam("after_value", type_=column.type), bindparam("after_id", type_=LEADS.c.id.type))
    return key < value if descending else key > value
