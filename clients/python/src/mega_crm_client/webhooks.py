"""Receiving webhooks: check a delivery's signature and read its event (standard library only).

A delivery attempt carries
  X-Mega-Timestamp: Unix seconds of this attempt
  X-Mega-Signature: "sha256=" + hex(HMAC-SHA256(key=secret as UTF-8, msg=timestamp + "." + raw body))
  X-Mega-Delivery:  the delivery id, the same on every retry (de-duplicate on it)
so a receiver can check who sent the body and that it is fresh (no replays of old captures).
A webhook registered with signature_scheme "standard-webhooks" also gets the Standard Webhooks
headers (webhook-id, webhook-timestamp, webhook-signature: `verify_standard_webhook`).
The rules are the server's (`mega_crm/webhooks/signing.py`); tests check that both agree, and
the Standard Webhooks one against the official `standardwebhooks` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypedDict, cast

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "STANDARD_ID_HEADER",
    "STANDARD_SIGNATURE_HEADER",
    "STANDARD_TIMESTAMP_HEADER",
    "TIMESTAMP_HEADER",
    "LeadCreatedEvent",
    "LeadUpdatedEvent",
    "WebhookEvent",
    "WebhookLead",
    "WebhookLeadPrevious",
    "WebhookTestEvent",
    "compute_signature",
    "compute_standard_signature",
    "parse_event",
    "standard_webhooks_key",
    "standard_webhooks_secret",
    "verify_any",
    "verify_signature",
    "verify_standard_webhook",
]

SIGNATURE_HEADER = "X-Mega-Signature"
TIMESTAMP_HEADER = "X-Mega-Timestamp"
DELIVERY_HEADER = "X-Mega-Delivery"
EVENT_HEADER = "X-Mega-Event"
SIGNATURE_SCHEME = "sha256="
SECRET_PREFIX = "mega_whsec_"

# Standard Webhooks (https://www.standardwebhooks.com/, specification "Signature scheme").
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"


def compute_signature(secret: str, timestamp: int | str, raw_body: bytes) -> str:
    """The X-Mega-Signature value for `raw_body` sent at `timestamp` (Unix seconds)."""
    message = str(timestamp).encode() + b"." + raw_body
    return SIGNATURE_SCHEME + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    raw_body: bytes,
    tolerance: float | None = 300,
    *,
    now: float | None = None,
) -> bool:
    """True when `raw_body` was signed with `secret` less than `tolerance` seconds ago.

    `headers` is the request's header mapping (any letter case); `raw_body` the bytes exactly as
    received, before any JSON parsing; `secret` the `mega_whsec_…` string as the API returned it.
    `tolerance=None` skips the freshness check. The signature header may list several signatures,
    comma separated (`sha256=<new>,sha256=<previous>` during a secret rotation's overlap): any one
    made with `secret` verifies. Never raises on malformed headers: returns False. Each comparison
    is constant-time.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
    signatures = [s.strip() for s in lowered.get(SIGNATURE_HEADER.lower(), "").split(",")]
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if tolerance is not None:
        current = time.time() if now is None else now
        if abs(current - int(timestamp)) > tolerance:
            return False
    expected = compute_signature(secret, timestamp, raw_body).encode()
    # Compare with every listed signature (no early exit on a match).
    matches = [
        hmac.compare_digest(expected, s.encode()) for s in signatures if s.startswith(SIGNATURE_SCHEME)
    ]
    return any(matches)


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks signature: the 32 bytes a `mega_whsec_<64 hex>`
    secret spells in hex (server: `standard_webhooks_key`). A `whsec_<base64>` secret (the
    form Standard Webhooks libraries take) is accepted too. ValueError for anything else."""
    try:
        if secret.startswith(SECRET_PREFIX):
            key = bytes.fromhex(secret[len(SECRET_PREFIX) :])
        elif secret.startswith(STANDARD_SECRET_PREFIX):
            key = base64.b64decode(secret[len(STANDARD_SECRET_PREFIX) :], validate=True)
        else:
            raise ValueError
    except (ValueError, binascii.Error):
        raise ValueError("not a mega_whsec_<hex> (or whsec_<base64>) secret") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def standard_webhooks_secret(secret: str) -> str:
    """`mega_whsec_<hex>` -> `whsec_<base64>`: the secret as the official `standardwebhooks`
    package (and the other Standard Webhooks libraries) take it."""
    return STANDARD_SECRET_PREFIX + base64.b64encode(standard_webhooks_key(secret)).decode()


def compute_standard_signature(secret: str, message_id: str, timestamp: int | str, raw_body: bytes) -> str:
    """One `webhook-signature` entry: "v1," + base64(HMAC-SHA256(standard_webhooks_key(secret),
    webhook-id + "." + webhook-timestamp + "." + raw body))."""
    message = f"{message_id}.{timestamp}.".encode() + raw_body
    digest = hmac.new(standard_webhooks_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_standard_webhook(
    secret: str,
    headers: Mapping[str, str],
    raw_body: bytes,
    tolerance: float | None = 300,
    *,
    now: float | None = None,
) -> bool:
    """True when the Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature)
    sign `raw_body` with `secret` and the timestamp is within `tolerance` seconds of now (either
    way, as the specification asks; None skips the check).

    `secret` is the `mega_whsec_…` string as the API returned it (or its `whsec_` form);
    `headers` any mapping (any letter case); `raw_body` the bytes as received. The signature
    header is a space-separated list of `v1,<base64>` (two during a rotation's overlap, new
    secret first): any `v1` one made with `secret` verifies; other versions are ignored. Never
    raises on malformed headers (returns False); ValueError for a secret of another form. Each
    comparison is constant-time."""
    standard_webhooks_key(secret)  # a secret of another form is the caller's mistake: raise
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get(STANDARD_ID_HEADER, "")
    timestamp = lowered.get(STANDARD_TIMESTAMP_HEADER, "").strip()
    listed = lowered.get(STANDARD_SIGNATURE_HEADER, "").split()
    if not message_id or not timestamp.isascii() or not timestamp.isdigit():
        return False
    if tolerance is not None:
        current = time.time() if now is None else now
        if abs(current - int(timestamp)) > tolerance:
            return False
    expected = compute_standard_signature(secret, message_id, timestamp, raw_body).encode()
    # Compare with every listed v1 signature (no early exit on a match).
    matches = [hmac.compare_digest(expected, s.encode()) for s in listed if s.startswith("v1,")]
    return any(matches)


def verify_any(
    secret: str,
    headers: Mapping[str, str],
    raw_body: bytes,
    tolerance: float | None = 300,
    *,
    now: float | None = None,
) -> list[str]:
    """The schemes whose signature verifies with `secret`: "mega" (X-Mega-Signature) and/or
    "standard-webhooks" (webhook-signature); empty when none does. For a receiver that accepts
    either, as `mega-crm-client listen` does. A secret that is not `mega_whsec_<hex>` can only
    verify the "mega" scheme."""
    schemes = []
    if verify_signature(secret, headers, raw_body, tolerance, now=now):
        schemes.append("mega")
    lowered = {k.lower() for k in headers}
    if STANDARD_SIGNATURE_HEADER in lowered:
        try:
            if verify_standard_webhook(secret, headers, raw_body, tolerance, now=now):
                schemes.append("standard-webhooks")
        except ValueError:
            pass
    return schemes


class WebhookStage(TypedDict):
    slug: str
    name: str


class WebhookLead(TypedDict):
    """The lead of an event (schema `WebhookLead`): as created (lead.created), after the change
    (lead.updated), or the fixed example lead (webhook.test)."""

    id: str
    contact_name: str | None
    contact_phone: str | None
    contact_email: str | None
    source_platform: str
    source_type: str
    lead_line: str | None
    current_stage: WebhookStage | None
    custom_fields: dict[str, str | int | float | bool | None]
    created_at: str
    updated_at: str


class WebhookLeadPrevious(TypedDict, total=False):
    """lead.updated's `previous`: the values before the change of exactly the fields named in
    `changed_fields` (contact_name, contact_phone, contact_email, lead_line, current_stage,
    custom_fields)."""

    contact_name: str | None
    contact_phone: str | None
    contact_email: str | None
    lead_line: str | None
    current_stage: WebhookStage | None
    custom_fields: dict[str, str | int | float | bool | None]


@dataclass(frozen=True)
class LeadCreatedEvent:
    """A `lead.created` delivery: `event`, `delivered_at` (this attempt's time, aware UTC), `lead`
    (as it was created)."""

    event: Literal["lead.created"]
    delivered_at: datetime
    lead: WebhookLead


@dataclass(frozen=True)
class LeadUpdatedEvent:
    """A `lead.updated` delivery (this server's extension): a single createLead merged into an
    existing lead and changed at least one field. `lead` is the lead after the change,
    `changed_fields` the names of the fields that changed (at least one), `previous` their values
    before. Never sent for bulk imports, idempotent replays or merges that changed nothing."""

    event: Literal["lead.updated"]
    delivered_at: datetime
    lead: WebhookLead
    changed_fields: list[str]
    previous: WebhookLeadPrevious


@dataclass(frozen=True)
class WebhookTestEvent:
    """A `webhook.test` delivery (this server's extension, from `webhooks.send_test`): `lead` is
    a fixed example lead that names no real lead (id 00000000-0000-4000-8000-000000000000)."""

    event: Literal["webhook.test"]
    delivered_at: datetime
    lead: WebhookLead


WebhookEvent = LeadCreatedEvent | LeadUpdatedEvent | WebhookTestEvent
"""Every event a delivery may carry; tell them apart by type (or `event`)."""

EVENT_TYPES = ("lead.created", "lead.updated", "webhook.test")


def parse_event(raw_body: bytes | str) -> WebhookEvent:
    """The typed event of a delivery body: LeadCreatedEvent, LeadUpdatedEvent or
    WebhookTestEvent. Raises ValueError when the body is not one of them (not JSON, another
    `event`, no lead, a bad `delivered_at`, or a lead.updated without `changed_fields` and
    `previous`). Verify the signature first: this checks the shape, not who sent it."""
    try:
        data: Any = json.loads(raw_body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"webhook body is not JSON: {exc}") from None
    event = data.get("event") if isinstance(data, dict) else None
    if event not in EVENT_TYPES:
        raise ValueError(f"webhook body is not an event this client knows ({', '.join(EVENT_TYPES)})")
    lead = data.get("lead")
    if not isinstance(lead, dict) or not isinstance(lead.get("id"), str):
        raise ValueError("webhook body has no lead")
    try:
        delivered_at = datetime.fromisoformat(str(data.get("delivered_at")).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("webhook body has no valid delivered_at") from None
    typed_lead = cast(WebhookLead, lead)  # its id checked; the rest as the server sent it
    if event == "lead.updated":
        changed, previous = data.get("changed_fields"), data.get("previous")
        if not isinstance(changed, list) or not changed or not all(isinstance(n, str) for n in changed):
            raise ValueError("webhook body (lead.updated) has no changed_fields")
        if not isinstance(previous, dict):
            raise ValueError("webhook body (lead.updated) has no previous")
        typed_previous = cast(WebhookLeadPrevious, previous)
        return LeadUpdatedEvent("lead.updated", delivered_at, typed_lead, changed, typed_previous)
    if event == "webhook.test":
        return WebhookTestEvent("webhook.test", delivered_at, typed_lead)
    return LeadCreatedEvent("lead.created", delivered_at, typed_lead)
