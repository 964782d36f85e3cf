"""The SQL of the lead writes: the customer's configuration, the matching leads, inserts and
updates, and the customer's write lock. Each function is one statement, whatever the row count.
The reads are in leads/pages.py (filters: leads/filters.py), the counts in leads/counts.py."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Table, bindparam, case, select, text, update
from sqlalchemy.orm import Session

from mega_crm.auth.access import KeyCheck, confirming, key_state_sql
from mega_crm.customers.models import Customer, Owner
from mega_crm.db import (
    Memo,
    Pending,
    Query,
    RawConnection,
    as_datetime,
    as_json,
    as_shared_uuid,
    as_uuid,
    memos_of,
)
from mega_crm.leads.counts import (
    COUNTS,
    PG_COUNTS_CTE,
    Bucket,
    add_to_counts,
    bucket_of,
    count_rows,
    countable,
    recount,
)  # fmt: skip
from mega_crm.leads.filters import LeadFilters, searched
from mega_crm.leads.models import Lead
from mega_crm.leads.pages import Page, page_of_leads
from mega_crm.timestamps import PG_CLOCK_SQL, stamped_json_sql

# The reads and the counts have modules of their own; their names stay importable from here.
__all__ = [
    "COUNTS", "Bucket", "LeadFilters", "Page", "add_to_counts", "bucket_of",
    "countable", "page_of_leads", "recount", "searched",
]  # fmt: skip

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
# One contact (createLead's): scalars, not arrays. PostgreSQL costs `= ANY(array)` at ten
# elements in a prepared statement's generic plan, so it planned the statement again at every
# execution; with scalars it plans it once. A NULL email or phone matches nothing.
_MATCHING_ONE = Query(text(
    f"{_MATCHING_HALF} email_normalized = CAST(:email AS text) UNION ALL "
    f"{_MATCHING_HALF} phone_last10 = CAST(:phone AS text) AND "
    "(email_normalized IS DISTINCT FROM CAST(:email AS text) OR email_normalized IS NULL)"
))  # fmt: skip


# A customer's pipeline and custom-field slugs, per transaction (see customer_config).
_CUSTOMER_CONFIG = Memo[uuid.UUID, tuple[list[StageRow], set[str]]](
    "customer_config", tables={"stages", "custom_field_definitions"}
)


def customer_config(session: Session, customer_id: uuid.UUID) -> tuple[list[StageRow], set[str]]:
    """-> (the pipeline in order, the custom-field slugs). Read once per transaction and
    customer: the writes a group commit runs together share it (a write to those tables in the
    transaction reads them again)."""
    return customer_config_later(session, customer_id)()


def customer_config_later(
    session: Session, customer_id: uuid.UUID
) -> Callable[[], tuple[list[StageRow], set[str]]]:
    """customer_config, its statement sent now and its answer read when the result is called
    (in a pipelined transaction, with the statements sent beside it: RawConnection.send)."""
    memos = memos_of(session)
    entries = memos.entries(_CUSTOMER_CONFIG) if memos is not None else {}
    known = entries.get(customer_id)
    params = {"customer_id": customer_id}
    pending = None if known is not None else RawConnection.of(session).send(_CONFIG, params)

    def read() -> tuple[list[StageRow], set[str]]:
        found = known
        if found is None:
            assert pending is not None
            found = _config_of(pending.all())
            if memos is not None:
                memos.entries(_CUSTOMER_CONFIG)[customer_id] = found
        return list(found[0]), set(found[1])

    return read


def _config_of(rows: list[tuple[Any, ...]]) -> tuple[list[StageRow], set[str]]:
    stages, slugs = [], set()
    for kind, id_, slug, name, color, _position in rows:
        if kind == 0:
            stages.append(StageRow(as_uuid(id_), slug, name, color))
        else:
            slugs.add(slug)
    return stages, slugs


def owners_by_id(session: Session, customer_id: uuid.UUID, ids: set[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The customer's owners among `ids`: id -> row (id, name, role_name); others are left out."""
    if not ids:
        return {}
    rows = session.connection().execute(_OWNERS, {"customer_id": customer_id, "ids": list(ids)})
    return {o.id: o for o in rows}


