"""Idempotency-Key handling for the write routes.

The key is claimed in the transaction that does the work, and the response is stored in it too:
a crash or an error rolls the claim back with the leads, and a key costs two small statements
more than a request without one, with no commit and (PostgreSQL) no round trip of its own. A
concurrent request with the same key meets the claim at the unique index: on PostgreSQL its
INSERT waits there until the first request commits (then it replays the stored response) or
rolls back (then it claims the key); SQLite runs one write transaction at a time anyway. A
claim committed without a response (by versions before this one, which claimed in a
transaction of its own) is a request in progress for CLAIM_LEASE, then taken over.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from mega_crm.db import Database, Query, RawConnection, as_datetime, as_json, as_uuid, new_id, utcnow
from mega_crm.errors import ApiError, ConflictError, InvalidRequestError
from mega_crm.idempotency.models import IdempotencyRecord
from mega_crm.timestamps import PG_CLOCK_SQL, STAMP_CHAR, stamped_json_sql

CLAIM_LEASE = timedelta(seconds=30)
PURGE_INTERVAL = timedelta(minutes=10)
PURGE_BATCH = 1000
_last_purge: weakref.WeakKeyDictionary[Database, datetime] = weakref.WeakKeyDictionary()
_purge_lock = threading.Lock()
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]
    replayed: bool


Work = Callable[[Session], tuple[int, dict[str, Any]]]
# Sends a check as a write transaction's first statement -> its confirmation, called before the
# transaction commits, which raises if the check failed (auth.access.confirming: the API key).
Confirm = Callable[[Session], Callable[[], None]]
T = TypeVar("T")


def request_fingerprint(payload: Any) -> str:
    """Same JSON value -> same fingerprint, whatever the key order or whitespace."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_idempotent(
    db: Database,
    *,
    customer_id: uuid.UUID,
    endpoint: str,
    key: str | None,
    fingerprint: Callable[[], str],
    ttl: timedelta,
    work: Work,
    confirm: Confirm | None = None,
) -> StoredResponse:
    """`work` in one write transaction; with a `key`, at most once per (customer, endpoint, key),
    replaying the stored response to a request with the same `fingerprint()` and refusing (409)
    one with another. The claim, the work and the stored response commit together. `confirm`:
    a check every transaction that answers runs first and confirms before it commits (a replay
    too); its error rolls the transaction back and is raised.

    The usual key, one not seen before, is claimed by a statement sent ahead of the work and read
    after it (PostgreSQL: in the work's first round trip, see Database.write_session's
    `pipelined`). A key already there rolls that work back, unseen, and is judged by `_claim`."""
    if key is None:
        with db.write_session(pipelined=True) as session:
            confirmed = _sent(confirm, session)
            status, body = _judged(confirmed, lambda: work(session))
        return StoredResponse(status, body, replayed=False)

    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequestError(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters.")
    _purge_if_due(db)
    hashed = fingerprint()
    where = {"customer_id": customer_id, "endpoint": endpoint, "key": key}
    try:
        with db.write_session(pipelined=True) as session:
            confirmed = _sent(confirm, session)
            raw = RawConnection.of(session)
            claimed = raw.send(_CLAIM_NEW, {"id": new_id(), **where, **_times(hashed, ttl)})
            if raw.is_sqlite and claimed.first() is None:  # no round trip to save: judge it now
                raise _KeyTaken
            try:
                status, body = work(session)
            except Exception as exc:
                if claimed.first() is None:
                    raise _KeyTaken from None  # the key's answer, not this work's error
                if isinstance(exc, ApiError):
                    confirmed()  # see _judged
                raise
            record = claimed.first()
            if record is None:
                raise _KeyTaken
            confirmed()
            store_response(raw, as_uuid(record[0]), status, body)
        return StoredResponse(status, body, replayed=False)
    except _KeyTaken:
        pass
    with db.write_session() as session:
        confirmed = _sent(confirm, session)
        raw = RawConnection.of(session)
        claim = _judged(confirmed, lambda: _claim(raw, where, hashed, ttl))
        if isinstance(claim, StoredResponse):
            return claim
        status, body = _judged(confirmed, lambda: work(session))
        store_response(raw, claim, status, body)
    return StoredResponse(status, body, replayed=False)


def _judged(confirmed: Callable[[], None], step: Callable[[], T]) -> T:
    """`step()`, then `confirmed()`; a refusal the step raised (ApiError: a 400, a 409) is raised
    once the check is confirmed too, so that it stands as judged (auth.access.KeyCheck: a refusal
    on an unconfirmed key would run the request again)."""
    try:
        result = step()
    except ApiError:
        confirmed()
        raise
    confirmed()
    return result


def _sent(confirm: Confirm | None, session: Session) -> Callable[[], None]:
    """`confirm`'s check sent in `session` -> its confirmation (nothing to do without one)."""
    return confirm(session) if confirm is not None else _nothing


def _nothing() -> None:
    pass


class _KeyTaken(Exception):
    """The key is in the table already: the transaction that tried to claim it is rolled back."""


def _times(fingerprint: str, ttl: timedelta) -> dict[str, Any]:
    now = utcnow()
    return {"request_hash": fingerprint, "created_at": now, "expires_at": now + ttl}


_COLUMNS = "id, customer_id, endpoint, key, request_hash, created_at, expires_at"
# The usual case, a key not seen before, in one statement; on PostgreSQL a concurrent
# transaction's uncommitted claim of the same key makes it wait for that transaction's end.
_CLAIM_NEW = Query(
    text(
        f"INSERT INTO idempotency_records ({_COLUMNS}) "
        "VALUES (:id, :customer_id, :endpoint, :key, :request_hash, :created_at, :expires_at) "
        "ON CONFLICT (customer_id, endpoint, key) DO NOTHING RETURNING id"
    )
)
_FIND = (
    "SELECT id, request_hash, response_status, response_body, created_at, expires_at "
    "FROM idempotency_records WHERE customer_id = :customer_id AND endpoint = :endpoint AND key = :key"
)
_FIND_LOCKED = {"sqlite": Query(text(_FIND)), "postgresql": Query(text(_FIND + " FOR UPDATE"))}
# An expired key, or a claim whose request died, becomes this request's claim.
_TAKE_OVER = Query(
    text(
        "UPDATE idempotency_records SET request_hash = :request_hash, created_at = :created_at, "
        "expires_at = :expires_at, response_status = NULL, response_body = NULL WHERE id = :id"
    )
)
_RECORD_CLOCK = PG_CLOCK_SQL.format(customer="idempotency_records.customer_id")
_STORE = {
    dialect: Query(
        text(
            f"UPDATE idempotency_records SET response_status = :status, response_body = {body} WHERE id = :id"
        )
    )
    for dialect, body in (
        ("sqlite", ":body"),
        ("postgresql", "CAST(:body AS json)"),
        # A body with times its write fixes as it commits (timestamps.STAMP: PostgreSQL's
        # createLead), stamped with the customer's clock, which that write has taken.
        ("stamped", f"CAST({stamped_json_sql(':body', _RECORD_CLOCK)} AS json)"),
    )
}


def _claim(
    raw: RawConnection, where: dict[str, Any], fingerprint: str, ttl: timedelta
) -> StoredResponse | uuid.UUID:
    """Claim the key `where` names (customer_id, endpoint, key) in `raw`'s transaction -> the
    record's id; or the stored response to replay. Raises ConflictError (409) for a key used
    with another request body, or held by a request still in progress (a claim committed
    without its response, younger than CLAIM_LEASE)."""
    for _ in range(3):
        times = _times(fingerprint, ttl)
        now = times["created_at"]
        claimed = raw.first(_CLAIM_NEW, {"id": new_id(), **where, **times})
        if claimed is not None:
            return as_uuid(claimed[0])
        found = raw.first(_FIND_LOCKED[raw.dialect.name], where)
        if found is None:
            continue  # purged between the two statements: claim it again
        record_id, request_hash, status, body, created_at, expires_at = found
        if as_datetime(expires_at) > now:
            if request_hash != fingerprint:
                raise ConflictError("This Idempotency-Key was already used with a different request body.")
            if status is not None:
                return StoredResponse(status, as_json(body) or {}, replayed=True)
            if now - as_datetime(created_at) < CLAIM_LEASE:
                raise _in_progress()
        # Expired, or claimed by a request that died: the key is this request's now.
        raw.run(_TAKE_OVER, {"id": record_id, **times})
        return as_uuid(record_id)
    raise _in_progress()


def store_response(raw: RawConnection, record_id: uuid.UUID, status: int, body: dict[str, Any]) -> None:
    """The response of the request that claimed `record_id`, in the transaction of its work (a
    timestamps.STAMP in `body`: the customer's clock, which that transaction took)."""
    stored = orjson.dumps(body).decode()
    dialect = "stamped" if STAMP_CHAR in stored else raw.dialect.name  # only written by STAMP
    raw.run(_STORE[dialect], {"id": record_id, "status": status, "body": stored})


def _in_progress() -> ConflictError:
    return ConflictError("A request with this Idempotency-Key is still in progress; retry shortly.")


def _purge_if_due(db: Database) -> None:
    """Expired keys are purged by the requests that use keys, at most once per PURGE_INTERVAL
    per process: no scheduler to run, and an idle server has nothing to purge."""
    now = utcnow()
    with _purge_lock:
        last = _last_purge.get(db)
        if last is not None and now - last < PURGE_INTERVAL:
            return
        _last_purge[db] = now
    for _ in range(10):  # bounded work for the request that happens to do it
        if purge_expired(db) < PURGE_BATCH:
            break


def purge_expired(db: Database, limit: int = PURGE_BATCH) -> int:
    """Delete up to `limit` expired keys; returns how many."""
    with db.write_session() as session:
        ids = list(
            session.scalars(
                select(IdempotencyRecord.id).where(IdempotencyRecord.expires_at <= utcnow()).limit(limit)
            )
        )
        if ids:  # expiry checked again: a request may have taken one of these keys over since
            session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.id.in_(ids), IdempotencyRecord.expires_at <= utcnow()
                )
            )
        return len(ids)
