"""Exact lead counts per (status, stage, lead_line), kept in every lead write's transaction
(table lead_counts): listLeads' `total` for those filters is a sum over a handful of rows."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Table, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mega_crm.db import Query, RawConnection
from mega_crm.leads.filters import FILTER_NAMES, LeadFilters
from mega_crm.leads.models import Lead, LeadCount

Bucket = tuple[str, uuid.UUID | None, str | None]
COUNTS: Table = LeadCount.__table__  # type: ignore[assignment]
_COUNT_UPSERTS: dict[str, Query] = {}


def bucket_of(record: dict[str, Any]) -> Bucket:
    """The bucket a lead record (column -> value) is counted in."""
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


def count_rows(customer_id: uuid.UUID, deltas: dict[Bucket, int]) -> list[dict[str, Any]]:
    """The rows of `deltas` to add to the customer's counts (lead_counts' columns), none for 0."""
    return [
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


def add_to_counts(session: Session, customer_id: uuid.UUID, deltas: dict[Bucket, int]) -> None:
    """One statement for the whole batch (a few buckets at most)."""
    rows = count_rows(customer_id, deltas)
    if rows:
        raw = RawConnection.of(session)
        raw.run_many(_count_upsert(raw.dialect.name), rows)


# add_to_counts on PostgreSQL as a data-modifying CTE, its rows one JSON parameter (`counts`):
# the lead writes put it in front of their own statement (leads.repository.write_plan).
PG_COUNTS_CTE = (
    "WITH counted AS (INSERT INTO lead_counts (customer_id, bucket, status, stage_id, lead_line, n) "
    "SELECT customer_id, bucket, status, stage_id, lead_line, n "
    "FROM json_populate_recordset(NULL::lead_counts, CAST(:counts AS json)) "
    "ON CONFLICT (customer_id, bucket) DO UPDATE SET n = lead_counts.n + EXCLUDED.n) "
)


def countable(f: LeadFilters) -> bool:
    """Whether `total` comes from the per-bucket counts: filters on status / stage / lead_line only."""
    return not any(getattr(f, name) is not None for name in FILTER_NAMES if name not in _COUNTED)


_COUNTED = ("status", "stage_id", "lead_line")


def counted_total(f: LeadFilters) -> Any:
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