def leads_matching(
    session: Session, customer_id: uuid.UUID, emails: set[str], phones: set[str]
) -> list[dict[str, Any]]:
    """The customer's leads whose normalised email is in `emails` or phone key in `phones`, each
    once, as records (column -> value, no document)."""
    return leads_matching_later(session, customer_id, emails, phones)()


def leads_matching_later(
    session: Session, customer_id: uuid.UUID, emails: set[str], phones: set[str]
) -> Callable[[], list[dict[str, Any]]]:
    """leads_matching, its statement sent now and its answer read when the result is called."""
    if not emails and not phones:
        return list
    raw = RawConnection.of(session)
    if not raw.is_sqlite and len(emails) <= 1 and len(phones) <= 1:
        email, phone = next(iter(emails), None), next(iter(phones), None)
        pending = raw.send(_MATCHING_ONE, {"customer_id": customer_id, "email": email, "phone": phone})
    else:
        params = {"customer_id": customer_id, "emails": sorted(emails), "phones": sorted(phones)}
        pending = raw.send(_MATCHING[raw.dialect.name], params)
    return lambda: [_record(row) for row in pending.all()]


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
    "search_grams",
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
# 10,000 placeholders on every call, which cost more than the insert itself). The columns are
# named: leads has a generated one (search_packed, migration 0010) that takes no value.
_PG_COLUMNS = ", ".join(LEAD_COLUMNS)
_PG_ROWS = (
    f"({_PG_COLUMNS}) SELECT {_PG_COLUMNS} FROM json_populate_recordset(NULL::leads, CAST(:rows AS json))"
)
_PG_INSERT_SQL = f"INSERT INTO leads {_PG_ROWS}"
_PG_UPSERT_SQL = (
    f"INSERT INTO leads {_PG_ROWS} ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in LEAD_COLUMNS if name not in _IMMUTABLE)
    + " WHERE leads.customer_id = EXCLUDED.customer_id"
)
_PG_INSERT = Query(text(_PG_INSERT_SQL))
_PG_UPSERT = Query(text(_PG_UPSERT_SQL))
# The same, with the counts' change in front (counts.PG_COUNTS_CTE): one statement, not two.
_PG_COUNTED = {
    "insert": Query(text(PG_COUNTS_CTE + _PG_INSERT_SQL)),
    "upsert": Query(text(PG_COUNTS_CTE + _PG_UPSERT_SQL)),
}
# The same again, guarded (write_plan's `guard`): `checked` is the customer's clock (read after
# the lock was taken: its new value), once the leads matching the contact are found to be those
# the write read before it, by id and updated_at (every lead write sets updated_at, under the
# lock); else mega_crm_write_conflict raises (migration 0011). A missing customer has no clock.
# (A statement's snapshot is taken when it starts: the check is a statement after the lock's.)
_STAMPED = ("created_at", "updated_at", "last_interaction_at")
_PG_CHECKED_CTE = (
    ", checked AS (SELECT CASE WHEN s.same AND s.t IS NOT NULL THEN s.t ELSE "
    "mega_crm_write_conflict('the leads this write read changed before it took the lock') END AS t "
    f"FROM (SELECT {PG_CLOCK_SQL.format(customer=':customer_id')} AS t, "
    "(SELECT coalesce(array_agg(l.id ORDER BY l.id), '{}') = CAST(:seen_ids AS uuid[]) "
    "AND coalesce(array_agg(l.updated_at ORDER BY l.id), '{}') = CAST(:seen_times AS timestamptz[]) "
    "FROM leads l WHERE l.customer_id = :customer_id AND (l.email_normalized = CAST(:email AS text) "
    "OR l.phone_last10 = CAST(:phone AS text))) AS same) AS s) "
)  # fmt: skip


def _guarded_value(name: str) -> str:
    if name in _STAMPED:
        return f"CASE WHEN '{name}' = ANY(CAST(:stamped AS text[])) THEN checked.t ELSE r.{name} END"
    if name == "document":
        return stamped_json_sql("r.document", "checked.t")
    return f"r.{name}"


