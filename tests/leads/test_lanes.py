"""Which database lane a listLeads request runs in (see mega_crm.db): a page one index range
serves is a "read"; anything that may scan or sort every match is "slow", so it never holds up
page reads."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from mega_crm.api.pipeline import parse_query
from mega_crm.api.state import app_state
from mega_crm.db import Database
from mega_crm.leads.models import list_lane
from mega_crm.leads.schemas import ListLeadsQuery
from tests.conftest import ContractClient
from tests.fixtures.factories import Tenant
from tests.leads.api import LEADS, create, listing


@pytest.mark.parametrize(
    ("query", "lane"),
    [
        ("status=active&limit=100", "read"),
        ("cursor=abc&sort_by=created_at", "read"),
        ("offset=1000", "read"),
        ("offset=1001", "slow"),
        ("search=smith", "slow"),
        ("search=", "read"),
        ("updated_since=2026-01-01T00:00:00Z", "slow"),
        ("created_since=2026-01-01T00:00:00Z", "slow"),
        ("status=won&sort_by=created_at&sort_dir=desc", "read"),
        ("status=won&sort_by=last_interaction_at", "slow"),
        ("stageId=7f0c2a52-5b1e-4d4e-9a57-0c6f8e1d2b3a&sort_by=created_at", "slow"),
        ("lead_line=buyer", "read"),
        ("status=won&lead_line=buyer", "slow"),
        ("sort_by=last_interaction_at&sort_dir=desc", "read"),
        ("sort_by=created_at&cursor=abc", "read"),
    ],
)
def test_reads_that_may_scan_run_in_the_slow_lane(query: str, lane: str) -> None:
    request = Request(
        {"type": "http", "method": "GET", "path": "/", "query_string": query.encode(), "headers": []}
    )
    assert list_lane(parse_query(request, ListLeadsQuery)) == lane


def test_a_busy_slow_lane_does_not_hold_up_page_reads(
    client: ContractClient, db: Database, tenant: Tenant
) -> None:
    create(client, tenant, {"contact_name": "Somebody"})
    release = threading.Event()
    running = threading.Semaphore(0)
    app_db = app_state(client.app).db

    def hold() -> None:
        running.release()
        release.wait()

    # Fill both threads of the slow lane with work that waits until released, and wait until
    # both run (a loaded machine once let the search reach the lane first).
    blockers = [threading.Thread(target=asyncio.run, args=(app_db.run("slow", hold),)) for _ in range(2)]
    for thread in blockers:
        thread.start()
    for _ in blockers:
        assert running.acquire(timeout=20), "the slow lane did not run the blockers"
    pages: dict[str, Any] = {}
    searcher = threading.Thread(
        target=lambda: pages.update(search=listing(client, tenant, search="Somebody"))
    )
    reader = threading.Thread(target=lambda: pages.update(plain=listing(client, tenant, limit=1)))
    try:
        searcher.start()
        reader.start()
        reader.join(timeout=20)  # a bound on a hang, not a timing: the read lane is idle
        assert "plain" in pages, "a page read waited behind the slow lane"
        assert "search" not in pages  # the search does wait, behind the slow lane's work
    finally:
        release.set()
        for thread in [*blockers, searcher, reader]:
            thread.join(timeout=30)
    assert pages["plain"]["total"] == 1
    assert pages["search"]["total"] == 1


def test_a_query_that_does_not_parse_is_refused_after_the_key_check(
    client: TestClient, tenant: Tenant
) -> None:
    """The query string is parsed before the lane is chosen, but its 400 waits for the key check
    (as a body's does): an anonymous caller learns nothing about it."""
    params = {"search": "smith", "offset": "many"}
    anonymous = client.get(LEADS, params=params)
    assert anonymous.status_code == 401, anonymous.text
    refused = client.get(LEADS, params=params, headers=tenant.headers)
    assert refused.status_code == 400, refused.text
    assert "offset" in refused.json()["error"]["message"]
    assert "ratelimit-remaining" in refused.headers  # counted like any other request
