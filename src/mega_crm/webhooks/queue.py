"""The delivery worker's queue: claims of due deliveries (leased rows), the attempts' outcomes
recorded (with the endpoints' health: webhooks/endpoint_health.py), claims handed back.

A claim is a lease: `lease_token` and `leased_until` on the delivery row, taken in one write
transaction; an outcome is recorded only under the token it was claimed with, so a claim taken
over after its lease ended (its worker died) changes nothing when the late outcome arrives.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Integer, Table, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from mega_crm.webhooks.endpoint_health import Disabled, track_health
from mega_crm.webhooks.models import (
    FAILED,
    PENDING,
    SUCCEEDED,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
)


@dataclass(frozen=True)
class ClaimedDelivery:
    """Everything one attempt needs, read in the claiming transaction."""

    id: uuid.UUID
    lease_token: uuid.UUID
    attempts: int  # attempts made before this one
    webhook_id: uuid.UUID
    url: str
    timeout_seconds: int
    retry_attempts: int
    secret_encrypted: str
    event_id: uuid.UUID
    event_type: str
    lead: dict[str, Any]
    secret: str | None = None  # decrypted once per webhook and batch by the claimer, when it could
    # During a rotation's overlap: the previous secret (encrypted) and until when it signs too.
    previous_secret_encrypted: str | None = None
    previous_secret_expires_at: datetime | None = None
    signature_scheme: str = "mega"
    details: dict[str, Any] | None = None  # the event's payload members beside `lead`


def _due(now: datetime) -> Any:
    return and_(
        WebhookDelivery.status == PENDING,
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until <= now),
    )


def any_due(session: Session, now: datetime) -> bool:
    """Whether any delivery is claimable at `now` (a read: no lock taken)."""
    return session.scalars(select(WebhookDelivery.id).where(_due(now)).limit(1)).first() is not None


_CLAIM_DETAILS = (
    select(
        WebhookDelivery.id,
        WebhookDelivery.attempts,
        Webhook.id,
        Webhook.url,
        Webhook.timeout_seconds,
        Webhook.retry_attempts,
        Webhook.secret_encrypted,
        WebhookEvent.id,
        WebhookEvent.event_type,
        WebhookEvent.lead,
        Webhook.previous_secret_encrypted,
        Webhook.previous_secret_expires_at,
        Webhook.signature_scheme,
        WebhookEvent.details,
    )
    .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
    .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
)


def claim_due_deliveries(
    session: Session,
    now: datetime,
    *,
    limit: int,
    lease_seconds: float,
    per_webhook: int,
    busy: dict[uuid.UUID, int],
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries to this worker, each until its longest possible
    attempt is over (`lease_seconds` + the webhook's timeout) -> the claims, in due order.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers claim disjoint rows without
    waiting on each other; SQLite: the write transaction already excludes other claimers.
    At most `per_webhook` attempts per webhook are in flight (`busy` counts this worker's),
    so one slow endpoint cannot take every slot: when no webhook can reach that cap within
    this batch, the first `limit` due deliveries are taken at once (_claim_first_due); else
    candidates are picked around the cap first (_claim_within_cap).
    """
    conn = session.connection()
    if max(busy.values(), default=0) + limit <= per_webhook:
        rows = _claim_first_due(conn, now, limit)
    else:
        rows = _claim_within_cap(conn, now, limit, per_webhook, busy)
    if not rows:
        return []
    claims = [_claimed(r) for r in rows]
    # One statement for the batch (executemany), in Core: no ORM bookkeeping per row.
    conn.execute(
        _LEASE,
        [
            {
                "b_id": c.id,
                "b_token": c.lease_token,
                # The lease outlives the longest possible attempt, so only a dead worker loses it.
                "b_until": now + timedelta(seconds=lease_seconds + c.timeout_seconds),
            }
            for c in claims
        ],
    )
    return claims


def _live_due(now: datetime) -> tuple[Any, ...]:
    """Due, and of a webhook that is active and not deleted."""
    return (_due(now), Webhook.is_active.is_(True), Webhook.deleted_at.is_(None))