_PG_GUARDED_SQL = (
    f"{PG_COUNTS_CTE}{_PG_CHECKED_CTE}INSERT INTO leads ({_PG_COLUMNS}) "
    f"SELECT {', '.join(_guarded_value(name) for name in LEAD_COLUMNS)} "
    "FROM json_populate_recordset(NULL::leads, CAST(:rows AS json)) AS r CROSS JOIN checked"
)
_PG_GUARDED = {
    "insert": Query(text(_PG_GUARDED_SQL)),
    "upsert": Query(text(_PG_GUARDED_SQL + _PG_UPSERT_SQL[len(_PG_INSERT_SQL) :])),
}


class Guard(NamedTuple):
    """What a lead write read before it took the customer's lock, for write_plan to check under
    it (PostgreSQL's createLead: leads.service.create_lead)."""

    now: datetime  # the provisional time: the record's times that are this object take the lock's
    email: str | None  # the contact the leads in `seen` matched (leads_matching_later)
    phone: str | None
    seen: list[dict[str, Any]]  # those leads, as read


def write_plan(
    session: Session,
    customer_id: uuid.UUID,
    inserts: list[dict[str, Any]],
    updates: list[dict[str, Any]],
    changed: dict[uuid.UUID, set[str]],
    deltas: dict[Bucket, int],
    guard: Guard | None = None,
) -> Pending | None:
    """A merge plan's writes: the new leads (insert_leads), the changed ones (update_leads, with
    `changed` their changed columns) and the customer's counts moved by `deltas`
    (add_to_counts). PostgreSQL sends the counts in the first lead statement (counts.
    PG_COUNTS_CTE): a createLead writes one statement, not two.

    With a `guard` (PostgreSQL, one lead written): first the customer's write lock and time
    (begin_customer_write, its answer the returned Pending: the time, microseconds since the
    epoch), then the lead, in a statement that stamps it with that time (the record's times
    that are `guard.now`, and timestamps.STAMP in its document) once it has checked, under the
    lock, that the leads matching the contact are still `guard.seen`, unchanged; otherwise it
    raises SQLSTATE 40001 (db.write_conflict: the transaction must be run again)."""
    raw = RawConnection.of(session)
    counts = count_rows(customer_id, deltas)
    if guard is not None:
        return _write_guarded(raw, customer_id, inserts, updates, counts, guard)
    if raw.is_sqlite or not counts or not (inserts or updates):
        insert_leads(session, inserts)
        update_leads(session, updates, changed)
        add_to_counts(session, customer_id, deltas)
        return None
    params = {"counts": orjson.dumps(counts).decode()}
    if inserts:
        raw.run(_PG_COUNTED["insert"], {**params, "rows": orjson.dumps(inserts).decode()})
        update_leads(session, updates, changed)
    else:
        raw.run(_PG_COUNTED["upsert"], {**params, "rows": orjson.dumps(updates).decode()})
    return None


def _write_guarded(
    raw: RawConnection,
    customer_id: uuid.UUID,
    inserts: list[dict[str, Any]],
    updates: list[dict[str, Any]],
    counts: list[dict[str, Any]],
    guard: Guard,
) -> Pending:
    """write_plan with a guard: see there."""
    records = inserts or updates
    if raw.is_sqlite or len(records) != 1 or (inserts and updates):
        raise ValueError("a guarded write is PostgreSQL's, of one lead")
    (rec,) = records
    clock = raw.send(_BEGIN_WRITE, {"customer_id": customer_id, "now_us": _to_us(guard.now)})
    seen = sorted(guard.seen, key=lambda lead: lead["id"])
    params = {
        "customer_id": customer_id,
        "counts": orjson.dumps(counts).decode(),
        "rows": orjson.dumps(records).decode(),
        # PostgreSQL array literals, not lists: psycopg's list dumper looked at every element
        # to choose the array's type, ~45 µs a create for these three.
        "stamped": _pg_array([name for name in _STAMPED if rec[name] is guard.now]),
        "email": guard.email,
        "phone": guard.phone,
        "seen_ids": _pg_array([str(lead["id"]) for lead in seen]),
        "seen_times": _pg_array([lead["updated_at"].isoformat() for lead in seen]),
    }
    raw.run(_PG_GUARDED["insert" if inserts else "upsert"], params)
    return clock


