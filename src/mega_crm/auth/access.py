"""Who is calling: the key, its customer and scopes; then the rate limit of the route's bucket.
Run by api.pipeline.serve() for every API request.

Order of checks: x-customer-id present and a UUID, token well-formed and live (401); the key's
rate limit (429; from here on every response carries the RateLimit-* headers, since the caller is
authenticated); key locked to that customer and holding the route's scope (403).

A route whose work reads the key's state in its own statement (`KeyCheck`, pipeline's
`confirms_key`) authorizes from a `KeyCache` of keys looked up before, without a statement of its
own: its answer stands only if that statement, run after the request arrived, found the key as
cached (revoked, deleted, re-scoped or re-limited since: `StaleKey`, and the request is run again
with the key looked up). So revocation still takes effect on the next request.
"""

from __future__ import annotations

import hmac
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request
from sqlalchemy import String, bindparam, cast, func, literal_column, select
from sqlalchemy.orm import Session

from mega_crm.auth.models import ApiKey
from mega_crm.config import Settings
from mega_crm.customers.models import Customer
from mega_crm.db import Memo, Query, RawConnection, as_uuid
from mega_crm.errors import ApiError, AuthenticationError, AuthorizationError
from mega_crm.ratelimit.limiter import BULK_BUCKET, RateLimiter
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
    state: str  # _KEY_STATE: what a KeyCheck compares


def _key_state() -> Any:
    """Everything authorization reads of a key, as one text (both databases): its id, customer,
    scopes, revocation time and its customer's limits, '|'-joined, '~' for a NULL."""
    parts = [
        cast(ApiKey.id, String),
        cast(ApiKey.customer_id, String),
        cast(ApiKey.scopes, String),
        cast(ApiKey.revoked_at, String),
        Customer.rate_limit_default,
        Customer.rate_limit_bulk,
    ]
    # The separators are written into the SQL, not bound: key_state_sql() is self-contained.
    null, bar = literal_column("'~'", String), literal_column("'|'", String)
    state: Any = func.coalesce(parts[0], null)
    for part in parts[1:]:
        state = state + bar + func.coalesce(part, null)
    return state


_KEY_STATE = _key_state()

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
        _KEY_STATE,
    )
    .join(Customer, Customer.id == ApiKey.customer_id)
    .where(ApiKey.token_hash == bindparam("token_hash"))
)


def key_state_column() -> Any:
    """A scalar subquery: the current _KEY_STATE of the key whose token hash is the statement's
    `key_token_hash` parameter (NULL once deleted), for a KeyCheck's statement to read."""
    return (
        select(_KEY_STATE)
        .select_from(ApiKey)
        .join(Customer, Customer.id == ApiKey.customer_id)
        .where(ApiKey.token_hash == bindparam("key_token_hash"))
        .scalar_subquery()
        .label("key_state")
    )


_KEY_STATE_NOW = Query(select(key_state_column()))


def key_state_sql() -> str:
    """key_state_column()'s subquery as PostgreSQL text, its one parameter `:key_token_hash`:
    for a text() statement that reads the key's state beside its own work (createLead's lock
    statement, leads.repository.begin_lead_write_later). Compiled from the same expression as
    the cached state, so the two cannot differ. (psycopg2's dialect: no `::` casts after the
    parameter, which text() would not read as one.)"""
    from sqlalchemy.dialects.postgresql import psycopg2

    dialect = psycopg2.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
    return str(key_state_column().element.compile(dialect=dialect))


def confirming(check: KeyCheck | None) -> Callable[[Session], Callable[[], None]] | None:
    """For a write route whose Call has a KeyCheck: a function that sends the key's state as the
    first statement of a write transaction (pipelined: in its first round trip) and returns the
    confirmation, KeyCheck.confirm, to call before the transaction commits. None without one."""
    if check is None:
        return None

    def send(session: Session) -> Callable[[], None]:
        pending = RawConnection.of(session).send(_KEY_STATE_NOW, check.params)
        return lambda: check.confirm(pending.all()[0][0])

    return send


