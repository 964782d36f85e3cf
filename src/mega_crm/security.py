"""Server secret, API-key tokens and tamper-evident tokens (cursors)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

from mega_crm.config import Settings

log = logging.getLogger("mega_crm")

TOKEN_RE = re.compile(r"^mega_[0-9a-f]{64}$")


class ConfigurationError(RuntimeError):
    """The server cannot start with this configuration; the message says what to set."""


def load_secret_key(settings: Settings) -> bytes:
    """MEGA_SECRET_KEY, or on embedded SQLite a key generated once into a 0600 file beside the DB."""
    if settings.secret_key:
        return settings.secret_key.encode()
    if not settings.is_sqlite:
        raise ConfigurationError(
            "MEGA_SECRET_KEY must be set when using PostgreSQL "
            "(generate one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    db_path = settings.sqlite_path() or Path("./mega-crm.db")
    key_path = db_path.with_name(db_path.name + ".secret")
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race; read theirs
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
            log.warning("MEGA_SECRET_KEY is unset: generated a secret key into %s (mode 0600)", key_path)
    return key_path.read_text().strip().encode()


def new_api_token() -> str:
    return "mega_" + secrets.token_hex(32)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Signer:
    """HMAC-SHA256 signed, URL-safe tokens. `purpose` separates token kinds under one key."""

    def __init__(self, key: bytes, purpose: str) -> None:
        self._key = hmac.new(key, purpose.encode(), hashlib.sha256).digest()

    def sign(self, payload: bytes) -> str:
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return _b64(payload + mac)

    def unsign(self, token: str) -> bytes | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) < 17:
            return None
        payload, mac = raw[:-16], raw[-16:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return payload if hmac.compare_digest(mac, expected) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
