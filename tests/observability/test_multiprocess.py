"""Metrics across processes (issue 11, item 1): `serve --workers 2` and a separate `worker`
sharing PROMETHEUS_MULTIPROC_DIR, on PostgreSQL (several processes need it)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import POSTGRES_URL, TEST_SECRET
from tests.fixtures.processes import (
    COMMAND,
    HOOKS,
    WRITE,
    Served,
    clean_env,
    cli,
    cli_json,
    parse_metrics,
    sample,
)
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="MEGA_TEST_POSTGRES_URL is not set")


SCHEMA = "mega_ops_multiprocess"


def _schema(action: str) -> None:
    """The test's own schema, so the session's PostgreSQL schema (`public`) is left alone."""
    assert POSTGRES_URL
    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        if action == "create":
            conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    engine.dispose()


def test_workers_and_a_separate_worker_add_up(tmp_path: Path) -> None:
    assert POSTGRES_URL
    _schema("create")
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{SCHEMA}"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = clean_env(
        MEGA_DATABASE_URL=url,
        MEGA_SECRET_KEY=TEST_SECRET,
        MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    assert cli(tmp_path, env, "db", "upgrade").returncode == 0
    cid = cli_json(tmp_path, env, "admin", "customers", "create", "--name", "Multi")["id"]
    scopes = ["--scope", WRITE, "--scope", HOOKS]
    key = cli_json(tmp_path, env, "admin", "keys", "issue", "--customer", cid, *scopes)
    headers = {"Authorization": f"Bearer {key['token']}", "x-customer-id": cid}
    receiver = Receiver()
    hook = receiver.endpoint()
    argv = [*COMMAND, "serve", "--port", "{port}", "--workers", "2", "--no-worker"]
    worker = subprocess.Popen(
        [*COMMAND, "worker"], env={**env, "MEGA_LOG_FORMAT": "json"}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with Served(tmp_path, env, argv) as s:
            for _ in range(30):  # new connections: the kernel spreads them over both processes
                assert httpx.get(s.base + "/readyz").status_code == 200
            r = httpx.post(s.base + "/api/agents/crm/lead-webhooks", headers=headers, json={"url": hook.url})
            assert r.status_code == 201, r.text
            r = httpx.post(s.base + "/api/agents/crm/leads", headers=headers, json={"contact_name": "Multi"})
            assert r.status_code == 201
            hook.wait_for(1)
            deadline = time.monotonic() + 15
            while True:
                scrapes = [parse_metrics(httpx.get(s.base + "/metrics").text) for _ in range(6)]
                done = all(sample(m, "mega_webhook_attempts_total", result="succeeded") == 1 for m in scrapes)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            for m in scrapes:  # whichever process answered, the sums over all processes
                ready = {"route": "/readyz", "method": "GET", "status": "200"}
                assert sample(m, "mega_http_requests_total", **ready) == 30
                assert sample(m, "mega_leads_created_total", outcome="created") == 1
                assert sample(m, "mega_webhook_attempts_total", result="succeeded") == 1  # the worker's
            pids = {f.name.split("_")[-1] for f in metrics_dir.glob("counter_*.db")}
            assert len(pids) >= 3  # two server processes and the worker wrote samples
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        receiver.close()
        _schema("drop")
