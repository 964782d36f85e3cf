"""Retries against a real local HTTP server that answers 429 (with Retry-After) and 503 as scripted."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import free_port
from mega_crm_client import (
    APIConnectionError,
    APIError,
    AsyncMegaClient,
    MegaClient,
    RateLimitError,
    RetryEvent,
)

PAGE = {"leads": [], "total": 0, "limit": 20, "offset": 0, "next_cursor": None}
LEAD = {"lead": {"id": "l1"}}


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next scripted (status, headers, body), then 200 `ok_body`."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[tuple[int, dict[str, str]]] = []
        self.ok_body: dict[str, Any] = PAGE
        self.seen: list[tuple[str, str, str | None, float]] = []  # method, path, idempotency key, time
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.server.lock:
            self.server.seen.append(
                (self.command, self.path, self.headers.get("Idempotency-Key"), time.monotonic())
            )
            status, headers = self.server.script.pop(0) if self.server.script else (200, {})
        if status >= 400:
            kind = "rate_limit_error" if status == 429 else "api_error"
            body = {"error": {"type": kind, "code": status, "message": f"scripted {status}"}}
        else:
            body = self.server.ok_body
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def stub() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(stub: Scripted, **kwargs: Any) -> MegaClient:
    return MegaClient(stub.url, "mega_test", "00000000-0000-4000-8000-000000000001", **kwargs)


def test_get_waits_retry_after_on_429_then_backs_off_on_503(stub: Scripted) -> None:
    stub.script = [(429, {"Retry-After": "1", "X-Request-Id": "req-1"}), (503, {})]
    events: list[RetryEvent] = []
    with client_for(stub, on_retry=events.append) as c:
        page = c.leads.list()
    assert page.total == 0
    assert [m for m, *_ in stub.seen] == ["GET", "GET", "GET"]
    assert [e.reason for e in events] == ["429", "503"]
    assert events[0].delay >= 1.0
    assert stub.seen[1][3] - stub.seen[0][3] >= 1.0  # the server saw the wait
    assert 0.5 <= events[1].delay <= 1.0  # second attempt: jitter in [half, all] of 0.5 s × 2


def test_post_with_a_key_is_retried_with_the_same_key(stub: Scripted) -> None:
    stub.script = [(503, {}), (502, {})]
    stub.ok_body = LEAD
    with client_for(stub) as c:
        assert c.leads.create(contact_name="x")["id"] == "l1"
    keys = [key for _, _, key, _ in stub.seen]
    assert len(keys) == 3
    assert keys[0]
    assert len(set(keys)) == 1


@pytest.mark.parametrize("status", [503, 429])
def test_post_without_a_key_and_patch_are_never_retried(stub: Scripted, status: int) -> None:
    stub.script = [(status, {"Retry-After": "0"}), (status, {"Retry-After": "0"})]
    with client_for(stub) as c:
        with pytest.raises(APIError) as created:
            c.webhooks.create("https://example.com/hook")  # POST without Idempotency-Key
        with pytest.raises(APIError):
            c.webhooks.update("w1", is_active=False)
    assert created.value.status == status
    assert [m for m, *_ in stub.seen] == ["POST", "PATCH"]


@pytest.mark.parametrize("status", [503, 429])
def test_recover_test_event_and_rotation_are_never_retried(stub: Scripted, status: int) -> None:
    """POST …/recover and …/test carry no Idempotency-Key (the server takes none there) and the
    rotation is a PATCH: a lost answer is the caller's to judge, never repeated behind its back."""
    stub.script = [(status, {"Retry-After": "0"})] * 6
    with client_for(stub) as c:
        with pytest.raises(APIError):
            c.webhooks.recover("w1", "2026-11-28T00:00:00Z")
        with pytest.raises(APIError):
            c.webhooks.send_test("w1")
        with pytest.raises(APIError):
            c.webhooks.rotate_secret("w1", overlap_seconds=60)

    async def scenario() -> None:
        async with AsyncMegaClient(stub.url, "t", "c") as c:
            with pytest.raises(APIError):
                await c.webhooks.recover("w1", "2026-11-28T00:00:00Z")
            with pytest.raises(APIError):
                await c.webhooks.send_test("w1")

    asyncio.run(scenario())
    assert [(m, p) for m, p, *_ in stub.seen] == [
        ("POST", "/api/agents/crm/lead-webhooks/w1/recover"),
        ("POST", "/api/agents/crm/lead-webhooks/w1/test"),
        ("PATCH", "/api/agents/crm/lead-webhooks/w1"),
        ("POST", "/api/agents/crm/lead-webhooks/w1/recover"),
        ("POST", "/api/agents/crm/lead-webhooks/w1/test"),
    ]


def test_gives_up_after_max_retries(stub: Scripted) -> None:
    stub.script = [(429, {"Retry-After": "0", "X-Request-Id": "req-9"})] * 3
    with client_for(stub, max_retries=2) as c, pytest.raises(RateLimitError) as info:
        c.leads.list()
    assert len(stub.seen) == 3
    assert info.value.retry_after == 0
    assert info.value.request_id == "req-9"
    assert "req-9" in str(info.value)


def test_connection_errors_are_retried_then_raised() -> None:
    events: list[RetryEvent] = []
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with MegaClient(dead, "t", "c", max_retries=2, on_retry=events.append) as c:
        with pytest.raises(APIConnectionError):
            c.leads.list()
        with pytest.raises(APIConnectionError):
            c.webhooks.create("https://example.com/hook")
    assert [e.reason for e in events] == ["ConnectError", "ConnectError"]  # the GET only


def test_async_client_retries_alike(stub: Scripted) -> None:
    stub.script = [(429, {"Retry-After": "1"}), (500, {})]
    stub.ok_body = LEAD

    async def scenario() -> dict[str, Any]:
        async with AsyncMegaClient(stub.url, "t", "c") as c:
            lead = await c.leads.create(contact_name="x", idempotency_key="k-1")
            return dict(lead)

    assert asyncio.run(scenario())["id"] == "l1"
    assert [key for _, _, key, _ in stub.seen] == ["k-1", "k-1", "k-1"]
    assert stub.seen[1][3] - stub.seen[0][3] >= 1.0


def test_an_unusable_url_fails_at_once() -> None:
    events: list[RetryEvent] = []
    with (
        MegaClient("ftp://127.0.0.1", "t", "c", on_retry=events.append) as c,
        pytest.raises(APIConnectionError),
    ):
        c.leads.list()
    assert events == []
