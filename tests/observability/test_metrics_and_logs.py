"""GET /metrics after known traffic, and the JSON log lines of the same run (issue 11, items 1–2).

One real `mega-crm serve` (SQLite, in-process webhook worker, a loopback receiver) gets a known
mix of requests; the scrape before and after must differ by exactly that mix, and every line the
process wrote must be JSON without a token, secret, email or phone number in it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.fixtures.processes import (
    HOOKS,
    READ,
    WRITE,
    Served,
    clean_env,
    cli_json,
    parse_metrics,
    sample,
)
from tests.webhooks.conftest import Receiver

LEADS = "/api/agents/crm/leads"
HOOKS_PATH = "/api/agents/crm/lead-webhooks"


@dataclass
class Run:
    server: Served
    before: dict[Any, float]
    after: dict[Any, float]
    raw_after: str
    secrets: list[str]  # what must never be in a log line
    request_ids: dict[str, str]  # what the client sent / got back, by case
    customer_id: str


def _headers(token: str, cid: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "x-customer-id": cid, **extra}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir: Path = tmp_path_factory.mktemp("ops-run")
    env = clean_env(
        MEGA_DATABASE_URL=f"sqlite:///{workdir / 'ops.db'}",
        MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS="1",
        MEGA_WEBHOOK_RETRY_BASE_SECONDS="0.05",
    )
    customer = cli_json(workdir, env, "admin", "customers", "create", "--name", "Ops Realty")
    cid = customer["id"]
    cli_json(workdir, env, "admin", "fields", "add", "--customer", cid, "--slug", "budget")
    key = cli_json(
        workdir, env, "admin", "keys", "issue", "--customer", cid, "--scope", READ, "--scope", WRITE,
        "--scope", HOOKS,
    )  # fmt: skip
    cli_json(workdir, env, "admin", "limits", "set", "--customer", cid, "--bulk", "2/minute")
    token = key["token"]
    h = _headers(token, cid)
    receiver = Receiver()
    ok_hook, broken_hook = receiver.endpoint(), receiver.endpoint(500, 500, 500)
    # A webhook URL's path may hold a receiver's token: httpx logged each delivery's whole URL.
    secrets = [token, ok_hook.path, broken_hook.path]
    ids: dict[str, str] = {}
    try:
        with Served(workdir, env) as server, httpx.Client(base_url=server.base, timeout=10) as c:
            before_text = c.get("/metrics").text
            # webhooks: one that answers 2xx, one that always fails (no retries)
            for url, retries in ((ok_hook.url, 0), (broken_hook.url, 0)):
                r = c.post(HOOKS_PATH, headers=h, json={"url": url, "retry_attempts": retries})
                assert r.status_code == 201, r.text
                secrets.append(r.json()["secret"])
            third = c.post(HOOKS_PATH, headers=h, json={"url": ok_hook.url + "x"}).json()
            secrets.append(third["secret"])
            assert c.patch(
                f"{HOOKS_PATH}/{third['webhook']['id']}", headers=h, json={"is_active": False}
            ).is_success
            # createLead: 2 created, 1 merged, 1 replayed
            people = [("ada@example.com", "(206) 555-0123"), ("grace@example.org", "+14155550199")]
            for email, phone in people:
                r = c.post(LEADS, headers=h, json={"contact_email": email, "contact_phone": phone})
                assert r.status_code == 201, r.text
            secrets += [e for e, _ in people] + ["2065550123", "4155550199", "555-0123", "555-0199"]
            merge = {"contact_email": "ADA@example.com", "contact_name": "Ada L."}
            r = c.post(LEADS, headers={**h, "Idempotency-Key": "k-1"}, json=merge)
            assert r.status_code == 201
            r = c.post(LEADS, headers={**h, "Idempotency-Key": "k-1"}, json=merge)
            assert r.headers["Idempotent-Replayed"] == "true"
            # bulk: 2 created + 1 failed, then a replay, then a 429 (bulk limit 2/minute)
            rows = [
                {"contact_email": "linus@example.net"},
                {"contact_phone": "212-555-0142"},
                {"contact_email": "not-an-email"},
            ]
            secrets += ["linus@example.net", "212-555-0142", "2125550142"]
            for _ in range(2):
                r = c.post(f"{LEADS}/bulk", headers={**h, "Idempotency-Key": "b-1"}, json={"leads": rows})
                assert r.status_code == 200, r.text
            assert c.post(f"{LEADS}/bulk", headers=h, json={"leads": rows}).status_code == 429
            # reads, a search by email (must not reach the logs), an unknown route, bad auth
            assert c.get(LEADS, headers=h, params={"search": "ada@example.com"}).status_code == 200
            assert c.get(f"{LEADS}?search=%2B12065550123", headers=h).status_code == 200
            assert c.get("/no/such/route/ada@example.com").status_code == 404
            assert c.get(LEADS, headers=_headers("mega_" + "0" * 64, cid)).status_code == 401
            # request ids: a sane one is kept, anything else is replaced
            ids["sane"] = "req-42.abc:7_x"
            ids["sane_back"] = c.get("/livez", headers={"X-Request-Id": ids["sane"]}).headers["x-request-id"]
            ids["insane_back"] = c.get(
                "/livez", headers={"X-Request-Id": "has spaces and ada@example.com"}
            ).headers["x-request-id"]
            ids["error_back"] = c.get(LEADS, headers={"X-Request-Id": "err-1"}).headers["x-request-id"]
            ok_hook.wait_for(2)  # one delivery per created lead (the merge fires nothing)
            broken_hook.wait_for(2)
            deadline = time.monotonic() + 15
            # Until every attempt is counted and recorded: the counters move when an attempt
            # ends, the pending gauge when the worker's batch of results is committed after it.
            while True:
                after_text = c.get("/metrics").text
                after = parse_metrics(after_text)
                if (
                    sample(after, "mega_webhook_deliveries_total", outcome="failed") >= 2
                    and sample(after, "mega_webhook_deliveries_total", outcome="succeeded") >= 2
                    and sample(after, "mega_webhook_deliveries_pending") == 0
                    or time.monotonic() > deadline
                ):
                    break
                time.sleep(0.1)
        # the server has stopped: every line it wrote is in the file
        yield Run(server, parse_metrics(before_text), after, after_text, secrets, ids, cid)
    finally:
        receiver.close()


def delta(run: Run, name: str, **labels: str) -> float:
    return sample(run.after, name, **labels) - sample(run.before, name, **labels)


def test_http_requests_by_route_method_status(run: Run) -> None:
    route = "/api/agents/crm/leads"
    assert delta(run, "mega_http_requests_total", route=route, method="POST", status="201") == 4
    assert delta(run, "mega_http_requests_total", route=route, method="GET", status="200") == 2
    assert delta(run, "mega_http_requests_total", route=route, method="GET", status="401") == 2
    assert delta(run, "mega_http_requests_total", route=route + "/bulk", method="POST", status="429") == 1
    assert delta(run, "mega_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    # the latency histogram saw the same requests, by route
    assert delta(run, "mega_http_request_duration_seconds_count", route=route) == 8


def test_business_counters(run: Run) -> None:
    assert delta(run, "mega_leads_created_total", outcome="created") == 2
    assert delta(run, "mega_leads_created_total", outcome="merged") == 1
    assert delta(run, "mega_idempotent_replays_total", operation="createLead") == 1
    assert delta(run, "mega_idempotent_replays_total", operation="bulkImportLeads") == 1
    assert delta(run, "mega_bulk_rows_total", outcome="created") == 2
    assert delta(run, "mega_bulk_rows_total", outcome="failed") == 1
    assert delta(run, "mega_rate_limit_refusals_total", bucket="bulk") == 1
    assert delta(run, "mega_rate_limit_refusals_total", bucket="default") == 0


def test_webhook_metrics(run: Run) -> None:
    assert delta(run, "mega_webhook_attempts_total", result="succeeded") == 2
    assert delta(run, "mega_webhook_attempts_total", result="failed") == 2
    assert delta(run, "mega_webhook_deliveries_total", outcome="succeeded") == 2
    assert delta(run, "mega_webhook_deliveries_total", outcome="failed") == 2
    assert delta(run, "mega_webhook_attempt_duration_seconds_count") == 4
    assert sample(run.after, "mega_webhooks_inactive") == 1
    assert sample(run.after, "mega_webhook_deliveries_pending") == 0
    assert sample(run.after, "mega_webhook_oldest_pending_age_seconds") == 0
    assert ("mega_db_pool_connections_in_use", frozenset()) in run.after


def test_no_customer_data_in_metrics(run: Run) -> None:
    for secret in run.secrets + [run.customer_id, "example.com"]:
        assert secret not in run.raw_after


def test_one_json_line_per_request(run: Run) -> None:
    records = run.server.log_records()  # every line parses as JSON
    requests = [r for r in records if r["event"] == "request"]
    for r in requests:
        assert {"timestamp", "level", "request_id", "method", "route", "status", "duration_ms",
                "customer_id"} <= r.keys()  # fmt: skip
        assert isinstance(r["duration_ms"], float | int)
        assert r["status"] >= 100
    posts = [r for r in requests if r["method"] == "POST" and r["route"] == "/api/agents/crm/leads"]
    assert len(posts) == 4
    assert {r["customer_id"] for r in posts} == {run.customer_id}
    unauthenticated = [r for r in requests if r["status"] == 401]
    assert unauthenticated
    assert all(r["customer_id"] is None for r in unauthenticated)


def test_request_ids(run: Run) -> None:
    assert run.request_ids["sane_back"] == run.request_ids["sane"]
    insane = run.request_ids["insane_back"]
    assert re.fullmatch(r"[0-9a-f]{32}", insane)  # replaced by a fresh one
    assert run.request_ids["error_back"] == "err-1"  # on an error response too (401)
    by_id = {r["request_id"]: r for r in run.server.requests_logged()}
    assert by_id["err-1"]["status"] == 401
    assert by_id[run.request_ids["sane"]]["route"] == "/livez"
    assert by_id[insane]["route"] == "/livez"


def test_delivery_attempt_lines(run: Run) -> None:
    attempts = [r for r in run.server.log_records() if r["event"] == "webhook_attempt"]
    assert len(attempts) == 4
    for r in attempts:
        assert {"delivery_id", "webhook_id", "status_code", "error", "latency_ms", "attempt"} <= r.keys()
    assert sorted(r["status_code"] for r in attempts) == [200, 200, 500, 500]
    failed = next(r for r in attempts if r["status_code"] == 500)
    assert failed["error"] == "HTTP 500"
    assert failed["outcome"] == "failed"


def test_no_secret_or_contact_detail_in_any_log_line(run: Run) -> None:
    text = run.server.log_path.read_text()
    for secret in run.secrets:
        assert secret not in text, secret
    assert "@" not in text
    assert not re.search(r"mega_[0-9a-f]{16}|mega_whsec_", text)


def test_the_documents_and_docs_assets_are_counted_under_their_own_routes(client: TestClient) -> None:
    """/openapi.json, /docs and the mounted docs assets are served routes, not `<unmatched>`."""
    from prometheus_client import REGISTRY

    def count(route: str) -> float:
        labels = {"route": route, "method": "GET", "status": "200"}
        return REGISTRY.get_sample_value("mega_http_requests_total", labels) or 0.0

    before = {r: count(r) for r in ("/openapi.json", "/docs", "<unmatched>")}
    assert client.get("/openapi.json").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200
    asset = re.search(r'src="(/[^"]+\.js)"', docs.text)
    assert asset, docs.text[:500]
    assert client.get(asset.group(1)).status_code == 200
    mount = asset.group(1).rsplit("/", 1)[0] + "/{path}"
    assert count("/openapi.json") == before["/openapi.json"] + 1
    assert count("/docs") == before["/docs"] + 1
    assert count(mount) >= 1
    assert count("<unmatched>") == before["<unmatched>"]
