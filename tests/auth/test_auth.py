"""Keys, customers and scopes on every lead route: 401 before 403, and nothing written when refused."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mega_crm.admin import service as admin
from mega_crm.api.state import app_state
from mega_crm.auth.models import ApiKey
from mega_crm.auth.scopes import LEADS_READ, LEADS_WRITE, WEBHOOKS_MANAGE
from mega_crm.db import Database
from tests.conftest import ContractClient
from tests.fixtures.factories import Tenant, issue_token, lead, make_tenant

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"


class Route:
    def __init__(self, method: str, path: str, scope: str, ok: int) -> None:
        self.method, self.path, self.scope, self.ok = method, path, scope, ok

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"

    def call(self, client: Any, headers: dict[str, str], **kwargs: Any) -> Any:
        if self.method == "GET":
            return client.get(self.path, headers=headers, **kwargs)
        body = {"leads": [lead()]} if self.path == BULK else lead()
        kwargs.setdefault("json", body)
        return client.post(self.path, headers=headers, **kwargs)


ROUTES = [
    pytest.param(Route("GET", LEADS, LEADS_READ, 200), id="listLeads"),
    pytest.param(Route("POST", LEADS, LEADS_WRITE, 201), id="createLead"),
    pytest.param(Route("POST", BULK, LEADS_WRITE, 200), id="bulkImportLeads"),
]


def lead_count(client: Any, tenant: Tenant) -> int:
    r = client.get(LEADS, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def assert_error(r: Any, status: int, error_type: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert r.json() == {"error": {"type": error_type, "code": status, "message": error["message"]}}
    assert error["message"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_live_key_with_the_scope_is_let_in(client: TestClient, tenant: Tenant, route: Route) -> None:
    r = route.call(client, tenant.headers)
    assert r.status_code == route.ok, r.text


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer ", id="scheme-and-space"),
        pytest.param("Token {token}", id="wrong-scheme"),
        pytest.param("Basic {token}", id="basic"),
        pytest.param("{token}", id="no-scheme"),
        pytest.param("Bearer {token}x", id="too-long"),
        pytest.param("Bearer {token_short}", id="too-short"),
        pytest.param("Bearer {token_upper}", id="uppercase-hex"),
        pytest.param("Bearer {token_prefix}", id="wrong-prefix"),
        pytest.param("Bearer {token} {token}", id="two-tokens"),
    ],
)
def test_missing_or_malformed_token_is_401(
    client: TestClient, tenant: Tenant, route: Route, authorization: str | None
) -> None:
    token = tenant.token
    headers = {"x-customer-id": str(tenant.customer_id)}
    if authorization is not None:
        headers["Authorization"] = authorization.format(
            token=token,
            token_short=token[:-1],
            token_upper="mega_" + token[5:].upper(),
            token_prefix="mage_" + token[5:],
        )
    r = route.call(client, headers)
    assert_error(r, 401, "authentication_error")
    assert "ratelimit-limit" not in r.headers  # not authenticated: nothing to count against
    assert lead_count(client, tenant) == 0


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_token_is_401(client: TestClient, tenant: Tenant, route: Route) -> None:
    headers = {**tenant.headers, "Authorization": f"Bearer mega_{secrets.token_hex(32)}"}
    assert_error(route.call(client, headers), 401, "authentication_error")
    assert lead_count(client, tenant) == 0


@pytest.mark.parametrize("route", ROUTES)
def test_scheme_is_case_insensitive(client: TestClient, tenant: Tenant, route: Route) -> None:
    headers = {**tenant.headers, "Authorization": f"bearer {tenant.token}"}
    assert route.call(client, headers).status_code == route.ok


@pytest.mark.parametrize("route", ROUTES)
def test_revocation_takes_effect_on_the_next_request(client: TestClient, db: Database, route: Route) -> None:
    tenant = make_tenant(db)
    assert route.call(client, tenant.headers).status_code == route.ok
    admin.revoke_key(db, tenant.key_id)
    r = route.call(client, tenant.headers)
    assert_error(r, 401, "authentication_error")
    # The customer's other keys keep working.
    assert route.call(client, issue_token(db, tenant, [route.scope])).status_code == route.ok


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "customer_header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("not-a-uuid", id="not-a-uuid"),
        pytest.param("12345", id="number"),
        pytest.param("{cid}x", id="uuid-plus-garbage"),
        # Other spellings Python's uuid.UUID() would take: only the 8-4-4-4-12 form is a UUID here.
        pytest.param("{{{cid}}}", id="braces"),
        pytest.param("urn:uuid:{cid}", id="urn"),
        pytest.param("{hex}", id="no-hyphens"),
    ],
)
def test_missing_or_malformed_customer_id_is_401(
    client: TestClient, tenant: Tenant, route: Route, customer_header: str | None
) -> None:
    headers = {"Authorization": f"Bearer {tenant.token}"}
    if customer_header is not None:
        headers["x-customer-id"] = customer_header.format(cid=tenant.customer_id, hex=tenant.customer_id.hex)
    assert_error(route.call(client, headers), 401, "authentication_error")
    assert lead_count(client, tenant) == 0


@pytest.mark.parametrize("route", ROUTES)
def test_the_customer_id_may_be_upper_case(client: TestClient, tenant: Tenant, route: Route) -> None:
    """UUIDs are case-insensitive on input (RFC 9562)."""
    headers = {"Authorization": f"Bearer {tenant.token}", "x-customer-id": str(tenant.customer_id).upper()}
    assert route.call(client, headers).status_code == route.ok


@pytest.mark.parametrize("route", ROUTES)
def test_a_key_without_the_routes_scope_is_403(
    client: TestClient, db: Database, tenant: Tenant, route: Route
) -> None:
    other_scopes = [s for s in (LEADS_READ, LEADS_WRITE, WEBHOOKS_MANAGE) if s != route.scope]
    for scopes in ([WEBHOOKS_MANAGE], other_scopes):
        r = route.call(client, issue_token(db, tenant, scopes))
        assert_error(r, 403, "authorization_error")
        assert route.scope in r.json()["error"]["message"]
    assert lead_count(client, tenant) == 0
    # ...and exactly the route's scope is enough.
    assert route.call(client, issue_token(db, tenant, [route.scope])).status_code == route.ok


@pytest.mark.parametrize("route", ROUTES)
def test_a_key_of_another_customer_is_403(
    client: TestClient, db: Database, tenant: Tenant, route: Route
) -> None:
    other = make_tenant(db)
    headers = {"Authorization": f"Bearer {other.token}", "x-customer-id": str(tenant.customer_id)}
    assert_error(route.call(client, headers), 403, "authorization_error")
    # A customer id that exists nowhere is refused the same way: the key is locked to its own.
    headers["x-customer-id"] = str(uuid.uuid4())
    assert_error(route.call(client, headers), 403, "authorization_error")
    assert lead_count(client, tenant) == 0
    assert lead_count(client, other) == 0


@pytest.mark.parametrize("route", ROUTES)
def test_authentication_is_checked_before_authorization(
    client: TestClient, db: Database, tenant: Tenant, route: Route
) -> None:
    # An unknown token naming someone else's customer: the token fails first (401, not 403).
    headers = {"Authorization": f"Bearer mega_{secrets.token_hex(32)}", "x-customer-id": str(uuid.uuid4())}
    assert_error(route.call(client, headers), 401, "authentication_error")
    # A revoked key lacking the scope: still 401.
    headers = issue_token(db, tenant, [WEBHOOKS_MANAGE])
    key_id = admin.list_keys(db, tenant.customer_id)[-1].id
    admin.revoke_key(db, key_id)
    assert_error(route.call(client, headers), 401, "authentication_error")


@pytest.mark.parametrize("route", [p for p in ROUTES if p.values[0].method == "POST"])  # type: ignore[union-attr]
def test_a_body_that_is_not_json_does_not_get_past_auth(
    client: ContractClient, tenant: Tenant, route: Route
) -> None:
    """The key is checked before the body is parsed: an anonymous caller learns nothing about it."""

    def post(headers: dict[str, str]) -> Any:
        return route.call(client, {**headers, "content-type": "application/json"}, content=b"{no", json=None)

    assert_error(post({}), 401, "authentication_error")
    assert_error(post({**tenant.headers, "x-customer-id": "nope"}), 401, "authentication_error")
    unknown = {**tenant.headers, "Authorization": f"Bearer mega_{secrets.token_hex(32)}"}
    assert_error(post(unknown), 401, "authentication_error")
    other = make_tenant(app_state(client.app).db)
    foreign = {**other.headers, "x-customer-id": str(tenant.customer_id)}
    assert_error(post(foreign), 403, "authorization_error")
    # With a good key it is the body's fault: 400, and the request was counted like any other.
    r = post(tenant.headers)
    assert_error(r, 400, "invalid_request_error")
    assert "ratelimit-remaining" in r.headers


def test_only_a_hash_of_the_token_is_stored(db: Database, tenant: Tenant) -> None:
    with db.read_session() as session:
        key = session.get(ApiKey, tenant.key_id)
        assert key is not None
        stored = " ".join(str(getattr(key, c.key)) for c in ApiKey.__table__.columns)
    assert key.token_hash == hashlib.sha256(tenant.token.encode()).hexdigest()
    assert tenant.token[5:] not in stored
