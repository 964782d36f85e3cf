"""The server's webhook extensions through the client: endpoint health fields and re-enabling,
rotation with overlap, recover, the test event, lead.updated, and Standard Webhooks signatures
(checked against the official `standardwebhooks` package on real deliveries)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import free_port
from mega_crm_client import ConflictError, InvalidRequestError, MegaClient
from mega_crm_client.webhooks import (
    LeadCreatedEvent,
    LeadUpdatedEvent,
    WebhookTestEvent,
    compute_signature,
    compute_standard_signature,
    parse_event,
    standard_webhooks_key,
    standard_webhooks_secret,
    verify_any,
    verify_signature,
    verify_standard_webhook,
)

EXAMPLE_LEAD_ID = "00000000-0000-4000-8000-000000000000"


class Receiver(ThreadingHTTPServer):
    """A loopback endpoint that records each request and answers `status` (settable)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.status = 204
        self.received: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"

    def wait(self, count: int, timeout: float = 15.0) -> tuple[dict[str, str], bytes]:
        """The `count`-th request (1-based), waiting for it; headers with lower-case names."""
        wait_for(lambda: len(self.received) >= count, timeout)
        return self.received[count - 1]


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.received.append(({k.lower(): v for k, v in self.headers.items()}, raw))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
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


def test_gone_endpoint_shows_in_the_fields_then_reenable_and_recover(
    client: MegaClient, receiver: Receiver
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    created = client.webhooks.create(receiver.url, retry_attempts=0)
    hook = created.webhook
    assert (hook["disabled_reason"], hook["disabled_at"], hook["consecutive_failures"]) == (None, None, 0)
    assert (hook["last_success_at"], hook["signature_scheme"]) == (None, "mega")
    hook_id = hook["id"]

    receiver.status = 410  # the endpoint is gone: the server disables the webhook at once
    lead = client.leads.create(contact_email="gone@example.com")
    disabled = wait_for(lambda: (h := client.webhooks.get(hook_id))["disabled_reason"] and h)
    assert disabled["is_active"] is False
    assert disabled["disabled_reason"] == "gone"
    assert disabled["disabled_at"] is not None
    with pytest.raises(ConflictError):  # an inactive webhook recovers nothing
        client.webhooks.recover(hook_id, since)

    receiver.status = 204
    enabled = client.webhooks.update(hook_id, is_active=True).webhook
    assert enabled["is_active"] is True
    assert (enabled["disabled_reason"], enabled["consecutive_failures"]) == (None, 0)
    assert client.webhooks.recover(hook_id, since) == 1  # the delivery that met the 410
    headers, raw = receiver.wait(2)
    assert parse_event(raw).lead["id"] == lead["id"]
    assert verify_signature(created.secret or "", headers, raw)
    # Once resent (pending or succeeded), it is left out: recovering again queues nothing.
    assert client.webhooks.recover(hook_id, since.isoformat(), datetime.now(UTC)) == 0
    # A window before the failure holds nothing; a naive datetime is read as UTC.
    assert client.webhooks.recover(hook_id, datetime(2020, 1, 1), datetime(2020, 1, 2)) == 0
    assert wait_for(lambda: client.webhooks.get(hook_id)["last_success_at"])
    with pytest.raises(InvalidRequestError):
        client.webhooks.recover(hook_id, "yesterday")


def test_test_event_and_rotation_with_overlap(client: MegaClient, receiver: Receiver) -> None:
    created = client.webhooks.create(receiver.url, event_types=["lead.updated"])
    hook_id, first = created.webhook["id"], created.secret
    assert first

    delivery = client.webhooks.send_test(hook_id)  # whatever the webhook's event_types
    assert delivery["event"] == "webhook.test"
    assert delivery["webhook_id"] == hook_id
    headers, raw = receiver.wait(1)
    assert headers["x-mega-delivery"] == delivery["id"]
    assert verify_signature(first, headers, raw)
    event = parse_event(raw)
    assert isinstance(event, WebhookTestEvent)
    assert event.lead["id"] == EXAMPLE_LEAD_ID

    second = client.webhooks.rotate_secret(hook_id, overlap_seconds=60).secret
    assert second
    assert second != first
    client.webhooks.send_test(hook_id)
    headers, raw = receiver.wait(2)
    assert len(headers["x-mega-signature"].split(",")) == 2  # new and previous
    assert verify_signature(second, headers, raw)
    assert verify_signature(first, headers, raw)

    third = client.webhooks.rotate_secret(hook_id).secret  # no overlap: the new secret alone
    assert third
    client.webhooks.send_test(hook_id)
    headers, raw = receiver.wait(3)
    assert verify_signature(third, headers, raw)
    assert not verify_signature(second, headers, raw)
    assert not verify_signature(first, headers, raw)

    with pytest.raises(InvalidRequestError):
        client.webhooks.rotate_secret(hook_id, overlap_seconds=86_401)
    client.webhooks.update(hook_id, is_active=False)
    with pytest.raises(ConflictError):
        client.webhooks.send_test(hook_id)


def test_lead_updated_arrives_typed(client: MegaClient, receiver: Receiver) -> None:
    created = client.webhooks.create(receiver.url, event_types=["lead.created", "lead.updated"])
    assert created.secret
    lead = client.leads.create(contact_name="Ada Lovelace", contact_email="ada@example.com")
    _, raw = receiver.wait(1)
    assert isinstance(parse_event(raw), LeadCreatedEvent)
    client.leads.create(contact_email="ada@example.com", contact_name="Ada King")
    headers, raw = receiver.wait(2)
    assert verify_signature(created.secret, headers, raw)
    event = parse_event(raw)
    assert isinstance(event, LeadUpdatedEvent)
    assert event.lead["id"] == lead["id"]
    assert event.lead["contact_name"] == "Ada King"
    assert event.changed_fields == ["contact_name"]
    assert event.previous == {"contact_name": "Ada Lovelace"}


def test_standard_webhooks_deliveries_verify_here_and_with_the_official_library(
    client: MegaClient, receiver: Receiver
) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    created = client.webhooks.create(receiver.url, signature_scheme="standard-webhooks")
    assert created.webhook["signature_scheme"] == "standard-webhooks"
    hook_id, first = created.webhook["id"], created.secret
    assert first
    lead = client.leads.create(contact_email="std@example.com")
    headers, raw = receiver.wait(1)
    assert headers["webhook-id"] == headers["x-mega-delivery"]
    assert verify_standard_webhook(first, headers, raw)
    assert verify_any(first, headers, raw) == ["mega", "standard-webhooks"]
    official = standardwebhooks.Webhook(standard_webhooks_secret(first))
    assert official.verify(raw, headers)["lead"]["id"] == lead["id"]
    tampered = raw.replace(b"std@", b"sTd@")
    assert not verify_standard_webhook(first, headers, tampered)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        official.verify(tampered, headers)

    # During an overlap: two space-separated v1 signatures, either secret verifies (both here
    # and in the official library); the X-Mega-Signature check alone is not consulted.
    second = client.webhooks.rotate_secret(hook_id, overlap_seconds=60).secret
    assert second
    client.webhooks.send_test(hook_id)
    headers, raw = receiver.wait(2)
    assert len(headers["webhook-signature"].split(" ")) == 2
    only_standard = {k: v for k, v in headers.items() if not k.startswith("x-mega-")}
    for secret in (first, second):
        assert verify_standard_webhook(secret, only_standard, raw)
        assert verify_any(secret, only_standard, raw) == ["standard-webhooks"]
        standardwebhooks.Webhook(standard_webhooks_secret(secret)).verify(raw, only_standard)
    assert not verify_standard_webhook("mega_whsec_" + "00" * 32, only_standard, raw)


# --- Standard Webhooks rule on its own ------------------------------------------------------------

SECRET = "mega_whsec_" + "ab" * 32


def test_the_key_is_the_32_bytes_the_secret_spells() -> None:
    assert standard_webhooks_key(SECRET) == bytes([0xAB]) * 32
    assert standard_webhooks_secret(SECRET) == "whsec_" + "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="
    assert standard_webhooks_key(standard_webhooks_secret(SECRET)) == standard_webhooks_key(SECRET)
    for bad in ("", "whsec_", "mega_whsec_xyz", "whsec_***", "sk_live_123"):
        with pytest.raises(ValueError, match="secret"):
            standard_webhooks_key(bad)


def test_standard_webhook_freshness_and_malformed_headers() -> None:
    body = b'{"event": "webhook.test"}'
    sig = compute_standard_signature(SECRET, "msg_1", 1795795156, body)
    headers = {"Webhook-Id": "msg_1", "WEBHOOK-TIMESTAMP": "1795795156", "webhook-signature": sig}
    assert verify_standard_webhook(SECRET, headers, body, now=1795795156 + 300)
    assert not verify_standard_webhook(SECRET, headers, body, now=1795795156 + 301)
    assert not verify_standard_webhook(SECRET, headers, body, now=1795795156 - 301)
    assert verify_standard_webhook(SECRET, headers, body, tolerance=None)
    assert not verify_standard_webhook(SECRET, {**headers, "webhook-id": "msg_2"}, body, tolerance=None)
    assert verify_standard_webhook(
        SECRET, {**headers, "webhook-signature": f"v2,abc {sig}"}, body, tolerance=None
    )
    for broken in (
        {},
        {**headers, "webhook-id": ""},
        {**headers, "webhook-timestamp": "١٢٣"},
        {**headers, "webhook-signature": sig.replace("v1,", "v2,")},
        {**headers, "webhook-signature": "v1"},
    ):
        assert verify_standard_webhook(SECRET, broken, body, tolerance=None) is False
    assert verify_any(SECRET, {}, body) == []
    assert verify_any("not-a-mega-secret", headers, body, tolerance=None) == []  # no raise


@settings(max_examples=50, deadline=None)
@given(
    message_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    body=st.text(max_size=300),
)
def test_agrees_with_the_official_library(message_id: str, body: str) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    official = standardwebhooks.Webhook(standard_webhooks_secret(SECRET))
    now = datetime.now(UTC).replace(microsecond=0)
    stamp = int(now.timestamp())
    raw = body.encode()
    ours = compute_standard_signature(SECRET, message_id, stamp, raw)
    assert ours == official.sign(message_id, now, body)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(stamp), "webhook-signature": ours}
    official.verify(raw, headers, json_parse=False)
    assert verify_standard_webhook(SECRET, headers, raw)
    assert not verify_standard_webhook("mega_whsec_" + "cd" * 32, headers, raw)


