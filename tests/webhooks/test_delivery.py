"""End to end: createLead -> outbox -> in-process worker -> a real receiver on loopback."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from mega_crm.api.state import app_state
from mega_crm.db import Database
from mega_crm.webhooks import verify_signature
from tests.conftest import ContractClient
from tests.fixtures.contract import reads_reference, validate_schema
from tests.fixtures.factories import Tenant, lead
from tests.webhooks.conftest import (
    LEADS,
    WEBHOOKS,
    Receiver,
    Reply,
    deliveries,
    held,
    register,
    settled,
    wait_until,
)


def create_lead(client: TestClient, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    r = client.post(LEADS, json=lead(**fields), headers=tenant.headers)
    assert r.status_code == 201, r.text
    return r.json()["lead"]


def test_a_new_lead_arrives_signed_and_in_the_contract_shape(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, secret = register(wh_client, tenant, endpoint.url)
    created = create_lead(wh_client, tenant, custom_fields={"lead_line": "buyer", "budget": 500000})
    [arrival] = endpoint.wait_for(1)

    assert verify_signature(secret, arrival.headers, arrival.body)
    assert not verify_signature(secret, arrival.headers, arrival.body + b" ")
    assert not verify_signature("mega_whsec_" + "0" * 64, arrival.headers, arrival.body)
    # Exactly as documented: HMAC-SHA256 over "<timestamp>.<raw body>", key = the secret's text.
    import hashlib
    import hmac

    expected = hmac.new(
        secret.encode(), arrival.headers["x-mega-timestamp"].encode() + b"." + arrival.body, hashlib.sha256
    ).hexdigest()
    assert arrival.headers["x-mega-signature"] == "sha256=" + expected
    assert abs(int(arrival.headers["x-mega-timestamp"]) - time.time()) < 60
    uuid.UUID(arrival.headers["x-mega-delivery"])
    assert arrival.headers["content-type"] == "application/json"
    assert arrival.headers["user-agent"].startswith("MEGA-CRM-Webhooks/")

    payload = arrival.json
    served = wh_client.get("/openapi.json").json()  # the schema this server publishes for it
    published = {"$ref": "#/components/schemas/LeadCreatedWebhookPayload", "components": served["components"]}
    jsonschema.validate(payload, published, cls=jsonschema.Draft202012Validator)
    assert payload["event"] == "lead.created"
    assert payload["lead"]["id"] == created["id"]
    assert payload["lead"]["custom_fields"] == {"lead_line": "buyer", "budget": 500000}
    assert payload["lead"]["lead_line"] == "buyer"
    assert payload["lead"]["current_stage"] == {"slug": "new", "name": "New"}
    assert payload["lead"]["contact_email"] == created["contact_email"]

    [delivery] = settled(wh_client, tenant, hook["id"])
    assert delivery["id"] == arrival.headers["x-mega-delivery"]
    assert delivery["status"] == "succeeded"
    assert delivery["attempts"] == 1
    assert delivery["last_status_code"] == 200
    assert delivery["lead_id"] == created["id"]
    assert delivery["event"] == "lead.created"
    assert delivery["next_attempt_at"] is None


@reads_reference
def test_a_delivered_body_fits_the_reference_schema(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant, custom_fields={"lead_line": "buyer", "budget": 500000})
    [arrival] = endpoint.wait_for(1)
    validate_schema("LeadCreatedWebhookPayload", arrival.json)


def test_https_delivery_verifies_the_certificate_for_the_host_name(
    wh_client: TestClient, tenant: Tenant, tls_receiver: Receiver
) -> None:
    endpoint = tls_receiver.endpoint()
    assert endpoint.url.startswith("https://localhost:")
    _hook, secret = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    [arrival] = endpoint.wait_for(1)
    assert verify_signature(secret, arrival.headers, arrival.body)
    assert arrival.headers["host"] == f"localhost:{tls_receiver.port}"


def test_https_to_a_name_the_certificate_does_not_cover_fails(
    wh_client: TestClient, tenant: Tenant, tls_receiver: Receiver
) -> None:
    # Same server, reached by IP: its certificate names only "localhost".
    endpoint = tls_receiver.endpoint()
    url = endpoint.url.replace("https://localhost:", "https://127.0.0.1:")
    hook, _ = register(wh_client, tenant, url, retry_attempts=0)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert delivery["status"] == "failed"
    assert "certificate" in delivery["last_error"].lower()
    assert endpoint.arrivals == []


def test_500_500_200_is_three_attempts_of_one_delivery(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(500, 500, 200)
    hook, secret = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    arrivals = endpoint.wait_for(3)
    assert len({a.delivery_id for a in arrivals}) == 1
    assert all(verify_signature(secret, a.headers, a.body) for a in arrivals)
    stamps = [a.json["delivered_at"] for a in arrivals]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 3, 200)
    assert endpoint.quiet_for(0.3) == arrivals


def test_each_attempt_is_signed_with_a_fresh_timestamp(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(Reply(500, delay=1.1), 200)
    _hook, secret = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    first, second = endpoint.wait_for(2)
    assert first.delivery_id == second.delivery_id
    assert int(second.headers["x-mega-timestamp"]) > int(first.headers["x-mega-timestamp"])
    assert first.headers["x-mega-signature"] != second.headers["x-mega-signature"]
    assert verify_signature(secret, second.headers, second.body)


def test_retries_stop_after_retry_attempts(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    endpoint = receiver.endpoint(*[503] * 10)
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=2)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 3, 503)
    assert delivery["last_error"] == "HTTP 503"
    assert len(endpoint.quiet_for(0.3)) == 3


def test_retry_attempts_zero_is_one_attempt(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(500, 200)
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=0)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)
    assert len(endpoint.quiet_for(0.3)) == 1


def test_a_timeout_is_a_failed_attempt(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    endpoint = receiver.endpoint(Reply(200, delay=3), 200)
    hook, _ = register(wh_client, tenant, endpoint.url, timeout_seconds=1, retry_attempts=1)
    create_lead(wh_client, tenant)
    arrivals = endpoint.wait_for(2)
    assert arrivals[0].delivery_id == arrivals[1].delivery_id
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2)


def test_a_timeout_is_recorded_as_such(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    endpoint = receiver.endpoint(Reply(200, delay=3))
    hook, _ = register(wh_client, tenant, endpoint.url, timeout_seconds=1, retry_attempts=0)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert delivery["status"] == "failed"
    assert "timed out" in delivery["last_error"]


def test_redirects_are_not_followed(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    elsewhere = receiver.endpoint()
    endpoint = receiver.endpoint(Reply(302, headers=(("Location", elsewhere.url),)))
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=0)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["last_status_code"]) == ("failed", 302)
    assert "redirect" in delivery["last_error"]
    assert elsewhere.quiet_for(0.2) == []


def test_rotation_applies_to_the_next_delivery(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, old_secret = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    endpoint.wait_for(1)
    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"rotate_secret": True}, headers=tenant.headers)
    new_secret = r.json()["secret"]
    create_lead(wh_client, tenant)
    _, after = endpoint.wait_for(2)
    assert verify_signature(new_secret, after.headers, after.body)
    assert not verify_signature(old_secret, after.headers, after.body)


def test_rotation_applies_to_pending_retries(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(Reply(500, delay=0.5), 200)
    hook, old_secret = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    endpoint.wait_for(1)  # the first attempt is in flight: rotate before the retry
    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"rotate_secret": True}, headers=tenant.headers)
    new_secret = r.json()["secret"]
    first, retry = endpoint.wait_for(2)
    assert verify_signature(old_secret, first.headers, first.body)
    assert verify_signature(new_secret, retry.headers, retry.body)
    assert not verify_signature(old_secret, retry.headers, retry.body)


def test_inactive_and_deleted_webhooks_get_nothing(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    inactive = receiver.endpoint()
    deleted = receiver.endpoint()
    live = receiver.endpoint()
    register(wh_client, tenant, inactive.url, is_active=False)
    gone, _ = register(wh_client, tenant, deleted.url)
    wh_client.delete(f"{WEBHOOKS}/{gone['id']}", headers=tenant.headers)
    register(wh_client, tenant, live.url)
    create_lead(wh_client, tenant)
    live.wait_for(1)
    assert inactive.quiet_for(0.3) == []
    assert deleted.arrivals == []


def test_deactivating_cancels_pending_retries(
    wh_client: ContractClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(*[500] * 10)
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=10)
    # Slow the retries down so the delivery is still pending when it is deactivated.
    app_state(wh_client.app).settings.webhook_retry_base_seconds = 5.0
    try:
        create_lead(wh_client, tenant)
        endpoint.wait_for(1)
        r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": False}, headers=tenant.headers)
        assert r.status_code == 200
    finally:
        app_state(wh_client.app).settings.webhook_retry_base_seconds = 0.05
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert delivery["status"] == "cancelled"
    assert delivery["next_attempt_at"] is None
    count = len(endpoint.arrivals)
    assert len(endpoint.quiet_for(0.5)) == count


def test_merges_replays_and_bulk_fire_nothing(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url)
    body = lead()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = wh_client.post(LEADS, json=body, headers={**tenant.headers, **key})
    assert first.status_code == 201
    endpoint.wait_for(1)
    replay = wh_client.post(LEADS, json=body, headers={**tenant.headers, **key})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    merged = wh_client.post(LEADS, json={"contact_email": body["contact_email"]}, headers=tenant.headers)
    assert merged.json()["lead"]["id"] == first.json()["lead"]["id"]
    bulk = wh_client.post(
        f"{LEADS}/bulk", json={"leads": [lead(row_ref="a"), lead(row_ref="b")]}, headers=tenant.headers
    )
    assert bulk.status_code == 200
    assert bulk.json()["summary"]["created"] == 2
    assert len(endpoint.quiet_for(0.5)) == 1
    assert len(deliveries(wh_client, tenant, hook["id"])) == 1


def test_every_subscribed_webhook_gets_its_own_delivery(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver, tls_receiver: Receiver
) -> None:
    a, b = receiver.endpoint(), tls_receiver.endpoint()
    register(wh_client, tenant, a.url)
    register(wh_client, tenant, b.url)
    create_lead(wh_client, tenant)
    [at_a], [at_b] = a.wait_for(1), b.wait_for(1)
    assert at_a.delivery_id != at_b.delivery_id
    assert at_a.json["lead"] == at_b.json["lead"]


def test_one_slow_endpoint_does_not_hold_up_the_others(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    slow = receiver.endpoint(*[Reply(200, delay=2)] * 40)
    fast = receiver.endpoint()
    register(wh_client, tenant, slow.url, timeout_seconds=5)
    for _ in range(20):
        create_lead(wh_client, tenant)
    register(wh_client, tenant, fast.url)
    create_lead(wh_client, tenant)
    # The slow endpoint holds at most its share of the worker's slots; the fast one still gets
    # its delivery while 20 slow ones queue.
    fast.wait_for(1)
    assert len(slow.arrivals) < 20


def test_delivery_log_pages_newest_first_and_redelivers(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, secret = register(wh_client, tenant, endpoint.url)
    leads = [create_lead(wh_client, tenant) for _ in range(5)]
    endpoint.wait_for(5)
    settled(wh_client, tenant, hook["id"], count=5)
    path = f"{WEBHOOKS}/{hook['id']}/deliveries"
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = wh_client.get(path, params=params, headers=tenant.headers).json()
        seen += page["deliveries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [d["lead_id"] for d in seen] == [x["id"] for x in reversed(leads)]
    assert wh_client.get(path, params={"cursor": "tampered"}, headers=tenant.headers).status_code == 400
    assert wh_client.get(path, params={"limit": 101}, headers=tenant.headers).status_code == 400

    original = seen[-1]
    r = wh_client.post(f"{path}/{original['id']}/redeliver", headers=tenant.headers)
    assert r.status_code == 201, r.text
    fresh = r.json()["delivery"]
    assert fresh["id"] != original["id"]
    assert fresh["event_id"] == original["event_id"]
    assert fresh["status"] == "pending"
    assert fresh["attempts"] == 0
    arrivals = endpoint.wait_for(6)
    again = arrivals[-1]
    assert again.delivery_id == fresh["id"]
    assert again.json["lead"] == next(a.json["lead"] for a in arrivals if a.delivery_id == original["id"])
    assert verify_signature(secret, again.headers, again.body)
    assert wh_client.post(f"{path}/{uuid.uuid4()}/redeliver", headers=tenant.headers).status_code == 404


def test_redelivery_to_an_inactive_webhook_is_refused(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": False}, headers=tenant.headers)
    r = wh_client.post(
        f"{WEBHOOKS}/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=tenant.headers
    )
    assert r.status_code == 409


@pytest.mark.parametrize("status", [201, 202, 204])
def test_any_2xx_is_success(wh_client: TestClient, tenant: Tenant, receiver: Receiver, status: int) -> None:
    endpoint = receiver.endpoint(status)
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=0)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["last_status_code"]) == ("succeeded", status)


# --- the delivery log's retention -------------------------------------------------------------


def test_deliveries_past_retention_are_purged_with_their_events(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver
) -> None:
    """Finished deliveries older than MEGA_WEBHOOK_LOG_RETENTION_DAYS go, and events no delivery
    refers to any more; a pending delivery, a recent one, and an event a redelivery still uses stay."""
    from datetime import timedelta

    from sqlalchemy import select, update

    from mega_crm.db import utcnow
    from mega_crm.webhooks.models import WebhookDelivery, WebhookEvent
    from mega_crm.webhooks.worker import DeliveryWorker
    from tests.conftest import make_settings

    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url)
    for i in range(4):
        create_lead(wh_client, tenant, contact_name=f"Retained {i}")
    log = settled(wh_client, tenant, hook["id"], count=4)
    old_done, old_redelivered, old_pending, recent = (d["id"] for d in log)
    long_ago, now = utcnow() - timedelta(days=40), utcnow()
    with wh_db.write_session() as session:
        aged = [uuid.UUID(d) for d in (old_done, old_redelivered, old_pending)]
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(aged)).values(completed_at=long_ago)
        )
        event_ids = select(WebhookDelivery.event_id).where(WebhookDelivery.id.in_(aged)).scalar_subquery()
        session.execute(
            update(WebhookEvent).where(WebhookEvent.id.in_(event_ids)).values(created_at=long_ago)
        )
        # Waiting for a retry a day from now (the worker leaves it alone meanwhile).
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == uuid.UUID(old_pending))
            .values(status="pending", completed_at=None, next_attempt_at=now + timedelta(days=1))
        )
    path = f"{WEBHOOKS}/{hook['id']}/deliveries"
    redelivery = wh_client.post(f"{path}/{old_redelivered}/redeliver", headers=tenant.headers).json()[
        "delivery"
    ]
    settled(wh_client, tenant, hook["id"], count=4)  # the redelivery has finished too

    settings = make_settings(wh_db.url, webhook_log_retention_days=30)
    assert DeliveryWorker(wh_db, settings, b"k").purge_delivery_log() >= 2

    remaining = {d["id"] for d in deliveries(wh_client, tenant, hook["id"], limit=100)}
    assert remaining == {old_pending, recent, redelivery["id"]}
    with wh_db.read_session() as session:
        events = set(
            session.scalars(select(WebhookEvent.id).where(WebhookEvent.customer_id == tenant.customer_id))
        )
    kept = {d["event_id"] for d in log if d["id"] in (old_pending, recent)} | {redelivery["event_id"]}
    assert {str(e) for e in events} == kept
    assert wh_client.post(f"{path}/{old_done}/redeliver", headers=tenant.headers).status_code == 404
    # 0 keeps the log forever.
    keep = make_settings(wh_db.url, webhook_log_retention_days=0)
    assert DeliveryWorker(wh_db, keep, b"k").purge_delivery_log() == 0


def test_the_purge_skips_deliveries_a_recover_holds(
    wh_client: ContractClient, wh_db: Database, tenant: Tenant, receiver: Receiver
) -> None:
    """A recover holds the failed deliveries it reads until it commits; the purge leaves them to
    a later round instead of waiting for them (it locked rows in another order than the recover
    and deadlocked with it: found from outside)."""
    import threading
    from datetime import timedelta

    from sqlalchemy import update

    from mega_crm.db import utcnow
    from mega_crm.webhooks import repository
    from mega_crm.webhooks.models import WebhookDelivery
    from mega_crm.webhooks.retention import purge_delivery_log

    if wh_db.is_sqlite:
        pytest.skip("SQLite runs one write transaction at a time")
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    for i in range(3):
        create_lead(wh_client, tenant, contact_name=f"Purged {i}")
    log = settled(wh_client, tenant, hook["id"], count=3)
    long_ago = utcnow() - timedelta(days=40)
    with wh_db.write_session() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == uuid.UUID(hook["id"]))
            .values(status="failed", completed_at=long_ago)
        )

    def recover(session: Any) -> None:  # as webhooks.service.recover reads them
        events, _ = repository.events_to_recover(session, uuid.UUID(hook["id"]), long_ago, utcnow(), limit=1)
        assert len(events) == 1

    with held(wh_db, recover):
        purged: list[int] = []
        purge = threading.Thread(target=lambda: purged.append(purge_delivery_log(wh_db, 30)))
        purge.start()
        purge.join(10)
        assert not purge.is_alive(), "the purge waited for the recover's locks"
        assert purged == [2]  # the one the recover holds is left for a later round
    remaining = {d["id"] for d in deliveries(wh_client, tenant, hook["id"], limit=100)}
    assert len(remaining) == 1
    assert remaining <= {d["id"] for d in log}


# --- a webhook removed while a create runs (PostgreSQL: events.outbox's _INSERT_LIVE_DELIVERIES)


def _waits_for_a_lock(db: Database, query_start: str) -> bool:
    from sqlalchemy import text

    with db.read_session() as session:
        return bool(
            session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE :start"
                ),
                {"start": query_start + "%"},
            ).scalar()
        )


def _pending_to(db: Database, webhook_id: uuid.UUID) -> int:
    from sqlalchemy import text

    with db.read_session() as session:
        return int(
            session.execute(
                text("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = :id AND status = 'pending'"),
                {"id": webhook_id},
            ).scalar_one()
        )


def _remove(client: TestClient, tenant: Tenant, webhook_id: uuid.UUID, change: str) -> Any:
    """The webhook deleted, deactivated, or ("unsubscribe") no longer subscribed to lead.created."""
    if change == "delete":
        return client.delete(f"{WEBHOOKS}/{webhook_id}", headers=tenant.headers)
    body = {"is_active": False} if change == "deactivate" else {"event_types": ["lead.updated"]}
    return client.patch(f"{WEBHOOKS}/{webhook_id}", json=body, headers=tenant.headers)


@pytest.mark.parametrize("change", ["delete", "deactivate", "unsubscribe"])
def test_a_create_that_waited_for_the_customer_queues_nothing_for_a_webhook_removed_meanwhile(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver, change: str
) -> None:
    """A createLead reads the live webhooks in its first statement's snapshot, taken before that
    statement waits for the customer's lock. A DELETE (or a deactivating PATCH) that commits
    during the wait cancels the webhook's pending deliveries but cannot see the one the create
    has yet to write: it stayed pending for good (found by a hostile helper: 210 such rows in a
    60 s run). Now the create writes none; nor for a webhook that stopped subscribing to
    lead.created meanwhile (the next hostile helper: 8 such deliveries, which would be sent)."""
    from sqlalchemy import text

    if wh_db.is_sqlite:
        pytest.skip("SQLite runs one write transaction at a time")
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    hook_id = uuid.UUID(hook["id"])

    def lock_customer(session: Any) -> None:  # as another lead write holds it
        session.execute(
            text("SELECT 1 FROM customers WHERE id = :id FOR NO KEY UPDATE"), {"id": tenant.customer_id}
        )

    created: list[dict[str, Any]] = []
    with held(wh_db, lock_customer):
        creating = threading.Thread(target=lambda: created.append(create_lead(wh_client, tenant)))
        creating.start()
        wait_until(lambda: _waits_for_a_lock(wh_db, "UPDATE customers"), what="the create to wait")
        r = _remove(wh_client, tenant, hook_id, change)
        assert r.status_code == 200, r.text
    creating.join(30)
    assert len(created) == 1  # 201
    assert _pending_to(wh_db, hook_id) == 0


@pytest.mark.parametrize("change", ["delete", "deactivate"])
def test_a_webhook_removed_while_a_create_runs_gets_the_creates_delivery_cancelled(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver, change: str
) -> None:
    """The other order: the create has queued its delivery and not committed. The DELETE (or
    deactivating PATCH) waits for it (the create holds the webhook FOR KEY SHARE, the API locks
    it FOR UPDATE), then cancels the delivery with the others."""
    from mega_crm.leads.schemas import LeadCreateRequest
    from mega_crm.leads.service import create_lead as create_lead_in

    if wh_db.is_sqlite:
        pytest.skip("SQLite runs one write transaction at a time")
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    hook_id = uuid.UUID(hook["id"])

    def create(session: Any) -> None:  # createLead's statements, its transaction held open
        status, _ = create_lead_in(session, tenant.customer_id, LeadCreateRequest(**lead()), "US")
        assert status == 201

    answers: list[Any] = []
    with held(wh_db, create):
        remove = lambda: answers.append(_remove(wh_client, tenant, hook_id, change))  # noqa: E731
        removing = threading.Thread(target=remove)
        removing.start()
        # The API waits for the create's lock (or, without it, has already answered).
        wait_until(lambda: answers or _waits_for_a_lock(wh_db, "SELECT webhooks"), what="the removal to wait")
    removing.join(30)
    assert [r.status_code for r in answers] == [200]
    assert _pending_to(wh_db, hook_id) == 0


def test_a_delivery_queued_as_the_worker_disabled_its_webhook_is_cancelled_on_reactivation(
    wh_client: TestClient, wh_db: Database, tenant: Tenant, receiver: Receiver
) -> None:
    """The worker disables a failing webhook under FOR NO KEY UPDATE, which a create's lock of
    the webhook (FOR KEY SHARE) does not wait for, nor block: a create that queued a delivery
    as the worker disabled the webhook commits it after the worker's cancel. Activating the
    webhook again cancels it: nothing queued while a webhook was inactive is due."""
    from mega_crm.leads.schemas import LeadCreateRequest
    from mega_crm.leads.service import create_lead as create_lead_in
    from mega_crm.webhooks.endpoint_health import _disable

    if wh_db.is_sqlite:
        pytest.skip("SQLite runs one write transaction at a time")
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    hook_id = uuid.UUID(hook["id"])

    def create(session: Any) -> None:
        create_lead_in(session, tenant.customer_id, LeadCreateRequest(**lead()), "US")

    with held(wh_db, create):
        with wh_db.write_session() as session:  # the worker, meanwhile: not held up
            assert _disable(session, hook_id, "gone", None)
    assert _pending_to(wh_db, hook_id) == 1  # the create's, committed after the cancel
    r = wh_client.patch(f"{WEBHOOKS}/{hook_id}", json={"is_active": True}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert _pending_to(wh_db, hook_id) == 0
