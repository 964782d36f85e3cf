"""listLeads and createLead authorize a key they have seen from a cache, and confirm it in
their own statements (auth.access.KeyCheck: the page's statement; the write's first round
trip): any change to the key or its customer's limits since it was cached is seen by the next
request, as when every request looked the key up."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, update

from mega_crm.admin import service as admin
from mega_crm.api.state import app_state
from mega_crm.auth.models import ApiKey
from mega_crm.auth.scopes import LEADS_READ, LEADS_WRITE
from mega_crm.db import Database
from mega_crm.leads import service
from mega_crm.leads.models import Lead
from mega_crm.security import hash_api_token
from tests.auth.test_auth import assert_error
from tests.fixtures.factories import Tenant, lead, make_tenant

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
    cached by listLeads is refused by bulkImportLeads at once."""
    tenant = _cached_tenant(client, db)
    admin.revoke_key(db, tenant.key_id)
    r = client.post(
        f"{LEADS}/bulk", headers=tenant.headers, json={"leads": [{"contact_email": "x@example.com"}]}
    )
    assert_error(r, 401, "authentication_error")
    assert_error(client.get(LEADS, headers=tenant.headers), 401, "authentication_error")


# --- createLead: the key confirmed in the write's first round trip ---------------------------

KEYED = "Idempotency-Key"


def _create(
    client: TestClient, tenant: Tenant, key: str | None = None, body: dict[str, Any] | None = None
) -> Any:
    headers = {**tenant.headers, **({KEYED: key} if key else {})}
    return client.post(LEADS, headers=headers, json=body or lead())


@pytest.mark.parametrize("key", [None, "a-key"], ids=["unkeyed", "keyed"])
def test_a_create_refuses_a_key_revoked_since_it_was_cached(
    client: TestClient, db: Database, key: str | None
) -> None:
    tenant = _cached_tenant(client, db)
    assert _create(client, tenant).status_code == 201  # cached: confirmed in its write
    admin.revoke_key(db, tenant.key_id)
    for _ in range(2):
        r = _create(client, tenant, key)
        assert_error(r, 401, "authentication_error")
        assert "RateLimit-Remaining" not in r.headers  # a 401 is never counted
    assert app_state(client.app).keys.get(hash_api_token(tenant.token)) is None  # type: ignore[arg-type]
    with db.read_session() as session:  # nothing of the refused creates was written
        assert (
            session.scalar(
                select(func.count()).select_from(Lead).where(Lead.customer_id == tenant.customer_id)
            )
            == 1
        )


def test_a_revoked_key_gets_no_replay_of_its_stored_answer(client: TestClient, db: Database) -> None:
    """The stored response of an Idempotency-Key is not replayed to a key revoked since: the
    replay's transaction confirms the key too."""
    tenant = _cached_tenant(client, db)
    body = lead()
    first = _create(client, tenant, "replayed", body)
    assert first.status_code == 201, first.text
    again = _create(client, tenant, "replayed", body)
    assert again.headers.get("Idempotent-Replayed") == "true"
    admin.revoke_key(db, tenant.key_id)
    assert_error(_create(client, tenant, "replayed", body), 401, "authentication_error")


def test_a_create_is_refused_by_a_scope_taken_away_and_counted_by_new_limits(
    client: TestClient, db: Database
) -> None:
    tenant = _cached_tenant(client, db)
    assert _create(client, tenant).status_code == 201
    admin.set_limits(db, tenant.customer_id, "3/minute", None)
    answers = [_create(client, tenant) for _ in range(4)]
    assert [r.status_code for r in answers] == [201, 201, 201, 429]
    assert [r.headers["RateLimit-Remaining"] for r in answers[:3]] == ["2", "1", "0"]
    admin.set_limits(db, tenant.customer_id, "50/minute", None)
    with db.write_session() as session:
        session.execute(update(ApiKey).where(ApiKey.id == tenant.key_id).values(scopes=[LEADS_READ]))
    assert_error(_create(client, tenant), 403, "authorization_error")


def test_a_refused_create_with_a_cached_key_is_counted_once(client: TestClient, db: Database) -> None:
    """A create refused (400) before its write confirmed the cached key is judged again on the
    key looked up, and counted once."""
    tenant = _cached_tenant(client, db)
    answers = [_create(client, tenant, body={"contact_email": "not an email"}) for _ in range(2)]
    for r in answers:
        assert_error(r, 400, "invalid_request_error")
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in answers]
    assert remaining[0] - remaining[1] == 1


@pytest.mark.parametrize("key", [None, "a-key"], ids=["unkeyed", "keyed"])
@pytest.mark.parametrize(
    "body",
    [{"contact_email": "not an email"}, {"contact_name": "Staged", "stage_slug": "no-such-stage"}],
    ids=["refused-before-the-write", "refused-after-its-first-statement"],
)
def test_a_refused_create_with_a_key_revoked_since_it_was_cached_is_401(
    client: TestClient, db: Database, key: str | None, body: dict[str, Any]
) -> None:
    """Without an Idempotency-Key, the create's first statement confirms the cached key
    (session 11); a body refused before or after that statement is judged on the key as it is
    now: revoked, 401 every time, never the 400."""
    tenant = _cached_tenant(client, db)
    admin.revoke_key(db, tenant.key_id)
    for _ in range(2):
        assert_error(_create(client, tenant, key, body), 401, "authentication_error")


