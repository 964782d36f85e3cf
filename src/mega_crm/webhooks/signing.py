"""Webhook signatures (both sides) and the signing secrets' encryption at rest.

A delivery attempt carries
  X-Mega-Timestamp: Unix seconds of this attempt
  X-Mega-Signature: "sha256=" + hex(HMAC-SHA256(key=secret as UTF-8, msg=timestamp + "." + raw body))
so a receiver can check both who sent the body and that it is fresh (no replays of old captures).
During a rotation's overlap the signature header lists one signature per live secret, comma
separated, the new secret's first: "sha256=<new>,sha256=<previous>".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_PREFIX = "mega_whsec_"
SIGNATURE_HEADER = "X-Mega-Signature"
TIMESTAMP_HEADER = "X-Mega-Timestamp"
DELIVERY_HEADER = "X-Mega-Delivery"
SIGNATURE_SCHEME = "sha256="


# Standard Webhooks (https://www.standardwebhooks.com/, spec "Signature scheme").
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks signature: the 32 random bytes the `mega_whsec_…`
    secret spells in hex (the specification asks for 24-64 random bytes). A receiver gives the
    `standardwebhooks` library `"whsec_" + base64(these bytes)`.

    Raises ValueError for a secret not of this server's form."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("not a mega_whsec_ secret")
    return bytes.fromhex(secret[len(SECRET_PREFIX) :])


def standard_webhooks_secret(secret: str) -> str:
    """`mega_whsec_<hex>` -> `whsec_<base64>`, the form Standard Webhooks libraries take."""
    return "whsec_" + base64.b64encode(standard_webhooks_key(secret)).decode()


def standard_webhooks_headers(
    secrets_: list[str], message_id: str, timestamp: int, raw_body: bytes
) -> dict[str, str]:
    """webhook-id, webhook-timestamp and webhook-signature: "v1," + base64(HMAC-SHA256(key,
    id + "." + timestamp + "." + body)) per live secret, space separated (new secret first)."""
    message = f"{message_id}.{timestamp}.".encode() + raw_body
    signatures = [
        "v1,"
        + base64.b64encode(hmac.new(standard_webhooks_key(s), message, hashlib.sha256).digest()).decode()
        for s in secrets_
    ]
    return {
        STANDARD_ID_HEADER: message_id,
        STANDARD_TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: " ".join(signatures),
    }


def new_webhook_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(32)


def compute_signature(secret: str, timestamp: int | str, raw_body: bytes) -> str:
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
    received, before any JSON parsing. `tolerance=None` skips the freshness check. The signature
    header may list several signatures, comma separated (during a secret rotation's overlap):
    any one made with `secret` verifies.
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
    # Compare with every listed signature (constant time each; no early exit on a match).
    matches = [
        hmac.compare_digest(expected, s.encode()) for s in signatures if s.startswith(SIGNATURE_SCHEME)
    ]
    return any(matches)


class SecretBox:
    """Encrypts signing secrets for storage: AES-256-GCM, key derived from the server secret.

    The webhook id is bound in as associated data, so a ciphertext copied onto another row
    does not decrypt.
    """

    VERSION = "v1"

    def __init__(self, server_key: bytes) -> None:
        derived = hmac.new(server_key, b"mega-crm webhook secrets v1", hashlib.sha256).digest()
        self._aead = AESGCM(derived)

    def seal(self, webhook_id: uuid.UUID, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), webhook_id.bytes)
        return f"{self.VERSION}:" + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, webhook_id: uuid.UUID, stored: str) -> str:
        version, _, blob = stored.partition(":")
        if version != self.VERSION:
            raise ValueError(f"unknown secret encoding {version!r}")
        raw = base64.urlsafe_b64decode(blob)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], webhook_id.bytes).decode()
        except InvalidTag:
            raise ValueError("webhook secret does not decrypt: was MEGA_SECRET_KEY changed?") from None
