"""All SQL of the lead operations. Each function is one statement, whatever the row count."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mega_crm.customers.models import Customer, Owner
from mega_crm.db import Memo, Query, RawConnection, as_datetime, as_json, as_shared_uuid, as_uuid, memoized
from mega_crm.leads.cursor import CursorPosition
from mega_crm.leads.documents import sql_document, sql_document_with_fields
from mega_crm.leads.models import Lead, LeadCount
from mega_crm.leads.search import SAMPLE_LEADS, probe, rarest_trigrams, trigram_counts

LEAD_COLUMNS = [c.key for c in Lead.__table__.columns]
LEADS: Table = Lead.__table__  # type: ignore[assignment]

# The write path's statements are built once: building SQLAlchemy expressions per request cost
# more CPU than running them. Most run raw on the session's DBAPI connection (RawConnection.of):
# SQLAlchemy's per-statement bookkeeping cost as much as these small statements.
# A customer's pipeline (kind 0, in order) and its custom-field slugs (kind 1), in one statement.
_CONFIG = Query(
    text(
        "SELECT 0, id, slug, name, color, position FROM stages WHERE customer_id = :customer_id "
        "UNION ALL SELECT 1, NULL, slug, NULL, NULL, 0 FROM custom_field_definitions "
        "WHERE customer_id = :customer_id ORDER BY 1, 6, 3"
    )
)


class StageRow(NamedTuple):
    id: uuid.UUID
    slug: str
    name: str
    color: str | None


_OWNERS = select(Owner.id, Owner.name, Owner.role_name).where(
    Owner.customer_id == bindparam("customer_id"), Owner.id.in_(bindparam("ids", expanding=True))
)
# The batch's emails and phones travel as one array parameter each (a JSON array on SQLite), so
# the statement is the same whatever the batch size; each half is one unique-index lookup, and
# the phone half skips the leads the email half already found, so each lead comes back once.
# (UNION ALL: PostgreSQL has no equality for json columns.)
_RECORD_COLUMNS = [c.key for c in LEADS.columns if c.key != "document"]
assert _RECORD_COLUMNS[11:20] == [  # _record converts by position
    "qualified", "stage_id", "owner_id", "lead_line", "custom_fields", "last_interaction_at",
    "interaction_count", "created_at", "updated_at",
]  # fmt: skip
_MATCHING_HALF = f"SELECT {', '.join(_RECORD_COLUMNS)} FROM leads WHERE customer_id = :customer_id AND "
_MATCHING = {
    "sqlite": Query(text(
        f"{_MATCHING_HALF} email_normalized IN (SELECT value FROM json_each(:emails)) UNION ALL "
        f"{_MATCHING_HALF} phone_last10 IN (SELECT value FROM json_each(:phones)) AND "
        "(email_normalized IS NULL OR email_normalized NOT IN (SELECT value FROM json_each(:emails)))"
    )),
    "postgresql": Query(text(
        f"{_MATCHING_HALF} email_normalized = ANY(CAST(:emails AS text[])) UNION ALL "
        f"{_MATCHING_HALF} phone_last10 = ANY(CAST(:phones AS text[])) AND "
        "(email_normalized IS NULL OR NOT email_normalized = ANY(CAST(:emails AS text[])))"
    )),
}  # fmt: skip


# A customer's pipeline and custom-field slugs, per transaction (see customer_config).
_CUSTOMER_CONFIG = Memo[uuid.UUID, tuple[list[StageRow], set[str]]](
    "customer_config", tables={"stages", "custom_field_definitions"}
)


def customer_config(session: Session, customer_id: uuid.UUID) -> tuple[list[StageRow], set[str]]:
    """-> (the pipeline in order, the custom-field slugs). Read once per transaction and
    customer: the writes a group commit runs together share it (a write to those tables in the
    transaction reads them again)."""
    stages, slugs = memoized(
        session, _CUSTOMER_CONFIG, customer_id, lambda: _read_config(session, customer_id)
    )
    return list(stages), set(slugs)


def _read_config(session: Session, customer_id: uuid.UUID) -> tuple[list[StageRow], set[str]]:
    stages, slugs = [], set()
    for kind, id_, slug, name, color, _position in RawConnection.of(session).all(
        _CONFIG, {"customer_id": customer_id}
    ):
        if kind == 0:
            stages.append(StageRow(as_uuid(id_), slug, name, color))
        else:
            slugs.add(slug)
    return stages, slugs


def owners_by_id(session: Session, customer_id: uuid.UUID, ids: set[uuid.UUID]) -> dict[uuid.UUID, Any]:
    if not ids:
        return {}
    rows = session.connection().execute(_OWNERS, {"customer_id": customer_id, "ids": list(ids)})
    return {o.id: o for o in rows}


def leads_matching(
    session: Session, customer_id: uuid.UUID, emails: set[str], phones: set[str]
) -> list[dict[str, Any]]:
    if not emails and not phones:
        return []
    raw = RawConnection.of(session)
    params = {"customer_id": customer_id, "emails": sorted(emails), "phones": sorted(phones)}
    return [_record(row) for row in raw.all(_MATCHING[raw.dialect.name], params)]


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    """A raw leads row (without its document) as the column -> value record the service works on.
    By position (see _RECORD_COLUMNS): a merge converts a whole batch of these."""
    rec = dict(zip(_RECORD_COLUMNS, row, strict=True))
    rec["id"] = as_uuid(row[0])
    rec["customer_id"] = as_shared_uuid(row[1])
    if row[11] is not None:
        rec["qualified"] = bool(row[11])
    if row[12] is not None:
        rec["stage_id"] = as_shared_uuid(row[12])
    if row[13] is not None:
        rec["owner_id"] = as_shared_uuid(row[13])
    rec["custom_fields"] = as_json(row[15])
    rec["last_interaction_at"] = as_datetime(row[16])
    rec["created_at"] = as_datetime(row[18])
    rec["updated_at"] = as_datetime(row[19])
    return rec


# Columns an update may never change.
_IMMUTABLE = {"id", "customer_id", "created_at"}


# SQLite rewrites the entries of every index holding a column an UPDATE sets, changed or not. A
# merge nearly always changes only these, and updated_at, in every index they are in, changes
# anyway; setting just them leaves the email, phone, created_at, status and interaction indexes
# alone (half the cost of a merging bulk import). Other updates set every mutable column.
_LIGHT_COLUMNS = [
    "contact_name",
    "stage_id",
    "owner_id",
    "lead_line",
    "custom_fields",
    "updated_at",
    "document",
    "search_text",
]


def _sqlite_update_of(columns: list[str]) -> tuple[str, list[str]]:
    """-> (UPDATE … FROM (VALUES {values}) for RawConnection.run_values, its row columns): the
    rows' id and customer_id pick the lead (an id of another customer matches nothing)."""
    bound = ["id", "customer_id", *columns]
    sets = ", ".join(f"{name} = v.column{i}" for i, name in enumerate(bound, 1) if i > 2)
    statement = (
        f"UPDATE leads SET {sets} FROM (VALUES {{values}}) AS v "
        "WHERE leads.id = v.column1 AND leads.customer_id = v.column2"
    )
    return statement, bound


