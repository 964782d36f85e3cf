"""A PostgreSQL whose processes are stopped (SIGSTOP): every request is a 503 `api_error`
within MEGA_DB_TIMEOUT_SECONDS, and the server and the delivery worker recover by themselves
once it runs again (issue 8, item 8). A private cluster: never the machine's shared server."""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.migrate import upgrade
from tests.conftest import LiveServer, make_settings
from tests.fixtures.factories import lead, make_tenant
from tests.fixtures.pgcluster import PrivateCluster
from tests.webhooks.conftest import FAST_WEBHOOKS, Receiver, Reply, register, settled

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"
WEBHOOKS = "/api/agents/crm/lead-webhooks"
TIMEOUT = 2.0

pytestmark = pytest.mark.skipif(bool(PrivateCluster.unavailable()), reason=str(PrivateCluster.unavailable()))


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster() as running:
        upgrade(Database(running.url).url)
        yield running


def call(
    port: int, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any, float]:
    """One request on a fresh connection -> (status, JSON body, seconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={**headers, "Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return response.status, json.loads(raw) if raw else None, time.monotonic() - started


def test_a_stopped_postgres_is_503_within_the_timeout_and_the_server_recovers(
    cluster: PrivateCluster, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(cluster.url, pool_size=4, timeout=TIMEOUT)
    app = create_app(make_settings(cluster.url, db_timeout_seconds=TIMEOUT), db)
    tenant = make_tenant(db)
    caplog.set_level(logging.INFO)
    requests = [
        ("GET", LEADS, None),
        ("POST", LEADS, lead()),
        ("POST", BULK, {"leads": [lead()]}),
        ("GET", WEBHOOKS, None),
    ]
    try:
        with LiveServer(app) as server:
            assert call(server.port, "GET", LEADS, tenant.headers)[0] == 200
            cluster.pause()
            try:
                worst = 0.0
                # More requests than threads and pooled connections: the later ones queue.
                for method, path, body in requests * 3:
                    status, answer, seconds = call(server.port, method, path, tenant.headers, body)
                    assert status == 503, answer
                    assert answer["error"]["type"] == "api_error"
                    assert answer["error"]["code"] == 503
                    worst = max(worst, seconds)
                assert worst < TIMEOUT + 3, f"a hang bound, not a performance figure: {worst:.1f} s"
            finally:
                cluster.resume()
            deadline = time.monotonic() + 30
            while (status := call(server.port, "GET", LEADS, tenant.headers)[0]) != 200:
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
            status, answer, _ = call(server.port, "POST", LEADS, tenant.headers, lead())
            assert status == 201, answer
    finally:
        db.dispose()
    outage = [r.getMessage() for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(outage) == 1, outage
    assert any("database available again" in r.getMessage() for r in caplog.records)


def test_new_connections_to_a_stopped_postgres_time_out(cluster: PrivateCluster) -> None:
    """No pooled connection to reuse: the connect itself meets a server that accepted the TCP
    connection and never answers (psycopg's connect timeout)."""
    db = Database(cluster.url, pool_size=2, timeout=TIMEOUT)
    tenant = make_tenant(db)
    db.dispose()
    db = Database(cluster.url, pool_size=2, timeout=TIMEOUT)
    app = create_app(make_settings(cluster.url, db_timeout_seconds=30), db)  # the connect timeout answers
    try:
        with LiveServer(app) as server:
            cluster.pause()
            try:
                status, answer, seconds = call(server.port, "GET", LEADS, tenant.headers)
            finally:
                cluster.resume()
            assert status == 503, answer
            assert seconds < 10
    finally:
        db.dispose()


def test_the_delivery_worker_records_its_attempt_once_the_database_answers_again(
    cluster: PrivateCluster,
) -> None:
    receiver = Receiver()
    db = Database(cluster.url, pool_size=4, timeout=TIMEOUT)
    app = create_app(make_settings(cluster.url, db_timeout_seconds=TIMEOUT, **FAST_WEBHOOKS), db)
    tenant = make_tenant(db)
    try:
        with LiveServer(app) as server:
            from fastapi.testclient import TestClient

            with TestClient(app) as client:  # for the helpers; the worker is the live server's
                endpoint = receiver.endpoint(Reply(200, delay=1.0))
                hook, _ = register(client, tenant, endpoint.url)
                status, answer, _ = call(server.port, "POST", LEADS, tenant.headers, lead())
                assert status == 201, answer
                endpoint.wait_for(1, timeout=20)
                cluster.pause()  # the attempt's outcome arrives while the database is stopped
                time.sleep(4)
                cluster.resume()
                [delivery] = settled(client, tenant, hook["id"])
                assert (delivery["status"], delivery["attempts"]) == ("succeeded", 1)
                # and the worker goes on delivering
                status, _, _ = call(server.port, "POST", LEADS, tenant.headers, lead())
                assert status == 201
                endpoint.wait_for(2, timeout=20)
    finally:
        receiver.close()
        db.dispose()
