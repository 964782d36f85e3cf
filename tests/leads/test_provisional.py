"""PostgreSQL's createLead reads before it takes the customer's lock, and writes in the round trip
that takes it (leads.service.create_lead's `provisional`): its times are the lock's, filled in by
SQL in the stored lead, its document, its webhook event and its stored Idempotency-Key response,
and in the response once committed; a write that changed the leads it matched in between makes
it run again, the lock first. Here, real concurrent writes are committed on another connection
between a create's reads and its write."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select, text, update

from mega_crm.admin import service as admin
from mega_crm.customers.models import Customer
from mega_crm.db import Database, utcnow
from mega_crm.leads import service
from mega_crm.leads.models import Lead
from mega_crm.leads.schemas import LeadCreateRequest
from mega_crm.timestamps import format_time
from mega_crm.webhooks.models import Webhook, WebhookEvent
from tests.fixtures.factories import Tenant, lead
from tests.leads.api import LEADS, create, listing


@pytest.fixture(autouse=True)
def _postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("SQLite's createLead takes the lock first: its writes run one at a time")


def retries() -> float:
    return REGISTRY.get_sample_value("mega_lead_write_retries_total") or 0.0


@pytest.fixture
def meanwhile(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """meanwhile(write): `write` runs, committed, between the next create's reads and its write
    (when it plans its merge, once)."""
    pending: list[Callable[[], None]] = []
    plan = service.plan_merge  # type: ignore[attr-defined]

    def planned(*args: Any, **kwargs: Any) -> Any:
        while pending:
            pending.pop()()
        return plan(*args, **kwargs)

    monkeypatch.setattr(service, "plan_merge", planned)
    return pending.append


def create_elsewhere(db: Database, tenant: Tenant, body: dict[str, Any]) -> None:
    """createLead's work in a transaction of its own (the customer's lock first), committed."""
    with db.write_session() as session:
        service.create_lead(session, tenant.customer_id, LeadCreateRequest(**body), "US")


def stored(db: Database, lead_id: str) -> Lead:
    with db.read_session() as session:
        return session.get_one(Lead, uuid.UUID(lead_id))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
THREE_DAYS_AHEAD = (utcnow() + timedelta(days=3) - EPOCH) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    "clock_us", [THREE_DAYS_AHEAD, 10**16 + 123_456], ids=["3-days-ahead", "past-2**53-us"]
)
def test_a_create_takes_the_time_of_the_customers_clock(
    client: TestClient, db: Database, tenant: Tenant, clock_us: int
) -> None:
    """The clock ahead of this machine's (another server's writes, a clock stepped back): the
    lead's times are the clock's, everywhere they are kept, not the time the create began with;
    to the microsecond past 2**53 µs too (the year 2286), where an interval multiplied in
    floating point is not."""
    with db.write_session() as session:
        session.add(
            Webhook(
                customer_id=tenant.customer_id, url="https://example.com/hook", event_types=["lead.created"],
                secret_encrypted="not used here", created_at=utcnow(), updated_at=utcnow(),
            )
        )  # fmt: skip
        session.execute(
            update(Customer).where(Customer.id == tenant.customer_id).values(leads_clock_us=clock_us)
        )
    key = uuid.uuid4().hex
    body = lead()
    made = create(client, tenant, body, **{"Idempotency-Key": key})
    with db.read_session() as session:
        (now_us,) = session.execute(
            select(Customer.leads_clock_us).where(Customer.id == tenant.customer_id)
        ).one()
    assert now_us == clock_us + 1
    expected = format_time(EPOCH + timedelta(microseconds=clock_us + 1))
    assert made["created_at"] == made["updated_at"] == made["last_interaction_at"] == expected
    row = stored(db, made["id"])
    assert format_time(row.created_at) == format_time(row.updated_at) == expected
    assert row.last_interaction_at is not None
    assert format_time(row.last_interaction_at) == expected
    (page_lead,) = listing(client, tenant, include_custom_fields="true")["leads"]
    assert page_lead == made
    with db.read_session() as session:
        (payload,) = session.scalars(
            select(WebhookEvent.lead).where(WebhookEvent.customer_id == tenant.customer_id)
        )
    assert payload["created_at"] == payload["updated_at"] == expected
    replay = client.post(LEADS, json=body, headers={**tenant.headers, "Idempotency-Key": key})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["lead"] == made
    with db.read_session() as session:
        assert "\x01" not in session.scalar(
            text("SELECT document FROM leads WHERE id = :id"), {"id": made["id"]}
        )


def test_a_twin_created_between_the_reads_and_the_write_is_merged_into(
    client: TestClient, db: Database, tenant: Tenant, meanwhile: Callable[[Callable[[], None]], None]
) -> None:
    """The create read no lead with its email; one was committed before it took the lock: the
    check under the lock fails, and the create runs again and merges into it."""
    body = lead()
    meanwhile(lambda: create_elsewhere(db, tenant, {**body, "contact_name": "Twin"}))
    before = retries()
    key = uuid.uuid4().hex
    merged = create(client, tenant, {**body, "contact_name": "Second"}, **{"Idempotency-Key": key})
    assert retries() == before + 1
    with db.read_session() as session:
        rows = session.scalars(select(Lead).where(Lead.customer_id == tenant.customer_id)).all()
    assert [(str(r.id), r.contact_name, r.interaction_count) for r in rows] == [(merged["id"], "Second", 2)]
    assert merged["interaction_count"] == 2
    assert merged["updated_at"] == format_time(rows[0].updated_at)
    replay = client.post(
        LEADS, json={**body, "contact_name": "Second"}, headers={**tenant.headers, "Idempotency-Key": key}
    )
    assert replay.json()["lead"] == merged


def test_a_lead_changed_between_the_reads_and_the_write_is_merged_as_it_now_is(
    client: TestClient, db: Database, tenant: Tenant, meanwhile: Callable[[Callable[[], None]], None]
) -> None:
    """The create read the lead it merges into; another merge changed it before the lock: the
    create runs again on the lead as committed, and keeps both merges' changes."""
    body = lead()
    first = create(client, tenant, body)
    meanwhile(lambda: create_elsewhere(db, tenant, {**body, "custom_fields": {"neighborhood": "Ballard"}}))
    before = retries()
    merged = create(client, tenant, {**body, "custom_fields": {"budget": 500000}})
    assert retries() == before + 1
    assert merged["id"] == first["id"]
    assert merged["interaction_count"] == 3
    assert merged["custom_fields"] == {"neighborhood": "Ballard", "budget": 500000}
    assert merged["updated_at"] > first["updated_at"]