def _claim_first_due(conn: Connection, now: datetime, limit: int) -> Sequence[Sequence[Any]]:
    """The first `limit` due deliveries, locked, with everything their attempts need, in one
    statement (_CLAIM_DETAILS rows)."""
    return conn.execute(
        _CLAIM_DETAILS.where(*_live_due(now))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    ).all()


def _claim_within_cap(
    conn: Connection, now: datetime, limit: int, per_webhook: int, busy: dict[uuid.UUID, int]
) -> Sequence[Sequence[Any]]:
    """Up to `limit` due deliveries, no webhook past `per_webhook` counting `busy`: locks
    `limit` * 4 candidates (none of a webhook already at its cap), picks in due order, then
    reads the picked ones' details (_CLAIM_DETAILS rows)."""
    query = (
        select(WebhookDelivery.id, WebhookDelivery.webhook_id)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(*_live_due(now))
    )
    saturated = [webhook_id for webhook_id, n in busy.items() if n >= per_webhook]
    if saturated:
        query = query.where(WebhookDelivery.webhook_id.not_in(saturated))
    candidates = conn.execute(
        query.order_by(WebhookDelivery.next_attempt_at)
        .limit(limit * 4)
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    ).all()
    taken: list[uuid.UUID] = []
    load = dict(busy)
    for delivery_id, webhook_id in candidates:
        if load.get(webhook_id, 0) >= per_webhook:
            continue
        load[webhook_id] = load.get(webhook_id, 0) + 1
        taken.append(delivery_id)
        if len(taken) == limit:
            break
    if not taken:
        return []
    return conn.execute(_CLAIM_DETAILS.where(WebhookDelivery.id.in_(taken))).all()


def _claimed(r: Sequence[Any]) -> ClaimedDelivery:
    """A _CLAIM_DETAILS row as a claim, with a fresh lease token."""
    return ClaimedDelivery(
        id=r[0],
        lease_token=uuid.uuid4(),
        attempts=r[1],
        webhook_id=r[2],
        url=r[3],
        timeout_seconds=r[4],
        retry_attempts=r[5],
        secret_encrypted=r[6],
        event_id=r[7],
        event_type=r[8],
        lead=r[9],
        previous_secret_encrypted=r[10],
        previous_secret_expires_at=r[11],
        signature_scheme=r[12],
        details=r[13],
    )


def next_due_at(session: Session) -> datetime | None:
    """When the next pending delivery becomes claimable (its due time, or its lease's end)."""
    nxt = session.scalars(
        select(WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.leased_until.is_(None))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(1)
    ).first()
    lease_end = session.scalars(
        select(WebhookDelivery.leased_until)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.leased_until.is_not(None))
        .order_by(WebhookDelivery.leased_until)
        .limit(1)
    ).first()
    candidates = [t for t in (nxt, lease_end) if t is not None]
    return min(candidates) if candidates else None


@dataclass(frozen=True)
class AttemptRecord:
    """What one attempt came to, for the delivery row."""

    delivery_id: uuid.UUID
    lease_token: uuid.UUID
    status: str  # succeeded | failed | pending (retry at next_attempt_at)
    attempts: int
    at: datetime
    next_attempt_at: datetime | None
    status_code: int | None
    error: str | None
    latency_ms: int | None
    webhook_id: uuid.UUID | None = None  # for the endpoint's health (None: not tracked)
    gone: bool = False  # the endpoint answered 410 Gone


def _record_params(r: AttemptRecord) -> dict[str, Any]:
    return {
        "b_id": r.delivery_id,
        "b_token": r.lease_token,
        "b_succeeded": 1 if r.status == SUCCEEDED else 0,
        "b_status": r.status,
        "b_attempts": r.attempts,
        "b_next": r.next_attempt_at,
        "b_code": r.status_code,
        "b_error": r.error,
        "b_latency": r.latency_ms,
        "b_at": r.at,
        "b_completed": r.at if r.status in (SUCCEEDED, FAILED) else None,
    }


