"""Endpoint health (issue 13.1): 410 Gone, 429/503 Retry-After, disabling after failures in a
row, re-enabling; against a real loopback receiver and real worker processes."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session

from mega_crm.api.state import app_state
from mega_crm.app import create_app
from mega_crm.db import Database, utcnow
from mega_crm.webhooks import queue as repo
from mega_crm.webhooks.delivery import MAX_RETRY_AFTER_SECONDS, parse_retry_after
from mega_crm.webhooks.models import FAILED, SUCCEEDED, Webhook
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import Tenant, lead, make_tenant
from tests.webhooks.conftest import (
    FAST_WEBHOOKS,
    LEADS,
    WEBHOOKS,
    Receiver,
    Reply,
    WorkerProcess,
    deliveries,
    fresh_database_url,
    held,
    register,
    settled,
    wait_until,
)
from tests.webhooks.test_faults import FaultEnv, fault_env  # noqa: F401 - a fixture


def create_lead(client: TestClient, tenant: Tenant) -> str:
    r = client.post(LEADS, json=lead(), headers=tenant.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["lead"]["id"])


def get_hook(client: TestClient, tenant: Tenant, hook_id: str) -> dict[str, Any]:
    r = client.get(f"{WEBHOOKS}/{hook_id}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return dict(r.json()["webhook"])


# --- Retry-After ----------------------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates_and_is_capped() -> None:
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("86400") == MAX_RETRY_AFTER_SECONDS == 600.0
    in_a_minute = format_datetime(utcnow() + timedelta(seconds=60), usegmt=True)
    assert 58 <= (parse_retry_after(in_a_minute, now) or 0) <= 61
    past = format_datetime(utcnow() - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0
    for junk in (None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2026"):
        assert parse_retry_after(junk) is None


@given(st.integers(min_value=0, max_value=10**12))
@settings(max_examples=50, deadline=None)
def test_retry_after_seconds_are_taken_up_to_ten_minutes(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == min(600.0, float(seconds))


# What a header can carry (latin-1), and digit-like text (latin-1 has "\xb9\xb2\xb3") more often.
@given(st.text(st.characters(codec="latin-1")) | st.text(st.sampled_from("0123456789\xb9\xb2\xb3 -+.e")))
@settings(max_examples=200, deadline=None)
def test_retry_after_never_raises_on_any_header_text(value: str) -> None:
    # A receiver controls this header: any text reads as a delay within the cap, or as none.
    seconds = parse_retry_after(value)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_SECONDS


def test_retry_after_with_non_ascii_digits_is_unreadable_not_an_internal_error(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    # "\xb2" is a legal header byte that str.isdigit() accepts and float() refuses: it was recorded
    # as "internal error: ValueError" with no status code (and a traceback logged).
    endpoint = receiver.endpoint(Reply(429, headers=(("Retry-After", "\xb2"),)))
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=0)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["last_status_code"], delivery["last_error"]) == (
        "failed",
        429,
        "HTTP 429",
    )


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_delays_the_next_attempt(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver, status: int
) -> None:
    endpoint = receiver.endpoint(Reply(status, headers=(("Retry-After", "3"),)), 200)
    hook, _ = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    first, second = endpoint.wait_for(2, timeout=20)
    assert second.at - first.at >= 3.0
    assert first.delivery_id == second.delivery_id
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2)


def test_retry_after_as_an_http_date_delays_the_next_attempt(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    when = utcnow() + timedelta(seconds=3)
    endpoint = receiver.endpoint(
        Reply(429, headers=(("Retry-After", format_datetime(when, usegmt=True)),)), 200
    )
    register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    first, second = endpoint.wait_for(2, timeout=20)
    assert second.at >= when.timestamp() - 1  # an HTTP date has whole seconds
    assert second.at - first.at >= 1.5


def test_a_retry_after_answer_counts_as_one_of_the_retries(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    ra = (("Retry-After", "1"),)
    endpoint = receiver.endpoint(Reply(429, headers=ra), Reply(503, headers=ra), 200)
    hook, _ = register(wh_client, tenant, endpoint.url, retry_attempts=1)
    create_lead(wh_client, tenant)
    [delivery] = settled(wh_client, tenant, hook["id"])
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 2, 503)
    assert len(endpoint.quiet_for(0.5)) == 2


# --- 410 Gone -------------------------------------------------------------------------------


def test_410_disables_at_once_and_cancels_pending_deliveries(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    # The first lead's delivery waits 30 s for its retry; the second's gets 410.
    endpoint = receiver.endpoint(Reply(503, headers=(("Retry-After", "30"),)), 410)
    hook, _ = register(wh_client, tenant, endpoint.url)
    disabled_gone = REGISTRY.get_sample_value("mega_webhooks_disabled_total", {"reason": "gone"}) or 0.0
    fresh = get_hook(wh_client, tenant, hook["id"])
    assert (fresh["disabled_reason"], fresh["disabled_at"], fresh["consecutive_failures"]) == (None, None, 0)
    assert fresh["last_success_at"] is None
    create_lead(wh_client, tenant)
    endpoint.wait_for(1)
    create_lead(wh_client, tenant)
    endpoint.wait_for(2)
    gone = wait_until(lambda: (h := get_hook(wh_client, tenant, hook["id"]))["disabled_reason"] and h)
    assert gone["is_active"] is False
    assert gone["disabled_reason"] == "gone"
    assert gone["disabled_at"] is not None
    # counted for the operator (issue 11's metrics): the worker runs in this process
    assert REGISTRY.get_sample_value("mega_webhooks_disabled_total", {"reason": "gone"}) == disabled_gone + 1
    rows = settled(wh_client, tenant, hook["id"], count=2)
    by_status = sorted((d["status"], d["attempts"], d["last_status_code"]) for d in rows)
    assert by_status == [("cancelled", 1, 503), ("failed", 1, 410)]
    create_lead(wh_client, tenant)  # disabled: nothing more is queued or sent
    assert len(endpoint.quiet_for(0.5)) == 2
    assert len(deliveries(wh_client, tenant, hook["id"])) == 2


def test_re_enabling_clears_the_reason(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    endpoint = receiver.endpoint(410, 200)
    hook, _ = register(wh_client, tenant, endpoint.url)
    create_lead(wh_client, tenant)
    wait_until(lambda: get_hook(wh_client, tenant, hook["id"])["disabled_reason"] == "gone")
    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": True}, headers=tenant.headers)
    assert r.status_code == 200
    back = r.json()["webhook"]
    assert (back["is_active"], back["disabled_reason"], back["disabled_at"]) == (True, None, None)
    assert back["consecutive_failures"] == 0
    create_lead(wh_client, tenant)
    endpoint.wait_for(2)
    ok = wait_until(lambda: (h := get_hook(wh_client, tenant, hook["id"]))["last_success_at"] and h)
    assert ok["is_active"] is True


def test_deactivating_through_the_api_has_no_reason(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": False}, headers=tenant.headers)
    body = r.json()["webhook"]
    assert (body["is_active"], body["disabled_reason"]) == (False, None)
    assert body["disabled_at"] is not None


# --- failures in a row ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_health(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Database]]:
    """An app of its own whose worker disables a webhook after 3 failed deliveries in a row."""
    url = fresh_database_url(backend, tmp_path_factory.mktemp("health"), "health")
    db = Database(url)
    settings_ = make_settings(url, **{**FAST_WEBHOOKS, "webhook_disable_after_failures": 3})
    with ContractClient(create_app(settings_, db), raise_server_exceptions=False) as client:
        yield client, db
    db.dispose()


def test_failures_in_a_row_disable_and_a_success_resets_the_count(
    strict_health: tuple[TestClient, Database], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    client, db = strict_health
    tenant = make_tenant(db)
    endpoint = receiver.endpoint(500, 500, 200, 500, 500, 500)
    hook, _ = register(client, tenant, endpoint.url, retry_attempts=0)
    expected = [(1, True), (2, True), (0, True), (1, True), (2, True), (3, False)]
    for n, (failures, active) in enumerate(expected, start=1):
        create_lead(client, tenant)
        settled(client, tenant, hook["id"], count=n)
        state = get_hook(client, tenant, hook["id"])
        assert (state["consecutive_failures"], state["is_active"]) == (failures, active), n
        if n >= 3:
            assert state["last_success_at"] is not None
    assert state["disabled_reason"] == "failing"
    assert any("disabled (failing)" in r.getMessage() for r in caplog.records)
    create_lead(client, tenant)
    assert len(endpoint.quiet_for(0.5)) == 6
    r = client.patch(f"{WEBHOOKS}/{hook['id']}", json={"is_active": True}, headers=tenant.headers)
    assert (r.json()["webhook"]["consecutive_failures"], r.json()["webhook"]["disabled_reason"]) == (0, None)


def _record(webhook_id: uuid.UUID, status: str, at_offset: float = 0.0) -> repo.AttemptRecord:
    return repo.AttemptRecord(
        delivery_id=uuid.uuid4(),
        lease_token=uuid.uuid4(),
        status=status,
        attempts=1,
        at=utcnow() + timedelta(seconds=at_offset),
        next_attempt_at=None,
        status_code=500,
        error="HTTP 500",
        latency_ms=1,
        webhook_id=webhook_id,
    )


def test_a_failure_whose_lease_was_lost_does_not_count(
    wh_client: ContractClient, tenant: Tenant, receiver: Receiver
) -> None:
    """A late write from a worker whose claim was taken over changes nothing, count included."""
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    webhook_id = uuid.UUID(hook["id"])
    with app_state(wh_client.app).db.write_session() as session:
        # Records of deliveries that do not exist (or whose lease token is not theirs): no-ops.
        repo.record_attempts(session, [_record(webhook_id, FAILED) for _ in range(4)], disable_after=3)
    state = get_hook(wh_client, tenant, hook["id"])
    assert (state["consecutive_failures"], state["is_active"]) == (0, True)


@given(st.lists(st.booleans(), min_size=1, max_size=12), st.integers(min_value=0, max_value=5))
@settings(max_examples=40, deadline=None)
def test_one_batch_counts_failures_after_its_last_success(outcomes_in_order: list[bool], before: int) -> None:
    """Within one recording batch, the count ends as the failures after the last success (or
    the earlier count plus all of them), whatever order the records come in."""
    from sqlalchemy import update

    db = _batch_db()
    with db.write_session() as session:
        hook = session.scalars(
            update(Webhook).values(consecutive_failures=before, is_active=True).returning(Webhook.id)
        ).first()
    assert hook is not None
    records = [_record(hook, SUCCEEDED if ok else FAILED, i) for i, ok in enumerate(outcomes_in_order)]
    with db.write_session() as session:
        # Failed records only count once written: stand them in with real claimed rows.
        real = []
        for r in records:
            if r.status == FAILED:
                r = _claimed_failure(session, hook, r)
            real.append(r)
        repo.record_attempts(session, list(reversed(real)), disable_after=0)
    with db.read_session() as session:
        webhook = session.get(Webhook, hook)
        assert webhook is not None
        assert webhook.is_active  # disable_after=0: never disabled, however many failures
        if True in outcomes_in_order:
            last = len(outcomes_in_order) - 1 - outcomes_in_order[::-1].index(True)
            assert webhook.consecutive_failures == len(outcomes_in_order) - last - 1
            assert webhook.last_success_at is not None
        else:
            assert webhook.consecutive_failures == before + len(outcomes_in_order)


_BATCH_DB: dict[str, Database] = {}


def _batch_db() -> Database:
    """One SQLite database with a single webhook, shared by the hypothesis examples."""
    if "db" not in _BATCH_DB:
        import tempfile
        from pathlib import Path

        url = fresh_database_url("sqlite", Path(tempfile.mkdtemp()), "batch")
        db = Database(url)
        tenant = make_tenant(db)
        now = utcnow()
        with db.write_session() as session:
            session.add(
                Webhook(
                    id=uuid.uuid4(),
                    customer_id=tenant.customer_id,
                    url="https://example.com/hook",
                    event_types=["lead.created"],
                    is_active=True,
                    timeout_seconds=10,
                    retry_attempts=0,
                    secret_encrypted="x",
                    consecutive_failures=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        _BATCH_DB["db"] = db
    return _BATCH_DB["db"]


def _claimed_failure(
    session: Session, webhook_id: uuid.UUID, record: repo.AttemptRecord
) -> repo.AttemptRecord:
    """A pending delivery row leased under `record`'s token, so that its failure is recorded."""
    from dataclasses import replace

    from mega_crm.webhooks.models import WebhookDelivery, WebhookEvent

    hook = session.get(Webhook, webhook_id)
    event = WebhookEvent(
        id=uuid.uuid4(),
        customer_id=hook.customer_id,  # type: ignore[union-attr]
        event_type="lead.created",
        lead={},
        created_at=record.at,
    )
    session.add(event)
    session.flush()
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        webhook_id=webhook_id,
        event_id=event.id,
        status="pending",
        attempts=0,
        next_attempt_at=record.at,
        lease_token=record.lease_token,
        created_at=record.at,
        updated_at=record.at,
    )
    session.add(delivery)
    session.flush()
    return replace(record, delivery_id=delivery.id)


