"""Recover (issue 13.5): a fresh delivery of every event whose delivery failed or was cancelled
in a window, from the HTTP surface, against a real loopback receiver."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from mega_crm.db import Database, utcnow
from mega_crm.timestamps import format_time_or_none as iso
from mega_crm.webhooks.models import FAILED, WebhookDelivery, WebhookEvent
from mega_crm.webhooks.service import MAX_RECOVER
from tests.fixtures.factories import Tenant, lead, make_tenant
from tests.webhooks.conftest import LEADS, WEBHOOKS, Receiver, Reply, deliveries, register, settled


def create_lead(client: TestClient, tenant: Tenant) -> str:
    r = client.post(LEADS, json=lead(), headers=tenant.headers)
    assert r.status_code == 201, r.text
    return r.json()["lead"]["id"]


def recover(client: TestClient, tenant: Tenant, hook_id: str, **body: Any) -> httpx.Response:
    return client.post(f"{WEBHOOKS}/{hook_id}/recover", json=body, headers=tenant.headers)


def test_re_enable_and_recover_resends_exactly_the_failed_ones(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(500, 200, 500)
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=0)
    since = iso(utcnow())
    leads = []
    for n in range(1, 4):
        leads.append(create_lead(wh_client, tenant))
        settled(wh_client, tenant, hook["id"], count=n)
    failed = {
        d["lead_id"]: d["id"] for d in deliveries(wh_client, tenant, hook["id"]) if d["status"] == "failed"
    }
    assert set(failed) == {leads[0], leads[2]}
    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": False}, headers=tenant.headers)
    assert r.status_code == 200
    assert recover(wh_client, tenant, hook["id"], since=since).status_code == 409  # inactive
    wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": True}, headers=tenant.headers)

    r = recover(wh_client, tenant, hook["id"], since=since)
    assert r.status_code == 202, r.text
    assert r.json() == {"count": 2}
    arrivals = endpoint.wait_for(5)[3:]
    assert sorted(a.json["lead"]["id"] for a in arrivals) == sorted(failed)
    assert not {a.delivery_id for a in arrivals} & set(failed.values())  # fresh deliveries
    rows = settled(wh_client, tenant, hook["id"], count=5)
    assert sorted(d["status"] for d in rows) == ["failed", "failed", "succeeded", "succeeded", "succeeded"]
    # Those events have been delivered now: recovering again sends nothing.
    assert recover(wh_client, tenant, hook["id"], since=since).json() == {"count": 0}
    assert len(endpoint.quiet_for(0.5)) == 5


def test_cancelled_deliveries_are_recovered_too(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(Reply(503, headers=(("Retry-After", "60"),)))
    hook, _ = register(wh_client, tenant, endpoint.url)
    since = iso(utcnow())
    lead_id = create_lead(wh_client, tenant)
    endpoint.wait_for(1)
    wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": False}, headers=tenant.headers)
    [cancelled] = settled(wh_client, tenant, hook["id"])
    assert cancelled["status"] == "cancelled"
    wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": True}, headers=tenant.headers)
    assert recover(wh_client, tenant, hook["id"], since=since).json() == {"count": 1}
    _, again = endpoint.wait_for(2)
    assert again.json["lead"]["id"] == lead_id


def test_the_window_bounds_what_is_recovered(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(500)
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=0)
    before = utcnow()
    create_lead(wh_client, tenant)
    [failed] = settled(wh_client, tenant, hook["id"])
    after = utcnow() + timedelta(seconds=1)
    path = hook["id"]
    later = iso(after + timedelta(hours=1))
    assert recover(wh_client, tenant, path, since=iso(after), until=later).json() == {"count": 0}
    assert recover(
        wh_client, tenant, path, since=iso(before - timedelta(hours=1)), until=iso(before)
    ).json() == {"count": 0}
    # `until` is exclusive: a window ending exactly at completed_at leaves it out.
    assert recover(wh_client, tenant, path, since=iso(before), until=failed["completed_at"]).json() == {
        "count": 0
    }
    # RFC 3339 only, as every date of the API: a time without an offset is refused, changing nothing.
    naive = before.replace(tzinfo=None).isoformat()
    assert recover(wh_client, tenant, path, since=naive).status_code == 400
    assert recover(wh_client, tenant, path, since=iso(before)).json() == {"count": 1}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"since": "yesterday"},
        {"since": None},
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00Z", "extra": 1},
        [],
    ],
)
def test_bad_requests_are_400_and_queue_nothing(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver, body: Any
) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    r = wh_client.post(f"{WEBHOOKS}/{hook['id']}/recover", json=body, headers=tenant.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert deliveries(wh_client, tenant, hook["id"]) == []


def test_another_customers_webhook_is_404(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver
) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    other = make_tenant(wh_db)
    r = recover(wh_client, other, hook["id"], since="2026-01-01T00:00:00Z")
    assert r.status_code == 404
    assert recover(wh_client, tenant, "not-a-uuid", since="2026-01-01T00:00:00Z").status_code == 404


def test_more_than_ten_thousand_is_400_asking_for_a_narrower_window(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver
) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    webhook_id = uuid.UUID(hook["id"])
    start = utcnow() - timedelta(days=1)
    events, rows = [], []
    for n in range(MAX_RECOVER + 1):
        at = start + timedelta(seconds=n)
        event_id = uuid.uuid4()
        events.append(
            {
                "id": event_id,
                "customer_id": tenant.customer_id,
                "event_type": "lead.created",
                "lead": {},
                "created_at": at,
            }
        )
        rows.append(
            {
                "id": uuid.uuid4(),
                "webhook_id": webhook_id,
                "event_id": event_id,
                "status": FAILED,
                "attempts": 1,
                "created_at": at,
                "updated_at": at,
                "completed_at": at,
            }
        )
    with wh_db.write_session() as session:
        session.execute(insert(WebhookEvent), events)
        session.execute(insert(WebhookDelivery), rows)

    def count() -> int:
        with wh_db.read_session() as session:
            query = (
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.webhook_id == webhook_id)
            )
            return int(session.scalar(query) or 0)

    r = recover(wh_client, tenant, hook["id"], since=iso(start))
    assert r.status_code == 400, r.text
    assert "narrower" in r.json()["error"]["message"]
    assert count() == MAX_RECOVER + 1
    # The first 10,000 are within the limit: queued (then cancelled, to spare the worker).
    r = recover(
        wh_client, tenant, hook["id"], since=iso(start), until=iso(start + timedelta(seconds=MAX_RECOVER))
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"count": MAX_RECOVER}
    wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": False}, headers=tenant.headers)
    assert count() == 2 * MAX_RECOVER + 1
