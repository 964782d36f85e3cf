"""The transactional outbox: lead.created events written in the lead's own transaction.

The event and its deliveries commit or roll back with the lead, so a crash can never leave a
lead without its deliveries nor deliveries without their lead. Workers are woken when the
transaction commits: in this process directly, in others through PostgreSQL NOTIFY.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from mega_crm.db import utcnow
from mega_crm.webhooks import repository as repo
from mega_crm.webhooks.models import LEAD_CREATED, LEAD_UPDATED

_wake_listeners: list[Callable[[], None]] = []
_listeners_lock = threading.Lock()


def add_wake_listener(listener: Callable[[], None]) -> None:
    with _listeners_lock:
        _wake_listeners.append(listener)


def remove_wake_listener(listener: Callable[[], None]) -> None:
    with _listeners_lock:
        if listener in _wake_listeners:
            _wake_listeners.remove(listener)


def _wake_local_workers(_session: Session) -> None:
    with _listeners_lock:
        listeners = list(_wake_listeners)
    for listener in listeners:
        listener()


def wake_workers_on_commit(session: Session) -> None:
    """New deliveries in this transaction: have workers look as soon as it commits."""
    repo.notify_workers(session)
    if not session.info.get("mega_webhooks_wake"):
        session.info["mega_webhooks_wake"] = True
        event.listen(session, "after_commit", _wake_local_workers, once=True)


def webhook_lead(lead: dict[str, Any]) -> dict[str, Any]:
    """The `lead` object of LeadCreatedWebhookPayload, from the contract's Lead."""
    stage = lead.get("current_stage")
    custom_fields = dict(lead.get("custom_fields") or {})
    return {
        "id": lead["id"],
        "contact_name": lead.get("contact_name"),
        "contact_phone": lead.get("contact_phone"),
        "contact_email": lead.get("contact_email"),
        "source_platform": lead["source_platform"],
        "source_type": lead["source_type"],
        "lead_line": custom_fields.get("lead_line"),
        "current_stage": {"slug": stage["slug"], "name": stage["name"]} if stage else None,
        "custom_fields": custom_fields,
        "created_at": lead["created_at"],
        "updated_at": lead["updated_at"],
    }


def record_lead_created(session: Session, customer_id: uuid.UUID, lead: dict[str, Any]) -> None:
    """Called by createLead in the transaction that inserted a genuinely new lead: one event and
    one pending delivery per active webhook of the customer subscribed to lead.created."""
    webhook_ids = repo.subscribed_webhook_ids(session, customer_id, LEAD_CREATED)
    if not webhook_ids:
        return
    repo.insert_event_with_deliveries(
        session,
        customer_id=customer_id,
        event_type=LEAD_CREATED,
        lead_id=uuid.UUID(lead["id"]),
        lead=webhook_lead(lead),
        webhook_ids=webhook_ids,
        now=utcnow(),
    )
    wake_workers_on_commit(session)


# The payload's fields a merge can change (id, source and created_at never change; updated_at
# always does, so it is not news by itself).
_MERGEABLE = (
    "contact_name",
    "contact_phone",
    "contact_email",
    "lead_line",
    "current_stage",
    "custom_fields",
)


def record_lead_updated(
    session: Session, customer_id: uuid.UUID, lead: dict[str, Any], before: dict[str, Any]
) -> None:
    """Called by createLead in the transaction that merged into an existing lead: when that
    changed at least one of the payload's fields, one lead.updated event (the lead after, the
    names of the fields that changed and their values before) and a pending delivery per active
    webhook subscribed to lead.updated. `lead`, `before`: the contract's Lead after and before."""
    after, previous = webhook_lead(lead), webhook_lead(before)
    changed = [name for name in _MERGEABLE if after[name] != previous[name]]
    if not changed:
        return
    webhook_ids = repo.subscribed_webhook_ids(session, customer_id, LEAD_UPDATED)
    if not webhook_ids:
        return
    repo.insert_event_with_deliveries(
        session,
        customer_id=customer_id,
        event_type=LEAD_UPDATED,
        lead_id=uuid.UUID(lead["id"]),
        lead=after,
        webhook_ids=webhook_ids,
        now=utcnow(),
        details={"changed_fields": changed, "previous": {name: previous[name] for name in changed}},
    )
    wake_workers_on_commit(session)
