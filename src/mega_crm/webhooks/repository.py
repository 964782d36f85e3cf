"""All SQL of the webhook feature: registrations, the outbox, and the worker's claims."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Integer, Table, and_, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.orm import Session

from mega_crm.db import Memo, Query, RawConnection, as_json, as_uuid, memoized, utcnow
from mega_crm.webhooks.models import (
    CANCELLED,
    DISABLED_FAILING,
    DISABLED_GONE,
    FAILED,
    PENDING,
    SUCCEEDED,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
)

NOTIFY_CHANNEL = "mega_crm_webhook_deliveries"


# --- registrations --------------------------------------------------------------------------


def live_webhooks(session: Session, customer_id: uuid.UUID) -> list[Webhook]:
    return list(
        session.scalars(
            select(Webhook)
            .where(Webhook.customer_id == customer_id, Webhook.deleted_at.is_(None))
            .order_by(Webhook.created_at, Webhook.id)
        )
    )


def live_webhook(
    session: Session, customer_id: uuid.UUID, webhook_id: uuid.UUID, *, for_update: bool = False
) -> Webhook | None:
    """The customer's webhook, unless soft-deleted. Another customer's id reads as absent."""
    query = select(Webhook).where(
        Webhook.id == webhook_id, Webhook.customer_id == customer_id, Webhook.deleted_at.is_(None)
    )
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def url_registered(
    session: Session, customer_id: uuid.UUID, url: str, except_id: uuid.UUID | None = None
) -> bool:
    query = select(Webhook.id).where(
        Webhook.customer_id == customer_id, Webhook.url == url, Webhook.deleted_at.is_(None)
    )
    if except_id is not None:
        query = query.where(Webhook.id != except_id)
    return session.scalars(query.limit(1)).first() is not None


def cancel_pending_deliveries(session: Session, webhook_id: uuid.UUID, now: datetime) -> int:
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == PENDING)
        .values(status=CANCELLED, next_attempt_at=None, completed_at=now, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- the outbox -----------------------------------------------------------------------------


# Runs in every createLead: raw (see mega_crm.db.Query).
_SUBSCRIBED = Query(
    select(Webhook.id, Webhook.event_types).where(
        Webhook.customer_id == bindparam("customer_id"),
        Webhook.is_active.is_(True),
        Webhook.deleted_at.is_(None),
    )
)


# Each customer's live webhooks as (id, event_types) rows, per transaction (a group commit's creates).
_SUBSCRIPTIONS = Memo[uuid.UUID, list[tuple[Any, ...]]]("webhook_subscriptions", tables={"webhooks"})


def subscribed_webhook_ids(session: Session, customer_id: uuid.UUID, event_type: str) -> list[uuid.UUID]:
    """Read once per transaction and customer (a group commit's creates share it); a webhook
    written in the same transaction makes the next call read them again (mega_crm.db.memos)."""
    rows = memoized(session, _SUBSCRIPTIONS, customer_id, lambda: _subscriptions(session, customer_id))
    # event_types is a short JSON list; filtering here keeps the query portable.
    return [as_uuid(webhook_id) for webhook_id, types in rows if event_type in (as_json(types) or [])]


def _subscriptions(session: Session, customer_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return RawConnection.of(session).all(_SUBSCRIBED, {"customer_id": customer_id})


def insert_event_with_deliveries(
    session: Session,
    *,
    customer_id: uuid.UUID,
    event_type: str,
    lead_id: uuid.UUID | None,
    lead: dict[str, Any],
    webhook_ids: list[uuid.UUID],
    now: datetime,
    details: dict[str, Any] | None = None,
) -> list[uuid.UUID]:
    event = WebhookEvent(
        id=uuid.uuid4(),
        customer_id=customer_id,
        event_type=event_type,
        lead_id=lead_id,
        lead=lead,
        details=details,
        created_at=now,
    )
    session.add(event)
    session.flush()
    return insert_deliveries(session, event.id, webhook_ids, now)


def insert_deliveries(
    session: Session, event_id: uuid.UUID, webhook_ids: list[uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    deliveries = [
        WebhookDelivery(
            id=uuid.uuid4(),
            webhook_id=webhook_id,
            event_id=event_id,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        for webhook_id in webhook_ids
    ]
    session.add_all(deliveries)
    session.flush()
    return [d.id for d in deliveries]


def notify_workers(session: Session) -> None:
    """PostgreSQL: wake LISTENing workers when this transaction commits (a no-op on rollback)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})


# --- the delivery log -----------------------------------------------------------------------


DELIVERY_LOG_COLUMNS = (WebhookDelivery, WebhookEvent.event_type, WebhookEvent.lead_id)


