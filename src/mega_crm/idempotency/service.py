"""Idempotency-Key handling for the write routes.

A key is claimed in its own short transaction, so a concurrent request with the same key sees the
claim and gets 409 instead of writing twice. The stored response is then written in the same
transaction as the leads it describes: a crash leaves either both or neither. A claim whose
request died is taken over after CLAIM_LEASE; a request that fails with an error releases its claim.
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
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mega_crm.db import Database, new_id, utcnow
from mega_crm.errors import ConflictError, InvalidRequestError
from mega_crm.idempotency.models import IdempotencyRecord

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
) -> StoredResponse:
    """`work` in one write transaction; with a `key`, at most once per (customer, endpoint, key),
    replaying the stored response to a request with the same `fingerprint()` and refusing (409)
    one with another."""
    if key is None:
        with db.write_session() as session:
            status, body = work(session)
        return StoredResponse(status, body, replayed=False)

    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequestError(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters.")
    _purge_if_due(db)
    hashed = fingerprint()
    claim = (None if db.is_sqlite else _claim_new(db, customer_id, endpoint, key, hashed, ttl)) or _claim(
        db, customer_id, endpoint, key, hashed, ttl
    )
    if isinstance(claim, StoredResponse):
        return claim
    record_id, claimed_at = claim
    try:
        with db.write_session() as session:
            status, body = work(session)
            stored = session.execute(
                update(IdempotencyRecord)
                .where(
                    IdempotencyRecord.id == record_id,
                    IdempotencyRecord.created_at == claimed_at,
                    IdempotencyRecord.response_status.is_(None),
                )
                .values(response_status=status, response_body=body)
            )
            # rowcount 0: our claim lapsed and another request took the key over
            if stored.rowcount != 1:  # type: ignore[attr-defined]
                raise _in_progress()
    except BaseException:
        _release(db, record_id, claimed_at)
        raise
    return StoredResponse(status, body, replayed=False)


def _claim_new(
    db: Database, customer_id: uuid.UUID, endpoint: str, key: str, fingerprint: str, ttl: timedelta
) -> tuple[uuid.UUID, datetime] | None:
    """PostgreSQL, a key not seen before (the usual case): the claim in one statement that
    commits on its own (INSERT … ON CONFLICT DO NOTHING RETURNING, autocommit), one round trip
    instead of BEGIN, SELECT, INSERT and COMMIT. -> (record id, claimed at), or None when the
    key is already there (then `_claim` reads and judges it)."""
    now = utcnow()
    statement = (
        pg_insert(IdempotencyRecord)
        .values(
            id=new_id(),
            customer_id=customer_id,
            endpoint=endpoint,
            key=key,
            request_hash=fingerprint,
            created_at=now,
            expires_at=now + ttl,
        )
        .on_conflict_do_nothing(index_elements=["customer_id", "endpoint", "key"])
        .returning(IdempotencyRecord.id)
    )
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        row = connection.execute(statement).first()
    return (row[0], now) if row is not None else None


def _claim(
    db: Database, customer_id: uuid.UUID, endpoint: str, key: str, fingerprint: str, ttl: timedelta
) -> StoredResponse | tuple[uuid.UUID, Any]:
    for _ in range(3):
        now = utcnow()
        try:
            with db.write_session() as session:
                record = session.scalars(
                    select(IdempotencyRecord).where(
                        IdempotencyRecord.customer_id == customer_id,
                        IdempotencyRecord.endpoint == endpoint,
                        IdempotencyRecord.key == key,
                    )
                ).one_or_none()
                if record is not None and record.expires_at > now:
                    if record.request_hash != fingerprint:
                        raise ConflictError(
                            "This Idempotency-Key was already used with a different request body."
                        )
                    if record.response_status is not None:
                        return StoredResponse(record.response_status, record.response_body or {}, True)
                    if now - record.created_at < CLAIM_LEASE:
                        raise _in_progress()
                    record.created_at = now  # the earlier request died: take its claim over
                    return record.id, now
                if record is not None:  # expired: the key is free again
                    # Core DELETE: a concurrent request may have deleted it first (0 rows is fine).
                    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id))
                record = IdempotencyRecord(
                    customer_id=customer_id,
                    endpoint=endpoint,
                    key=key,
                    request_hash=fingerprint,
                    created_at=now,
                    expires_at=now + ttl,
                )
                session.add(record)
                session.flush()
                return record.id, now
        except IntegrityError:
            continue  # a concurrent request inserted the same key first: read what it wrote
    raise _in_progress()


def _release(db: Database, record_id: uuid.UUID, claimed_at: Any) -> None:
    with db.write_session() as session:
        session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.id == record_id,
                IdempotencyRecord.created_at == claimed_at,
                IdempotencyRecord.response_status.is_(None),
            )
        )


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
        if ids:
            session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(ids)))
        return len(ids)