# The connection a key is looked up on, as a function: a request whose key is cached may never
# check one out (api.pipeline's `_authorized`).
Reader = Callable[[], RawConnection]


class StaleKey(Exception):
    """A cached key's state differs from the database's: the request is run again, looked up."""


@dataclass
class KeyCheck:
    """A cached key to confirm: the work's statement selects key_state_column() with `params`,
    and passes what it found to `confirm` before the work's answer may stand."""

    token_hash: str
    state: str
    confirmed: bool = field(default=False, init=False)
    counted: str | None = field(default=None, init=False)  # the rate-limit spec counted with it
    limit_key: str = field(default="", init=False)  # the key id its windows are counted under

    @property
    def params(self) -> dict[str, str]:
        """The parameters key_state_column() needs."""
        return {"key_token_hash": self.token_hash}

    def confirm(self, found: str | bytes | None) -> None:
        """`found`: key_state_column()'s value (text, or its UTF-8 bytes). Raises StaleKey unless
        it is the cached state. (Compared as UTF-8 bytes: a scope or a limit may hold any text.)"""
        if isinstance(found, str):
            found = found.encode()
        if found is None or not hmac.compare_digest(found, self.state.encode()):
            raise StaleKey
        self.confirmed = True

    def reopen(self) -> None:
        """The transaction that confirmed it was rolled back, and its work runs again: it is to
        be confirmed afresh (a StaleKey then is judged on the key looked up, not an error)."""
        self.confirmed = False


class KeyCache:
    """Live keys looked up before (token hash -> _KEY_LOOKUP's row), for routes that confirm a
    key in their own statement (KeyCheck); at most `size` (then emptied), shared by threads."""

    def __init__(self, size: int = 10_000) -> None:
        self._rows: dict[str, tuple[Any, ...]] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> tuple[Any, ...] | None:
        """The cached row, or None."""
        return self._rows.get(token_hash)

    def put(self, token_hash: str, row: tuple[Any, ...]) -> None:
        """Cache a live key's row."""
        with self._lock:
            if len(self._rows) >= self._size:
                self._rows.clear()
            self._rows[token_hash] = row

    def evict(self, token_hash: str) -> None:
        """Forget a key (found stale)."""
        with self._lock:
            self._rows.pop(token_hash, None)


# The keys a group commit's transaction has looked up (token hash -> _KEY_LOOKUP's row). Not
# dropped by writes to customers: every lead write bumps its customer's clock, and the limits
# read here change only from the operator CLI, never inside a request's transaction.
_KNOWN_KEYS = Memo[str, tuple[Any, ...]]("api_keys", tables={"api_keys"})


def authenticate(
    request: Request, reader: Reader, keys: KeyCache | None = None
) -> tuple[LiveKey, uuid.UUID, KeyCheck | None]:
    """-> (the live key with its customer's limits, the customer the request names, the KeyCheck
    to pass when the key came from `keys` unconfirmed, else None); 401 otherwise. A key looked
    up live (on `reader()`'s connection) is put in `keys`. A reader in a session's transaction
    (a group commit's) looks each key up once in it."""
    requested_customer = _customer_header(request)
    token = _bearer_token(request)
    if not TOKEN_RE.fullmatch(token):
        raise AuthenticationError("Invalid API key.")
    token_hash = hash_api_token(token)
    row = keys.get(token_hash) if keys is not None else None
    check = None if row is None else KeyCheck(token_hash, row[7])
    if row is None:
        raw = reader()
        known = raw.memos.entries(_KNOWN_KEYS) if raw.memos is not None else None
        row = known.get(token_hash) if known is not None else None
        if row is None:
            row = raw.first(_KEY_LOOKUP, {"token_hash": token_hash})
            if row is not None and known is not None:
                known[token_hash] = row
        if row is not None and row[4] is None and keys is not None:
            keys.put(token_hash, row)
    # The lookup is by a SHA-256 of the token, so the index reveals nothing about stored
    # tokens; the digest is still compared in constant time before it is trusted.
    if row is None or not hmac.compare_digest(row[2], token_hash):
        raise AuthenticationError("Invalid API key.")
    key_id, customer_id, _hash, scopes, revoked_at, limit_default, limit_bulk, state = row
    if revoked_at is not None:
        raise AuthenticationError("This API key has been revoked.")
    scopes = orjson.loads(scopes) if isinstance(scopes, str | bytes) else scopes
    key = LiveKey(as_uuid(key_id), as_uuid(customer_id), scopes, limit_default, limit_bulk, state)
    return key, requested_customer, check


