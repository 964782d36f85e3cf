"""The contract's `Lead` JSON, and the copy of it each lead row keeps (`leads.document`).

listLeads is the hot read, and building 100 leads per page (UUID and timestamp formatting, the
stage and owner objects, the JSON) cost several times the rest of the request. So every lead
write renders the lead's document in its own transaction (`render_document`, in Python), and a
page is the stored documents joined together. custom_fields are not in the document: a page
that asks for them splices them in, in SQL.

The same JSON also has an SQL form (`sql_document`) for rows written without the lead service:
a page renders a NULL document on the fly, and `refresh_documents` stores it. Stages and owners
are never renamed or removed through the API; an operation that did must refresh the documents
of its leads. tests/leads/test_documents.py checks that both forms agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.orm import Session

LEAD_LINE = "lead_line"


def iso(value: datetime | None) -> str | None:
    """UTC, always with microseconds (the same text whichever database the value came from)."""
    return _iso(value) if value else None


@lru_cache(maxsize=1024)  # a write stamps its leads with one `now`, and a batch shares a few
def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lead_body(
    rec: dict[str, Any], stage: Any | None, owner: Any | None, *, include_custom_fields: bool = True
) -> dict[str, Any]:
    """A lead row as the contract's `Lead`; `stage` / `owner`: rows with their columns, or None."""
    body: dict[str, Any] = {
        "id": str(rec["id"]),
        "customer_id": str(rec["customer_id"]),
        "contact_name": rec["contact_name"],
        "contact_phone": rec["contact_phone"],
        "contact_email": rec["contact_email"],
        "source_platform": rec["source_platform"],
        "source_type": rec["source_type"],
        "status": rec["status"],
        "score": rec["score"],
        "qualified": rec["qualified"],
        "current_stage": _stage_object(stage.id, stage.slug, stage.name, stage.color)
        if stage is not None
        else None,
        "owner": _owner_object(owner.id, owner.name, owner.role_name) if owner is not None else None,
        "last_interaction_at": iso(rec["last_interaction_at"]),
        "interaction_count": rec["interaction_count"] or 0,
        "created_at": iso(rec["created_at"]),
        "updated_at": iso(rec["updated_at"]),
    }
    if include_custom_fields:
        body["custom_fields"] = custom_fields_of(rec)
    return body


# A batch's leads share a few stages and owners. The cached objects are only serialised, never changed.
@lru_cache(maxsize=1024)
def _stage_object(id_: uuid.UUID, slug: str, name: str, color: str | None) -> dict[str, Any]:
    return {"id": str(id_), "slug": slug, "name": name, "color": color}


@lru_cache(maxsize=1024)
def _owner_object(id_: uuid.UUID, name: str, role_name: str | None) -> dict[str, Any]:
    return {"id": str(id_), "name": name, "role_name": role_name}


def custom_fields_of(rec: dict[str, Any]) -> dict[str, Any]:
    fields = dict(rec.get("custom_fields") or {})
    if rec.get("lead_line"):
        fields[LEAD_LINE] = rec["lead_line"]
    return fields


def render_document(rec: dict[str, Any], stage: Any | None, owner: Any | None) -> str:
    """What `leads.document` holds for this row: its `Lead` without custom_fields."""
    return orjson.dumps(lead_body(rec, stage, owner, include_custom_fields=False)).decode()


# --- the SQL form -----------------------------------------------------------------------------


def _sqlite_uuid(column: str) -> str:  # SQLite stores UUIDs as 32 hex digits
    parts = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    return " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length in parts)


def _sqlite_time(column: str) -> str:  # stored as "YYYY-MM-DD HH:MM:SS.ffffff" UTC
    return f"replace({column}, ' ', 'T') || 'Z'"


def _postgres_uuid(column: str) -> str:
    return column


