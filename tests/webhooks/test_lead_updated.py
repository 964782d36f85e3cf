"""lead.updated (issue 13.4): fired when a single createLead merges into an existing lead and
changes at least one field; never for no-op merges, idempotent replays or bulk imports."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import jsonschema
from fastapi.testclient import TestClient

from mega_crm.webhooks import verify_signature
from tests.fixtures.factories import Tenant, lead
from tests.webhooks.conftest import LEADS, WEBHOOKS, Receiver, register, settled

BOTH = ["lead.created", "lead.updated"]


def post_lead(client: TestClient, tenant: Tenant, body: dict[str, Any], **headers: str) -> httpx.Response:
    r = client.post(LEADS, json=body, headers={**tenant.headers, **headers})
    assert r.status_code == 201, r.text
    return r


def validate_published(client: TestClient, name: str, payload: dict[str, Any]) -> None:
    served = client.get("/openapi.json").json()
    schema = {"$ref": f"#/components/schemas/{name}", "components": served["components"]}
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator)


def test_a_changing_merge_fires_lead_updated_with_what_changed(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, secret = register(wh_client, tenant, endpoint.url, event_types=BOTH)
    assert hook["event_types"] == BOTH
    body = lead(contact_phone=None, custom_fields={"budget": 100})
    created = post_lead(wh_client, tenant, body).json()["lead"]
    [first] = endpoint.wait_for(1)
    assert first.json["event"] == "lead.created"

    merged = post_lead(
        wh_client,
        tenant,
        {
            "contact_email": body["contact_email"].upper(),  # matches, case-insensitively
            "contact_name": "Renamed Lead",
            "contact_phone": "+12065550199",  # fills the empty phone
            "stage_slug": "contacted",
            "custom_fields": {"budget": 250, "neighborhood": "Ballard"},
        },
    ).json()["lead"]
    assert merged["id"] == created["id"]
    _, update = endpoint.wait_for(2)
    assert verify_signature(secret, update.headers, update.body)
    assert update.headers["x-mega-event"] == "lead.updated"
    payload = update.json
    validate_published(wh_client, "LeadUpdatedWebhookPayload", payload)
    assert payload["event"] == "lead.updated"
    assert payload["lead"]["id"] == created["id"]
    assert payload["lead"]["contact_name"] == "Renamed Lead"
    assert payload["lead"]["updated_at"] == merged["updated_at"]
    assert payload["changed_fields"] == ["contact_name", "contact_phone", "current_stage", "custom_fields"]
    assert payload["previous"] == {
        "contact_name": body["contact_name"],
        "contact_phone": None,
        "current_stage": {"slug": "new", "name": "New"},
        "custom_fields": {"budget": 100},
    }
    assert payload["lead"]["current_stage"] == {"slug": "contacted", "name": "Contacted"}
    assert payload["lead"]["custom_fields"] == {"budget": 250, "neighborhood": "Ballard"}
    rows = settled(wh_client, tenant, hook["id"], count=2)
    assert sorted(d["event"] for d in rows) == BOTH
    assert {d["lead_id"] for d in rows} == {created["id"]}


def test_no_op_merges_replays_and_bulk_fire_no_lead_updated(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    register(wh_client, tenant, endpoint.url, event_types=BOTH)
    body = lead()
    post_lead(wh_client, tenant, body)
    endpoint.wait_for(1)
    post_lead(wh_client, tenant, body)  # the same again: a merge that changes no field
    post_lead(wh_client, tenant, {"contact_email": body["contact_email"]})  # nothing new either
    key = {"Idempotency-Key": uuid.uuid4().hex}
    change = {"contact_email": body["contact_email"], "contact_name": "Changed Once"}
    post_lead(wh_client, tenant, change, **key)
    replay = post_lead(wh_client, tenant, change, **key)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    bulk = wh_client.post(
        f"{LEADS}/bulk",
        json={"leads": [{"contact_email": body["contact_email"], "contact_name": "Bulk Name"}]},
        headers=tenant.headers,
    )
    assert bulk.status_code == 200
    assert bulk.json()["summary"]["updated"] == 1
    arrivals = endpoint.quiet_for(0.8)
    assert [a.json["event"] for a in arrivals] == ["lead.created", "lead.updated"]  # the keyed one, once
    assert arrivals[1].json["changed_fields"] == ["contact_name"]


def test_the_default_subscription_stays_lead_created(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    created_only = receiver.endpoint()
    updated_only = receiver.endpoint()
    hook, _ = register(wh_client, tenant, created_only.url)
    assert hook["event_types"] == ["lead.created"]
    register(wh_client, tenant, updated_only.url, event_types=["lead.updated"])
    body = lead()
    post_lead(wh_client, tenant, body)
    post_lead(wh_client, tenant, {"contact_email": body["contact_email"], "contact_name": "New Name"})
    [only] = updated_only.wait_for(1)
    assert only.json["event"] == "lead.updated"
    assert [a.json["event"] for a in created_only.quiet_for(0.5)] == ["lead.created"]


def test_subscribing_through_patch(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url)
    r = wh_client.patch(
        f"{WEBHOOKS}/{hook['id']}", json={"event_types": ["lead.updated"]}, headers=tenant.headers
    )
    assert r.json()["webhook"]["event_types"] == ["lead.updated"]
    body = lead()
    post_lead(wh_client, tenant, body)
    post_lead(wh_client, tenant, {"contact_email": body["contact_email"], "contact_name": "Other"})
    [arrival] = endpoint.wait_for(1)
    assert arrival.json["event"] == "lead.updated"


def test_served_openapi_lists_the_event_and_its_payload(wh_client: TestClient) -> None:
    served = wh_client.get("/openapi.json").json()
    schemas = served["components"]["schemas"]
    assert schemas["WebhookCreateRequest"]["properties"]["event_types"]["items"]["enum"] == BOTH
    assert schemas["WebhookCreateRequest"]["properties"]["event_types"]["default"] == ["lead.created"]
    payload = schemas["LeadUpdatedWebhookPayload"]
    assert set(payload["required"]) == {"event", "delivered_at", "lead", "changed_fields", "previous"}


def test_an_unknown_event_type_is_still_400(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    r = wh_client.post(
        WEBHOOKS,
        json={"url": receiver.endpoint().url, "event_types": ["lead.deleted"]},
        headers=tenant.headers,
    )
    assert r.status_code == 400