_SQLITE_INSERT = f"INSERT INTO leads ({', '.join(LEAD_COLUMNS)}) VALUES {{values}}"
_SQLITE_LIGHT_UPDATE = _sqlite_update_of(_LIGHT_COLUMNS)
_SQLITE_FULL_UPDATE = _sqlite_update_of([name for name in LEAD_COLUMNS if name not in _IMMUTABLE])

# On PostgreSQL the batch travels as one JSON parameter expanded by json_populate_recordset:
# one statement and one parameter whatever the row count (psycopg re-parses a statement with
# 10,000 placeholders on every call, which cost more than the insert itself).
_PG_ROWS = "SELECT * FROM json_populate_recordset(NULL::leads, CAST(:rows AS json))"
_PG_INSERT = Query(text(f"INSERT INTO leads {_PG_ROWS}"))
_PG_UPSERT = Query(text(
    f"INSERT INTO leads {_PG_ROWS} ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in LEAD_COLUMNS if name not in _IMMUTABLE)
    + " WHERE leads.customer_id = EXCLUDED.customer_id"
))  # fmt: skip


def insert_leads(session: Session, records: list[dict[str, Any]]) -> None:
    """The whole batch in one statement (SQLite: a multi-row INSERT … VALUES, see
    RawConnection.run_values; PostgreSQL: one JSON parameter)."""
    if not records:
        return
    raw = RawConnection.of(session)
    if raw.is_sqlite:
        raw.run_values(_SQLITE_INSERT, LEAD_COLUMNS, records)
    else:
        raw.run(_PG_INSERT, {"rows": orjson.dumps(records).decode()})


