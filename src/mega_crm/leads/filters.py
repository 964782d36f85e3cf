"""listLeads' filters: which are set (a statement's shape), their parameters, and their WHERE
clause, search included (the rule is leads/search.py's)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, func, literal_column, select, text

from mega_crm.db import Query, RawConnection
from mega_crm.leads.models import Lead, LeadDigitGram
from mega_crm.leads.search import (
    PARTIAL_PHONE_DIGITS,
    RAREST_TRIGRAMS,
    SAMPLE_LEADS,
    packed,
    rarest_trigrams,
    trigram_counts,
)

LEADS: Table = Lead.__table__  # type: ignore[assignment]
GRAMS: Table = LeadDigitGram.__table__  # type: ignore[assignment]


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

    @property
    def search_gram(self) -> str | None:
        """The query when it is 4 digits and nothing else (`0958`, a phone's last four): then
        lead_digit_grams' rows of it are exactly its matches, by text and by phone."""
        digits = self.search_phone_digits
        alone = self.search_text in (None, digits) and self.search_scan is None
        return digits if alone and digits is not None and len(digits) == PARTIAL_PHONE_DIGITS else None


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
    "search_text", "search_scan", "search_phone_key", "search_phone_digits", "search_gram",
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
    if f.search_phone_digits is not None:  # lead_digit_grams' rows of its first and last grams
        params["search_gram_first"] = f.search_phone_digits[:PARTIAL_PHONE_DIGITS]
        params["search_gram_last"] = f.search_phone_digits[-PARTIAL_PHONE_DIGITS:]
    if f.search_text is None:
        return params
    if not reader.is_sqlite:  # LIKE patterns over the pg_trgm index
        grams = rarest_trigrams(f.search_text, _trigram_counts(reader), words=True)
        for i in range(RAREST_TRIGRAMS):  # letters and digits only: nothing to escape
            params[f"search_gram_{i}"] = "%" + grams[min(i, len(grams) - 1)] + "%"
    else:  # the FTS5 query: the text's rarest trigrams
        grams = rarest_trigrams(f.search_text, _trigram_counts(reader))
        params["search_match"] = " AND ".join(_fts_string(g) for g in grams)
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


# PostgreSQL's packed(search_text), stored and trigram-indexed (migration 0010; the model does not
# describe it, see described_by_models).
PACKED_SQL = "leads.search_packed"


def _scan_clause(dialect: str, has: dict[str, bool]) -> ColumnElement[bool]:
    """A search the indexes cannot serve (search_scan): a substring test of each of the
    customer's leads, and a phone-like query's phone terms tested on each lead alike."""
    position = "instr" if dialect == "sqlite" else "strpos"
    tests = [f"{position}(leads.search_text, :search_scan) > 0"]
    if has["search_phone_digits"]:
        tests.append(f"{position}(leads.search_phone, :search_phone_digits) > 0")
    if has["search_phone_key"]:
        tests.append("leads.phone_last10 = :search_phone_key")
    return text(f"({' OR '.join(tests)})")  # type: ignore[return-value]


@dataclass(frozen=True)
class SearchTerm:
    """One way an indexed search matches (see leads/search.py), as conditions on `leads`.
    clause: the index's rows, checked; test: whether a lead matches this way, the row alone
    (no index: what later terms exclude, so that the terms' matches are disjoint);
    by_rows: the clause is an IN list of rows the plan must start from (filter_clause);
    kind: "digits" (phone digits), "key" (a whole number) or "text"."""

    clause: ColumnElement[bool]
    test: ColumnElement[bool]
    by_rows: bool
    kind: str


def search_terms(dialect: str, shape: tuple[bool, ...]) -> list[SearchTerm]:
    """The terms of an indexed search (searched()): its matches are their union.
    Phone digits: the leads in lead_digit_grams (migration 0009) under the query's first and last
    four digits, their digits checked. A whole phone number: the phone_last10 index. Text:
    SQLite's FTS5 table leads_search (migrations 0005, 0009) or PostgreSQL's trigram index of the
    packed text (migration 0010) asked for the query's rarest trigrams (search.rarest_trigrams),
    the whole query checked on the rows they find."""
    has = dict(zip(FILTER_NAMES, shape, strict=True))
    c = LEADS.c
    position = func.instr if dialect == "sqlite" else func.strpos
    terms = []
    if has["search_phone_digits"]:
        leads_of = [
            select(GRAMS.c.lead_id).where(
                GRAMS.c.customer_id == bindparam("customer_id"), GRAMS.c.gram == bindparam(name)
            )
            for name in ("search_gram_first", "search_gram_last")
        ]
        test = position(c.search_phone, bindparam("search_phone_digits")) > 0
        found = and_(c.id.in_(leads_of[0].intersect(leads_of[1])), test)
        terms.append(SearchTerm(found, test, by_rows=True, kind="digits"))
    if has["search_phone_key"]:
        test = c.phone_last10 == bindparam("search_phone_key")
        terms.append(SearchTerm(test, test, by_rows=False, kind="key"))
    if has["search_text"]:
        test = position(c.search_text, bindparam("search_text")) > 0
        if dialect == "sqlite":
            fts = "SELECT rowid FROM leads_search WHERE leads_search MATCH :search_match"
            rows = text(f"leads.rowid IN ({fts})")
            terms.append(SearchTerm(and_(rows, test), test, by_rows=True, kind="text"))
        else:
            packed_text: ColumnElement[str] = literal_column(PACKED_SQL)
            grams = [packed_text.like(bindparam(f"search_gram_{i}")) for i in range(RAREST_TRIGRAMS)]
            terms.append(SearchTerm(and_(test, *grams), test, by_rows=False, kind="text"))
    return terms


def filter_clause(dialect: str, shape: tuple[bool, ...], *, by_rows: bool = False) -> ColumnElement[bool]:
    """The WHERE clause of a filter_shape(), the customer's leads only, a scan's search included
    (an indexed search's are search_terms(), each ANDed with this); parameters: filter_params().
    `by_rows`: for a SearchTerm.by_rows, whose rows SQLite's plan must start from: it would
    rather walk one of the customer's indexes in page order, testing every lead (a scan). Unary
    + keeps it from using customer_id (every leads index starts with it) to do so."""
    has = dict(zip(FILTER_NAMES, shape, strict=True))
    c = LEADS.c
    clauses: list[ColumnElement[bool]] = [c.customer_id == bindparam("customer_id")]
    if dialect == "sqlite" and by_rows:
        clauses[0] = text("+leads.customer_id = :customer_id")  # type: ignore[call-overload]
    for name in ("status", "stage_id", "lead_line"):
        if has[name]:
            clauses.append(c[name] == bindparam(name))
    if has["created_since"]:
        clauses.append(c.created_at >= bindparam("created_since", type_=c.created_at.type))
    if has["updated_since"]:
        clauses.append(c.updated_at >= bindparam("updated_since", type_=c.updated_at.type))
    if has["search_scan"]:
        clauses.append(_scan_clause(dialect, has))
    return and_(*clauses)


def only_searched(shape: tuple[bool, ...]) -> bool:
    """Whether a filter_shape() filters by its search alone (no status, date…)."""
    has = dict(zip(FILTER_NAMES, shape, strict=True))
    return not any(has[name] for name in FILTER_NAMES if not name.startswith("search_"))
