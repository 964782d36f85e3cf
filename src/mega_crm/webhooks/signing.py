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
    if not timestamp.isdigit():
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
