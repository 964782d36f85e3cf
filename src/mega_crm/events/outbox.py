"""The transactional outbox: lead events written in the lead's own transaction.

The event and its deliveries commit or roll back with the lead, so a crash can never leave a
lead without its deliveries nor deliveries without their lead. Workers are woken when the
transaction commits: in this process directly, in others through PostgreSQL NOTIFY.

This module writes the outbox's rows (webhook_events, webhook_deliveries) and reads the
subscriptions (webhooks) by table name, with the columns it needs; the tables are defined in
webhooks/models.py, which it must not import (the lead service calls it: leads -> events <-
webhooks). The webhook payload's `lead` follows the field table of mega_crm/lead_shape.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Boolean,
    Integer,
    String,
    Uuid,
    bindparam,
    column,
    event,
    insert,
    select,
    table,
    text,
)
from sqlalchemy.orm import Session

from mega_crm.db import Memo, Query, RawConnection, UTCDateTime, as_json, as_uuid, memoized, memos_of, utcnow
from mega_crm.lead_shape import WEBHOOK_FIELDS
from mega_crm.timestamps import PG_CLOCK_SQL, STAMP_CHAR, stamped_json_sql

LEAD_CREATED = "lead.created"
LEAD_UPDATED = "lead.updated"  # a single createLead merged into a lead and changed it
NOTIFY_CHANNEL = "mega_crm_webhook_deliveries"  # PostgreSQL LISTEN/NOTIFY: new deliveries are due
PENDING = "pending"  # a new delivery's status (webhooks.models.PENDING)

_WEBHOOKS = table(
    "webhooks",
    column("id", Uuid),
    column("customer_id", Uuid),
    column("event_types", JSON),
    column("is_active", Boolean),
    column("deleted_at", UTCDateTime),
)
_EVENTS = table(
    "webhook_events",
    column("id", Uuid),
    column("customer_id", Uuid),
    column("event_type", String),
    column("lead_id", Uuid),
    column("lead", JSON),
    column("details", JSON),
    column("created_at", UTCDateTime),
)
_DELIVERIES = table(
    "webhook_deliveries",
    column("id", Uuid),
    column("webhook_id", Uuid),
    column("event_id", Uuid),
    column("status", String),
    column("attempts", Integer),
    column("next_attempt_at", UTCDateTime),
    column("created_at", UTCDateTime),
    column("updated_at", UTCDateTime),
)

# --- waking the workers ---------------------------------------------------------------------

_wake_listeners: list[Callable[[], None]] = []
_listeners_lock = threading.Lock()


def add_wake_listener(listener: Callable[[], None]) -> None:
    """Call `listener` (no arguments, quick) whenever a transaction with new deliveries commits."""
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


_NOTIFY = Query(text("SELECT pg_notify(:channel, '')"))


def notify_workers(session: Session) -> None:
    """PostgreSQL: wake LISTENing workers when this transaction commits (a no-op on rollback)."""
    raw = RawConnection.of(session)
    if not raw.is_sqlite:
        raw.run(_NOTIFY, {"channel": NOTIFY_CHANNEL})


def wake_workers_on_commit(session: Session) -> None:
    """New deliveries in this transaction: have workers look as soon as it commits."""
    notify_workers(session)
    if not session.info.get("mega_webhooks_wake"):
        session.info["mega_webhooks_wake"] = True
        event.listen(session, "after_commit", _wake_local_workers, once=True)


# --- the outbox's rows ------------------------------------------------------------------------

# Runs in every createLead: raw (see mega_crm.db.Query).
_SUBSCRIBED = Query(
    select(_WEBHOOKS.c.id, _WEBHOOKS.c.event_types).where(
        _WEBHOOKS.c.customer_id == bindparam("customer_id"),
        _WEBHOOKS.c.is_active.is_(True),
        _WEBHOOKS.c.deleted_at.is_(None),
    )
)
# Each customer's live webhooks as (id, event_types) rows, per transaction (a group commit's
# creates share them); a write to `webhooks` in the transaction drops them (mega_crm.db.memos).
_SUBSCRIPTIONS = Memo[uuid.UUID, list[tuple[Any, ...]]]("webhook_subscriptions", tables={"webhooks"})


def subscribed_webhook_ids(session: Session, customer_id: uuid.UUID, event_type: str) -> list[uuid.UUID]:
    """The customer's active webhooks subscribed to `event_type`, read once per transaction and
    customer."""
    rows = memoized(session, _SUBSCRIPTIONS, customer_id, lambda: _subscriptions(session, customer_id))
    # event_types is a short JSON list; filtering here keeps the query portable.
    return [as_uuid(webhook_id) for webhook_id, types in rows if event_type in (as_json(types) or [])]


def _subscriptions(session: Session, customer_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return RawConnection.of(session).all(_SUBSCRIBED, {"customer_id": customer_id})


def remember_subscriptions(session: Session, customer_id: uuid.UUID, rows: list[tuple[Any, ...]]) -> None:
    """Keep the customer's live webhooks, read by another statement of this transaction (rows:
    id, event_types), in its memo, where subscribed_webhook_ids finds them."""
    memos = memos_of(session)
    if memos is not None:
        memos.entries(_SUBSCRIPTIONS)[customer_id] = rows


# Raw (see mega_crm.db.Query), so that in a pipelined transaction they go out with the commit.
_EVENT_COLUMNS = "id, customer_id, event_type, lead_id, lead, details, created_at"
_EVENT_VALUES = ":id, :customer_id, :event_type, :lead_id, {lead}, {details}, :created_at"
_INSERT_EVENT = {
    dialect: Query(
        text(
            f"INSERT INTO webhook_events ({_EVENT_COLUMNS}) VALUES ("
            + _EVENT_VALUES.format(lead=json_param.format(":lead"), details=json_param.format(":details"))
            + ")"
        )
    )
    for dialect, json_param in (("sqlite", "{}"), ("postgresql", "CAST({} AS json)"))
}
# A payload with times the write fixes as it commits (timestamps.STAMP: PostgreSQL's createLead),
# stamped with the customer's clock, which the write has taken.
_CLOCK_JSON = stamped_json_sql(":lead", PG_CLOCK_SQL.format(customer=":customer_id"))
_INSERT_STAMPED_EVENT = Query(text(
    f"INSERT INTO webhook_events ({_EVENT_COLUMNS}) VALUES "
    f"({_EVENT_VALUES.format(lead=f'CAST({_CLOCK_JSON} AS json)', details='CAST(:details AS json)')})"
))  # fmt: skip
_INSERT_DELIVERY = Query(insert(_DELIVERIES))


def insert_event(
    session: Session,
    customer_id: uuid.UUID,
    event_type: str,
    lead_id: uuid.UUID | None,
    lead: dict[str, Any],
    details: dict[str, Any] | None,
    now: datetime,
) -> uuid.UUID:
    """One webhook_events row (`lead`: the payload's lead, where a timestamps.STAMP is the
    customer's clock, which the transaction took; `details`: the payload's other members).
    -> its id. Its deliveries: insert_deliveries, to webhooks the caller holds locked
    (or read in a write transaction that runs alone, as on SQLite); a lead event's go to those
    still live (_insert_lead_event)."""
    event_id = uuid.uuid4()
    raw = RawConnection.of(session)
    lead_json = orjson.dumps(lead).decode()  # JSON text, as SQLAlchemy's JSON type writes it
    stamped = STAMP_CHAR in lead_json  # only ever written by timestamps.STAMP (PostgreSQL)
    raw.run(
        _INSERT_STAMPED_EVENT if stamped else _INSERT_EVENT[raw.dialect.name],
        {
            "id": event_id,
            "customer_id": customer_id,
            "event_type": event_type,
            "lead_id": lead_id,
            "lead": lead_json,
            "details": orjson.dumps(details).decode(),  # None as JSON null
            "created_at": now,
        },
    )
    return event_id


# PostgreSQL: a lead event's deliveries go only to those of the webhooks still live, and still
# subscribed to its type, when this statement runs, each locked FOR KEY SHARE (as the deliveries'
# foreign key would lock them), in id order (as the worker locks them). The ids were read in a
# snapshot taken before the create waited for the customer's lock (leads.repository's
# begin_lead_write_later), during which a webhook DELETE or PATCH may have committed: those lock
# the webhook FOR UPDATE (and a deactivation cancels its pending deliveries). Either they
# committed first and the row is skipped (READ COMMITTED re-checks a locked row's WHERE on its
# latest version), or they wait for this transaction (and cancel what it queued). A plain INSERT's
# delivery to a webhook deleted meanwhile stayed pending for good.
# The worker's own health updates (FOR NO KEY UPDATE) do not wait for it, nor it for them; a
# delivery that slips past the worker disabling the webhook meanwhile is cancelled when the
# webhook is activated again (webhooks.service.update_webhook).
_INSERT_LIVE_DELIVERIES = Query(text(
    "INSERT INTO webhook_deliveries (id, webhook_id, event_id, status, attempts, next_attempt_at, "
    "created_at, updated_at) "
    "SELECT d.id, w.id, CAST(:event_id AS uuid), :status, 0, CAST(:now AS timestamptz), "
    "CAST(:now AS timestamptz), CAST(:now AS timestamptz) "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:webhook_ids AS uuid[])) AS d(id, webhook_id) "
    "JOIN webhooks w ON w.id = d.webhook_id "
    "WHERE w.is_active IS true AND w.deleted_at IS NULL "
    "AND CAST(w.event_types AS jsonb) @> jsonb_build_array(CAST(:event_type AS text)) "
    "ORDER BY w.id FOR KEY SHARE OF w"
))  # fmt: skip


def _insert_lead_event(
    session: Session,
    customer_id: uuid.UUID,
    event_type: str,
    lead_id: uuid.UUID,
    lead: dict[str, Any],
    webhook_ids: list[uuid.UUID],
    details: dict[str, Any] | None = None,
) -> None:
    """A lead event and its deliveries, to those of `webhook_ids` (read unlocked) still live on
    PostgreSQL (_INSERT_LIVE_DELIVERIES); on SQLite, whose write transactions run one at a time,
    the ids read in this one are current. Workers are woken when it commits."""
    now = utcnow()
    event_id = insert_event(session, customer_id, event_type, lead_id, lead, details, now)
    raw = RawConnection.of(session)
    if raw.is_sqlite:
        insert_deliveries(session, event_id, webhook_ids, now)
    else:
        raw.run(
            _INSERT_LIVE_DELIVERIES,
            {
                "ids": [uuid.uuid4() for _ in webhook_ids],
                "webhook_ids": webhook_ids,
                "event_id": event_id,
                "event_type": event_type,
                "status": PENDING,
                "now": now,
            },
        )
    wake_workers_on_commit(session)


def insert_deliveries(
    session: Session, event_id: uuid.UUID, webhook_ids: list[uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    """A pending delivery of the event, due now, per webhook. -> their ids."""
    rows = [pending_delivery(webhook_id, event_id, now) for webhook_id in webhook_ids]
    RawConnection.of(session).run_many(_INSERT_DELIVERY, rows)
    return [row["id"] for row in rows]


def pending_delivery(webhook_id: uuid.UUID, event_id: uuid.UUID, now: datetime) -> dict[str, Any]:
    """The row of a new delivery of `event_id` to `webhook_id`: pending, due `now`, a full retry
    budget (webhook_deliveries' columns)."""
    return {
        "id": uuid.uuid4(),
        "webhook_id": webhook_id,
        "event_id": event_id,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


# --- lead events ----------------------------------------------------------------------------


def webhook_lead(lead: dict[str, Any]) -> dict[str, Any]:
    """The `lead` object of the webhook payloads (WebhookLead), from the contract's Lead: the
    fields lead_shape.LEAD_FIELDS marks `webhook`, in WEBHOOK_ORDER."""
    custom_fields = dict(lead.get("custom_fields") or {})
    body: dict[str, Any] = {}
    for field in WEBHOOK_FIELDS:
        if field.kind == "custom_fields":
            body[field.name] = custom_fields
        elif field.kind == "lead_line":
            body[field.name] = custom_fields.get("lead_line")
        elif field.kind == "object":
            value = lead.get(field.name)
            body[field.name] = {part: value[part] for part in field.webhook_parts} if value else None
        else:
            body[field.name] = lead[field.name] if field.required else lead.get(field.name)
    return body


def record_lead_created(session: Session, customer_id: uuid.UUID, lead: dict[str, Any]) -> None:
    """Called by createLead in the transaction that inserted a genuinely new lead: one event and
    one pending delivery per active webhook of the customer subscribed to lead.created."""
    webhook_ids = subscribed_webhook_ids(session, customer_id, LEAD_CREATED)
    if not webhook_ids:
        return
    _insert_lead_event(
        session, customer_id, LEAD_CREATED, uuid.UUID(lead["id"]), webhook_lead(lead), webhook_ids
    )


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
    webhook_ids = subscribed_webhook_ids(session, customer_id, LEAD_UPDATED)
    if not webhook_ids:
        return
    details = {"changed_fields": changed, "previous": {name: previous[name] for name in changed}}
    _insert_lead_event(session, customer_id, LEAD_UPDATED, uuid.UUID(lead["id"]), after, webhook_ids, details)