def _postgres_time(column: str) -> str:
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _sql_document(dialect: str, row: str) -> str:
    """An SQL expression equal to render_document() (as JSON, not byte for byte) of the lead `row`
    (a table alias), with its stage `s` and owner `o` joined in."""
    if dialect == "sqlite":
        obj, uid, when = "json_object", _sqlite_uuid, _sqlite_time
        qualified = f"CASE {row}.qualified WHEN 1 THEN json('true') WHEN 0 THEN json('false') END"
        suffix = ""
    else:
        obj, uid, when = "json_build_object", _postgres_uuid, _postgres_time
        qualified = f"{row}.qualified"
        suffix = "::text"
    stage = f"{obj}('id', {uid('s.id')}, 'slug', s.slug, 'name', s.name, 'color', s.color)"
    owner = f"{obj}('id', {uid('o.id')}, 'name', o.name, 'role_name', o.role_name)"
    plain = "contact_name contact_phone contact_email source_platform source_type status score".split()
    fields = [
        ("id", uid(f"{row}.id")),
        ("customer_id", uid(f"{row}.customer_id")),
        *((name, f"{row}.{name}") for name in plain),
        ("qualified", qualified),
        ("current_stage", f"CASE WHEN s.id IS NOT NULL THEN {stage} END"),
        ("owner", f"CASE WHEN o.id IS NOT NULL THEN {owner} END"),
        ("last_interaction_at", when(f"{row}.last_interaction_at")),
        ("interaction_count", f"coalesce({row}.interaction_count, 0)"),
        ("created_at", when(f"{row}.created_at")),
        ("updated_at", when(f"{row}.updated_at")),
    ]
    pairs = ", ".join(f"'{name}', {value}" for name, value in fields)
    return f"{obj}({pairs}){suffix}"


def sql_document(dialect: str) -> str:
    """A scalar subquery: the document of the `leads` row in the enclosing statement."""
    joined = "leads AS d LEFT JOIN stages s ON s.id = d.stage_id LEFT JOIN owners o ON o.id = d.owner_id"
    return f"(SELECT {_sql_document(dialect, 'd')} FROM {joined} WHERE d.id = leads.id)"


def sql_document_with_fields(dialect: str, document: str) -> str:
    """`document` (an SQL expression) with the `leads` row's custom_fields and lead_line spliced in.
    The stored custom_fields text is kept as it is (jsonb would print 1e300 as a 301-digit integer)."""
    if dialect == "sqlite":
        fields = "coalesce(nullif(leads.custom_fields, 'null'), '{}')"
        spliced = (
            f"CASE WHEN leads.lead_line IS NULL THEN {fields} "
            f"ELSE json_set({fields}, '$.lead_line', leads.lead_line) END"
        )
        head = f"substr({document}, 1, length({document}) - 1)"
    else:
        fields = "coalesce(nullif(leads.custom_fields::text, 'null'), '{}')"
        line = "to_json(leads.lead_line)::text"
        spliced = (
            f"CASE WHEN leads.lead_line IS NULL THEN {fields} "
            f"WHEN {fields}::jsonb = '{{}}'::jsonb THEN '{{\"lead_line\":' || {line} || '}}' "
            f"ELSE left(rtrim({fields}), -1) || ',\"lead_line\":' || {line} || '}}' END"
        )
        head = f"left({document}, -1)"
    return f"{head} || ',\"custom_fields\":' || {spliced} || '}}'"


def refresh_documents(session: Session, customer_id: uuid.UUID | None = None) -> int:
    """Re-render the stored documents (of one customer, or all): for writers that bypass the lead
    service, and after a stage or owner changes. -> rows updated."""
    connection = session.connection()
    sql = f"UPDATE leads SET document = {sql_document(connection.dialect.name)}"
    if customer_id is None:
        return int(connection.execute(text(sql)).rowcount or 0)
    statement = text(sql + " WHERE leads.customer_id = :customer_id").bindparams(
        bindparam("customer_id", type_=Uuid)
    )
    return int(connection.execute(statement, {"customer_id": customer_id}).rowcount or 0)
