"""Webhooks: the management methods, the signature check against real deliveries, and `listen`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import Tenant, free_port
from mega_crm_client import MegaClient, NotFoundError
from mega_crm_client.webhooks import compute_signature, parse_event, verify_signature


class Captured(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CaptureHandler)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()


class CaptureHandler(BaseHTTPRequestHandler):
    server: Captured

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.received.append((dict(self.headers.items()), raw))
        self.send_response(204)
        self.end_headers()
        self.server.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def receiver() -> Iterator[Captured]:
    server = Captured()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_every_webhook_method_and_a_verified_delivery(client: MegaClient, receiver: Captured) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    created = client.webhooks.create(url, timeout_seconds=5, retry_attempts=1, description="e2e")
    hook_id, secret = created.webhook["id"], created.secret
    assert secret
    assert client.webhooks.get(hook_id)["url"] == url
    assert [h["id"] for h in client.webhooks.list()] == [hook_id]

    lead = client.leads.create(contact_name="Hook Me", contact_email="hook@example.com")
    assert receiver.arrived.wait(15)
    headers, raw = receiver.received[0]
    assert verify_signature(secret, headers, raw)
    assert not verify_signature(secret, headers, raw + b" ")
    event = parse_event(raw)
    assert event.lead["id"] == lead["id"]
    assert event.lead["contact_email"] == "hook@example.com"

    page = wait_for(lambda: (p := client.webhooks.deliveries(hook_id)).deliveries
                    and p.deliveries[0]["status"] == "succeeded" and p)  # fmt: skip
    delivery = page.deliveries[0]
    assert delivery["id"] == {k.lower(): v for k, v in headers.items()}["x-mega-delivery"]
    assert delivery["last_status_code"] == 204

    rotated = client.webhooks.rotate_secret(hook_id)
    assert rotated.secret
    assert rotated.secret != secret
    again = client.webhooks.redeliver(hook_id, delivery["id"])
    assert again["id"] != delivery["id"]
    wait_for(lambda: len(receiver.received) >= 2)
    headers2, raw2 = receiver.received[1]
    assert verify_signature(rotated.secret, headers2, raw2)  # signed with the new secret
    assert not verify_signature(secret, headers2, raw2)

    assert client.webhooks.update(hook_id, description="changed").webhook["description"] == "changed"
    assert len(client.webhooks.deliveries(hook_id, limit=1).deliveries) == 1
    assert client.webhooks.delete(hook_id) is True
    with pytest.raises(NotFoundError):
        client.webhooks.get(hook_id)


def test_listen_verifies_prints_and_acknowledges(
    client: MegaClient, tenant: Tenant, receiver: Captured
) -> None:
    port = free_port()
    created = client.webhooks.create(f"http://127.0.0.1:{port}/", retry_attempts=0)
    assert created.secret
    forward = f"http://127.0.0.1:{receiver.server_address[1]}/forwarded"
    listen = subprocess.Popen(
        [sys.executable, "-m", "mega_crm_client.cli", "listen", "--port", str(port),
         "--secret", created.secret, "--forward-to", forward],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"COLUMNS": "300", "PATH": ""},
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts(port))
        lead = client.leads.create(contact_name="Listen Here", contact_phone="206-555-0199")
        page = wait_for(lambda: (p := client.webhooks.deliveries(created.webhook["id"])).deliveries
                        and p.deliveries[0]["status"] != "pending" and p)  # fmt: skip
        assert page.deliveries[0]["status"] == "succeeded"
        assert page.deliveries[0]["last_status_code"] == 204  # the forward target's answer
        forwarded_headers, forwarded_raw = receiver.received[0]
        assert verify_signature(created.secret, forwarded_headers, forwarded_raw)
        # A forged delivery is refused with 400.
        forged = httpx.post(
            f"http://127.0.0.1:{port}/", content=b'{"event":"lead.created"}',
            headers={"X-Mega-Timestamp": str(int(time.time())), "X-Mega-Signature": "sha256=" + "0" * 64},
        )  # fmt: skip
        assert forged.status_code == 400
    finally:
        listen.terminate()
        stdout, stderr = listen.communicate(timeout=10)
    assert f"lead {lead['id']} Listen Here" in stdout
    assert "✓ verified" in stdout
    assert "bad signature" in stdout


def _accepts(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
        return True
    except httpx.TransportError:
        return False


# --- the signature rule on its own -------------------------------------------------------------------

SECRET = "mega_whsec_" + "ab" * 32


def test_signature_matches_the_documented_rule() -> None:
    import hashlib
    import hmac

    body = json.dumps({"event": "lead.created"}).encode()
    expected = "sha256=" + hmac.new(SECRET.encode(), b"1795795156." + body, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, 1795795156, body) == expected
    headers = {"x-mega-timestamp": "1795795156", "X-MEGA-SIGNATURE": expected}
    assert verify_signature(SECRET, headers, body, now=1795795156 + 300)
    assert not verify_signature(SECRET, headers, body, now=1795795156 + 301)  # too old: a replay
    assert not verify_signature(SECRET, headers, body, now=1795795156 - 301)
    assert verify_signature(SECRET, headers, body, tolerance=None, now=0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Mega-Timestamp": "", "X-Mega-Signature": "sha256=00"},
        {"X-Mega-Timestamp": "١٢٣", "X-Mega-Signature": "sha256=00"},  # non-ASCII digits
        {"X-Mega-Timestamp": "12x", "X-Mega-Signature": "sha256=00"},
        {"X-Mega-Timestamp": "1", "X-Mega-Signature": "md5=00"},
    ],
)
def test_malformed_headers_do_not_verify(headers: dict[str, str]) -> None:
    assert verify_signature(SECRET, headers, b"{}", tolerance=None) is False


@given(body=st.binary(max_size=512), timestamp=st.integers(0, 2**40), flip=st.integers(0, 511))
def test_a_signature_verifies_its_body_and_no_other(body: bytes, timestamp: int, flip: int) -> None:
    headers = {
        "X-Mega-Timestamp": str(timestamp),
        "X-Mega-Signature": compute_signature(SECRET, timestamp, body),
    }
    assert verify_signature(SECRET, headers, body, tolerance=None)
    assert not verify_signature(SECRET + "x", headers, body, tolerance=None)
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
        assert not verify_signature(SECRET, headers, tampered, tolerance=None)


def test_parse_event_refuses_other_shapes() -> None:
    for raw in (b"not json", b"[]", b'{"event": "lead.deleted"}', b'{"event": "lead.created", "lead": {}}'):
        with pytest.raises(ValueError, match="webhook body"):
            parse_event(raw)


def test_during_a_rotation_overlap_either_listed_signature_verifies() -> None:
    """The server signs with the new and the previous secret during an overlap:
    `X-Mega-Signature: sha256=<new>,sha256=<previous>`; a receiver holding either verifies."""
    previous = "mega_whsec_" + "cd" * 32
    body = b'{"event": "lead.created"}'
    both = f"{compute_signature(SECRET, 1795795156, body)},{compute_signature(previous, 1795795156, body)}"
    headers = {"X-Mega-Timestamp": "1795795156", "X-Mega-Signature": both}
    assert verify_signature(SECRET, headers, body, tolerance=None)
    assert verify_signature(previous, headers, body, tolerance=None)
    assert not verify_signature("mega_whsec_" + "ef" * 32, headers, body, tolerance=None)