def _pg_array(texts: list[str]) -> str:
    """A PostgreSQL array literal of `texts`, for a CAST(… AS type[]) to read: each element
    double-quoted, its backslashes and double quotes escaped (the array input syntax)."""
    return "{" + ",".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts) + "}"


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
    return begin_customer_write_later(session, customer_id, now)()


def begin_customer_write_later(
    session: Session, customer_id: uuid.UUID, now: datetime
) -> Callable[[], datetime | None]:
    """begin_customer_write, its statement sent now and its answer read when the result is called.
    The statements sent after it in a pipelined transaction run once it holds the lock."""
    params = {"customer_id": customer_id, "now_us": _to_us(now)}
    pending = RawConnection.of(session).send(_BEGIN_WRITE, params)

    def read() -> datetime | None:
        row = pending.first()
        return None if row is None else _EPOCH + timedelta(microseconds=row[0])

    return read


class WriteStart(NamedTuple):
    """What a lead write learns as it takes the customer's lock (begin_lead_write_later)."""

    now: datetime  # the write's time (begin_customer_write)
    stages: list[StageRow]  # the pipeline in order (customer_config)
    field_slugs: set[str]
    webhooks: list[tuple[Any, ...]] | None  # PostgreSQL: the live webhooks' (id, event_types)


def begin_lead_write_later(
    session: Session,
    customer_id: uuid.UUID,
    now: datetime,
    key_check: KeyCheck | None = None,
) -> Callable[[], WriteStart | None]:
    """createLead's first reads with the customer's lock taken first (lead_write_reads_later:
    without it), sent now and read when the result is called (None: no customer).
    `key_check`: a cached key, confirmed as the result is read (auth.access.StaleKey if it
    changed; left unconfirmed when there is no customer).

    PostgreSQL: one statement. The UPDATE of begin_customer_write returns the customer's
    pipeline, custom-field slugs and live webhooks beside its clock, and the key's state when
    asked, read by subqueries in the statement's snapshot, taken before it waited for the lock,
    as the statements it replaces read them (one round trip either way, but each statement cost
    psycopg and the server their own parse, bind and execute: 50-70 µs of the request's CPU).
    SQLite, where a statement costs no round trip and a group commit's writes share the
    configuration read: the key's state (auth.access.confirming), customer_config, then
    begin_customer_write; `webhooks` is None (outbox reads them)."""
    raw = RawConnection.of(session)
    if raw.is_sqlite:
        confirm = confirming(key_check)
        confirmed = confirm(session) if confirm is not None else None
        config = customer_config_later(session, customer_id)
        clock = begin_customer_write_later(session, customer_id, now)

        def read_apart() -> WriteStart | None:
            stages, slugs = config()
            when = clock()
            if when is None:
                return None
            if confirmed is not None:
                confirmed()
            return WriteStart(when, stages, slugs, None)

        return read_apart
    params: dict[str, Any] = {"customer_id": customer_id, "now_us": _to_us(now)}
    if key_check is not None:
        params.update(key_check.params)
    pending = raw.send(_BEGIN_WRITE_WITH_CONFIG[key_check is not None], params)

    def read() -> WriteStart | None:
        row = pending.first()
        if row is None:
            return None
        clock, stages, slugs, webhooks = row[:4]
        if key_check is not None:
            key_check.confirm(row[4])
        return WriteStart(
            _EPOCH + timedelta(microseconds=clock),
            _stages_of(stages),
            set(orjson.loads(slugs)),
            _webhooks_of(webhooks),
        )

    return read