# --- events ---------------------------------------------------------------------------------------

LEAD = {"id": "l1", "contact_name": "Ada King", "contact_email": None, "contact_phone": None}


def test_parse_event_reads_each_event_type() -> None:
    stamp = "2026-11-27T15:59:16.123Z"
    created = parse_event(json.dumps({"event": "lead.created", "delivered_at": stamp, "lead": LEAD}))
    assert isinstance(created, LeadCreatedEvent)
    assert created.delivered_at == datetime(2026, 11, 27, 15, 59, 16, 123000, UTC)
    updated = parse_event(json.dumps({
        "event": "lead.updated", "delivered_at": stamp, "lead": LEAD,
        "changed_fields": ["contact_name"], "previous": {"contact_name": "Ada Lovelace"},
    }))  # fmt: skip
    assert isinstance(updated, LeadUpdatedEvent)
    assert (updated.changed_fields, updated.previous) == (["contact_name"], {"contact_name": "Ada Lovelace"})
    test = parse_event(json.dumps({"event": "webhook.test", "delivered_at": stamp, "lead": LEAD}))
    assert isinstance(test, WebhookTestEvent)
    for broken in (
        {"event": "lead.updated", "delivered_at": stamp, "lead": LEAD, "previous": {}},
        {"event": "lead.updated", "delivered_at": stamp, "lead": LEAD, "changed_fields": [], "previous": {}},
        {"event": "lead.updated", "delivered_at": stamp, "lead": LEAD, "changed_fields": ["contact_name"]},
        {"event": "webhook.test", "delivered_at": "soon", "lead": LEAD},
        {"event": "lead.deleted", "delivered_at": stamp, "lead": LEAD},
    ):
        with pytest.raises(ValueError, match="webhook body"):
            parse_event(json.dumps(broken))


