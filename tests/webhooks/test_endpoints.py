"""The management routes through HTTP: the contract's four, and the extra five."""

from __future__ import annotations

import re
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select

from mega_crm.api.state import app_state
from mega_crm.auth.scopes import LEADS_READ, LEADS_WRITE
from mega_crm.db import Database
from mega_crm.webhooks.models import Webhook
from tests.conftest import ContractClient
from tests.fixtures.factories import Tenant, issue_token, make_tenant
from tests.webhooks.conftest import LEADS, WEBHOOKS, Receiver, register

SECRET_RE = re.compile(r"^mega_whsec_[0-9a-f]{64}$")


def test_create_returns_the_secret_once_and_applies_defaults(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    url = receiver.endpoint().url
    r = wh_client.post(WEBHOOKS, json={"url": url}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert SECRET_RE.match(body["secret"])
    hook = body["webhook"]
    assert hook["url"] == url
    assert hook["event_types"] == ["lead.created"]
    assert (hook["timeout_seconds"], hook["retry_attempts"], hook["is_active"]) == (10, 5, True)
    assert hook["description"] is None
    assert "secret" not in hook
    assert "RateLimit-Limit" in r.headers

    listed = wh_client.get(WEBHOOKS, headers=tenant.headers)
    assert listed.status_code == 200
    assert listed.json() == {"webhooks": [hook]}
    one = wh_client.get(f"{WEBHOOKS}/{hook['id']}", headers=tenant.headers)
    assert one.status_code == 200
    assert one.json() == {"webhook": hook}
    assert body["secret"] not in listed.text + one.text


def test_secrets_are_encrypted_at_rest(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver
) -> None:
    hook, secret = register(wh_client, tenant, receiver.endpoint().url)
    rotated = wh_client.patch(
        f"{WEBHOOKS}/{hook['id']}", json={"rotate_secret": True}, headers=tenant.headers
    )
    new_secret = rotated.json()["secret"]
    with wh_db.read_session() as session:
        row = session.scalars(select(Webhook).where(Webhook.id == uuid.UUID(hook["id"]))).one()
        stored = str(row.__dict__)
    assert secret not in stored
    assert new_secret not in stored
    assert secret[len("mega_whsec_") :] not in stored
    assert new_secret[len("mega_whsec_") :] not in stored
    assert row.secret_encrypted.startswith("v1:")


def test_fields_and_bounds(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    url = receiver.endpoint().url
    for bad in [
        {"url": url, "timeout_seconds": 0},
        {"url": url, "timeout_seconds": 61},
        {"url": url, "retry_attempts": -1},
        {"url": url, "retry_attempts": 11},
        {"url": url, "event_types": ["lead.deleted"]},
        {"url": url, "event_types": []},
        {"url": url, "is_active": "yes"},
        {"url": url, "unknown": 1},
        {"event_types": ["lead.created"]},
        {"url": 42},
    ]:
        r = wh_client.post(WEBHOOKS, json=bad, headers=tenant.headers)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = wh_client.post(
        WEBHOOKS,
        json={
            "url": url,
            "timeout_seconds": 60,
            "retry_attempts": 0,
            "description": "CRM sync",
            "is_active": False,
        },
        headers=tenant.headers,
    )
    assert r.status_code == 201
    hook = r.json()["webhook"]
    assert (hook["timeout_seconds"], hook["retry_attempts"], hook["description"], hook["is_active"]) == (
        60,
        0,
        "CRM sync",
        False,
    )


def test_same_url_twice_is_409_until_deleted(
    wh_client: ContractClient, tenant: Tenant, receiver: Receiver
) -> None:
    url = receiver.endpoint().url
    hook, _ = register(wh_client, tenant, url)
    r = wh_client.post(WEBHOOKS, json={"url": url}, headers=tenant.headers)
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "api_error"
    # The same URL spelled with a different case of scheme and host is the same URL.
    r = wh_client.post(WEBHOOKS, json={"url": url.replace("http://", "HTTP://")}, headers=tenant.headers)
    assert r.status_code == 409
    # Another customer may register it.
    other = make_tenant(app_state(wh_client.app).db)
    register(wh_client, other, url)
    # Moving another webhook onto it is refused (400: the reference's updateWebhook has no 409).
    second, _ = register(wh_client, tenant, receiver.endpoint().url)
    r = wh_client.patch(f"{WEBHOOKS}/{second['id']}", json={"url": url}, headers=tenant.headers)
    assert r.status_code == 400
    assert "already registered" in r.json()["error"]["message"]
    assert wh_client.delete(f"{WEBHOOKS}/{hook['id']}", headers=tenant.headers).json() == {"deleted": True}
    register(wh_client, tenant, url)


def test_a_patch_that_changes_nothing_keeps_updated_at(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url, description="same")
    path = f"{WEBHOOKS}/{hook['id']}"
    for unchanged in ({}, {"description": "same", "timeout_seconds": hook["timeout_seconds"]}):
        r = wh_client.patch(path, json=unchanged, headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.json()["webhook"] == hook
    changed = wh_client.patch(path, json={"description": "new"}, headers=tenant.headers).json()["webhook"]
    assert changed["updated_at"] > hook["updated_at"]


def test_patch_updates_only_what_is_sent(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    hook, secret = register(wh_client, tenant, receiver.endpoint().url, description="first")
    new_url = receiver.endpoint().url
    r = wh_client.patch(
        f"{WEBHOOKS}/{hook['id']}",
        json={"url": new_url, "timeout_seconds": 3, "retry_attempts": 1},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    updated = r.json()
    assert "secret" not in updated
    assert updated["webhook"]["url"] == new_url
    assert (updated["webhook"]["timeout_seconds"], updated["webhook"]["retry_attempts"]) == (3, 1)
    assert updated["webhook"]["description"] == "first"
    assert updated["webhook"]["created_at"] == hook["created_at"]
    assert updated["webhook"]["updated_at"] >= hook["updated_at"]

    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"description": None}, headers=tenant.headers)
    assert r.json()["webhook"]["description"] is None
    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"rotate_secret": True}, headers=tenant.headers)
    assert r.status_code == 200
    assert SECRET_RE.match(r.json()["secret"])
    assert r.json()["secret"] != secret
    for bad in [{"timeout_seconds": 0}, {"retry_attempts": 11}, {"url": "ftp://x.example"}, {"nope": 1}]:
        r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json=bad, headers=tenant.headers)
        assert r.status_code == 400, (bad, r.text)


def test_delete_is_soft_and_the_webhook_is_gone(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    path = f"{WEBHOOKS}/{hook['id']}"
    assert wh_client.delete(path, headers=tenant.headers).json() == {"deleted": True}
    assert wh_client.get(WEBHOOKS, headers=tenant.headers).json() == {"webhooks": []}
    assert wh_client.patch(path, json={"is_active": True}, headers=tenant.headers).status_code == 404
    assert wh_client.delete(path, headers=tenant.headers).status_code == 404
    assert wh_client.get(path, headers=tenant.headers).status_code == 404
    assert wh_client.get(f"{path}/deliveries", headers=tenant.headers).status_code == 404


def test_another_customers_webhook_is_404_on_every_route(
    wh_client: ContractClient, tenant: Tenant, receiver: Receiver
) -> None:
    other = make_tenant(app_state(wh_client.app).db)
    hook, _ = register(wh_client, other, receiver.endpoint().url)
    wh_client.post(LEADS, json={"contact_name": "Other's lead"}, headers=other.headers)
    path = f"{WEBHOOKS}/{hook['id']}"
    delivery_id = str(uuid.uuid4())
    for method, url, body in [
        ("GET", path, None),
        ("PATCH", path, {"is_active": False}),
        ("DELETE", path, None),
        ("GET", f"{path}/deliveries", None),
        ("POST", f"{path}/deliveries/{delivery_id}/redeliver", None),
        ("POST", f"{path}/recover", {"since": "2026-01-01T00:00:00Z"}),
        ("POST", f"{path}/test", None),
        ("GET", f"{WEBHOOKS}/not-a-uuid", None),
    ]:
        r = wh_client.request(method, url, json=body, headers=tenant.headers)
        assert r.status_code == 404, (method, url, r.text)
        assert r.json()["error"]["type"] == "not_found_error"
    assert wh_client.get(WEBHOOKS, headers=tenant.headers).json() == {"webhooks": []}
    # ... and the owner still has it, untouched.
    assert wh_client.get(path, headers=other.headers).json()["webhook"]["is_active"] is True


def test_scope_and_authentication(wh_client: TestClient, wh_db: Database, tenant: Tenant) -> None:
    no_scope = issue_token(wh_db, tenant, [LEADS_READ, LEADS_WRITE])
    for method, url in [("GET", WEBHOOKS), ("POST", WEBHOOKS), ("GET", f"{WEBHOOKS}/{uuid.uuid4()}")]:
        r = wh_client.request(method, url, json={"url": "https://example.com/"}, headers=no_scope)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "authorization_error"
    r = wh_client.get(WEBHOOKS)
    assert r.status_code == 401


def test_webhook_routes_share_the_default_rate_limit(wh_client: TestClient, wh_db: Database) -> None:
    limited = make_tenant(wh_db, limits=("3/minute", "10/minute"))
    statuses = [wh_client.get(WEBHOOKS, headers=limited.headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = wh_client.get(LEADS, headers=limited.headers)
    assert r.status_code == 429
    assert "Retry-After" in r.headers


def test_served_openapi_lists_the_webhook_operations(wh_client: TestClient) -> None:
    doc = wh_client.get("/openapi.json").json()
    operations = {
        op["operationId"]
        for path, item in doc["paths"].items()
        if path.startswith(WEBHOOKS)
        for op in item.values()
    }
    assert operations == {
        "listWebhooks",
        "createWebhook",
        "getWebhook",
        "updateWebhook",
        "deleteWebhook",
        "listWebhookDeliveries",
        "redeliverWebhookDelivery",
        "recoverWebhookDeliveries",
        "sendWebhookTestEvent",
    }
