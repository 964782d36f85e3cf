"""Webhook registrations and their delivery log, inside the caller's transaction.

URL checks (which may query DNS) happen before the transaction opens: `check_url` first, then
the write with the checked `Target`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mega_crm.db import utcnow
from mega_crm.errors import ConflictError, InvalidRequestError, NotFoundError
from mega_crm.events import outbox
from mega_crm.events.outbox import wake_workers_on_commit
from mega_crm.security import Signer
from mega_crm.timestamps import format_time_or_none as iso
from mega_crm.webhooks import repository as repo
from mega_crm.webhooks.models import EVENT_TYPES, PENDING, WEBHOOK_TEST, Webhook, WebhookDelivery
from mega_crm.webhooks.schemas import WebhookCreateRequest, WebhookRecoverRequest, WebhookUpdateRequest
from mega_crm.webhooks.signing import SecretBox, new_webhook_secret
from mega_crm.webhooks.urls import Resolver, Target, UrlRefused, check_webhook_url


def webhook_body(webhook: Webhook) -> dict[str, Any]:
    """The contract's `Webhook` (never the secret), plus this server's extensions after the
    contract's fields: the endpoint's health."""
    return {
        "id": str(webhook.id),
        "url": webhook.url,
        "event_types": list(webhook.event_types),
        "is_active": webhook.is_active,
        "timeout_seconds": webhook.timeout_seconds,
        "retry_attempts": webhook.retry_attempts,
        "description": webhook.description,
        "created_at": iso(webhook.created_at),
        "updated_at": iso(webhook.updated_at),
        "disabled_reason": webhook.disabled_reason,
        "disabled_at": iso(webhook.disabled_at),
        "consecutive_failures": webhook.consecutive_failures or 0,
        "last_success_at": iso(webhook.last_success_at),
        "signature_scheme": webhook.signature_scheme,
    }


def delivery_body(delivery: WebhookDelivery, event_type: str, lead_id: uuid.UUID | None) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "webhook_id": str(delivery.webhook_id),
        "event": event_type,
        "event_id": str(delivery.event_id),
        "lead_id": str(lead_id) if lead_id else None,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "last_latency_ms": delivery.last_latency_ms,
        "last_attempt_at": iso(delivery.last_attempt_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == PENDING else None,
        "created_at": iso(delivery.created_at),
        "completed_at": iso(delivery.completed_at),
    }


def check_url(raw: str, *, allow_private: bool, resolver: Resolver | None = None) -> Target:
    try:
        return check_webhook_url(raw, allow_private=allow_private, resolver=resolver)
    except UrlRefused as exc:
        raise InvalidRequestError(str(exc)) from None


def parse_id(raw: str, what: str = "webhook") -> uuid.UUID:
    """A malformed id names no resource: 404, as for another customer's id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFoundError(f"No such {what}.") from None


def _event_types(requested: list[str]) -> list[str]:
    return [t for t in EVENT_TYPES if t in requested]  # de-duplicated, in a stable order


