"""Webhooks, the events they receive (the outbox) and one delivery per (event, webhook)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from mega_crm.db import Base, UTCDateTime, new_id
from mega_crm.events.outbox import LEAD_CREATED, LEAD_UPDATED  # noqa: F401  (their home: events)

EVENT_TYPES = (LEAD_CREATED, LEAD_UPDATED)  # what a webhook can subscribe to
WEBHOOK_TEST = "webhook.test"  # sent on request (POST …/{id}/test) to one webhook, unsubscribed

# Why a webhook was disabled by the server (a deactivation through the API has no reason).
DISABLED_GONE = "gone"  # the endpoint answered 410 Gone
DISABLED_FAILING = "failing"  # MEGA_WEBHOOK_DISABLE_AFTER_FAILURES deliveries failed in a row

# How attempts are signed: X-Mega-* headers always; "standard-webhooks" adds the Standard
# Webhooks headers (webhook-id, webhook-timestamp, webhook-signature).
SCHEME_MEGA = "mega"
SCHEME_STANDARD_WEBHOOKS = "standard-webhooks"

# Delivery statuses. `pending` covers "waiting for its next attempt" and "in flight" (leased).
PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"


class Webhook(Base):
    __tablename__ = "webhooks"
    __table_args__ = (
        # One live registration per URL and customer; a soft-deleted one frees its URL.
        Index(
            "uq_webhooks_customer_url_live",
            "customer_id",
            "url",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSON)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=10)
    retry_attempts: Mapped[int] = mapped_column(Integer, default=5)
    description: Mapped[str | None] = mapped_column(Text)
    # The signing secret, AES-GCM encrypted under a key derived from MEGA_SECRET_KEY.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    # After a rotation with an overlap, the secret before it (encrypted alike) and until when
    # attempts are signed with it too; at most two secrets are live.
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signature_scheme: Mapped[str] = mapped_column(String(32), default=SCHEME_MEGA, server_default=SCHEME_MEGA)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Endpoint health (written by the worker with the attempts' outcomes; see repository).
    disabled_reason: Mapped[str | None] = mapped_column(String(16))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """What happened, written in the transaction that made it happen (the outbox row)."""

    __tablename__ = "webhook_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    lead_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The `lead` object of the payload, frozen at the moment of the event.
    lead: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The payload's other members beside event/delivered_at/lead (lead.updated: changed_fields
    # and previous); None for lead.created.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event to one webhook; its id is the X-Mega-Delivery header, the same on every retry."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The worker's claim: due pending deliveries, oldest first.
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        # The delivery log: newest first per webhook.
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at", "id"),
        # Its retention: finished deliveries, oldest first.
        Index("ix_webhook_deliveries_completed", "completed_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    webhook_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A worker holds a claimed delivery until leased_until; after that any worker may take it
    # again (its holder died). lease_token makes a late write from a lapsed holder a no-op.
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