def test_the_cache_holds_only_live_keys(client: TestClient, db: Database) -> None:
    tenant = make_tenant(db)
    admin.revoke_key(db, tenant.key_id)
    assert_error(client.get(LEADS, headers=tenant.headers), 401, "authentication_error")
    assert app_state(client.app).keys.get(hash_api_token(tenant.token)) is None  # type: ignore[arg-type]


# --- found by a hostile review ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"limits": "100\u2003per\u2003minute"}, id="limit-with-unicode-spaces"),
        pytest.param({"scopes": ["public_api:leads:read", "lecture_é"]}, id="non-ascii-scope"),
    ],
)
def test_a_key_whose_state_is_not_ascii_keeps_working(
    client: TestClient, db: Database, change: dict[str, object]
) -> None:
    """The state is compared as bytes: hmac.compare_digest refuses str with non-ASCII
    characters, and every request after the first was a 500."""
    tenant = make_tenant(db)
    if "limits" in change:
        admin.set_limits(db, tenant.customer_id, str(change["limits"]), None)
    else:
        with db.write_session() as session:
            session.execute(update(ApiKey).where(ApiKey.id == tenant.key_id).values(scopes=change["scopes"]))
    assert [client.get(LEADS, headers=tenant.headers).status_code for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize("query", ["cursor=garbage", "status=bogus", "limit=0", "offset=1&cursor=x"])
def test_a_revoked_key_is_401_even_for_a_request_refused_before_its_statement(
    client: TestClient, db: Database, query: str
) -> None:
    """A request refused (400) before the page's statement confirmed the cached key is judged
    again on the key looked up: a revoked key is 401, as without the cache, every time."""
    tenant = _cached_tenant(client, db)
    admin.revoke_key(db, tenant.key_id)
    for _ in range(2):
        r = client.get(f"{LEADS}?{query}", headers=tenant.headers)
        assert_error(r, 401, "authentication_error")
        assert "RateLimit-Remaining" not in r.headers  # a 401 is never counted


def test_a_rescoped_key_is_403_for_a_bad_query_too(client: TestClient, db: Database) -> None:
    tenant = _cached_tenant(client, db)
    with db.write_session() as session:
        session.execute(update(ApiKey).where(ApiKey.id == tenant.key_id).values(scopes=[LEADS_WRITE]))
    assert_error(client.get(f"{LEADS}?cursor=garbage", headers=tenant.headers), 403, "authorization_error")


def test_a_bad_query_with_an_unchanged_cached_key_is_400_counted_once(
    client: TestClient, db: Database
) -> None:
    tenant = _cached_tenant(client, db)
    answers = [client.get(f"{LEADS}?cursor=garbage", headers=tenant.headers) for _ in range(2)]
    for r in answers:
        assert_error(r, 400, "invalid_request_error")
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in answers]
    assert remaining[0] - remaining[1] == 1


def test_the_request_that_finds_its_key_revoked_is_not_counted(client: TestClient, db: Database) -> None:
    tenant = _cached_tenant(client, db)
    before = int(client.get(LEADS, headers=tenant.headers).headers["RateLimit-Remaining"])
    admin.revoke_key(db, tenant.key_id)
    r = client.get(LEADS, headers=tenant.headers)
    assert_error(r, 401, "authentication_error")
    assert "RateLimit-Remaining" not in r.headers
    with db.write_session() as session:  # the key back: its budget shows what was counted
        session.execute(update(ApiKey).where(ApiKey.id == tenant.key_id).values(revoked_at=None))
    after = int(client.get(LEADS, headers=tenant.headers).headers["RateLimit-Remaining"])
    assert after == before - 1  # only this last request


def test_the_request_that_finds_new_limits_is_counted_in_the_new_windows_only(
    client: TestClient, db: Database
) -> None:
    """Counted once per window of the limits it is judged under: the windows of the old limits
    it was counted in first are given back."""
    tenant = make_tenant(db, limits=("50/minute;1000/hour", None))
    for _ in range(2):
        assert client.get(LEADS, headers=tenant.headers).status_code == 200  # cached from the first
    admin.set_limits(db, tenant.customer_id, "4/minute", None)
    assert client.get(LEADS, headers=tenant.headers).headers["RateLimit-Remaining"] == "3"
    admin.set_limits(db, tenant.customer_id, "50/minute;1000/hour", None)
    assert client.get(LEADS, headers=tenant.headers).headers["RateLimit-Remaining"] == "47"


@pytest.mark.parametrize(
    ("key", "second"),
    [
        pytest.param(
            None, {"contact_email": "b@example.com", "stage_slug": "no-such-stage"}, id="unknown-stage"
        ),
        pytest.param("one-key", {"contact_email": "c@example.com"}, id="key-reused-with-another-body"),
    ],
)
def test_a_create_refused_in_its_write_runs_the_write_once(
    client: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch, key: str | None, second: dict[str, Any]
) -> None:
    """A refusal raised inside the write (400, 409) is judged on the key confirmed in that same
    transaction: the request is not run a second time with the key looked up (found by a
    hostile review: every refused create did its write twice)."""
    tenant = _cached_tenant(client, db)
    assert _create(client, tenant, key, {"contact_email": "a@example.com"}).status_code == 201
    writes: list[int] = []
    real = service.create_lead

    def counting(*args: Any, **kwargs: Any) -> Any:
        writes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "create_lead", counting)
    r = _create(client, tenant, key, second)
    assert r.status_code in (400, 409), r.text
    assert len(writes) <= 1  # the 409 is judged before any work; the 400 in the one write
    assert app_state(client.app).keys.get(hash_api_token(tenant.token)) is not None  # type: ignore[arg-type]
