"""Who is calling: the key, its customer and scopes; then the rate limit of the route's bucket.
Run by api.pipeline.serve() for every API request.

Order of checks: x-customer-id present and a UUID, token well-formed and live (401); the key's
rate limit (429; from here on every response carries the RateLimit-* headers, since the caller is
authenticated); key locked to that customer and holding the route's scope (403).
"""

from __future__ import annotations

import hmac
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from sqlalchemy import bindparam, select

from mega_crm.api.state import app_state
from mega_crm.auth.models import ApiKey
from mega_crm.customers.models import Customer
from mega_crm.db import Memo, Query, RawConnection, as_uuid
from mega_crm.errors import AuthenticationError, AuthorizationError
from mega_crm.ratelimit.limiter import BULK_BUCKET
from mega_crm.security import TOKEN_RE, hash_api_token


@dataclass(frozen=True)
class Principal:
    key_id: uuid.UUID
    customer_id: uuid.UUID
    scopes: frozenset[str]


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("Missing bearer token: send 'Authorization: Bearer mega_…'.")
    return token.strip()


_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _customer_header(request: Request) -> uuid.UUID:
    raw = request.headers.get("x-customer-id")
    if not raw:
        raise AuthenticationError("Missing x-customer-id header.")
    raw = raw.strip()
    if not _UUID_TEXT.fullmatch(raw):  # uuid.UUID() would also take braces, "urn:uuid:", no hyphens
        raise AuthenticationError("x-customer-id must be a UUID (8-4-4-4-12 hex digits).")
    return uuid.UUID(raw)


@dataclass(frozen=True)
class LiveKey:
    id: uuid.UUID
    customer_id: uuid.UUID
    scopes: list[str]
    rate_limit_default: str | None
    rate_limit_bulk: str | None


# Only the columns auth needs, run raw (see Database.raw_read): this runs on every request.
_KEY_LOOKUP = Query(
    select(
        ApiKey.id,
        ApiKey.customer_id,
        ApiKey.token_hash,
        ApiKey.scopes,
        ApiKey.revoked_at,
        Customer.rate_limit_default,
        Customer.rate_limit_bulk,
    )
    .join(Customer, Customer.id == ApiKey.customer_id)
    .where(ApiKey.token_hash == bindparam("token_hash"))
)
# The keys a group commit's transaction has looked up (token hash -> _KEY_LOOKUP's row). Not
# dropped by writes to customers: every lead write bumps its customer's clock, and the limits
# read here change only from the operator CLI, never inside a request's transaction.
_KNOWN_KEYS = Memo[str, tuple[Any, ...]]("api_keys", tables={"api_keys"})


def authenticate(request: Request, reader: RawConnection) -> tuple[LiveKey, uuid.UUID]:
    """-> (the live key with its customer's limits, the customer the request names); 401 otherwise.
    A reader in a session's transaction (a group commit's) looks each key up once in it."""
    requested_customer = _customer_header(request)
    token = _bearer_token(request)
    if not TOKEN_RE.fullmatch(token):
        raise AuthenticationError("Invalid API key.")
    token_hash = hash_api_token(token)
    known = reader.memos.entries(_KNOWN_KEYS) if reader.memos is not None else None
    row = known.get(token_hash) if known is not None else None
    if row is None:
        row = reader.first(_KEY_LOOKUP, {"token_hash": token_hash})
        if row is not None and known is not None:
            known[token_hash] = row
    # The lookup is by a SHA-256 of the token, so the index reveals nothing about stored
    # tokens; the digest is still compared in constant time before it is trusted.
    if row is None or not hmac.compare_digest(row[2], token_hash):
        raise AuthenticationError("Invalid API key.")
    key_id, customer_id, _hash, scopes, revoked_at, limit_default, limit_bulk = row
    if revoked_at is not None:
        raise AuthenticationError("This API key has been revoked.")
    scopes = orjson.loads(scopes) if isinstance(scopes, str | bytes) else scopes
    key = LiveKey(as_uuid(key_id), as_uuid(customer_id), scopes, limit_default, limit_bulk)
    return key, requested_customer


def authorize(request: Request, scope: str, bucket: str, reader: RawConnection) -> Principal:
    """Authenticate, count the request against the key's `bucket`, then check customer and scope."""
    key, requested_customer = authenticate(request, reader)
    shared = app_state(request.app)
    settings = shared.settings
    spec = (
        key.rate_limit_bulk or settings.rate_limit_bulk
        if bucket == BULK_BUCKET
        else key.rate_limit_default or settings.rate_limit_default
    )
    state = shared.limiter.hit(str(key.id), bucket, spec)
    if state is not None:
        request.state.rate_limit_headers = state.headers()
    if key.customer_id != requested_customer:
        raise AuthorizationError("This API key is locked to a different customer.")
    if scope not in key.scopes:
        raise AuthorizationError(f"This API key lacks the '{scope}' scope.")
    principal = Principal(key.id, key.customer_id, frozenset(key.scopes))
    request.state.principal = principal
    return principal
