"""listLeads authorizes a key it has seen from its cache, and confirms it in the page's own
statement (auth.access.KeyCheck): any change to the key or its customer's limits since it was
cached is seen by the next request, as when every request looked the key up."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from mega_crm.admin import service as admin
from mega_crm.api.state import app_state
from mega_crm.auth.models import ApiKey
from mega_crm.auth.scopes import LEADS_WRITE
from mega_crm.db import Database
from mega_crm.security import hash_api_token
from tests.auth.test_auth import assert_error
from tests.fixtures.factories import Tenant, make_tenant

LEADS = "/api/agents/crm/leads"


def _cached_tenant(client: TestClient, db: Database) -> Tenant:
    """A new tenant whose key a listLeads has just cached."""
    tenant = make_tenant(db)
    assert client.get(LEADS, headers=tenant.headers).status_code == 200
    assert app_state(client.app).keys.get(hash_api_token(tenant.token)) is not None  # type: ignore[arg-type]
    return tenant


def test_a_deleted_key_is_refused_on_the_next_request(client: TestClient, db: Database) -> None:
    tenant = _cached_tenant(client, db)
    with db.write_session() as session:
        session.execute(delete(ApiKey).where(ApiKey.id == tenant.key_id))
    assert_error(client.get(LEADS, headers=tenant.headers), 401, "authentication_error")
    assert app_state(client.app).keys.get(hash_api_token(tenant.token)) is None  # type: ignore[arg-type]


def test_a_scope_taken_away_is_refused_on_the_next_request(client: TestClient, db: Database) -> None:
    tenant = _cached_tenant(client, db)
    with db.write_session() as session:
        session.execute(update(ApiKey).where(ApiKey.id == tenant.key_id).values(scopes=[LEADS_WRITE]))
    assert_error(client.get(LEADS, headers=tenant.headers), 403, "authorization_error")


def test_new_limits_apply_from_the_next_request(client: TestClient, db: Database) -> None:
    tenant = _cached_tenant(client, db)
    admin.set_limits(db, tenant.customer_id, "3/minute", None)
    answers = [client.get(LEADS, headers=tenant.headers) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3"
    assert [r.headers["RateLimit-Remaining"] for r in answers[:3]] == ["2", "1", "0"]


@pytest.mark.parametrize("cached", [False, True], ids=["looked-up", "cached"])
def test_a_refused_request_is_counted_once(client: TestClient, db: Database, cached: bool) -> None:
    """A 403 judged on a cached key is judged again on the key looked up (it may have changed),
    but counted against the limit once: the same as with a key looked up."""
    tenant = _cached_tenant(client, db) if cached else make_tenant(db)
    other = make_tenant(db)
    wrong = {**tenant.headers, "x-customer-id": str(other.customer_id)}
    first, second = client.get(LEADS, headers=wrong), client.get(LEADS, headers=wrong)
    assert_error(first, 403, "authorization_error")
    assert_error(second, 403, "authorization_error")
    assert int(first.headers["RateLimit-Remaining"]) - int(second.headers["RateLimit-Remaining"]) == 1


def test_a_key_of_another_customer_reads_nothing_from_the_cache(client: TestClient, db: Database) -> None:
    """A cached key is still held to its own customer: its token with another customer's id is
    403 with no leads, however often it was cached."""
    tenant = _cached_tenant(client, db)
    other = make_tenant(db)
    r = client.get(LEADS, headers={**tenant.headers, "x-customer-id": str(other.customer_id)})
    assert_error(r, 403, "authorization_error")
    assert "leads" not in r.json()


def test_other_routes_look_the_key_up_every_time(client: TestClient, db: Database) -> None:
    """Only a route that confirms the key in its own statement uses the cache: a revoked key
    cached by listLeads is refused by createLead at once."""
    tenant = _cached_tenant(client, db)
    admin.revoke_key(db, tenant.key_id)
    r = client.post(LEADS, headers=tenant.headers, json={"contact_email": "x@example.com"})
    assert_error(r, 401, "authentication_error")
    assert_error(client.get(LEADS, headers=tenant.headers), 401, "authentication_error")


def test_the_cache_holds_only_live_keys(client: TestClient, db: Database) -> None:
    tenant = make_tenant(db)
    admin.revoke_key(db, tenant.key_id)
    assert_error(client.get(LEADS, headers=tenant.headers), 401, "authentication_error")
    assert app_state(client.app).keys.get(hash_api_token(tenant.token)) is None  # type: ignore[arg-type]