def test_a_mega_signature_is_not_taken_for_a_standard_one() -> None:
    body = b"{}"
    signature = compute_signature(SECRET, 1795795156, body)
    headers = {"X-Mega-Timestamp": "1795795156", "X-Mega-Signature": signature}
    assert verify_any(SECRET, headers, body, tolerance=None) == ["mega"]
    assert not verify_standard_webhook(SECRET, headers, body, tolerance=None)


# --- listen ---------------------------------------------------------------------------------------


def test_listen_accepts_either_scheme_and_prints_each_event(client: MegaClient, receiver: Receiver) -> None:
    port = free_port()
    created = client.webhooks.create(
        f"http://127.0.0.1:{port}/", retry_attempts=0, signature_scheme="standard-webhooks"
    )
    secret = created.secret
    assert secret
    listen = subprocess.Popen(
        [sys.executable, "-m", "mega_crm_client.cli", "listen", "--port", str(port), "--secret", secret,
         "--forward-to", receiver.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"COLUMNS": "300", "PATH": ""},
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts(port))
        hook_id = created.webhook["id"]
        test = client.webhooks.send_test(hook_id)
        wait_for(lambda: client.webhooks.deliveries(hook_id).deliveries[0]["status"] != "pending")
        assert client.webhooks.deliveries(hook_id).deliveries[0]["status"] == "succeeded"
        forwarded, forwarded_raw = receiver.wait(1)  # with the Standard Webhooks headers too
        assert verify_standard_webhook(secret, forwarded, forwarded_raw)
        # A receiver-side Standard Webhooks sender: only the webhook-* headers, a lead.updated body.
        body = json.dumps({
            "event": "lead.updated", "delivered_at": "2026-11-27T15:59:16.123Z",
            "lead": {**LEAD, "contact_email": "[red]x@example.com", "custom_fields": {"budget": 200}},
            "changed_fields": ["contact_name", "custom_fields"],
            "previous": {"contact_name": "Ada Lovelace", "custom_fields": {"budget": 100}},
        }).encode()  # fmt: skip
        stamp = int(time.time())
        headers = {
            "webhook-id": "msg_listen_1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": compute_standard_signature(secret, "msg_listen_1", stamp, body),
        }
        assert httpx.post(f"http://127.0.0.1:{port}/", content=body, headers=headers).status_code == 204
        other = compute_standard_signature(SECRET, "msg_listen_1", stamp, body)  # another secret
        forged = {**headers, "webhook-signature": other}
        assert httpx.post(f"http://127.0.0.1:{port}/", content=body, headers=forged).status_code == 400
    finally:
        listen.terminate()
        stdout, _ = listen.communicate(timeout=10)
    assert f"✓ verified (mega, standard-webhooks) delivery {test['id']}" in stdout
    assert f"webhook.test (example lead {EXAMPLE_LEAD_ID} Ada Lovelace" in stdout
    assert "✓ verified (standard-webhooks) delivery msg_listen_1" in stdout
    assert (
        "lead.updated lead l1 Ada King [red]x@example.com | changed "  # markup in a body stays text
        "contact_name: 'Ada Lovelace' → 'Ada King'; "
        'custom_fields: {"budget": 100} → {"budget": 200}'
    ) in stdout
    assert "✗ bad signature" in stdout


def test_describe_event_is_one_readable_line() -> None:
    from mega_crm_client.cli import describe_event

    stamp = datetime(2026, 11, 27, tzinfo=UTC)
    lead: Any = {**LEAD, "contact_email": "ada@example.com"}
    line = describe_event(LeadCreatedEvent("lead.created", stamp, lead))
    assert line == "lead.created lead l1 Ada King ada@example.com"
    long_before: Any = {"custom_fields": {"notes": "x" * 200}}
    line = describe_event(LeadUpdatedEvent("lead.updated", stamp, lead, ["custom_fields"], long_before))
    assert line.startswith("lead.updated lead l1 Ada King ada@example.com | changed custom_fields: ")
    assert len(line) < 200  # long values are shortened


def _accepts(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
        return True
    except httpx.TransportError:
        return False