def record_attempts(
    session: Session, records: list[AttemptRecord], *, disable_after: int = 0
) -> list[Disabled]:
    """Write attempt outcomes and the endpoints' health, in the caller's transaction.

    A record whose lease was lost (taken over) changes nothing. Outcomes that do not end a
    delivery as failed go in one statement (executemany); each failed one alone, so that only
    a failure actually recorded counts towards its webhook's `consecutive_failures` (a retried
    or taken-over attempt never counts twice). Any 2xx resets the count. A 410 disables the
    webhook at once (reason "gone"); `disable_after` (> 0) failures in a row disable it
    ("failing"); either way its pending deliveries are cancelled. -> the webhooks disabled.
    """
    if not records:
        return []
    conn = session.connection()
    # The webhooks first, then their deliveries: the order the API's changes to a webhook take
    # (its row locked, then its pending deliveries cancelled). Deliveries first, as before,
    # deadlocked with them on PostgreSQL, and the loser answered 503.
    webhook_ids = sorted({r.webhook_id for r in records if r.webhook_id is not None})
    if webhook_ids:
        conn.execute(_LOCK_WEBHOOKS, {"b_ids": webhook_ids})
    failed = [r for r in records if r.status == FAILED]
    others = [r for r in records if r.status != FAILED]
    if others:
        conn.execute(_RECORD, [_record_params(r) for r in others])
    counted = [r for r in failed if conn.execute(_RECORD, _record_params(r)).rowcount == 1]
    return track_health(session, records, counted, disable_after)


_deliveries = cast(Table, WebhookDelivery.__table__)
_col = _deliveries.c
# In id order, as track_health updates them: one lock order for every worker. FOR NO KEY
# UPDATE (key_share), the lock track_health's UPDATE takes anyway: FOR UPDATE would also wait
# for, and deadlock with, a createLead's foreign-key check of the delivery it inserts.
_LOCK_WEBHOOKS = (
    select(Webhook.id)
    .where(Webhook.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(Webhook.id)
    .with_for_update(key_share=True)
)

# The worker's statements, built once (their compiled form is cached by SQLAlchemy) and run with
# a list of parameter sets (executemany) in Core, without the ORM's per-row bookkeeping.
_LEASE = (
    update(_deliveries)
    .where(_col.id == bindparam("b_id", type_=_col.id.type))
    .values(
        lease_token=bindparam("b_token", type_=_col.lease_token.type),
        leased_until=bindparam("b_until", type_=_col.leased_until.type),
    )
)

_at = bindparam("b_at", type_=_col.updated_at.type)
_RECORD = (
    update(_deliveries)
    .where(
        _col.id == bindparam("b_id", type_=_col.id.type),
        _col.lease_token == bindparam("b_token", type_=_col.lease_token.type),
        # A webhook deactivated or deleted meanwhile keeps its delivery cancelled; an attempt
        # that nevertheless succeeded is still recorded, since the receiver has it.
        or_(_col.status == PENDING, bindparam("b_succeeded", type_=Integer()) == 1),
    )
    .values(
        status=bindparam("b_status", type_=_col.status.type),
        attempts=bindparam("b_attempts", type_=_col.attempts.type),
        next_attempt_at=bindparam("b_next", type_=_col.next_attempt_at.type),
        leased_until=None,
        lease_token=None,
        last_status_code=bindparam("b_code", type_=_col.last_status_code.type),
        last_error=bindparam("b_error", type_=_col.last_error.type),
        last_latency_ms=bindparam("b_latency", type_=_col.last_latency_ms.type),
        last_attempt_at=_at,
        updated_at=_at,
        completed_at=bindparam("b_completed", type_=_col.completed_at.type),
    )
)


def release_claims(session: Session, claims: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Hand unfinished claims back (graceful shutdown): due at once, for any worker."""
    for delivery_id, lease_token in claims:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.lease_token == lease_token)
            .values(leased_until=None, lease_token=None)
        )


def release_every_claim(session: Session) -> int:
    """Hand back every leased pending delivery: for a worker that knows no other one is alive
    (SQLite, under the worker lock), the claims of a process that died. -> how many."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.lease_token.is_not(None))
        .values(leased_until=None, lease_token=None)
    )
    return int(cast(Any, result).rowcount or 0)