def _webhook_or_404(session: Session, customer_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook:
    webhook = repo.live_webhook(session, customer_id, webhook_id, for_update=True)
    if webhook is None:
        raise NotFoundError("No such webhook.")
    return webhook


def _url_taken() -> ConflictError:
    return ConflictError("This URL is already registered as a webhook; update that one instead.")


def _url_in_use() -> InvalidRequestError:
    return InvalidRequestError("url: another webhook of yours is already registered at this URL.")


def create_webhook(
    session: Session, customer_id: uuid.UUID, request: WebhookCreateRequest, target: Target, box: SecretBox
) -> dict[str, Any]:
    if repo.url_registered(session, customer_id, target.url):
        raise _url_taken()
    now = utcnow()
    secret = new_webhook_secret()
    webhook = Webhook(
        id=uuid.uuid4(),
        customer_id=customer_id,
        url=target.url,
        event_types=_event_types(list(request.event_types)),
        is_active=request.is_active,
        timeout_seconds=request.timeout_seconds,
        retry_attempts=request.retry_attempts,
        description=request.description or None,
        consecutive_failures=0,
        signature_scheme=request.signature_scheme,
        disabled_at=None if request.is_active else now,
        created_at=now,
        updated_at=now,
    )
    webhook.secret_encrypted = box.seal(webhook.id, secret)
    session.add(webhook)
    try:
        session.flush()
    except IntegrityError:  # a concurrent registration of the same URL won
        raise _url_taken() from None
    return {"webhook": webhook_body(webhook), "secret": secret}


def get_webhook(session: Session, customer_id: uuid.UUID, webhook_id: uuid.UUID) -> dict[str, Any]:
    webhook = repo.live_webhook(session, customer_id, webhook_id)
    if webhook is None:
        raise NotFoundError("No such webhook.")
    return {"webhook": webhook_body(webhook)}


def list_webhooks(session: Session, customer_id: uuid.UUID) -> dict[str, Any]:
    return {"webhooks": [webhook_body(w) for w in repo.live_webhooks(session, customer_id)]}


def update_webhook(
    session: Session,
    customer_id: uuid.UUID,
    webhook_id: uuid.UUID,
    request: WebhookUpdateRequest,
    target: Target | None,
    box: SecretBox,
) -> dict[str, Any]:
    webhook = _webhook_or_404(session, customer_id, webhook_id)
    sent = request.model_fields_set
    now = utcnow()
    if target is not None and target.url != webhook.url:
        if repo.url_registered(session, customer_id, target.url, except_id=webhook.id):
            # The reference's updateWebhook has no 409: moving onto a registered URL is a bad request.
            raise _url_in_use()
        webhook.url = target.url
    if "event_types" in sent and request.event_types is not None:
        webhook.event_types = _event_types(list(request.event_types))
    if "timeout_seconds" in sent and request.timeout_seconds is not None:
        webhook.timeout_seconds = request.timeout_seconds
    if "retry_attempts" in sent and request.retry_attempts is not None:
        webhook.retry_attempts = request.retry_attempts
    if "description" in sent:
        webhook.description = request.description or None
    if "signature_scheme" in sent and request.signature_scheme is not None:
        webhook.signature_scheme = request.signature_scheme
    if "is_active" in sent and request.is_active is not None:
        if webhook.is_active and not request.is_active:
            # Deactivation stops deliveries now, including those waiting for a retry.
            repo.cancel_pending_deliveries(session, webhook.id, now)
            webhook.disabled_at = now
        elif request.is_active and not webhook.is_active:
            # Re-enabling starts the endpoint's health afresh. No delivery queued while it was
            # inactive is due (deactivating cancelled the pending ones): one a create queued as
            # the worker disabled it (events.outbox's _INSERT_LIVE_DELIVERIES) is cancelled.
            repo.cancel_pending_deliveries(session, webhook.id, now)
            webhook.disabled_reason = None
            webhook.disabled_at = None
            webhook.consecutive_failures = 0
        webhook.is_active = request.is_active
    body: dict[str, Any] = {}
    overlap = request.secret_overlap_seconds
    if overlap is not None and not request.rotate_secret:
        raise InvalidRequestError("secret_overlap_seconds applies only with rotate_secret: true.")
    if request.rotate_secret:
        # The worker reads the secrets when it claims each attempt: every attempt claimed after
        # this commit is signed with the new secret (and, during an overlap, the one before it;
        # an earlier previous secret is dropped: at most two are live).
        secret = new_webhook_secret()
        if overlap:
            webhook.previous_secret_encrypted = webhook.secret_encrypted  # sealed for this id
            webhook.previous_secret_expires_at = now + timedelta(seconds=overlap)
        else:
            webhook.previous_secret_encrypted = None
            webhook.previous_secret_expires_at = None
        webhook.secret_encrypted = box.seal(webhook.id, secret)
        body["secret"] = secret
    if session.is_modified(webhook):  # a PATCH that changes nothing leaves updated_at alone
        webhook.updated_at = now
    try:
        session.flush()
    except IntegrityError:
        raise _url_in_use() from None
    return {"webhook": webhook_body(webhook), **body}


def delete_webhook(session: Session, customer_id: uuid.UUID, webhook_id: uuid.UUID) -> dict[str, Any]:
    webhook = _webhook_or_404(session, customer_id, webhook_id)
    now = utcnow()
    repo.cancel_pending_deliveries(session, webhook.id, now)
    webhook.deleted_at = now
    webhook.is_active = False
    webhook.updated_at = now
    session.flush()
    return {"deleted": True}


# --- the delivery log -----------------------------------------------------------------------


class DeliveryCursor:
    """Opaque, signed keyset cursor over one webhook's deliveries (newest first)."""

    def __init__(self, server_key: bytes) -> None:
        self._signer = Signer(server_key, "webhook-deliveries")

    def encode(self, webhook_id: uuid.UUID, created_at: datetime, delivery_id: uuid.UUID) -> str:
        payload = [str(webhook_id), created_at.isoformat(), str(delivery_id)]
        return self._signer.sign(json.dumps(payload, separators=(",", ":")).encode())

    def decode(self, token: str, webhook_id: uuid.UUID) -> tuple[datetime, uuid.UUID]:
        raw = self._signer.unsign(token)
        try:
            if raw is None:
                raise ValueError
            owner, created_at, delivery_id = json.loads(raw)
            if owner != str(webhook_id):
                raise ValueError
            return datetime.fromisoformat(created_at), uuid.UUID(delivery_id)
        except (ValueError, TypeError):
            raise InvalidRequestError("cursor is invalid or belongs to another listing.") from None


def list_deliveries(
    session: Session,
    customer_id: uuid.UUID,
    webhook_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None,
    codec: DeliveryCursor,
) -> dict[str, Any]:
    if repo.live_webhook(session, customer_id, webhook_id) is None:
        raise NotFoundError("No such webhook.")
    before = codec.decode(cursor, webhook_id) if cursor else None
    rows = repo.deliveries_page(session, webhook_id, limit=limit + 1, before=before)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1][0]
        next_cursor = codec.encode(webhook_id, last.created_at, last.id)
    return {"deliveries": [delivery_body(*row) for row in page], "next_cursor": next_cursor}


