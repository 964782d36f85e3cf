"""Many processes on one PostgreSQL and one Redis, proven with real processes: two
`mega-crm serve --workers 2` on two ports (four server processes) and two `mega-crm worker`.
They share one rate-limit budget per key, one idempotency record per key, one lead per
contact, and one outbox from which every lead.created is delivered once (no crash here, so no
duplicates either)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from mega_crm.db import Database
from tests.conftest import POSTGRES_URL, REDIS_URL, TEST_SECRET
from tests.fixtures.factories import lead, make_tenant
from tests.fixtures.processes import free_port
from tests.scale.pgbouncer import drop_database, fresh_database
from tests.webhooks.conftest import Receiver, WorkerProcess, wait_until

pytestmark = pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL), reason="MEGA_TEST_POSTGRES_URL and MEGA_TEST_REDIS_URL are both needed"
)

LEADS = "/api/agents/crm/leads"
WEBHOOKS = "/api/agents/crm/lead-webhooks"


def environment(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "MEGA_DATABASE_URL": url,
        "MEGA_REDIS_URL": str(REDIS_URL),
        "MEGA_SECRET_KEY": TEST_SECRET,
        "MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS": "1",
        "MEGA_WEBHOOK_POLL_SECONDS": "0.5",
        "MEGA_LOG_LEVEL": "warning",
        "MEGA_DB_POOL_SIZE": "4",
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """-> (database URL, the two servers' base URLs), with two worker processes running."""
    assert POSTGRES_URL
    name = f"{make_url(POSTGRES_URL).database}_processes"
    fresh_database(POSTGRES_URL, name)
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    env = environment(url)
    migrated = subprocess.run(
        [sys.executable, "-m", "mega_crm.cli", "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    logs = tmp_path_factory.mktemp("processes")
    servers: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    workers: list[WorkerProcess] = []
    try:
        for i in range(2):
            port = free_port()
            log = open(Path(logs) / f"serve-{i}.log", "wb")  # noqa: SIM115 - the process keeps it
            servers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mega_crm.cli",
                        "serve",
                        "--port",
                        str(port),
                        "--workers",
                        "2",
                        "--no-worker",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        # The second worker LISTENs on a URL of its own (MEGA_DATABASE_LISTEN_URL).
        workers = [WorkerProcess(url), WorkerProcess(url, MEGA_DATABASE_LISTEN_URL=url)]
        for base, server in zip(bases, servers, strict=True):
            deadline = time.monotonic() + 40
            while True:
                assert server.poll() is None, (Path(logs) / "serve-0.log").read_text()
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "mega-crm serve did not come up"
                time.sleep(0.2)
        for worker in workers:
            worker.wait_started()
        yield url, bases
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for worker in workers:
            worker.stop()
        drop_database(POSTGRES_URL, name)


def post(base: str, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    # A new connection for each request, so the kernel spreads them over each port's processes.
    return httpx.post(f"{base}{LEADS}", json=body, headers=headers, timeout=30)


def test_one_keys_rate_limit_holds_across_every_process(deployment: tuple[str, list[str]]) -> None:
    url, bases = deployment
    db = Database(url)
    try:
        tenant = make_tenant(db, limits=("60/minute", "10/minute"))
    finally:
        db.dispose()
    ports = itertools.cycle(bases)
    with ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(
                lambda base: httpx.get(f"{base}{LEADS}", headers=tenant.headers, timeout=30).status_code,
                [next(ports) for _ in range(60)],
            )
        )
    assert statuses == [200] * 60
    for base in bases:  # the 61st, and the 62nd, wherever they land
        r = httpx.get(f"{base}{LEADS}", headers=tenant.headers, timeout=30)
        assert r.status_code == 429, r.text


def test_shared_idempotency_dedup_and_outbox_across_processes(deployment: tuple[str, list[str]]) -> None:
    url, bases = deployment
    db = Database(url)
    tenant = make_tenant(db)
    receiver = Receiver()
    try:
        endpoint = receiver.endpoint()
        hooked = httpx.post(f"{bases[0]}{WEBHOOKS}", json={"url": endpoint.url}, headers=tenant.headers)
        assert hooked.status_code == 201, hooked.text

        # One Idempotency-Key sent to both servers at once, ten times over: one write each.
        replayed: list[tuple[str, list[httpx.Response]]] = []
        for _ in range(10):
            key = f"same-{uuid.uuid4().hex}"
            body = lead()
            start = threading.Barrier(2)

            def send(
                base: str, body: dict[str, Any] = body, key: str = key, start: threading.Barrier = start
            ) -> httpx.Response:
                start.wait()
                return post(base, {**tenant.headers, "Idempotency-Key": key}, body)

            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(send, bases))
            replayed.append((body["contact_email"], answers))
        created: set[str] = set()
        for email, answers in replayed:
            ok = [r.json()["lead"]["id"] for r in answers if r.status_code == 201]
            # The loser either waits and replays the winner's answer, or is told the first is
            # still in flight (409): never a second lead.
            assert all(r.status_code in (201, 409) for r in answers), [r.text for r in answers]
            assert len(set(ok)) == 1, [r.text for r in answers]
            created |= set(ok)
            with db.engine.connect() as conn:
                count = conn.execute(
                    text("SELECT count(*) FROM leads WHERE customer_id = :c AND contact_email = :e"),
                    {"c": tenant.customer_id, "e": email},
                ).scalar_one()
            assert count == 1

        # 50 creates of one email, spread over the four server processes: one lead.
        email = f"one-{uuid.uuid4().hex[:12]}@example.com"
        ports = itertools.cycle(bases)
        with ThreadPoolExecutor(10) as pool:
            answers = list(
                pool.map(
                    lambda base: post(base, tenant.headers, lead(contact_email=email)),
                    [next(ports) for _ in range(50)],
                )
            )
        assert {r.status_code for r in answers} == {201}, {r.text for r in answers if r.status_code != 201}
        ids = {r.json()["lead"]["id"] for r in answers}
        assert len(ids) == 1
        created |= ids

        # Every lead.created delivered by the two workers, each once.
        wait_until(
            lambda: created <= {a.json["lead"]["id"] for a in endpoint.arrivals},
            30,
            "every lead.created delivered",
        )
        arrivals = endpoint.quiet_for(1.5)
        delivered = [a.json["lead"]["id"] for a in arrivals if a.json["event"] == "lead.created"]
        assert sorted(delivered) == sorted(created)
    finally:
        receiver.close()
        db.dispose()