def lead_write_reads_later(
    session: Session,
    customer_id: uuid.UUID,
    now: datetime,
    key_check: KeyCheck | None,
    email: str | None,
    phone: str | None,
) -> Callable[[], tuple[WriteStart | None, list[dict[str, Any]]]]:
    """PostgreSQL: begin_lead_write_later's reads without the lock (the WriteStart's time is
    `now`, provisional: write_plan's Guard), and leads_matching_later for one contact (`email`,
    `phone`: normalised, None for none), in one statement sent now and read when the result is
    called -> (the WriteStart, None with no customer; the matching leads)."""
    params: dict[str, Any] = {"customer_id": customer_id, "email": email, "phone": phone}
    if key_check is not None:
        params.update(key_check.params)
    pending = RawConnection.of(session).send(_CONFIG_AND_MATCHING[key_check is not None], params)

    def read() -> tuple[WriteStart | None, list[dict[str, Any]]]:
        rows = pending.all()
        if not rows:
            return None, []
        _clock, stages, slugs, webhooks = rows[0][:4]
        width = 5 if key_check is not None else 4
        if key_check is not None:
            key_check.confirm(rows[0][4])
        start = WriteStart(now, _stages_of(stages), set(orjson.loads(slugs)), _webhooks_of(webhooks))
        return start, [_record(row[width:]) for row in rows if row[width] is not None]

    return read


def _stages_of(stages: str) -> list[StageRow]:
    return list(_parsed_stages(stages))


@functools.lru_cache(maxsize=256)  # a customer's pipeline changes rarely: its JSON recurs
def _parsed_stages(stages: str) -> tuple[StageRow, ...]:
    return tuple(StageRow(as_uuid(i), slug, name, color) for i, slug, name, color in orjson.loads(stages))


def _webhooks_of(webhooks: str) -> list[tuple[Any, ...]]:
    return [(webhook_id, types) for webhook_id, types in orjson.loads(webhooks)]


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
# begin_lead_write_later's statement on PostgreSQL: _BEGIN_WRITE's, with the customer's
# configuration (_CONFIG's rows) and live webhooks (events.outbox's _SUBSCRIBED) as JSON arrays;
# [True]: and the key's state (auth.access.key_state_sql), for a cached key it confirms.
_CONFIG_COLUMNS = (
    "(SELECT coalesce(json_agg(json_build_array(id, slug, name, color) ORDER BY position, slug), '[]') "
    "FROM stages WHERE customer_id = :customer_id)::text, "
    "(SELECT coalesce(json_agg(slug), '[]') FROM custom_field_definitions "
    "WHERE customer_id = :customer_id)::text, "
    "(SELECT coalesce(json_agg(json_build_array(id, event_types)), '[]') FROM webhooks "
    "WHERE customer_id = :customer_id AND is_active IS true AND deleted_at IS NULL)::text"
)  # fmt: skip
_BEGIN_WRITE_WITH_CONFIG_SQL = (
    "UPDATE customers SET leads_version = leads_version + 1, "
    "leads_clock_us = GREATEST(leads_clock_us + 1, CAST(:now_us AS bigint)) "
    f"WHERE id = :customer_id RETURNING leads_clock_us, {_CONFIG_COLUMNS}"
)
_BEGIN_WRITE_WITH_CONFIG = {
    False: Query(text(_BEGIN_WRITE_WITH_CONFIG_SQL)),
    True: Query(text(f"{_BEGIN_WRITE_WITH_CONFIG_SQL}, {key_state_sql()}")),
}
# PostgreSQL's createLead with its reads before the lock (lead_write_reads_later): the same
# columns read by a SELECT, and beside them each lead the contact matches (_MATCHING_ONE), one
# row per lead (one row of NULLs when none does): one statement, not two.
_CONFIG_AND_MATCHING = {
    keyed: Query(text(
        f"SELECT c.leads_clock_us, {_CONFIG_COLUMNS}{f', {key_state_sql()}' if keyed else ''}, m.* "
        f"FROM customers c LEFT JOIN LATERAL ({_MATCHING_ONE.statement.text}) m ON true "
        "WHERE c.id = :customer_id"
    ))
    for keyed in (False, True)
}  # fmt: skip


def clock_time(clock_us: int) -> datetime:
    """A value of customers.leads_clock_us (microseconds since the epoch) as an aware datetime."""
    return _EPOCH + timedelta(microseconds=clock_us)


def _to_us(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
