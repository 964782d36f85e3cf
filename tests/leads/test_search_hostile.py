"""`search` on listLeads, tried as a careless client or an attacker would (hostile helper): each
test is a request that broke the rule of README "Pulling leads" on a real server (SQLite and
PostgreSQL), reduced to the few leads that show it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.leads.search import MAX_PHONE_DIGITS, parse_search
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import Tenant, make_tenant
from tests.leads.api import LEADS, create
from tests.leads.test_search import found

Regional = Callable[[str], TestClient]


@pytest.fixture
def regional(db: Database) -> Iterator[Regional]:
    """A client of an app whose MEGA_DEFAULT_PHONE_REGION is the region given."""
    clients: list[ContractClient] = []

    def make(region: str) -> TestClient:
        app = create_app(make_settings(db.url, default_phone_region=region), db)
        clients.append(ContractClient(app, raise_server_exceptions=False))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


@pytest.mark.parametrize("typed", ["55/01", "(55)01", "20/65/55", "+1 (20) 65"])
def test_a_partial_number_written_with_slashes_or_brackets_matches_phones(
    client: TestClient, tenant: Tenant, typed: str
) -> None:
    """README: a query of digits and phone punctuation (`+ ( ) . - /`, spaces) with at least 4
    digits matches the phones whose digits contain its digits. When `/` or brackets leave no
    three letters or digits in a row, the query is a text scan and its digits are dropped:
    the phone is not found (total 0)."""
    lead = create(client, tenant, {"contact_name": "Caller", "contact_phone": "(206) 555-0199"})
    create(client, tenant, {"contact_name": "Someone", "contact_phone": "(415) 777-2671"})
    assert found(client, tenant, typed) == [lead["id"]], typed


def test_a_french_number_written_with_slashes_is_found(db: Database, regional: Regional) -> None:
    """README: with FR, a query the write path reads as a phone number matches the leads with
    that number. `06/12/34/56/78` is read as +33612345678 (the write path accepts it), but
    has no three digits in a row between its slashes: it scans the text and finds nothing."""
    paris = regional("FR")
    tenant = make_tenant(db)
    lead = create(paris, tenant, {"contact_name": "Agnès", "contact_phone": "06/12/34/56/78"})
    assert lead["contact_phone"] == "+33612345678"
    for typed in ("06/12/34/56/78", "06/12/34"):
        assert found(paris, tenant, typed) == [lead["id"]], typed


def test_a_query_with_more_digits_than_any_phone_is_no_phone_lookup(
    client: TestClient, tenant: Tenant
) -> None:
    """`1` x 60,000 (a request line uvicorn accepts) was looked up as a part of phones: on
    SQLite an FTS5 phrase of 59,998 trigrams, seconds per request, and two such requests held
    the slow lane so that other customers' searches were 503s. No stored phone form has more
    than MAX_PHONE_DIGITS digits, so such a query is a part of none: it is text only."""
    create(client, tenant, {"contact_phone": "+1 206 555 1111"})
    for digits in (MAX_PHONE_DIGITS + 1, 60_000):
        terms = parse_search("1" * digits, "US")
        assert terms.phone_digits is None
        assert terms.phone_key is None
        r = client.get(LEADS, params={"search": "1" * digits, "limit": 1}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.json()["total"] == 0
    assert parse_search("1" * MAX_PHONE_DIGITS, "US").phone_digits == "1" * MAX_PHONE_DIGITS


def test_query_bytes_that_are_not_utf8_are_refused(client: TestClient, tenant: Tenant) -> None:
    """Starlette read them as U+FFFD, and `search=%FF` found a lead named with U+FFFD (mojibake
    from an import, which the write path accepts). Now a 400, on every parameter and route; a
    U+FFFD typed as UTF-8 (%EF%BF%BD) is text like any other."""
    create(client, tenant, {"contact_name": "Jos\ufffd Mojibake"})
    for raw in ("search=%FF", "search=%C3", "search=Jos%FF", "status=%C3%28", "search=%ED%A0%80"):
        r = client.get(f"{LEADS}?{raw}", headers=tenant.headers)
        assert r.status_code == 400, (raw, r.text)
        assert r.json()["error"]["message"].startswith("The query string is not UTF-8"), r.text
    r = client.get(f"{LEADS}?search=Jos%EF%BF%BD", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1