def update_leads(session: Session, records: list[dict[str, Any]], changed: dict[uuid.UUID, set[str]]) -> None:
    """Full records of existing leads, written back by id within their customer; `changed`: the
    columns each record changed. PostgreSQL: one INSERT … ON CONFLICT (id) DO UPDATE of every
    column, the conflict target being the primary key. SQLite: at most two UPDATE … FROM (VALUES
    …) statements, see _LIGHT_COLUMNS. Either way the unique indexes (email, phone) still refuse a
    duplicate."""
    if not records:
        return
    raw = RawConnection.of(session)
    if not raw.is_sqlite:
        raw.run(_PG_UPSERT, {"rows": orjson.dumps(records).decode()})
        return
    light = [rec for rec in records if changed[rec["id"]].issubset(_LIGHT_COLUMNS)]
    full = [rec for rec in records if not changed[rec["id"]].issubset(_LIGHT_COLUMNS)]
    for rows, (statement, columns) in ((light, _SQLITE_LIGHT_UPDATE), (full, _SQLITE_FULL_UPDATE)):
        if rows:
            raw.run_values(statement, columns, rows)


def begin_customer_write(session: Session, customer_id: uuid.UUID, now: datetime) -> datetime | None:
    """Take the customer's write lock and the time of this write, in one statement.

    The UPDATE row-locks the customer on PostgreSQL until commit (SQLite already holds the
    database write lock), so one customer's lead writes are serialised: no two requests can
    create twins, and write times increase strictly in commit order, so keyset sync never skips
    a commit. Bumping leads_version also invalidates the cached list totals. None: no customer.
    """
    row = RawConnection.of(session).first(_BEGIN_WRITE, {"customer_id": customer_id, "now_us": _to_us(now)})
    return None if row is None else _EPOCH + timedelta(microseconds=row[0])


_CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
_CLOCK = _CUSTOMERS.c.leads_clock_us
_BEGIN_WRITE = Query(
    update(_CUSTOMERS)
    .where(_CUSTOMERS.c.id == bindparam("customer_id"))
    .values(
        leads_version=_CUSTOMERS.c.leads_version + 1,
        leads_clock_us=case((_CLOCK + 1 > bindparam("now_us"), _CLOCK + 1), else_=bindparam("now_us")),
    )
    .returning(_CLOCK)
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_us(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_LEADS_VERSION = Query(select(Customer.leads_version).where(Customer.id == bindparam("customer_id")))


def leads_version(reader: RawConnection, customer_id: uuid.UUID) -> int:
    row = reader.first(_LEADS_VERSION, {"customer_id": customer_id})
    return int(row[0]) if row else 0


# --- listing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFilters:
    status: str | None = None
    stage_id: uuid.UUID | None = None
    # `search`, as leads/search.py reads it (SearchTerms):
    search_text: str | None = None  # folded, >= 3 characters: a part of search_text (trigram index)
    search_short: str | None = None  # folded, 1-2 characters: a part of search_text (a scan)
    search_phone_key: str | None = None  # a whole number's last 10 digits: phone_last10
    search_phone_digits: str | None = None  # a phone-like query's digits: a part of search_phone
    created_since: datetime | None = None
    updated_since: datetime | None = None
    lead_line: str | None = None


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


def _filter_shape(f: LeadFilters) -> tuple[bool, ...]:
    return tuple(getattr(f, name) is not None for name in _FILTER_NAMES)


_FILTER_NAMES = (
    "status", "stage_id", "lead_line", "created_since", "updated_since",
    "search_text", "search_short", "search_phone_key", "search_phone_digits",
)  # fmt: skip


def _filter_params(customer_id: uuid.UUID, f: LeadFilters, reader: RawConnection) -> dict[str, Any]:
    params: dict[str, Any] = {"customer_id": customer_id}
    for name in _FILTER_NAMES:
        value = getattr(f, name)
        if value is not None:
            params[name] = value
    if not reader.is_sqlite:  # LIKE patterns over the pg_trgm indexes
        if f.search_text is not None:
            window = probe(f.search_text, _trigram_counts(reader))
            params["search_probe_like"] = "%" + _escape_like(window) + "%"
        if f.search_phone_digits is not None:
            params["search_phone_like"] = "%" + f.search_phone_digits + "%"
    elif f.search_text is not None or f.search_phone_digits is not None:
        # One FTS5 query for both: the text's rarest trigrams, or the phone digits as a phrase.
        terms = []
        if f.search_text is not None:
            grams = rarest_trigrams(f.search_text, _trigram_counts(reader))
            terms.append("(" + " AND ".join(f"search_text : {_fts_string(g)}" for g in grams) + ")")
        if f.search_phone_digits is not None:
            terms.append(f"search_phone : {_fts_string(f.search_phone_digits)}")
        params["search_match"] = " OR ".join(terms)
    return params


def _fts_string(value: str) -> str:
    """`value` as an FTS5 string (a phrase of its trigrams): quoted, inner quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


# In table order, not an index's: the first leads of an index on search_text (SQLite's, 0007)
# all begin alike, and would make common trigrams look rare.
_SAMPLE = {
    dialect: Query(text(f"SELECT search_text FROM leads {hint} WHERE search_text IS NOT NULL LIMIT :n"))
    for dialect, hint in (("sqlite", "NOT INDEXED"), ("postgresql", ""))
}
_TRIGRAMS: list[tuple[float, Counter[str]]] = []  # (when, counts): search.probe's estimate
_TRIGRAMS_SECONDS = 3600.0


def _trigram_counts(reader: RawConnection) -> Counter[str]:
    """Trigram frequencies in a sample of the leads, counted again every _TRIGRAMS_SECONDS (a
    few tens of ms; two threads may both count, harmlessly)."""
    if not _TRIGRAMS or time.monotonic() - _TRIGRAMS[0][0] > _TRIGRAMS_SECONDS:
        counts = trigram_counts(
            [row[0] for row in reader.all(_SAMPLE[reader.dialect.name], {"n": SAMPLE_LEADS})]
        )
        _TRIGRAMS[:] = [(time.monotonic(), counts)]
    return _TRIGRAMS[0][1]


def _search_clause(dialect: str, has: dict[str, bool]) -> ColumnElement[bool] | None:
    """The leads a search matches (see leads/search.py), or None without one. The trigram index
    is asked for a part of the query (SQLite: search.rarest_trigrams; PostgreSQL: search.probe),
    and the whole query is checked on the rows it finds.
    SQLite: rowids from the FTS5 table leads_search (migration 0005), plus the phone index's
    match, as one IN list the plan starts from; PostgreSQL: LIKE over the trigram-indexed columns
    (bitmap index scans), or'ed with the phone index's match. A 1-2 character text is a plain
    substring test of the customer's leads."""
    if has["search_short"]:
        position = "instr" if dialect == "sqlite" else "strpos"
        return text(f"{position}(leads.search_text, :search_short) > 0")  # type: ignore[return-value]
    if not (has["search_text"] or has["search_phone_digits"] or has["search_phone_key"]):
        return None
    if dialect == "sqlite":
        parts, checks = [], []
        if has["search_text"] or has["search_phone_digits"]:
            parts.append("SELECT rowid FROM leads_search WHERE leads_search MATCH :search_match")
        if has["search_text"]:
            checks.append("instr(leads.search_text, :search_text) > 0")
        if has["search_phone_digits"]:
            checks.append("instr(leads.search_phone, :search_phone_digits) > 0")
        if has["search_phone_key"]:
            parts.append(
                "SELECT rowid FROM leads "
                "WHERE customer_id = :customer_id AND phone_last10 = :search_phone_key"
            )
            checks.append("leads.phone_last10 = :search_phone_key")
        rows = f"leads.rowid IN ({' UNION ALL '.join(parts)}) AND ({' OR '.join(checks)})"
        return text(rows)  # type: ignore[return-value]
    c = LEADS.c
    terms: list[ColumnElement[bool]] = []
    if has["search_text"]:
        probed = c.search_text.like(bindparam("search_probe_like"), escape="\\")
        terms.append(and_(probed, func.strpos(c.search_text, bindparam("search_text")) > 0))
    if has["search_phone_digits"]:
        terms.append(c.search_phone.like(bindparam("search_phone_like")))
    if has["search_phone_key"]:
        terms.append(c.phone_last10 == bindparam("search_phone_key"))
    return or_(*terms)


def _filter_clause(dialect: str, shape: tuple[bool, ...]) -> ColumnElement[bool]:
    has = dict(zip(_FILTER_NAMES, shape, strict=True))
    c = LEADS.c
    clauses: list[ColumnElement[bool]] = [c.customer_id == bindparam("customer_id")]
    if dialect == "sqlite" and (has["search_text"] or has["search_phone_digits"] or has["search_phone_key"]):
        # The search's rowids are where the plan must start: SQLite would rather walk one of the
        # customer's indexes in page order, testing every lead against them (a scan). Unary +
        # keeps it from using customer_id (every leads index starts with it) to do so.
        clauses[0] = text("+leads.customer_id = :customer_id")  # type: ignore[call-overload]
    for name in ("status", "stage_id", "lead_line"):
        if has[name]:
            clauses.append(c[name] == bindparam(name))
    if has["created_since"]:
        clauses.append(c.created_at >= bindparam("created_since", type_=c.created_at.type))
    if has["updated_since"]:
        clauses.append(c.updated_at >= bindparam("updated_since", type_=c.updated_at.type))
    search = _search_clause(dialect, has)
    if search is not None:
        clauses.append(search)
    return and_(*clauses)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def count_leads(reader: RawConnection, customer_id: uuid.UUID, f: LeadFilters) -> int:
    dialect, shape = reader.dialect.name, _filter_shape(f)
    query = _cached(
        ("count", dialect, shape),
        lambda: select(func.count()).select_from(LEADS).where(_filter_clause(dialect, shape)),
    )
    row = reader.first(query, _filter_params(customer_id, f, reader))
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Page:
    """Up to `limit` leads in page order: their `Lead` JSON texts, and each one's sort key as
    text ("<sort value or ~> <id>", see `position`); `total` when the filters are countable()."""

    documents: list[str]
    keys: list[str]
    total: int | None = None

    @staticmethod
    def position(key: str) -> CursorPosition:
        value, _, lead_id = key.rpartition(" ")
        when = None if value == "~" else datetime.fromisoformat(value).replace(tzinfo=UTC)
        return CursorPosition(when, uuid.UUID(lead_id))


# ASCII 30 (record separator) can appear in no JSON text: it joins the page's documents.
_SEPARATOR = "\x1e"


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
) -> Page:
    """A page of leads, read as their stored documents in one row: the page's rows aggregated
    into two strings (documents, sort keys), so the database driver steps once, not once per
    lead (Python's sqlite3 hands the GIL over at every step). With countable() filters the
    same statement reads the total, so both come from one snapshot."""
    dialect = reader.dialect.name
    after_kind = None if after is None else ("null" if after.value is None else "value")
    shape = (dialect, _filter_shape(f), sort_by, descending, after_kind, with_custom_fields)
    query = _cached(  # countable() and the total's filters depend on the shape only
        ("page", *shape), lambda: _page_statement(*shape, total=_counted_total(f) if countable(f) else None)
    )
    params = _filter_params(customer_id, f, reader)
    params.update(limit=limit, offset=offset, part_limit=limit + offset)
    if after is not None:
        params["after_id"] = after.lead_id
        if after.value is not None:
            params["after_value"] = after.value
    row = reader.first(query, params)
    assert row is not None  # an aggregate without GROUP BY always answers one row
    documents, keys, total = row
    total = None if total is None else int(total)
    if documents is None:
        return Page([], [], total)
    return in_page_order(Page(documents.split(_SEPARATOR), keys.split(_SEPARATOR), total), descending)


def in_page_order(page: Page, descending: bool) -> Page:
    """Aggregates keep the order rows reach them in (the ordered subquery's), which neither
    database promises: check it, and sort if need be (both lists come from the same pass, so
    they line up)."""
    if page.keys == sorted(page.keys, reverse=descending):
        return page
    pairs = sorted(zip(page.keys, page.documents, strict=True), reverse=descending)
    return Page([d for _, d in pairs], [k for k, _ in pairs], page.total)


def _page_statement(
    dialect: str,
    shape: tuple[bool, ...],
    sort_by: str,
    descending: bool,
    after_kind: str | None,
    with_custom_fields: bool,
    *,
    total: Any,
) -> Any:
    column = LEADS.c[sort_by]
    document = f"coalesce(leads.document, {sql_document(dialect)})"
    if with_custom_fields:
        document = sql_document_with_fields(dialect, document)
    # Fixed-width text whose string order is the page order; "~" sorts after every timestamp.
    if dialect == "sqlite":
        key = f"coalesce(leads.{sort_by}, '~') || ' ' || leads.id"
        aggregate, separator = "group_concat", "char(30)"
    else:
        stamp = f"to_char(leads.{sort_by} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
        key = f"coalesce({stamp}, '~') || ' ' || leads.id::text"
        aggregate, separator = "string_agg", "chr(30)"
    columns: tuple[Any, ...] = (
        literal_column(document).label("document"),
        literal_column(key).label("sort_key"),
    )
    where = _filter_clause(dialect, shape)
    if sort_by == "last_interaction_at":
        rows = _nulls_last_page(columns, where, column, descending, after_kind)
    else:
        if after_kind is not None:  # updated_at / created_at are never null
            where = and_(where, _after(column, descending))
        order = [column.desc(), LEADS.c.id.desc()] if descending else [column, LEADS.c.id]
        rows = (
            select(*columns)
            .select_from(LEADS)
            .where(where)
            .order_by(*order)
            .limit(bindparam("limit"))
            .offset(bindparam("offset"))
            .subquery("page")
        )
    return select(
        literal_column(f"{aggregate}(page.document, {separator})"),
        literal_column(f"{aggregate}(page.sort_key, {separator})"),
        literal_column("NULL") if total is None else total,
    ).select_from(rows)


def _nulls_last_page(
    columns: tuple[Any, ...],
    where: ColumnElement[bool],
    column: Any,
    descending: bool,
    after_kind: str | None,
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
            .limit(bindparam("part_limit"))
            .subquery(f"part{i}")
        )
        selects.append(select(part.c.document, part.c.sort_key))
    merged = union_all(*selects).subquery("parts")
    key = merged.c.sort_key.desc() if descending else merged.c.sort_key
    return (
        select(merged.c.document, merged.c.sort_key)
        .order_by(key)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery("page")
    )


def _after(column: Any, descending: bool) -> ColumnElement[bool]:
    """Rows strictly after the cursor's (value, id) in (column, id) order, as a row-value
    comparison so that the (customer_id, [filter,] column, id) indexes serve it as a range."""
    key = tuple_(column, LEADS.c.id)
    value = tuple_(bindparam("after_value", type_=column.type), bindparam("after_id", type_=LEADS.c.id.type))
    return key < value if descending else key > value


# --- exact counts per (status, stage, lead_line) --------------------------------------------

Bucket = tuple[str, uuid.UUID | None, str | None]
COUNTS: Table = LeadCount.__table__  # type: ignore[assignment]
_COUNT_UPSERTS: dict[str, Query] = {}


def bucket_of(record: dict[str, Any]) -> Bucket:
    return (record["status"], record["stage_id"], record["lead_line"])


def _bucket_key(bucket: Bucket) -> str:
    status, stage_id, lead_line = bucket
    return f"{status}|{stage_id.hex if stage_id else ''}|{lead_line or ''}"


def _count_upsert(dialect: str) -> Query:
    if dialect not in _COUNT_UPSERTS:
        stmt = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(COUNTS)
        _COUNT_UPSERTS[dialect] = Query(
            stmt.on_conflict_do_update(
                index_elements=[COUNTS.c.customer_id, COUNTS.c.bucket],
                set_={"n": COUNTS.c.n + stmt.excluded.n},
            )
        )
    return _COUNT_UPSERTS[dialect]


def add_to_counts(session: Session, customer_id: uuid.UUID, deltas: dict[Bucket, int]) -> None:
    """One statement for the whole batch (a few buckets at most)."""
    rows = [
        {
            "customer_id": customer_id,
            "bucket": _bucket_key(bucket),
            "status": bucket[0],
            "stage_id": bucket[1],
            "lead_line": bucket[2],
            "n": delta,
        }
        for bucket, delta in deltas.items()
        if delta
    ]
    if rows:
        raw = RawConnection.of(session)
        raw.run_many(_count_upsert(raw.dialect.name), rows)


def countable(f: LeadFilters) -> bool:
    """Whether `total` comes from the per-bucket counts: filters on status / stage / lead_line only."""
    return not any(getattr(f, name) is not None for name in _FILTER_NAMES if name not in _COUNTED)


_COUNTED = ("status", "stage_id", "lead_line")


def _counted_total(f: LeadFilters) -> Any:
    """A scalar subquery: the total of the counts matching `f` (see countable())."""
    where = [COUNTS.c.customer_id == bindparam("customer_id")]
    where += [COUNTS.c[name] == bindparam(name) for name in _COUNTED if getattr(f, name) is not None]
    return select(func.coalesce(func.sum(COUNTS.c.n), literal_column("0"))).where(*where).scalar_subquery()


def recount(session: Session, customer_id: uuid.UUID) -> None:
    """Rebuild a customer's counts from its leads: for writers that bypass the lead service
    (imports straight into the database, maintenance scripts)."""
    connection = session.connection()
    connection.execute(COUNTS.delete().where(COUNTS.c.customer_id == customer_id))
    groups = connection.execute(
        select(Lead.status, Lead.stage_id, Lead.lead_line, func.count())
        .where(Lead.customer_id == customer_id)
        .group_by(Lead.status, Lead.stage_id, Lead.lead_line)
    )
    add_to_counts(session, customer_id, {(s, st, ll): n for s, st, ll, n in groups})
