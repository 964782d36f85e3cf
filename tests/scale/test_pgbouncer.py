"""Every route, the operator CLI and the delivery worker through a real PgBouncer in
transaction pooling mode (tests/scale/pgbouncer.py), with the URL a deployment would set
(`…?pool_mode=transaction`) and the default statement timeout (which must not be sent as a
startup parameter: PgBouncer refuses `options`).

Its server pool is 3 connections for many clients, so a client's transactions hop between
server connections: a named prepared statement (psycopg prepares from a query's 5th run), a
session setting or a LISTEN would break here, not only in production."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from mega_crm.api.state import app_state
from mega_crm.app import create_app
from mega_crm.db import Database
from tests.conftest import POSTGRES_URL, TEST_SECRET, LiveServer, make_settings
from tests.db.test_pipelined import lost_mid_pipeline
from tests.fixtures.factories import lead, make_tenant
from tests.scale.pgbouncer import drop_database, fresh_database, pgbouncer
from tests.webhooks.conftest import Receiver, WorkerProcess, wait_until

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="MEGA_TEST_POSTGRES_URL is not set")

LEADS = "/api/agents/crm/leads"
WEBHOOKS = "/api/agents/crm/lead-webhooks"


@pytest.fixture(scope="module")
def pgb_url() -> Iterator[str]:
    assert POSTGRES_URL
    name = f"{make_url(POSTGRES_URL).database}_pgbouncer"
    fresh_database(POSTGRES_URL, name)
    try:
        with pgbouncer(POSTGRES_URL, name) as url:
            yield url
    finally:
        drop_database(POSTGRES_URL, name)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEGA_DATABASE_URL": url, "MEGA_SECRET_KEY": TEST_SECRET}
    return subprocess.run(
        [sys.executable, "-m", "mega_crm.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_server_connection_lost_mid_pipeline_closes_the_clients(pgb_url: str) -> None:
    """PgBouncer keeps the client's connection when the server's dies, and says so with an
    error no statement asked for: the pipelined write raises a lost connection, closes its
    connection and the next write works (tests/db/test_pipelined.py: lost_mid_pipeline)."""
    from mega_crm.migrate import upgrade

    assert POSTGRES_URL
    upgrade(pgb_url)
    lost_mid_pipeline(pgb_url, POSTGRES_URL)


def test_the_cli_migrates_and_administers_through_pgbouncer(pgb_url: str) -> None:
    import json

    assert cli(pgb_url, "db", "upgrade").returncode == 0
    made = cli(pgb_url, "admin", "customers", "create", "--name", "Bouncer Realty", "--json")
    assert made.returncode == 0, made.stderr
    customer = json.loads(made.stdout)["id"]
    for args in (
        ["admin", "keys", "issue", "--customer", customer, "--scope", "public_api:leads:read", "--json"],
        ["admin", "stages", "add", "--customer", customer, "--slug", "toured", "--name", "Toured", "--json"],
        ["admin", "owners", "add", "--customer", customer, "--name", "Ann", "--json"],
        ["admin", "fields", "add", "--customer", customer, "--slug", "budget", "--json"],
        ["admin", "limits", "set", "--customer", customer, "--default", "5/minute"],
        ["admin", "keys", "list", "--customer", customer],
        ["demo"],
    ):
        done = cli(pgb_url, *args)
        assert done.returncode == 0, (args, done.stderr)


@pytest.fixture(scope="module")
def served(pgb_url: str) -> Iterator[tuple[str, Database]]:
    """The API through PgBouncer, built from settings as `serve` builds it (default timeouts)."""
    assert cli(pgb_url, "db", "upgrade").returncode == 0
    settings = make_settings(pgb_url, webhook_allow_private_targets=True, db_pool_size=8)
    app = create_app(settings)
    with LiveServer(app) as server:
        yield server.url, app_state(app).db
    app_state(app).db.dispose()


def test_readiness_through_pgbouncer(served: tuple[str, Database]) -> None:
    """/readyz's own connection takes the URL without our pool_mode parameter (libpq refused it:
    behind PgBouncer every instance answered 503 and left its load balancer; newcomer helper)."""
    base, _db = served
    ready = httpx.get(f"{base}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"] == "ok"


def test_every_route_and_the_worker_process_through_pgbouncer(
    served: tuple[str, Database], pgb_url: str
) -> None:
    base, db = served
    assert db.transaction_pooling
    tenant = make_tenant(db)
    receiver = Receiver()
    worker = WorkerProcess(pgb_url).wait_started()
    exercised: set[tuple[str, str]] = set()
    try:
        with httpx.Client(base_url=base, headers=tenant.headers, timeout=30) as http:

            def call(method: str, route: str, path: str, expect: int, **kwargs: Any) -> Any:
                r = http.request(method, path, **kwargs)
                assert r.status_code == expect, (method, path, r.status_code, r.text)
                exercised.add((method, route))
                return r.json() if r.content else None

            endpoint = receiver.endpoint()
            hook = call("POST", WEBHOOKS, WEBHOOKS, 201, json={"url": endpoint.url})
            hid = hook["webhook"]["id"]
            one = f"{WEBHOOKS}/{{id}}"

            # Many statements of each kind, from many threads: past psycopg's prepare threshold,
            # on server connections that change between transactions.
            def create(i: int) -> str:
                headers = {"Idempotency-Key": f"k-{i}"} if i % 2 else {}
                payload = lead()
                body = call("POST", LEADS, LEADS, 201, json=payload, headers=headers)["lead"]
                if i % 2:  # the replay answers the stored response, writing nothing
                    again = call("POST", LEADS, LEADS, 201, json=payload, headers=headers)["lead"]
                    assert again["id"] == body["id"]
                return str(body["id"])

            with ThreadPoolExecutor(8) as pool:
                singles = set(pool.map(create, range(40)))
            created = set(singles)
            bulk = call(
                "POST",
                f"{LEADS}/bulk",
                f"{LEADS}/bulk",
                200,
                json={"leads": [{"row_ref": str(i), **lead()} for i in range(50)]},
            )
            created |= {row["lead_id"] for row in bulk["results"] if row["lead_id"]}
            assert len(created) == 90, bulk

            seen: list[str] = []
            params: dict[str, Any] = {"limit": 7}
            while True:
                page = call("GET", LEADS, LEADS, 200, params=params)
                seen += [row["id"] for row in page["leads"]]
                if not page.get("next_cursor"):
                    break
                params = {"limit": 7, "cursor": page["next_cursor"]}
            assert set(seen) == created
            assert len(seen) == len(created)

            # Every lead.created (createLead's; bulk sends none) reaches the receiver through
            # the worker process, which polls.
            try:
                wait_until(
                    lambda: singles <= {a.json["lead"]["id"] for a in endpoint.arrivals},
                    30,
                    "every lead.created delivered by the worker process",
                )
            except AssertionError:
                worker_log = "".join(worker.log)
                raise AssertionError(f"{len(endpoint.arrivals)} arrived; worker: {worker_log}") from None

            call("GET", WEBHOOKS, WEBHOOKS, 200)
            call("GET", one, f"{WEBHOOKS}/{hid}", 200)
            call("PATCH", one, f"{WEBHOOKS}/{hid}", 200, json={"description": "through pgbouncer"})
            log = call("GET", f"{one}/deliveries", f"{WEBHOOKS}/{hid}/deliveries", 200)
            delivery = log["deliveries"][0]["id"]
            call(
                "POST",
                f"{one}/deliveries/{{delivery_id}}/redeliver",
                f"{WEBHOOKS}/{hid}/deliveries/{delivery}/redeliver",
                201,
            )
            call(
                "POST",
                f"{one}/recover",
                f"{WEBHOOKS}/{hid}/recover",
                202,
                json={"since": "2020-01-01T00:00:00Z"},
            )
            call("POST", f"{one}/test", f"{WEBHOOKS}/{hid}/test", 201)
            call("DELETE", one, f"{WEBHOOKS}/{hid}", 200)
    finally:
        worker.stop()
        receiver.close()

    routes = {
        (method.upper(), path)
        for path, item in httpx.get(f"{base}/openapi.json").json()["paths"].items()
        for method in item
    }
    assert exercised == routes, routes - exercised
    assert any("polling every" in line for line in worker.log), "".join(worker.log)


def test_the_pool_mode_parameter_is_ours_and_checked(pgb_url: str) -> None:
    with pytest.raises(ValueError, match="pool_mode"):
        Database(pgb_url.replace("pool_mode=transaction", "pool_mode=statement"))
    db = Database(pgb_url)
    try:
        assert "pool_mode" not in db.engine.url.render_as_string()
        with db.engine.connect() as conn:
            assert conn.connection.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
    finally:
        db.dispose()
