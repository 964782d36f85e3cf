"""Each index is asked for a query's rarest trigrams, adjacent or not
(leads/search.rarest_trigrams): a lead holding every trigram of the query but not the query
itself must still not be found, on either database."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text as sql_text

from mega_crm.db import Database
from mega_crm.leads.filters import PACKED_SQL
from mega_crm.leads.search import (
    RAREST_TRIGRAMS,
    fold,
    packed,
    parse_search,
    rarest_trigrams,
    word_trigrams,
)
from tests.fixtures.factories import Tenant
from tests.leads.api import create
from tests.leads.test_search import found


def test_the_rarest_trigrams_are_asked_for_in_order_of_rarity() -> None:
    counts = Counter({"abc": 50, "bcd": 3, "cde": 10, "def": 0})
    assert rarest_trigrams("abcdef", counts) == ["def", "bcd", "cde"][:RAREST_TRIGRAMS]
    assert rarest_trigrams("abc", counts) == ["abc"]
    assert rarest_trigrams("aaaa", Counter()) == ["aaa"]  # each trigram once


def test_a_lead_with_every_trigram_but_not_the_query_is_not_found(client: TestClient, tenant: Tenant) -> None:
    # "abcab": abc, bca, cab. "Xabcax Cabx" holds all three, never in a row.
    wanted = create(client, tenant, {"contact_name": "Abcab Zed"})
    create(client, tenant, {"contact_name": "Xabcax Cabx"})
    assert found(client, tenant, "abcab") == [wanted["id"]]
    assert found(client, tenant, "ABCAB Z") == [wanted["id"]]


def test_postgresql_is_asked_only_for_trigrams_pg_trgm_indexes() -> None:
    # pg_trgm makes trigrams of letters and digits only: punctuation looks "rare" in the sample
    # but would leave the index nothing to read (a scan of every lead).
    counts = Counter({"zzq": 9, "zqx": 9, "qxj": 9, "!!z": 0, "!zz": 0})
    assert rarest_trigrams("!!!!!!zzqxj", counts, words=True) == ["qxj", "zqx", "zzq"]
    assert rarest_trigrams("a-b-c-d-e-fgh", Counter(), words=True) == ["abc", "bcd", "cde"]
    # ASCII first: a database whose LC_CTYPE is C indexes no other letters
    assert rarest_trigrams("žžžabc", Counter({"abc": 99}), words=True)[0] == "abc"


@given(st.text(alphabet="!.-_ abcxyzé019", min_size=1, max_size=30))
def test_a_query_without_a_word_trigram_scans(query: str) -> None:
    """The same rule on both databases: the index serves a query with three letters or digits
    in a row once separators are out; any other is a scan of the customer's leads."""
    terms = parse_search(query, "US")
    folded = fold(query)
    if terms.text is not None:
        assert word_trigrams(folded)
        assert len(folded) >= 3
    elif folded:
        assert terms.scan_text == folded


def test_queries_the_index_cannot_serve_are_still_found(client: TestClient, tenant: Tenant) -> None:
    wanted = create(client, tenant, {"contact_name": "A.B Zed!!!"})
    create(client, tenant, {"contact_name": "AB Zed"})
    assert found(client, tenant, "a.b") == [wanted["id"]]
    assert found(client, tenant, "!!!") == [wanted["id"]]
    assert found(client, tenant, "d!!") == [wanted["id"]]


def test_postgresql_searches_through_its_packed_trigram_index(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    """The search's statement names migration 0010's indexed column: PostgreSQL would
    otherwise scan in silence."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL's index (SQLite's is the FTS5 table)")
    wanted = create(client, tenant, {"contact_name": "Richard Anderson-White"})
    assert found(client, tenant, "chard anderson-whi") == [wanted["id"]]
    with db.engine.connect() as connection:
        # Few leads: the planner would rather read them all than any index.
        connection.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in connection.exec_driver_sql(
                f"EXPLAIN SELECT count(*) FROM leads WHERE {PACKED_SQL} LIKE %(gram)s", {"gram": "%rda%"}
            )
        )
    assert "ix_leads_search_packed_trgm" in plan, plan


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(str.strip),
    local=st.from_regex(r"[a-z0-9]{1,6}([._'+-][a-z0-9]{1,6}){0,2}", fullmatch=True),
)
def test_postgresql_stores_the_packed_text_the_application_computes(
    client: TestClient, db: Database, tenant: Tenant, name: str, local: str
) -> None:
    """leads.search_packed (migration 0010: a generated column, with its own copy of the
    separators) is search.packed(search_text), as the trigram estimate counts it."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL's column (SQLite's index is the FTS5 table)")
    email = f"{local}.{uuid.uuid4().hex[:8]}@example.com"  # a new lead each time, not a merge
    lead = create(client, tenant, {"contact_name": name, "contact_email": email})
    with db.read_session() as session:
        folded, stored = session.execute(
            sql_text("SELECT search_text, search_packed FROM leads WHERE id = :id"),
            {"id": uuid.UUID(lead["id"])},
        ).one()
    assert stored == packed(folded), (name, folded)