# The example lead of the webhook.test event: the same every time, names no real lead.
EXAMPLE_LEAD: dict[str, Any] = {
    "id": "00000000-0000-4000-8000-000000000000",
    "contact_name": "Ada Lovelace",
    "contact_phone": "+12065550100",
    "contact_email": "ada@example.com",
    "source_platform": "direct",
    "source_type": "manual",
    "lead_line": "buyer",
    "current_stage": {"slug": "new", "name": "New"},
    "custom_fields": {"lead_line": "buyer"},
    "created_at": "2026-01-01T00:00:00.000000Z",
    "updated_at": "2026-01-01T00:00:00.000000Z",
}


def send_test_event(session: Session, customer_id: uuid.UUID, webhook_id: uuid.UUID) -> dict[str, Any]:
    """A webhook.test event with EXAMPLE_LEAD, one delivery to this webhook only, due now (the
    worker is woken on commit). -> {"delivery": …} as it is queued. 409 when inactive."""
    webhook = _webhook_or_404(session, customer_id, webhook_id)
    if not webhook.is_active:
        raise ConflictError("This webhook is inactive; activate it before sending a test event.")
    now = utcnow()
    event_id = outbox.insert_event(session, customer_id, WEBHOOK_TEST, None, EXAMPLE_LEAD, None, now)
    [delivery_id] = outbox.insert_deliveries(session, event_id, [webhook.id], now)
    wake_workers_on_commit(session)
    created = repo.delivery_of(session, webhook.id, delivery_id)
    assert created is not None
    return {"delivery": delivery_body(*created)}


MAX_RECOVER = 10_000


def _utc(value: datetime, name: str) -> datetime:
    """A time without an offset is read as UTC (as in listLeads' filters)."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise InvalidRequestError(f"{name} is out of range once converted to UTC.") from None


def recover(
    session: Session, customer_id: uuid.UUID, webhook_id: uuid.UUID, request: WebhookRecoverRequest
) -> dict[str, Any]:
    """A fresh delivery of every event whose delivery to this webhook ended failed or cancelled
    in [since, until) (default until: now), for the day an endpoint was down; at most
    MAX_RECOVER, else 400 (narrow the window). -> {"count": how many were queued}."""
    since = _utc(request.since, "since")
    until = _utc(request.until, "until") if request.until is not None else utcnow()
    if since >= until:
        raise InvalidRequestError("since must be before until.")
    webhook = _webhook_or_404(session, customer_id, webhook_id)
    if not webhook.is_active:
        raise ConflictError("This webhook is inactive; activate it before recovering.")
    events, read = repo.events_to_recover(session, webhook.id, since, until, MAX_RECOVER + 1)
    if read > MAX_RECOVER:
        raise InvalidRequestError(
            f"More than {MAX_RECOVER:,} deliveries failed or were cancelled in this window; "
            "recover a narrower one (since/until)."
        )
    unique = list(dict.fromkeys(events))  # an event failed twice is sent once
    count = repo.insert_recoveries(session, webhook.id, unique, utcnow())
    if count:
        wake_workers_on_commit(session)
    return {"count": count}


def redeliver(
    session: Session, customer_id: uuid.UUID, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> dict[str, Any]:
    """A fresh delivery (new X-Mega-Delivery id, full retry budget) of the same event."""
    webhook = _webhook_or_404(session, customer_id, webhook_id)
    found = repo.delivery_of(session, webhook.id, delivery_id, lock=True)
    if found is None:
        raise NotFoundError("No such delivery.")
    original, event_type, lead_id = found
    if not webhook.is_active:
        raise ConflictError("This webhook is inactive; activate it before redelivering.")
    now = utcnow()
    [new_id] = outbox.insert_deliveries(session, original.event_id, [webhook.id], now)
    wake_workers_on_commit(session)
    created = repo.delivery_of(session, webhook.id, new_id)
    assert created is not None
    return {"delivery": delivery_body(*created)}