def deliveries_page(
    session: Session,
    webhook_id: uuid.UUID,
    *,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[tuple[WebhookDelivery, str, uuid.UUID | None]]:
    """Newest first; `before` continues after the last row of the previous page."""
    query = (
        select(*DELIVERY_LOG_COLUMNS)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.webhook_id == webhook_id)
    )
    if before is not None:
        created_at, delivery_id = before
        query = query.where(
            or_(
                WebhookDelivery.created_at < created_at,
                and_(WebhookDelivery.created_at == created_at, WebhookDelivery.id < delivery_id),
            )
        )
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit)
    return [(d, event_type, lead_id) for d, event_type, lead_id in session.execute(query)]


def delivery_of(
    session: Session, webhook_id: uuid.UUID, delivery_id: uuid.UUID, *, lock: bool = False
) -> tuple[WebhookDelivery, str, uuid.UUID | None] | None:
    """`lock`: hold the delivery until commit (PostgreSQL), so the log's purge cannot remove it
    and its event meanwhile (a redelivery is about to refer to the event)."""
    query = (
        select(*DELIVERY_LOG_COLUMNS)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.id == delivery_id)
    )
    row = session.execute(query.with_for_update(of=WebhookDelivery) if lock else query).first()
    return (row[0], row[1], row[2]) if row else None


def events_to_recover(
    session: Session, webhook_id: uuid.UUID, since: datetime, until: datetime, limit: int
) -> tuple[list[uuid.UUID], int]:
    """The events of the webhook's deliveries that ended failed or cancelled in [since, until),
    oldest first, once each, leaving out events that meanwhile have a pending or succeeded
    delivery to it (already resent, or delivered after all). -> (those events, how many
    deliveries were read: at most `limit`; ask its maximum + 1 to tell "too many"). The deliveries read are
    locked until commit (PostgreSQL), so the log's purge cannot remove their events meanwhile."""
    candidates = list(
        session.scalars(
            select(WebhookDelivery.event_id)
            .where(
                WebhookDelivery.webhook_id == webhook_id,
                WebhookDelivery.status.in_((FAILED, CANCELLED)),
                WebhookDelivery.completed_at >= since,
                WebhookDelivery.completed_at < until,
            )
            .order_by(WebhookDelivery.completed_at, WebhookDelivery.id)
            .limit(limit)
            .with_for_update(of=WebhookDelivery)
        )
    )
    # A second query by event id rather than a correlated NOT EXISTS, which SQLite would run
    # along the (webhook_id, created_at) index: quadratic in the webhook's log.
    settled: set[uuid.UUID] = set()
    unique = list(dict.fromkeys(candidates))
    for start in range(0, len(unique), 500):
        settled.update(
            session.scalars(
                select(WebhookDelivery.event_id).where(
                    WebhookDelivery.event_id.in_(unique[start : start + 500]),
                    WebhookDelivery.webhook_id == webhook_id,
                    WebhookDelivery.status.in_((PENDING, SUCCEEDED)),
                )
            )
        )
    return [event_id for event_id in candidates if event_id not in settled], len(candidates)


def insert_recoveries(
    session: Session, webhook_id: uuid.UUID, event_ids: list[uuid.UUID], now: datetime
) -> int:
    """A fresh pending delivery (new id, full retry budget) of each event to the webhook."""
    if event_ids:
        session.execute(
            insert(WebhookDelivery),
            [
                {
                    "id": uuid.uuid4(),
                    "webhook_id": webhook_id,
                    "event_id": event_id,
                    "status": PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for event_id in event_ids
            ],
        )
    return len(event_ids)


def purge_delivery_log(session: Session, finished_before: datetime, limit: int) -> int:
    """Delete up to `limit` deliveries that finished before `finished_before`, then the events
    of that age no delivery refers to any more. -> how many deliveries were deleted."""
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.completed_at < finished_before, WebhookDelivery.status != PENDING)
            .order_by(WebhookDelivery.completed_at)
            .limit(limit)
        )
    )
    if ids:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
    orphans = (
        select(WebhookEvent.id)
        .where(
            WebhookEvent.created_at < finished_before,
            ~select(WebhookDelivery.id).where(WebhookDelivery.event_id == WebhookEvent.id).exists(),
        )
        .limit(limit)
        .scalar_subquery()
    )
    session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(orphans)))
    return len(ids)


