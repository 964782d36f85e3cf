"""Round trips to PostgreSQL per request, counted on the wire (tests/scale/wire.py: exchanges,
so the statements of one pipeline answered together count once) with a warm pool, and the
recovery that replaced the ping per checkout. Issue 12's budgets: createLead at most 3
including the commit, listLeads at most 2, an Idempotency-Key at most one more."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from mega_crm.api.state import app_state
from mega_crm.app import create_app
from mega_crm.db import Database, utcnow
from mega_crm.webhooks.models import Webhook, WebhookDelivery, WebhookEvent
from tests.conftest import POSTGRES_URL, make_settings
from tests.fixtures.factories import lead, make_tenant
from tests.scale.pgbouncer import drop_database, fresh_database
from tests.scale.wire import RoundTripCounter

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="MEGA_TEST_POSTGRES_URL is not set")

LEADS = "/api/agents/crm/leads"
RUNS = 5


@pytest.fixture(scope="module")
def counted() -> Iterator[tuple[TestClient, RoundTripCounter, Database]]:
    assert POSTGRES_URL
    up = make_url(POSTGRES_URL)
    name = f"{up.database}_roundtrips"
    fresh_database(POSTGRES_URL, name)
    with RoundTripCounter(up.host or "127.0.0.1", up.port or 5432) as counter:
        url = (
            up.set(host="127.0.0.1", port=counter.port, database=name)
            .update_query_dict({"sslmode": "disable"})
            .render_as_string(hide_password=False)
        )
        from mega_crm.migrate import upgrade

        upgrade(Database(url).url)
        settings = make_settings(url)
        app = create_app(settings)
        with TestClient(app) as client:
            yield client, counter, app_state(app).db
        app_state(app).db.dispose()
    drop_database(POSTGRES_URL, name)


def round_trips(
    counted: tuple[TestClient, RoundTripCounter, Database], method: str, *, keyed: bool = False, **kwargs: Any
) -> int:
    """The median count of RUNS requests, each with a new lead (and key), after 3 to warm up."""
    client, counter, db = counted
    tenant = make_tenant(db)
    counts = []
    for run in range(3 + RUNS):
        headers = {**tenant.headers, **({"Idempotency-Key": uuid.uuid4().hex} if keyed else {})}
        fresh = {**kwargs, "json": lead()} if method == "POST" else kwargs
        counter.reset()
        r = client.request(method, LEADS, headers=headers, **fresh)
        if run >= 3:
            counts.append(counter.reset())
        assert r.status_code in (200, 201), r.text
    return sorted(counts)[len(counts) // 2]


def test_round_trips_per_request(counted: tuple[TestClient, RoundTripCounter, Database]) -> None:
    create = round_trips(counted, "POST")
    keyed = round_trips(counted, "POST", keyed=True)
    page = round_trips(counted, "GET", params={"limit": 100})
    counts = f"createLead {create}, with an Idempotency-Key {keyed}, listLeads {page}"
    # Issue 12's target is 2 (the key lookup and the page); with the key cached since an earlier
    # request, the page's statement confirms it (auth.access.KeyCheck): one.
    assert page == 1, counts
    # Issue 12's targets are 3 and 4. With the key cached, in one psycopg pipeline: BEGIN, the
    # key's state with the customer's stages and fields and the webhooks to notify, and the
    # dedup candidates, answered together; then the customer's clock (its write lock), the
    # lead with its count, any event and deliveries, and COMMIT, answered together. An
    # Idempotency-Key adds its claim to the first and its response to the second.
    assert create == 2, counts
    assert keyed == 2, counts


def test_statements_per_create(counted: tuple[TestClient, RoundTripCounter, Database]) -> None:
    """With the key cached: BEGIN; the key's state with the customer's pipeline, fields and
    webhooks (leads.repository.begin_lead_write_later); the dedup candidates; the customer's
    clock (its write lock); the lead with its count, checked and stamped under the lock
    (repository.write_plan's guard); COMMIT. Each statement costs psycopg and the server their
    own parse, bind and execute (9 before session 10; 6 before the key's state moved into the
    clock's statement in session 11; 5 until session 12 took the lock in the write's round
    trip, in a statement of its own, which cost one more and saved the lock's wait)."""
    client, counter, db = counted
    tenant = make_tenant(db)
    statements = []
    for run in range(3 + RUNS):
        counter.reset()
        r = client.post(LEADS, json=lead(), headers=tenant.headers)
        assert r.status_code == 201, r.text
        if run >= 3:
            statements.append(counter.reset_statements())
    assert sorted(statements)[len(statements) // 2] == 5, statements


def test_a_create_with_webhooks_to_notify_takes_the_same_round_trips(
    counted: tuple[TestClient, RoundTripCounter, Database],
) -> None:
    """The outbox (the event, a delivery per webhook, the NOTIFY) goes out with the COMMIT, and
    a merge that changes the lead writes its lead.updated the same way."""
    client, counter, db = counted
    tenant = make_tenant(db)
    now = utcnow()
    with db.write_session() as session:
        for n in range(2):
            session.add(
                Webhook(
                    customer_id=tenant.customer_id, url=f"https://example.com/hook-{n}",
                    event_types=["lead.created", "lead.updated"], secret_encrypted="not used here",
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
    body = lead()
    counter.reset()
    created = client.post(LEADS, json=body, headers=tenant.headers)
    assert created.status_code == 201, created.text
    assert counter.reset() <= 3  # the key looked up: its first request
    counter.reset()
    merged = client.post(LEADS, json={**body, "contact_name": "Renamed"}, headers=tenant.headers)
    assert merged.status_code == 201, merged.text
    assert counter.reset() == 2  # the key cached
    assert merged.json()["lead"]["id"] == created.json()["lead"]["id"]
    with db.read_session() as session:
        events = session.execute(
            select(WebhookEvent.event_type, func.count(WebhookDelivery.id))
            .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
            .where(WebhookEvent.customer_id == tenant.customer_id)
            .group_by(WebhookEvent.event_type)
        ).all()
    assert sorted(events) == [("lead.created", 2), ("lead.updated", 2)]


def test_connections_lost_all_at_once_cost_reads_nothing_and_writes_one_retry(
    counted: tuple[TestClient, RoundTripCounter, Database],
) -> None:
    """No ping per checkout: after every connection of the pool is killed (a PostgreSQL restart,
    a pooler's reconnect), a read is answered on a fresh connection; a write may be answered 503
    with Retry-After once (never a 500), and the retry succeeds."""
    client, _counter, db = counted
    tenant = make_tenant(db)
    for _ in range(3):
        assert client.get(LEADS, headers=tenant.headers).status_code == 200
        assert client.post(LEADS, json=lead(), headers=tenant.headers).status_code == 201

    def kill_every_connection() -> int:
        assert POSTGRES_URL
        with Database(POSTGRES_URL).engine.connect() as conn:
            name = make_url(db.url).database
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
        return int(killed)

    assert kill_every_connection() >= 1
    assert client.get(LEADS, headers=tenant.headers).status_code == 200
    assert kill_every_connection() >= 1
    first = client.post(LEADS, json=lead(), headers=tenant.headers)
    assert first.status_code in (201, 503), first.text
    if first.status_code == 503:
        assert first.headers["Retry-After"] == "1"
    assert client.post(LEADS, json=lead(), headers=tenant.headers).status_code == 201