# --- crash safety ---------------------------------------------------------------------------


def test_kill_9_mid_attempt_counts_the_failure_once(
    fault_env: FaultEnv,  # noqa: F811 - the fixture imported above
    receiver: Receiver,
    worker_processes: list[WorkerProcess],
) -> None:
    env: FaultEnv = fault_env
    endpoint = receiver.endpoint(Reply(200, delay=30), 500)  # the first attempt hangs
    hook, _ = register(env.client, env.tenant, endpoint.url, timeout_seconds=3, retry_attempts=0)
    first = WorkerProcess(env.url, MEGA_WEBHOOK_DISABLE_AFTER_FAILURES="2")
    worker_processes.append(first)
    first.wait_started()
    env.create_lead()
    endpoint.wait_for(1, timeout=30)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    second = WorkerProcess(env.url, MEGA_WEBHOOK_DISABLE_AFTER_FAILURES="2")
    worker_processes.append(second)
    second.wait_started()
    endpoint.wait_for(2, timeout=30)
    [delivery] = settled(env.client, env.tenant, hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)  # the killed attempt left no trace
    state = get_hook(env.client, env.tenant, hook["id"])
    assert (state["consecutive_failures"], state["is_active"]) == (1, True)
    # One more failure reaches the threshold (2): disabled exactly then, and logged by the worker.
    endpoint.replies.append(Reply(500))
    env.create_lead()
    settled(env.client, env.tenant, hook["id"], count=2)
    state = wait_until(lambda: (h := get_hook(env.client, env.tenant, hook["id"]))["disabled_reason"] and h)
    assert (state["consecutive_failures"], state["is_active"], state["disabled_reason"]) == (
        2,
        False,
        "failing",
    )
    wait_until(
        lambda: any("disabled (failing)" in line for line in second.log), what="the disabling's log line"
    )


