"""Fault tests with real `mega-crm worker` processes: kill -9 mid-attempt, SIGTERM, two workers.

Each test gets a database of its own with no in-process worker, so only the processes started
here deliver.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.webhooks import verify_signature
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import Tenant, lead, make_tenant
from tests.webhooks.conftest import (
    FAST_WEBHOOKS,
    LEADS,
    Receiver,
    Reply,
    WorkerProcess,
    fresh_database_url,
    register,
    settled,
)


class FaultEnv:
    def __init__(self, url: str, db: Database, client: TestClient, tenant: Tenant) -> None:
        self.url, self.db, self.client, self.tenant = url, db, client, tenant

    def create_lead(self) -> str:
        r = self.client.post(LEADS, json=lead(), headers=self.tenant.headers)
        assert r.status_code == 201, r.text
        return str(r.json()["lead"]["id"])


@pytest.fixture
def fault_env(backend: str, tmp_path: Path) -> Iterator[FaultEnv]:
    url = fresh_database_url(backend, tmp_path, f"faults_{uuid.uuid4().hex[:8]}")
    db = Database(url)
    settings = make_settings(url, **{**FAST_WEBHOOKS, "webhook_worker_in_process": False})
    with ContractClient(create_app(settings, db), raise_server_exceptions=False) as client:
        yield FaultEnv(url, db, client, make_tenant(db))
    db.dispose()


def test_kill_9_mid_attempt_the_delivery_still_arrives_after_the_lease(
    fault_env: FaultEnv, receiver: Receiver, worker_processes: list[WorkerProcess]
) -> None:
    endpoint = receiver.endpoint(Reply(200, delay=30), 200)  # the first attempt hangs
    hook, secret = register(fault_env.client, fault_env.tenant, endpoint.url, timeout_seconds=3)
    first = WorkerProcess(fault_env.url)
    worker_processes.append(first)
    first.wait_started()
    lead_id = fault_env.create_lead()
    [hung] = endpoint.wait_for(1, timeout=30)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)

    second = WorkerProcess(fault_env.url)
    worker_processes.append(second)
    second.wait_started()
    # Taken again once the dead worker's lease (1 s + the 3 s timeout) has run out.
    _, again = endpoint.wait_for(2, timeout=30)
    assert again.delivery_id == hung.delivery_id
    assert again.json["lead"]["id"] == lead_id
    assert verify_signature(secret, again.headers, again.body)
    [delivery] = settled(fault_env.client, fault_env.tenant, hook["id"])
    assert delivery["status"] == "succeeded"


def test_sigterm_lets_the_in_flight_attempt_finish(
    fault_env: FaultEnv, receiver: Receiver, worker_processes: list[WorkerProcess]
) -> None:
    endpoint = receiver.endpoint(Reply(200, delay=1.5))
    hook, _ = register(fault_env.client, fault_env.tenant, endpoint.url)
    worker = WorkerProcess(fault_env.url)
    worker_processes.append(worker)
    worker.wait_started()
    fault_env.create_lead()
    endpoint.wait_for(1, timeout=30)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, "".join(worker.log)
    [delivery] = settled(fault_env.client, fault_env.tenant, hook["id"], count=0)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 1), "".join(worker.log)


def test_sigterm_past_the_grace_period_hands_the_attempt_back(
    fault_env: FaultEnv, receiver: Receiver, worker_processes: list[WorkerProcess]
) -> None:
    endpoint = receiver.endpoint(Reply(200, delay=30), 200)
    hook, _ = register(fault_env.client, fault_env.tenant, endpoint.url, timeout_seconds=60)
    worker = WorkerProcess(fault_env.url, MEGA_WEBHOOK_SHUTDOWN_GRACE_SECONDS="0.2")
    worker_processes.append(worker)
    worker.wait_started()
    fault_env.create_lead()
    [first] = endpoint.wait_for(1, timeout=30)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, "".join(worker.log)
    # Released, not leased for 61 s: the next worker takes it at once.
    successor = WorkerProcess(fault_env.url)
    worker_processes.append(successor)
    successor.wait_started()
    _, again = endpoint.wait_for(2, timeout=20)
    assert again.delivery_id == first.delivery_id
    [delivery] = settled(fault_env.client, fault_env.tenant, hook["id"])
    assert delivery["status"] == "succeeded"


def test_two_workers_on_postgres_deliver_each_exactly_once(
    backend: str, fault_env: FaultEnv, receiver: Receiver, worker_processes: list[WorkerProcess]
) -> None:
    if backend != "postgres":
        pytest.skip("several workers are a PostgreSQL deployment")
    endpoints = [receiver.endpoint() for _ in range(2)]
    hooks = [register(fault_env.client, fault_env.tenant, e.url)[0] for e in endpoints]
    for _ in range(2):
        worker = WorkerProcess(fault_env.url, MEGA_WEBHOOK_WORKER_CONCURRENCY="4")
        worker_processes.append(worker)
    for worker in worker_processes:
        worker.wait_started()
    leads = [fault_env.create_lead() for _ in range(30)]
    for endpoint, hook in zip(endpoints, hooks, strict=True):
        arrivals = endpoint.wait_for(len(leads), timeout=60)
        assert len(endpoint.quiet_for(0.5)) == len(leads)
        counts = Counter(a.delivery_id for a in arrivals)
        assert set(counts.values()) == {1}
        assert sorted(a.json["lead"]["id"] for a in arrivals) == sorted(leads)
        settled(fault_env.client, fault_env.tenant, hook["id"], count=len(leads))
    assert all(w.proc.poll() is None for w in worker_processes)


def test_sqlite_restart_releases_the_dead_workers_claims(
    backend: str, fault_env: FaultEnv, receiver: Receiver, worker_processes: list[WorkerProcess]
) -> None:
    """Issue 8, item 10: on SQLite no other worker can own a claim once its worker died, so the
    next one takes it at start instead of waiting out the lease (60 s + the timeout here)."""
    if backend != "sqlite":
        pytest.skip("on PostgreSQL another worker may be alive and own the claim: the lease decides")
    endpoint = receiver.endpoint(Reply(200, delay=30), 200)
    hook, _ = register(fault_env.client, fault_env.tenant, endpoint.url, timeout_seconds=10)
    first = WorkerProcess(fault_env.url, MEGA_WEBHOOK_LEASE_SECONDS="60")
    worker_processes.append(first)
    first.wait_started()
    fault_env.create_lead()
    [hung] = endpoint.wait_for(1, timeout=30)
    # While it is alive, a second worker on the same file leaves its claims alone.
    meanwhile = WorkerProcess(fault_env.url, MEGA_WEBHOOK_LEASE_SECONDS="60")
    worker_processes.append(meanwhile)
    meanwhile.wait_started()
    assert len(endpoint.quiet_for(1.5)) == 1  # every arrival so far: only the hung one
    assert any("another webhook worker is running" in line for line in meanwhile.log), "".join(meanwhile.log)
    meanwhile.stop()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)

    second = WorkerProcess(fault_env.url, MEGA_WEBHOOK_LEASE_SECONDS="60")
    worker_processes.append(second)
    second.wait_started()
    _, again = endpoint.wait_for(2, timeout=20)  # not after the 70 s lease
    assert again.delivery_id == hung.delivery_id
    [delivery] = settled(fault_env.client, fault_env.tenant, hook["id"])
    assert delivery["status"] == "succeeded"
    assert any("due again" in line for line in second.log), "".join(second.log)
