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

Both forms follow the field table of mega_crm/lead_shape.py (LEAD_FIELDS): a field added there
is rendered by both, and is in the response model and, if it says so, in webhook payloads.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.orm import Session

from mega_crm.lead_shape import DOCUMENT_FIELDS, LeadField
from mega_crm.timestamps import PG_FORMAT_SQL, STAMP, format_time_or_none

LEAD_LINE = "lead_line"

# The Python form, from the field table: (member, column, conversion or None for "as it is").
_Convert = Callable[[Any], Any]


def _uuid_text(value: Any) -> str:
    return str(value)


def _count(value: Any) -> Any:
    return value or 0


_CONVERSIONS: dict[str, _Convert | None] = {
    "uuid": _uuid_text,
    "text": None,
    "int": None,
    "bool": None,
    "count": _count,
    "time": format_time_or_none,
}
# In member order: (member, column, conversion, is an object). An object's row is an argument.
_STEPS = [
    (f.name, f.source, None if f.kind == "object" else _CONVERSIONS[f.kind], f.kind == "object")
    for f in DOCUMENT_FIELDS
]
_OBJECT_PARTS = {f.name: f.parts for f in DOCUMENT_FIELDS if f.kind == "object"}


def lead_body(
    rec: dict[str, Any],
    stage: Any | None,
    owner: Any | None,
    *,
    include_custom_fields: bool = True,
    stamp: datetime | None = None,
) -> dict[str, Any]:
    """A lead row (column -> value) as the contract's `Lead`, members in LEAD_FIELDS' order.
    `stage` / `owner`: the joined rows (attributes named as the objects' fields), or None; an
    object field added to the table is one more of these. `stamp`: the write's provisional time;
    a time that is this very object is rendered as timestamps.STAMP, to be filled with the time
    the write commits with (PostgreSQL's createLead)."""
    joined = {"current_stage": stage, "owner": owner}
    body: dict[str, Any] = {}
    for name, source, convert, is_object in _STEPS:
        if is_object:
            row = joined[name]
            body[name] = (
                None
                if row is None
                else _object(name, tuple(getattr(row, p.name) for p in _OBJECT_PARTS[name]))
            )
        else:
            value = rec[source]
            if stamp is not None and value is stamp:
                body[name] = STAMP
            else:
                body[name] = value if convert is None else convert(value)
    if include_custom_fields:
        body["custom_fields"] = custom_fields_of(rec)
    return body


# A batch's leads share a few stages and owners. The cached objects are only serialised, never changed.
@lru_cache(maxsize=1024)
def _object(name: str, values: tuple[Any, ...]) -> dict[str, Any]:
    return {
        part.name: (str(value) if part.kind == "uuid" and value is not None else value)
        for part, value in zip(_OBJECT_PARTS[name], values, strict=True)
    }


def custom_fields_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The Lead's `custom_fields`: the row's map, with its lead_line column as "lead_line"."""
    fields = dict(rec.get("custom_fields") or {})
    if rec.get("lead_line"):
        fields[LEAD_LINE] = rec["lead_line"]
    return fields


def render_document(
    rec: dict[str, Any], stage: Any | None, owner: Any | None, stamp: datetime | None = None
) -> str:
    """What `leads.document` holds for this row: its `Lead` without custom_fields (`stamp`: see
    lead_body)."""
    return orjson.dumps(lead_body(rec, stage, owner, include_custom_fields=False, stamp=stamp)).decode()


# --- the SQL form -----------------------------------------------------------------------------


def _sqlite_uuid(column: str) -> str:  # SQLite stores UUIDs as 32 hex digits
    parts = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    return " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length in parts)


def _sqlite_time(column: str) -> str:  # stored as "YYYY-MM-DD HH:MM:SS.ffffff" UTC
    return f"replace({column}, ' ', 'T') || 'Z'"


def _postgres_uuid(column: str) -> str:
    return column


def _postgres_time(column: str) -> str:
    return PG_FORMAT_SQL.format(value=column)


def _sql_value(dialect: str, field: LeadField, column: str) -> str:
    """The SQL expression of one non-object field read from `column`."""
    sqlite = dialect == "sqlite"
    if field.kind == "uuid":
        return (_sqlite_uuid if sqlite else _postgres_uuid)(column)
    if field.kind == "time":
        return (_sqlite_time if sqlite else _postgres_time)(column)
    if field.kind == "count":
        return f"coalesce({column}, 0)"
    if field.kind == "bool" and sqlite:  # stored as 0/1
        return f"CASE {column} WHEN 1 THEN json('true') WHEN 0 THEN json('false') END"
    return column


def _alias(field: LeadField) -> str:
    return f"{field.name}_row"


def _sql_document(dialect: str, row: str) -> str:
    """An SQL expression equal to render_document() (as JSON, not byte for byte) of the lead `row`
    (a table alias), with each object's row joined in as _alias(field) (see sql_document)."""
    obj = "json_object" if dialect == "sqlite" else "json_build_object"
    pairs = []
    for field in DOCUMENT_FIELDS:
        if field.kind == "object":
            alias = _alias(field)
            parts = ", ".join(
                f"'{p.name}', {_sql_value(dialect, p, f'{alias}.{p.name}')}" for p in field.parts
            )
            value = f"CASE WHEN {alias}.id IS NOT NULL THEN {obj}({parts}) END"
        else:
            value = _sql_value(dialect, field, f"{row}.{field.source}")
        pairs.append(f"'{field.name}', {value}")
    return f"{obj}({', '.join(pairs)}){'' if dialect == 'sqlite' else '::text'}"


def sql_document(dialect: str) -> str:
    """A scalar subquery: the document of the `leads` row in the enclosing statement."""
    joins = " ".join(
        f"LEFT JOIN {f.table} {_alias(f)} ON {_alias(f)}.id = d.{f.column}"
        for f in DOCUMENT_FIELDS
        if f.kind == "object"
    )
    return f"(SELECT {_sql_document(dialect, 'd')} FROM leads AS d {joins} WHERE d.id = leads.id)"


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
