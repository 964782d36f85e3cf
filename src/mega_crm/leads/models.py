from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from mega_crm.db import Base, UTCDateTime, new_id

if TYPE_CHECKING:
    from mega_crm.db import Lane
    from mega_crm.leads.schemas import ListLeadsQuery


class Lead(Base):
    __tablename__ = "leads"
    __table_args__ = (
        # De-duplication is enforced by the database, not only by the merge logic.
        Index("uq_leads_customer_email", "customer_id", "email_normalized", unique=True),
        Index("uq_leads_customer_phone", "customer_id", "phone_last10", unique=True),
        # Keyset pages: one index per sort, plus the common filter + default sort.
        Index("ix_leads_customer_updated", "customer_id", "updated_at", "id"),
        Index("ix_leads_customer_created", "customer_id", "created_at", "id"),
        Index("ix_leads_customer_interaction", "customer_id", "last_interaction_at", "id"),
        Index("ix_leads_customer_status_updated", "customer_id", "status", "updated_at", "id"),
        Index("ix_leads_customer_status_created", "customer_id", "status", "created_at", "id"),
        Index("ix_leads_customer_stage_updated", "customer_id", "stage_id", "updated_at", "id"),
        Index("ix_leads_customer_line_updated", "customer_id", "lead_line", "updated_at", "id"),
        # Search (leads/search.py): a trigram index of search_text, SQLite's an FTS5 table kept
        # by triggers (migrations 0005, 0009), PostgreSQL's over a generated column (migration
        # 0010): no model describes them. Phones: LeadPhoneGram.
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    contact_name: Mapped[str | None] = mapped_column(Text)
    contact_email: Mapped[str | None] = mapped_column(String(320))
    email_normalized: Mapped[str | None] = mapped_column(String(320))
    contact_phone: Mapped[str | None] = mapped_column(String(32))  # E.164
    phone_last10: Mapped[str | None] = mapped_column(String(10))
    source_platform: Mapped[str] = mapped_column(String(32))
    source_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="active")
    score: Mapped[int | None] = mapped_column(Integer)
    qualified: Mapped[bool | None] = mapped_column(Boolean)
    stage_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("stages.id", ondelete="SET NULL"))
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("owners.id", ondelete="SET NULL"))
    lead_line: Mapped[str | None] = mapped_column(String(16))
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_interaction_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    interaction_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The row as the contract's Lead JSON, rendered by every write (see leads/documents.py).
    document: Mapped[str | None] = mapped_column(Text)
    # What `search` matches, written with every change of the contact fields (leads/search.py):
    # the folded name and email, and the phone's digits (E.164 and national format).
    search_text: Mapped[str | None] = mapped_column(Text)
    search_phone: Mapped[str | None] = mapped_column(String(64))
    # Their runs of 4 digits, a JSON array, which LeadDigitGram's rows follow (by trigger).
    search_grams: Mapped[str | None] = mapped_column(Text)


def _keyset_sorts() -> dict[str | None, frozenset[str]]:
    """{filter column, or None for no filter: the sort columns a keyset index of Lead serves in
    order}, read off the (customer_id, [filter], sort, id) indexes above."""
    sorts: dict[str | None, set[str]] = {}
    for index in Lead.metadata.tables[Lead.__tablename__].indexes:
        names = [column.name for column in index.columns]
        if index.unique or names[0] != "customer_id" or names[-1] != "id":
            continue
        *filters, sort = names[1:-1]
        sorts.setdefault(filters[0] if filters else None, set()).add(sort)
    return {filter_: frozenset(columns) for filter_, columns in sorts.items()}


_KEYSET_SORTS = _keyset_sorts()
# Beyond this, an OFFSET walks that many index entries: a scan, not a page read.
_SHALLOW_OFFSET = 1000


def list_lane(query: ListLeadsQuery) -> Lane:
    """The database lane (see mega_crm.db) of a listLeads request: "read" for a page one of the
    indexes above serves as a range, "slow" for what may scan or sort every match (a search, a
    date filter, an offset past 1000, two filters at once, or a sort no index serves with the
    filter), so it never holds up page reads."""
    if query.search or query.created_since or query.updated_since or query.offset > _SHALLOW_OFFSET:
        return "slow"
    given = {"status": query.status, "stage_id": query.stage_id, "lead_line": query.lead_line}
    filters = [column for column, value in given.items() if value]
    if len(filters) > 1:
        return "slow"
    return "read" if query.sort_by in _KEYSET_SORTS.get(filters[0] if filters else None, ()) else "slow"


def described_by_models(dialect: str) -> Callable[..., bool]:
    """Alembic's include_object for comparing a database with the models (`alembic check`,
    tests/test_migrations.py): each database's trigram index of search_text is its own. On
    SQLite it is an FTS5 table (`leads_search` and its shadow tables, migrations 0005, 0009) that
    no model describes, beside an index of (customer_id, search_text) for short searches
    (migration 0007); PostgreSQL's is over the packed text, a generated column of its own
    (migration 0010) that the application never writes nor reads but in a search."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if name in ("search_packed", "ix_leads_search_packed_trgm"):  # PostgreSQL's (0010)
            return False
        if dialect != "sqlite" or name is None:
            return True
        if type_ == "table" and reflected:
            return not name.startswith("leads_search")
        return not (type_ == "index" and name == "ix_leads_customer_search_text")  # 0007

    return include


class LeadDigitGram(Base):
    """Each run of 4 digits in a lead's search_text and search_phone forms (`search_grams`), once
    a lead, beside the lead's updated_at: a query of 4 digits (`search=0958`, a phone's last four)
    is an index range of its customer's matches, by text or phone, already in listLeads' default
    order (updated_at, id), so a search's total and first page read no lead but the page's. Kept
    from `search_grams` by the databases' triggers in the transaction of every write to `leads`
    (migration 0009); about 10 rows a lead with a phone."""

    __tablename__ = "lead_digit_grams"
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    gram: Mapped[str] = mapped_column(String(4), primary_key=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    lead_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)


class LeadCount(Base):
    """How many of a customer's leads share (status, stage, lead_line), kept exact in every lead
    write's transaction: `total` for those filters is a sum over a handful of rows, not a count
    over a million leads."""

    __tablename__ = "lead_counts"

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[str] = mapped_column(String(120), primary_key=True)  # "status|stage_id|lead_line"
    status: Mapped[str] = mapped_column(String(16))
    stage_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lead_line: Mapped[str | None] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(Integer, default=0)