def test_recording_an_attempt_does_not_deadlock_with_a_change_to_its_webhook(db: Database) -> None:
    """The API changes a webhook with its row locked, then cancels its pending deliveries; the
    worker records an attempt, then updates the webhook's health. Both take the webhook first:
    with the delivery first, the worker and a PATCH deadlocked on PostgreSQL (found from outside:
    7 PATCHes of 30 s answered 503)."""
    import threading

    from mega_crm.webhooks.repository import cancel_pending_deliveries, live_webhook

    if db.is_sqlite:
        pytest.skip("SQLite runs one write transaction at a time")
    tenant = make_tenant(db)
    now = utcnow()
    hook_id = uuid.uuid4()
    with db.write_session() as session:
        session.add(
            Webhook(
                id=hook_id, customer_id=tenant.customer_id, url="https://example.com/hook",
                event_types=["lead.created"], is_active=True, timeout_seconds=10, retry_attempts=0,
                secret_encrypted="x", consecutive_failures=0, created_at=now, updated_at=now,
            )
        )  # fmt: skip
    with db.write_session() as session:
        record = _claimed_failure(session, hook_id, _record(hook_id, SUCCEEDED))
    api_holds_webhook, worker_started = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def api_change() -> None:  # as webhooks.service does for PATCH is_active=false and DELETE
        try:
            with db.write_session() as session:
                assert live_webhook(session, tenant.customer_id, hook_id, for_update=True) is not None
                api_holds_webhook.set()
                worker_started.wait(5)
                time.sleep(0.5)  # the worker meanwhile goes as far as it can
                cancel_pending_deliveries(session, hook_id, utcnow())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def worker_records() -> None:
        try:
            api_holds_webhook.wait(5)
            with db.write_session() as session:
                worker_started.set()
                repo.record_attempts(session, [record])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=api_change), threading.Thread(target=worker_records)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with db.read_session() as session:
        webhook = session.get(Webhook, hook_id)
        assert webhook is not None
        assert webhook.last_success_at is not None  # the success recorded


def test_a_create_is_not_held_up_by_the_worker_recording_its_webhooks_attempts(
    wh_client: ContractClient, tenant: Tenant, receiver: Receiver
) -> None:
    """The worker locks the webhooks of the attempts it records (see the test above) FOR NO KEY
    UPDATE, which a createLead's foreign-key check of the delivery it inserts (FOR KEY SHARE)
    does not wait for. FOR UPDATE made it wait, and deadlock with two workers (found in CI)."""

    from mega_crm.webhooks.queue import _LOCK_WEBHOOKS

    db = app_state(wh_client.app).db
    if db.is_sqlite:
        pytest.skip("SQLite runs one write transaction at a time")
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)

    def worker_locks(session: Any) -> None:
        session.connection().execute(_LOCK_WEBHOOKS, {"b_ids": [uuid.UUID(hook["id"])]})

    with held(db, worker_locks):
        # A delivery to the locked webhook: 201 (waiting for the lock, it was a 503 at the
        # database deadline).
        create_lead(wh_client, tenant)
