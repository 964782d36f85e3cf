"""Receiving webhooks: check a delivery's signature and read its event (standard library only).

A delivery attempt carries
  X-Mega-Timestamp: Unix seconds of this attempt
  X-Mega-Signature: "sha256=" + hex(HMAC-SHA256(key=secret as UTF-8, msg=timestamp + "." + raw body))
  X-Mega-Delivery:  the delivery id, the same on every retry (de-duplicate on it)
so a receiver can check who sent the body and that it is fresh (no replays of old captures).
The rule is the server's (`mega_crm/webhooks/signing.py`); tests check that both agree.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "LeadCreatedEvent",
    "WebhookLead",
    "compute_signature",
    "parse_event",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Mega-Signature"
TIMESTAMP_HEADER = "X-Mega-Timestamp"
DELIVERY_HEADER = "X-Mega-Delivery"
EVENT_HEADER = "X-Mega-Event"
SIGNATURE_SCHEME = "sha256="


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


class WebhookLead(TypedDict):
    """The lead as it was when it was created (schema `LeadCreatedWebhookPayload.lead`)."""

    id: str
    contact_name: str | None
    contact_phone: str | None
    contact_email: str | None
    source_platform: str
    source_type: str
    lead_line: str | None
    current_stage: dict[str, str] | None
    custom_fields: dict[str, str | int | float | bool | None]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class LeadCreatedEvent:
    """A `lead.created` delivery: `event`, `delivered_at` (this attempt's time, aware UTC), `lead`."""

    event: str
    delivered_at: datetime
    lead: WebhookLead


def parse_event(raw_body: bytes | str) -> LeadCreatedEvent:
    """The typed event of a delivery body. Raises ValueError when it is not a lead.created payload.
    Verify the signature first: this checks the shape, not who sent it."""
    try:
        data: Any = json.loads(raw_body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"webhook body is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("event") != "lead.created":
        raise ValueError("webhook body is not a lead.created event")
    lead = data.get("lead")
    if not isinstance(lead, dict) or not isinstance(lead.get("id"), str):
        raise ValueError("webhook body has no lead")
    try:
        delivered_at = datetime.fromisoformat(str(data.get("delivered_at")).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("webhook body has no valid delivered_at") from None
    return LeadCreatedEvent(event="lead.created", delivered_at=delivered_at, lead=lead)  # type: ignore[arg-type]
