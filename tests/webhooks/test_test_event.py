"""The test event (issue 13.6) and the new routes' surface: scope, rate limit, envelope, OpenAPI."""

from __future__ import annotations

import uuid

import jsonschema
from fastapi.testclient import TestClient

from mega_crm.auth.scopes import LEADS_READ, LEADS_WRITE
from mega_crm.db import Database
from mega_crm.webhooks import verify_signature
from mega_crm.webhooks.service import EXAMPLE_LEAD
from tests.fixtures.factories import Tenant, issue_token, make_tenant
from tests.webhooks.conftest import WEBHOOKS, Receiver, register, settled


def test_the_test_event_arrives_signed_now(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    endpoint = receiver.endpoint()
    hook, secret = register(wh_client, tenant, endpoint.url, event_types=["lead.updated"])
    r = wh_client.post(f"{WEBHOOKS}/{hook['id']}/test", headers=tenant.headers)
    assert r.status_code == 201, r.text
    queued = r.json()["delivery"]
    assert (queued["event"], queued["lead_id"], queued["attempts"]) == ("webhook.test", None, 0)
    assert queued["status"] in ("pending", "succeeded")
    [arrival] = endpoint.wait_for(1)
    assert verify_signature(secret, arrival.headers, arrival.body)
    assert arrival.delivery_id == queued["id"]
    assert arrival.headers["x-mega-event"] == "webhook.test"
    payload = arrival.json
    assert payload["event"] == "webhook.test"
    assert payload["lead"] == EXAMPLE_LEAD
    served = wh_client.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/WebhookTestPayload", "components": served["components"]}
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator)
    [done] = settled(wh_client, tenant, hook["id"])
    assert (done["id"], done["status"], done["event"]) == (queued["id"], "succeeded", "webhook.test")


def test_the_test_event_uses_the_webhooks_scheme(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    from standardwebhooks import Webhook as StandardWebhook

    from mega_crm.webhooks.signing import standard_webhooks_secret

    endpoint = receiver.endpoint()
    hook, secret = register(wh_client, tenant, endpoint.url, signature_scheme="standard-webhooks")
    assert wh_client.post(f"{WEBHOOKS}/{hook['id']}/test", headers=tenant.headers).status_code == 201
    [arrival] = endpoint.wait_for(1)
    assert StandardWebhook(standard_webhooks_secret(secret)).verify(arrival.body, arrival.headers)[
        "event"
    ] == ("webhook.test")


def test_an_inactive_webhook_gets_no_test_event(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url, is_active=False)
    r = wh_client.post(f"{WEBHOOKS}/{hook['id']}/test", headers=tenant.headers)
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "api_error"
    assert endpoint.quiet_for(0.3) == []


def test_the_new_routes_need_the_scope(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver
) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    no_scope = issue_token(wh_db, tenant, [LEADS_READ, LEADS_WRITE])
    for path, body in [
        (f"{hook['id']}/test", None),
        (f"{hook['id']}/recover", {"since": "2026-01-01T00:00:00Z"}),
    ]:
        r = wh_client.post(f"{WEBHOOKS}/{path}", json=body, headers=no_scope)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "authorization_error"
        assert wh_client.post(f"{WEBHOOKS}/{path}", json=body).status_code == 401


def test_the_new_routes_share_the_default_rate_limit(
    wh_client: TestClient, wh_db: Database, receiver: Receiver
) -> None:
    limited = make_tenant(wh_db, limits=("3/minute", "10/minute"))
    hook, _ = register(wh_client, limited, receiver.endpoint().url)  # 1
    statuses = [
        wh_client.post(f"{WEBHOOKS}/{hook['id']}/test", headers=limited.headers).status_code,  # 2
        wh_client.post(
            f"{WEBHOOKS}/{hook['id']}/recover",
            json={"since": "2026-01-01T00:00:00Z"},
            headers=limited.headers,
        ).status_code,  # 3
        wh_client.post(f"{WEBHOOKS}/{hook['id']}/test", headers=limited.headers).status_code,
    ]
    assert statuses == [201, 202, 429]


def test_unknown_ids_are_404_in_the_envelope(wh_client: TestClient, tenant: Tenant) -> None:
    for path in (f"{uuid.uuid4()}/test", "nope/test", f"{uuid.uuid4()}/recover"):
        r = wh_client.post(
            f"{WEBHOOKS}/{path}", json={"since": "2026-01-01T00:00:00Z"}, headers=tenant.headers
        )
        assert r.status_code == 404, path
        assert r.json()["error"]["type"] == "not_found_error"