# --- the worker's claims --------------------------------------------------------------------


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
    """Lease up to `limit` due deliveries to this worker.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers claim disjoint rows without
    waiting on each other; SQLite: the write transaction already excludes other claimers.
    At most `per_webhook` attempts per webhook are in flight (`busy` counts this worker's),
    so one slow endpoint cannot take every slot.
    """
    conn = session.connection()
    live = (_due(now), Webhook.is_active.is_(True), Webhook.deleted_at.is_(None))
    if max(busy.values(), default=0) + limit <= per_webhook:
        # No webhook can reach `per_webhook` within this batch: take the first `limit` due
        # deliveries, with everything their attempts need, in one statement.
        rows = conn.execute(
            _CLAIM_DETAILS.where(*live)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        ).all()
    else:
        query = (
            select(WebhookDelivery.id, WebhookDelivery.webhook_id)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(*live)
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
        rows = conn.execute(_CLAIM_DETAILS.where(WebhookDelivery.id.in_(taken))).all()
    if not rows:
        return []
    claims = [
        ClaimedDelivery(
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
        for r in rows
    ]
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


@dataclass(frozen=True)
class Disabled:
    """A webhook the server disabled while recording attempts."""

    webhook_id: uuid.UUID
    reason: str  # models.DISABLED_GONE | DISABLED_FAILING
    consecutive_failures: int


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
    failed = [r for r in records if r.status == FAILED]
    others = [r for r in records if r.status != FAILED]
    if others:
        conn.execute(_RECORD, [_record_params(r) for r in others])
    counted = [r for r in failed if conn.execute(_RECORD, _record_params(r)).rowcount == 1]
    return _track_health(session, records, counted, disable_after)


def _track_health(
    session: Session, records: list[AttemptRecord], counted_failures: list[AttemptRecord], disable_after: int
) -> list[Disabled]:
    conn = session.connection()
    # Per webhook, in the order they happened: True = a success, False = a counted failure.
    outcomes: dict[uuid.UUID, list[tuple[datetime, bool]]] = {}
    for r in records:
        if r.webhook_id is not None and r.status == SUCCEEDED:
            outcomes.setdefault(r.webhook_id, []).append((r.at, True))
    for r in counted_failures:
        if r.webhook_id is not None:
            outcomes.setdefault(r.webhook_id, []).append((r.at, False))
    failing: list[uuid.UUID] = []
    for webhook_id in sorted(outcomes):  # one lock order for every worker: no deadlocks
        seq = sorted(outcomes[webhook_id], key=lambda o: o[0])
        last_success = max((i for i, (_, ok) in enumerate(seq) if ok), default=None)
        if last_success is None:
            failures = len(seq)
            conn.execute(_ADD_FAILURES, {"b_wid": webhook_id, "b_n": failures})
        else:
            failures = len(seq) - last_success - 1
            conn.execute(_SET_HEALTH, {"b_wid": webhook_id, "b_n": failures, "b_at": seq[last_success][0]})
        if failures:
            failing.append(webhook_id)
    disabled: list[Disabled] = []
    gone = sorted({r.webhook_id for r in records if r.gone and r.webhook_id is not None})
    for webhook_id in gone:
        disabled += _disable(session, webhook_id, DISABLED_GONE, None)
    if disable_after > 0:
        for webhook_id in failing:
            if webhook_id not in gone:
                disabled += _disable(session, webhook_id, DISABLED_FAILING, disable_after)
    return disabled


def _disable(session: Session, webhook_id: uuid.UUID, reason: str, threshold: int | None) -> list[Disabled]:
    """Disable a live, active webhook (when `threshold`: only at that many failures in a row)
    and cancel its pending deliveries. -> [the disabling] or [] when it did not apply."""
    now = utcnow()
    query = (
        update(_webhooks)
        .where(_wcol.id == webhook_id, _wcol.is_active.is_(True), _wcol.deleted_at.is_(None))
        .values(is_active=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .returning(_wcol.consecutive_failures)
    )
    if threshold is not None:
        query = query.where(_wcol.consecutive_failures >= threshold)
    row = session.connection().execute(query).first()
    if row is None:
        return []
    cancel_pending_deliveries(session, webhook_id, now)
    return [Disabled(webhook_id, reason, int(row[0]))]


_deliveries = cast(Table, WebhookDelivery.__table__)
_col = _deliveries.c

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


_webhooks = cast(Table, Webhook.__table__)
_wcol = _webhooks.c
_wid = bindparam("b_wid", type_=_wcol.id.type)
_ADD_FAILURES = (
    update(_webhooks)
    .where(_wcol.id == _wid)
    .values(consecutive_failures=_wcol.consecutive_failures + bindparam("b_n", type_=Integer()))
)
_SET_HEALTH = (
    update(_webhooks)
    .where(_wcol.id == _wid)
    .values(
        consecutive_failures=bindparam("b_n", type_=Integer()),
        last_success_at=bindparam("b_at", type_=_wcol.last_success_at.type),
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
