"""listLeads' filters: which are set (a statement's shape), their parameters, and their WHERE
clause, search included (the rule is leads/search.py's)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, func, literal_column, or_, text

from mega_crm.db import Query, RawConnection
from mega_crm.leads.models import Lead
from mega_crm.leads.search import (
    PACKED_OUT,
    RAREST_TRIGRAMS,
    SAMPLE_LEADS,
    packed,
    rarest_trigrams,
    trigram_counts,
)

LEADS: Table = Lead.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class LeadFilters:
    """listLeads' filters as the statements read them; None: not filtered on."""

    status: str | None = None
    stage_id: uuid.UUID | None = None
    # `search`, as leads/search.py reads it (SearchTerms):
    search_text: str | None = None  # folded, indexed: a part of search_text (trigram index)
    search_scan: str | None = None  # folded, not indexed (1-2 characters, `!!!`): a scan
    search_phone_key: str | None = None  # a whole number's last 10 digits: phone_last10
    search_phone_digits: str | None = None  # a phone-like query's digits: a part of search_phone
    created_since: datetime | None = None
    updated_since: datetime | None = None
    lead_line: str | None = None


def searched(f: LeadFilters) -> bool:
    """Whether `f` has a `search` the indexes serve: the page's statement counts its matches
    too (pages.py). A scan (1-2 characters, no word trigram: search_scan) is one that a page
    usually ends early (the matches are many), counted apart, as date filters are."""
    return f.search_scan is None and any(getattr(f, name) is not None for name in INDEXED_SEARCH)


def filter_shape(f: LeadFilters) -> tuple[bool, ...]:
    """Which of FILTER_NAMES are set: what a statement is built (and cached) for."""
    return tuple(getattr(f, name) is not None for name in FILTER_NAMES)


FILTER_NAMES = (
    "status", "stage_id", "lead_line", "created_since", "updated_since",
    "search_text", "search_scan", "search_phone_key", "search_phone_digits",
)  # fmt: skip
INDEXED_SEARCH = ("search_text", "search_phone_key", "search_phone_digits")


def filter_params(customer_id: uuid.UUID, f: LeadFilters, reader: RawConnection) -> dict[str, Any]:
    """The bound parameters of filter_clause() for `f`, the search's trigram patterns (PostgreSQL)
    or MATCH text (SQLite) included."""
    params: dict[str, Any] = {"customer_id": customer_id}
    for name in FILTER_NAMES:
        value = getattr(f, name)
        if value is not None:
            params[name] = value
    if f.search_scan is not None:  # a scan: each lead is tested, no index is asked
        return params
    if not reader.is_sqlite:  # LIKE patterns over the pg_trgm indexes
        if f.search_text is not None:
            grams = rarest_trigrams(f.search_text, _trigram_counts(reader), words=True)
            for i in range(RAREST_TRIGRAMS):  # letters and digits only: nothing to escape
                params[f"search_gram_{i}"] = "%" + grams[min(i, len(grams) - 1)] + "%"
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
# dialect -> (when, counts): rarest_trigrams' estimate (each database's own texts: packed on
# PostgreSQL)
_TRIGRAMS: dict[str, tuple[float, Counter[str]]] = {}
_TRIGRAMS_SECONDS = 3600.0


def _trigram_counts(reader: RawConnection) -> Counter[str]:
    """Trigram frequencies in a sample of the leads (PostgreSQL: of their packed texts, as its
    index holds them), counted again every _TRIGRAMS_SECONDS (a few tens of ms; two threads
    may both count, harmlessly)."""
    dialect = reader.dialect.name
    known = _TRIGRAMS.get(dialect)
    if known is None or time.monotonic() - known[0] > _TRIGRAMS_SECONDS:
        texts = [row[0] for row in reader.all(_SAMPLE[dialect], {"n": SAMPLE_LEADS})]
        known = (time.monotonic(), trigram_counts(texts if reader.is_sqlite else [packed(t) for t in texts]))
        _TRIGRAMS[dialect] = known
    return known[1]


# PostgreSQL's index of search_text (migration 0008) is over this expression: the same text.
PACKED_SQL = "translate(leads.search_text, '{}', '')".format(PACKED_OUT.replace("'", "''"))


def _search_clause(dialect: str, has: dict[str, bool]) -> ColumnElement[bool] | None:
    """The leads a search matches (see leads/search.py), or None without one. The trigram index
    is asked for the query's rarest trigrams (search.rarest_trigrams), and the whole query is
    checked on the rows it finds.
    SQLite: rowids from the FTS5 table leads_search (migration 0005), plus the phone index's
    match, as one IN list the plan starts from; PostgreSQL: LIKE over the trigram-indexed
    packed text (migration 0008) and phone digits (bitmap index scans), or'ed with the phone
    index's match. A query the index cannot serve is a plain substring test of the customer's
    leads."""
    if has["search_scan"]:  # and a phone-like query's phone terms, tested on each lead alike
        position = "instr" if dialect == "sqlite" else "strpos"
        tests = [f"{position}(leads.search_text, :search_scan) > 0"]
        if has["search_phone_digits"]:
            tests.append(f"{position}(leads.search_phone, :search_phone_digits) > 0")
        if has["search_phone_key"]:
            tests.append("leads.phone_last10 = :search_phone_key")
        return text(f"({' OR '.join(tests)})")  # type: ignore[return-value]
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
    # In this order, cheapest first: PostgreSQL checks each found row against them in turn, and
    # the packed text is computed anew for each LIKE (1,233 rows for `7169`: 28 ms text first).
    terms: list[ColumnElement[bool]] = []
    if has["search_phone_key"]:
        terms.append(c.phone_last10 == bindparam("search_phone_key"))
    if has["search_phone_digits"]:
        terms.append(c.search_phone.like(bindparam("search_phone_like")))
    if has["search_text"]:
        packed_text: ColumnElement[str] = literal_column(PACKED_SQL)
        grams = [packed_text.like(bindparam(f"search_gram_{i}")) for i in range(RAREST_TRIGRAMS)]
        terms.append(and_(func.strpos(c.search_text, bindparam("search_text")) > 0, *grams))
    return or_(*terms)


def filter_clause(dialect: str, shape: tuple[bool, ...]) -> ColumnElement[bool]:
    """The WHERE clause of a filter_shape(), the customer's leads only; parameters: filter_params()."""
    has = dict(zip(FILTER_NAMES, shape, strict=True))
    c = LEADS.c
    clauses: list[ColumnElement[bool]] = [c.customer_id == bindparam("customer_id")]
    indexed = any(has[name] for name in INDEXED_SEARCH) and not has["search_scan"]
    if dialect == "sqlite" and indexed:
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
