"""Webhook writes and createLead in one group commit (SQLite's write lane): a createLead queued
after a webhook is created, changed or deleted in the same transaction sees that change, though
the transaction's first createLead had already read the subscriptions (mega_crm.db.memos)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mega_crm.api.state import app_state
from mega_crm.webhooks import service
from mega_crm.webhooks.models import WebhookDelivery
from mega_crm.webhooks.schemas import WebhookCreateRequest, WebhookUpdateRequest
from mega_crm.webhooks.signing import SecretBox
from tests.conftest import ContractClient
from tests.fixtures.factories import Tenant, lead
from tests.webhooks.conftest import LEADS, WEBHOOKS, Endpoint, Receiver, register


@pytest.fixture
def group(wh_client: ContractClient) -> Iterator[Callable[[list[Callable[[], Any]]], list[int]]]:
    """Runs steps (each queues one write) behind a blocker, so that they commit as one group.
    -> the sizes of the groups the write lane ran."""
    db = app_state(wh_client.app).db
    if not db.is_sqlite:
        pytest.skip("group commit is SQLite's write lane")
    lane = db._lanes._write_lane
    sizes: list[int] = []
    run_group = lane._run_group  # type: ignore[union-attr]

    def spy(jobs: list[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
        sizes.append(len(jobs))
        return run_group(jobs)

    lane._run_group = spy  # type: ignore[union-attr]

    def run(steps: list[Callable[[], Any]]) -> list[int]:
        started, release = threading.Event(), threading.Event()

        def blocker() -> None:
            started.set()
            release.wait(30)

        holder = threading.Thread(target=asyncio.run, args=(db.run("write", blocker),))
        holder.start()
        assert started.wait(30)
        with ThreadPoolExecutor(len(steps)) as pool:
            futures: list[Future[Any]] = []
            for step in steps:  # one at a time, so they queue in this order
                futures.append(pool.submit(step))
                time.sleep(0.15)
            release.set()
            for future in futures:
                future.result()
        holder.join(30)
        return sizes

    yield run
    lane._run_group = run_group  # type: ignore[union-attr]


def _create_lead(client: TestClient, tenant: Tenant, email: str) -> Callable[[], None]:
    def step() -> None:
        r = client.post(LEADS, json=lead(contact_email=email), headers=tenant.headers)
        assert r.status_code == 201, r.text

    return step


def _on_write_lane(client: ContractClient, work: Callable[[Any], Any]) -> Callable[[], Any]:
    """A step that runs `work(session)` in a write session on the write lane, as a request would
    (the HTTP routes creating and changing webhooks run on the slow lane: they resolve the URL)."""
    db = app_state(client.app).db

    def job() -> Any:
        with db.write_session() as session:
            return work(session)

    return lambda: asyncio.run(db.run("write", job))


def _created_for(endpoint: Endpoint, count: int) -> list[str]:
    endpoint.wait_for(count)
    arrivals = endpoint.quiet_for(0.5)  # and nothing more
    return [a.json["lead"]["contact_email"] for a in arrivals if a.json["event"] == "lead.created"]


def test_a_lead_after_a_webhook_create_in_the_same_group_is_delivered(
    wh_client: ContractClient,
    tenant: Tenant,
    receiver: Receiver,
    group: Callable[[list[Callable[[], Any]]], list[int]],
) -> None:
    endpoint = receiver.endpoint()
    box = SecretBox(app_state(wh_client.app).secret_key)
    target = service.check_url(endpoint.url, allow_private=True)
    request = WebhookCreateRequest(url=endpoint.url)
    sizes = group(
        [
            _create_lead(wh_client, tenant, "before-create@example.com"),
            _on_write_lane(
                wh_client, lambda s: service.create_webhook(s, tenant.customer_id, request, target, box)
            ),
            _create_lead(wh_client, tenant, "after-create@example.com"),
        ]
    )
    assert 3 in sizes  # the three ran in one transaction
    assert _created_for(endpoint, 1) == ["after-create@example.com"]


def test_a_lead_after_a_webhook_patch_in_the_same_group_is_delivered(
    wh_client: ContractClient,
    tenant: Tenant,
    receiver: Receiver,
    group: Callable[[list[Callable[[], Any]]], list[int]],
) -> None:
    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url, event_types=["lead.updated"])
    box = SecretBox(app_state(wh_client.app).secret_key)
    request = WebhookUpdateRequest(event_types=["lead.created"])
    webhook_id = service.parse_id(hook["id"])
    sizes = group(
        [
            _create_lead(wh_client, tenant, "before-patch@example.com"),
            _on_write_lane(
                wh_client,
                lambda s: service.update_webhook(s, tenant.customer_id, webhook_id, request, None, box),
            ),
            _create_lead(wh_client, tenant, "after-patch@example.com"),
        ]
    )
    assert 3 in sizes
    assert _created_for(endpoint, 1) == ["after-patch@example.com"]


def test_no_lead_after_a_webhook_delete_in_the_same_group_is_delivered(
    wh_client: ContractClient,
    tenant: Tenant,
    receiver: Receiver,
    group: Callable[[list[Callable[[], Any]]], list[int]],
) -> None:
    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url)

    def delete() -> None:
        r = wh_client.delete(f"{WEBHOOKS}/{hook['id']}", headers=tenant.headers)
        assert r.status_code == 200, r.text

    sizes = group(
        [
            _create_lead(wh_client, tenant, "before-delete@example.com"),
            delete,  # the route runs on the write lane
            _create_lead(wh_client, tenant, "after-delete@example.com"),
        ]
    )
    assert 3 in sizes
    # The delete cancelled the first lead's delivery; the second lead made none.
    with app_state(wh_client.app).db.read_session() as session:
        statuses = session.scalars(
            select(WebhookDelivery.status).where(WebhookDelivery.webhook_id == uuid.UUID(hook["id"]))
        ).all()
    assert statuses == ["cancelled"]
