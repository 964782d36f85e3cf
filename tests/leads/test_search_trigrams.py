"""SQLite asks its FTS5 index for a query's rarest trigrams, adjacent or not
(leads/search.rarest_trigrams): a lead holding every trigram of the query but not the query
itself must still not be found, on either database."""

from __future__ import annotations

from collections import Counter

from fastapi.testclient import TestClient

from mega_crm.leads.search import RAREST_TRIGRAMS, rarest_trigrams
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
