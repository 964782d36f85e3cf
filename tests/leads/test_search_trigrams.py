"""SQLite asks its FTS5 index for a query's rarest trigrams, adjacent or not
(leads/search.rarest_trigrams): a lead holding every trigram of the query but not the query
itself must still not be found, on either database."""

from __future__ import annotations

import re
from collections import Counter

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from mega_crm.leads.search import PROBE_CHARS, RAREST_TRIGRAMS, probe, rarest_trigrams
from tests.fixtures.factories import Tenant
from tests.leads.api import create
from tests.leads.test_search import found

ALNUM_RUN = re.compile(r"[^\W_]{3}")


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


def test_postgresql_is_never_asked_for_a_window_pg_trgm_cannot_index() -> None:
    # pg_trgm makes trigrams of letters and digits only: punctuation looks "rare" in the sample
    # but would leave the index nothing to read (a scan of the customer's leads).
    counts = Counter({"zzq": 9, "zqx": 9, "qxj": 9})
    assert probe("!!!!!!zzqxj", counts) == "!!!zzq"
    assert probe("zzqxj!!!!!!", counts) == "qxj!!!"
    assert probe("a-b-c-d-e-fgh", Counter()) == "-e-fgh"


@given(st.text(alphabet="!.-_ abcxyz019", min_size=7, max_size=30))
def test_a_window_with_three_letters_or_digits_wins_when_there_is_one(query: str) -> None:
    window = probe(query, Counter())
    assert window in query
    if any(
        ALNUM_RUN.search(query[i : i + PROBE_CHARS]) for i in range(len(query) - PROBE_CHARS + 1)
    ):
        assert ALNUM_RUN.search(window)
