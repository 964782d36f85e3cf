"""A request whose body never arrives whole (malformed chunks, a short Content-Length, a dropped
upload) is the client's doing: counted and logged as 499 ("client closed request"), never as a
500 (observability/middleware.py). Raw sockets against a real uvicorn on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from mega_crm.app import create_app
from mega_crm.db import Database
from tests.conftest import LiveServer, make_settings
from tests.fixtures.processes import parse_metrics, sample

LEADS = "/api/agents/crm/leads"
BAD_CHUNKS = (
    f"POST {LEADS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
).encode()
SHORT_BODY = (
    f"POST {LEADS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    'Content-Length: 1000\r\n\r\n{"contact_'
).encode()


@pytest.fixture
def server(db: Database) -> Iterator[LiveServer]:
    with LiveServer(create_app(make_settings(db.url), db)) as live:
        yield live


def _scrape(server: LiveServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)


def _send_and_close(server: LiveServer, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)  # nothing more is coming
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("raw", [BAD_CHUNKS, SHORT_BODY], ids=["bad-chunks", "short-body"])
def test_a_body_that_never_arrives_is_499_not_500(server: LiveServer, raw: bytes) -> None:
    labels = {"route": LEADS, "method": "POST"}
    before = _scrape(server)
    answer = _send_and_close(server, raw)
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
    deadline = time.monotonic() + 10
    while True:  # the request line is recorded once the app has given up on the body
        after = _scrape(server)
        gone = sample(after, "mega_http_requests_total", status="499", **labels) - sample(
            before, "mega_http_requests_total", status="499", **labels
        )
        if gone >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert gone == 1
    assert sample(after, "mega_http_requests_total", status="500", **labels) == sample(
        before, "mega_http_requests_total", status="500", **labels
    )