def test_a_write_to_other_leads_in_between_is_no_conflict(
    client: TestClient, db: Database, tenant: Tenant, meanwhile: Callable[[Callable[[], None]], None]
) -> None:
    """Only the leads the contact matches are checked: another contact's lead, committed in
    between, takes the lock first and the create's time comes after its time."""
    meanwhile(lambda: create_elsewhere(db, tenant, lead()))
    before = retries()
    made = create(client, tenant, lead())
    assert retries() == before
    page = listing(client, tenant, include_custom_fields="true")["leads"]
    other, mine = sorted(page, key=lambda found: found["created_at"])
    assert mine == made
    assert other["created_at"] < made["created_at"]


@pytest.mark.parametrize("keyed", [False, True])
def test_a_key_revoked_before_the_second_try_is_refused(
    client: TestClient,
    db: Database,
    tenant: Tenant,
    meanwhile: Callable[[Callable[[], None]], None],
    keyed: bool,
) -> None:
    """The first try confirmed the key, then met a changed lead and was rolled back; the key was
    revoked in between: the second try finds it changed, and the request is judged on the key
    as it now is (401), not a 500. (A hostile helper's finding: 41 × 500 in 2,100 requests.)"""
    body = lead()
    create(client, tenant, body)  # the key is cached from here

    def twin_then_revoke() -> None:
        create_elsewhere(db, tenant, {**body, "contact_name": "Elsewhere"})
        admin.revoke_key(db, tenant.key_id)

    meanwhile(twin_then_revoke)
    headers = {**tenant.headers, **({"Idempotency-Key": uuid.uuid4().hex} if keyed else {})}
    r = client.post(LEADS, json={**body, "contact_name": "Refused"}, headers=headers)
    assert r.status_code == 401, r.text
    with db.read_session() as session:
        names = session.scalars(select(Lead.contact_name).where(Lead.customer_id == tenant.customer_id)).all()
    assert names == ["Elsewhere"]


def test_limits_changed_before_the_second_try_are_no_error(
    client: TestClient, db: Database, tenant: Tenant, meanwhile: Callable[[Callable[[], None]], None]
) -> None:
    """A key's cached state includes its customer's limits: changed between the tries, the
    second try runs on the key looked up again, and the create succeeds."""
    body = lead()
    create(client, tenant, body)

    def twin_then_limits() -> None:
        create_elsewhere(db, tenant, {**body, "contact_name": "Elsewhere"})
        admin.set_limits(db, tenant.customer_id, "99999/minute", None)

    meanwhile(twin_then_limits)
    merged = create(client, tenant, {**body, "contact_name": "Last"})
    assert merged["contact_name"] == "Last"
    assert merged["interaction_count"] == 3