def authorize(
    request: Request,
    scope: str,
    bucket: str,
    reader: Reader,
    settings: Settings,
    limiter: RateLimiter,
    keys: KeyCache | None = None,
) -> tuple[Principal, KeyCheck | None]:
    """Authenticate, count the request against the key's `bucket` in `limiter` (the key's own
    limits, else `settings`' defaults), then check customer and scope. Raises
    AuthenticationError (401), RateLimitError (429), AuthorizationError (403).
    -> (the principal, the KeyCheck the work must confirm when the key came from `keys`, else
    None). A refusal judged on a cached key stands if the key is unchanged, and is judged
    again on the key looked up otherwise (`authorize_again`)."""
    key, requested_customer, check = authenticate(request, reader, keys)
    spec = _spec(key, bucket, settings)
    try:
        _count(request, limiter, key, bucket, spec, None)
        if check is not None:
            check.counted, check.limit_key = spec, str(key.id)
        principal = _admit(request, scope, key, requested_customer)
    except ApiError:
        if check is None:
            raise
        assert keys is not None
        row = reader().first(_KEY_LOOKUP, {"token_hash": check.token_hash})
        if row is not None and row[7] == check.state:
            raise
        return authorize_again(request, scope, bucket, reader, settings, limiter, keys, check), None
    return principal, check


def authorize_again(
    request: Request,
    scope: str,
    bucket: str,
    reader: Reader,
    settings: Settings,
    limiter: RateLimiter,
    keys: KeyCache,
    check: KeyCheck,
) -> Principal:
    """The request of an unconfirmed KeyCheck (found stale, or refused before its statement ran)
    judged again as `authorize` would with no cache: the key looked up, and the request counted
    once per window. The windows counted under the cached key's limits and not under the key's
    are given back, and all of them when the key is gone (a 401 is never counted, nor carries
    RateLimit-* headers). Raises as authorize."""
    keys.evict(check.token_hash)
    request.state.rate_limit_headers = None
    try:
        key, requested_customer, _ = authenticate(request, reader, keys)
    except AuthenticationError:
        if check.counted:
            limiter.refund(check.limit_key, bucket, check.counted)
        raise
    _count(request, limiter, key, bucket, _spec(key, bucket, settings), check.counted)
    return _admit(request, scope, key, requested_customer)


def _spec(key: LiveKey, bucket: str, settings: Settings) -> str:
    """The rate-limit spec of the key's `bucket`: its customer's, else the settings' default."""
    if bucket == BULK_BUCKET:
        return key.rate_limit_bulk or settings.rate_limit_bulk
    return key.rate_limit_default or settings.rate_limit_default


def _count(
    request: Request, limiter: RateLimiter, key: LiveKey, bucket: str, spec: str, counted: str | None
) -> None:
    """Count the request (429 past a limit); from here on its answer carries RateLimit-* headers.
    `counted`: the spec it was counted under already (RateLimiter.hit)."""
    state = limiter.hit(str(key.id), bucket, spec, counted)
    if state is not None:
        request.state.rate_limit_headers = state.headers()


def _admit(request: Request, scope: str, key: LiveKey, requested_customer: uuid.UUID) -> Principal:
    """Check the key's customer and scope (403); -> the principal, also set on request.state."""
    if key.customer_id != requested_customer:
        raise AuthorizationError("This API key is locked to a different customer.")
    if scope not in key.scopes:
        raise AuthorizationError(f"This API key lacks the '{scope}' scope.")
    principal = Principal(key.id, key.customer_id, frozenset(key.scopes))
    request.state.principal = principal
    return principal
