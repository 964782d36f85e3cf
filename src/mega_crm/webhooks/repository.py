"""The SQL of the webhook feature's registrations, outbox and delivery log (the delivery
worker's queue, its claims and recorded attempts, is webhooks/queue.py)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from mega_crm.events.outbox import pending_delivery
from mega_crm.webhooks.models import (
    CANCELLED,
    FAILED,
    PENDING,
    SUCCEEDED,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
)

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
        rows = [pending_delivery(webhook_id, event_id, now) for event_id in event_ids]
        session.execute(insert(WebhookDelivery), rows)
    return len(event_ids)


def purge_delivery_log(session: Session, finished_before: datetime, limit: int) -> int:
    """Delete up to `limit` deliveries that finished before `finished_before`, then the events
    of that age no delivery refers to any more. -> how many deliveries were deleted. Deliveries
    locked by another transaction (a recover or redeliver reading them) are skipped, left for a
    later round: waiting for them, the purge locked rows in another order than they did and
    deadlocked with a recover (PostgreSQL; found from outside)."""
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.completed_at < finished_before, WebhookDelivery.status != PENDING)
            .order_by(WebhookDelivery.completed_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
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
