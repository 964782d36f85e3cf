"""All SQL of the lead operations. Each function is one statement, whatever the row count."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Row,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mega_crm.customers.models import Customer, CustomFieldDefinition, Owner, Stage
from mega_crm.leads.cursor import CursorPosition
from mega_crm.leads.models import Lead, LeadCount

LEAD_COLUMNS = [c.key for c in Lead.__table__.columns]
LEADS: Table = Lead.__table__  # type: ignore[assignment]

# The write path's statements are built once: building SQLAlchemy expressions per request cost
# more CPU than running them. They run on the session's connection, without the ORM.
_STAGES = (
    select(Stage.id, Stage.slug, Stage.name, Stage.color)
    .where(Stage.customer_id == bindparam("customer_id"))
    .order_by(Stage.position, Stage.slug)
)
_OWNERS = select(Owner.id, Owner.name, Owner.role_name).where(
    Owner.customer_id == bindparam("customer_id"), Owner.id.in_(bindparam("ids", expanding=True))
)
_FIELD_SLUGS = select(CustomFieldDefinition.slug).where(
    CustomFieldDefinition.customer_id == bindparam("customer_id")
)
_MATCHING = select(LEADS).where(
    LEADS.c.customer_id == bindparam("customer_id"),
    or_(
        LEADS.c.email_normalized.in_(bindparam("emails", expanding=True)),
        LEADS.c.phone_last10.in_(bindparam("phones", expanding=True)),
    ),
)


def stages_of(session: Session, customer_id: uuid.UUID) -> list[Row[Any]]:
    """The pipeline in order (rows with id, slug, name, color)."""
    return list(session.connection().execute(_STAGES, {"customer_id": customer_id}))


def owners_by_id(session: Session, customer_id: uuid.UUID, ids: set[uuid.UUID]) -> dict[uuid.UUID, Any]:
    if not ids:
        return {}
    rows = session.connection().execute(_OWNERS, {"customer_id": customer_id, "ids": list(ids)})
    return {o.id: o for o in rows}


def custom_field_slugs(session: Session, customer_id: uuid.UUID) -> set[str]:
    return set(session.connection().execute(_FIELD_SLUGS, {"customer_id": customer_id}).scalars())


def leads_matching(
    session: Session, customer_id: uuid.UUID, emails: set[str], phones: set[str]
) -> list[dict[str, Any]]:
    if not emails and not phones:
        return []
    rows = session.connection().execute(
        _MATCHING, {"customer_id": customer_id, "emails": list(emails), "phones": list(phones)}
    )
    return [dict(r) for r in rows.mappings()]


# Columns an update may never change.
_IMMUTABLE = {"id", "customer_id", "created_at"}
_INSERT = insert(LEADS).returning(LEADS.c.id)
_UPSERT = (lambda stmt: stmt.on_conflict_do_update(
    index_elements=[LEADS.c.id],
    set_={name: stmt.excluded[name] for name in LEAD_COLUMNS if name not in _IMMUTABLE},
    where=LEADS.c.customer_id == stmt.excluded.customer_id,
).returning(LEADS.c.id))(sqlite_insert(LEADS))  # fmt: skip

# On PostgreSQL the batch travels as one JSON parameter expanded by json_populate_recordset:
# one statement and one parameter whatever the row count (psycopg re-parses a statement with
# 10,000 placeholders on every call, which cost more than the insert itself).
_PG_ROWS = "SELECT * FROM json_populate_recordset(NULL::leads, CAST(:rows AS json))"
_PG_INSERT = text(f"INSERT INTO leads {_PG_ROWS}")
_PG_UPSERT = text(
    f"INSERT INTO leads {_PG_ROWS} ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in LEAD_COLUMNS if name not in _IMMUTABLE)
    + " WHERE leads.customer_id = EXCLUDED.customer_id"
)


def insert_leads(session: Session, records: list[dict[str, Any]]) -> None:
    """One multi-row INSERT for the whole batch.

    SQLite: an executemany with RETURNING, which SQLAlchemy's "insertmanyvalues" sends as one
    multi-row INSERT … VALUES built from a cached compilation.
    """
    if records:
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            connection.execute(_PG_INSERT, {"rows": orjson.dumps(records).decode()})
        else:
            connection.execute(_INSERT, records)


def update_leads(session: Session, records: list[dict[str, Any]]) -> None:
    """Full records of existing leads, written back in one multi-row
    INSERT … ON CONFLICT (id) DO UPDATE, sent like insert_leads. The primary key is the conflict
    target, so every record updates its own row; the other unique indexes (email, phone) still
    refuse a duplicate."""
    if records:
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            connection.execute(_PG_UPSERT, {"rows": orjson.dumps(records).decode()})
        else:
            connection.execute(_UPSERT, records)


def begin_customer_write(session: Session, customer_id: uuid.UUID, now: datetime) -> datetime | None:
    """Take the customer's write lock and the time of this write, in one statement.

    The UPDATE row-locks the customer on PostgreSQL until commit (SQLite already holds the
    database write lock), so one customer's lead writes are serialised: no two requests can
    create twins, and write times increase strictly in commit order, so keyset sync never skips
    a commit. Bumping leads_version also invalidates the cached list totals. None: no customer.
    """
    assigned = (
        session.connection()
        .execute(_BEGIN_WRITE, {"customer_id": customer_id, "now_us": _to_us(now)})
        .scalar()
    )
    return None if assigned is None else _EPOCH + timedelta(microseconds=assigned)


_CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
_CLOCK = _CUSTOMERS.c.leads_clock_us
_BEGIN_WRITE = (
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


def leads_version(session: Session, customer_id: uuid.UUID) -> int:
    return session.scalar(select(Customer.leads_version).where(Customer.id == customer_id)) or 0


# --- listing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFilters:
    status: str | None = None
    stage_id: uuid.UUID | None = None
    search_text: str | None = None  # substring of name or email
    search_email: str | None = None  # a whole address: exact match
    search_phone_key: str | None = None  # 10 digits: exact match on phone_last10
    search_phone_digits: str | None = None  # fewer digits: substring of the E.164 phone
    created_since: datetime | None = None
    updated_since: datetime | None = None
    lead_line: str | None = None


def _filter_clause(customer_id: uuid.UUID, f: LeadFilters) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = [Lead.customer_id == customer_id]
    if f.status:
        clauses.append(Lead.status == f.status)
    if f.stage_id:
        clauses.append(Lead.stage_id == f.stage_id)
    if f.lead_line:
        clauses.append(Lead.lead_line == f.lead_line)
    if f.created_since:
        clauses.append(Lead.created_at >= f.created_since)
    if f.updated_since:
        clauses.append(Lead.updated_at >= f.updated_since)
    search: list[ColumnElement[bool]] = []
    if f.search_text:
        pattern = "%" + _escape_like(f.search_text.lower()) + "%"
        search.append(func.lower(Lead.contact_name).like(pattern, escape="\\"))
        search.append(Lead.email_normalized.like(pattern, escape="\\"))
    if f.search_email:
        search.append(Lead.email_normalized == f.search_email)
    if f.search_phone_key:
        search.append(Lead.phone_last10 == f.search_phone_key)
    elif f.search_phone_digits:
        search.append(Lead.contact_phone.like("%" + f.search_phone_digits + "%"))
    if search:
        clauses.append(or_(*search))
    return and_(*clauses)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def count_leads(session: Session, customer_id: uuid.UUID, f: LeadFilters) -> int:
    return session.scalar(select(func.count()).select_from(Lead).where(_filter_clause(customer_id, f))) or 0


def page_of_leads(
    session: Session,
    customer_id: uuid.UUID,
    f: LeadFilters,
    *,
    sort_by: str,
    descending: bool,
    limit: int,
    offset: int,
    after: CursorPosition | None,
    with_custom_fields: bool,
) -> list[dict[str, Any]]:
    """A page of leads with their stage and owner joined in.

    On SQLite, UUID and timestamp columns come back as their stored text (see
    service.format_uuid / format_timestamp): parsing 100 rows into objects only to print them
    again was most of a page's CPU time.
    """
    column = getattr(Lead, sort_by)
    where = _filter_clause(customer_id, f)
    if after is not None:
        where = and_(where, _after(column, after, descending))
    if sort_by == "last_interaction_at":
        # Nulls sort after every timestamp ascending (and first descending), on both dialects.
        null_rank = column.is_(None)
        order = (
            [null_rank.desc(), column.desc(), Lead.id.desc()] if descending else [null_rank, column, Lead.id]
        )
    else:
        order = [column.desc(), Lead.id.desc()] if descending else [column, Lead.id]
    raw = session.get_bind().dialect.name == "sqlite"
    columns = [
        type_coerce(c, String).label(c.key) if raw and c.key in _TEXT_ON_SQLITE else c
        for c in LEADS.columns
        if with_custom_fields or c.key not in ("custom_fields", "lead_line")
    ]
    stmt = (
        select(
            *columns,
            Stage.slug.label("stage_slug"),
            Stage.name.label("stage_name"),
            Stage.color.label("stage_color"),
            Owner.name.label("owner_name"),
            Owner.role_name.label("owner_role_name"),
        )
        .outerjoin(Stage, Stage.id == Lead.stage_id)
        .outerjoin(Owner, Owner.id == Lead.owner_id)
        .where(where)
        .order_by(*order)
        .limit(limit)
        .offset(offset)
    )
    result = session.connection().execute(stmt)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


_TEXT_ON_SQLITE = {
    "id", "customer_id", "stage_id", "owner_id", "created_at", "updated_at", "last_interaction_at",
}  # fmt: skip


def _after(column: Any, pos: CursorPosition, descending: bool) -> ColumnElement[bool]:
    """Rows strictly after `pos` in (column, id) order, as a row-value comparison so that the
    (customer_id, [filter,] column, id) indexes serve it as a range. Only last_interaction_at can
    be null; its nulls sort after every timestamp ascending and before them descending."""
    key = tuple_(column, Lead.id)
    if pos.value is None:
        if descending:
            return or_(and_(column.is_(None), Lead.id < pos.lead_id), column.is_not(None))
        return and_(column.is_(None), Lead.id > pos.lead_id)
    if descending:
        return key < tuple_(literal(pos.value, column.type), literal(pos.lead_id, Lead.id.type))
    after = key > tuple_(literal(pos.value, column.type), literal(pos.lead_id, Lead.id.type))
    return or_(after, column.is_(None)) if column is Lead.last_interaction_at else after


# --- exact counts per (status, stage, lead_line) --------------------------------------------

Bucket = tuple[str, uuid.UUID | None, str | None]
COUNTS: Table = LeadCount.__table__  # type: ignore[assignment]
_COUNT_UPSERTS: dict[str, Any] = {}


def bucket_of(record: dict[str, Any]) -> Bucket:
    return (record["status"], record["stage_id"], record["lead_line"])


def _bucket_key(bucket: Bucket) -> str:
    status, stage_id, lead_line = bucket
    return f"{status}|{stage_id.hex if stage_id else ''}|{lead_line or ''}"


def _count_upsert(dialect: str) -> Any:
    if dialect not in _COUNT_UPSERTS:
        stmt = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(COUNTS)
        _COUNT_UPSERTS[dialect] = stmt.on_conflict_do_update(
            index_elements=[COUNTS.c.customer_id, COUNTS.c.bucket], set_={"n": COUNTS.c.n + stmt.excluded.n}
        ).returning(COUNTS.c.n)
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
        connection = session.connection()
        connection.execute(_count_upsert(connection.dialect.name), rows)


def counted_total(session: Session, customer_id: uuid.UUID, f: LeadFilters) -> int | None:
    """The total from the counts when the filters are only status / stage / lead_line, else None."""
    if f.search_text or f.search_email or f.search_phone_key or f.search_phone_digits:
        return None
    if f.created_since or f.updated_since:
        return None
    stmt = select(func.coalesce(func.sum(COUNTS.c.n), 0)).where(COUNTS.c.customer_id == customer_id)
    if f.status:
        stmt = stmt.where(COUNTS.c.status == f.status)
    if f.stage_id:
        stmt = stmt.where(COUNTS.c.stage_id == f.stage_id)
    if f.lead_line:
        stmt = stmt.where(COUNTS.c.lead_line == f.lead_line)
    return int(session.connection().execute(stmt).scalar_one())


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
