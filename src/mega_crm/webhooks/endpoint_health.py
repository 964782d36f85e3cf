"""A webhook endpoint's health, kept as its attempts are recorded (webhooks/queue.py): failures
in a row, the last success, and disabling an endpoint that is gone or keeps failing."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import Integer, Table, bindparam, update
from sqlalchemy.orm import Session

from mega_crm.db import utcnow
from mega_crm.observability.metrics import WEBHOOKS_DISABLED
from mega_crm.webhooks.models import DISABLED_FAILING, DISABLED_GONE, SUCCEEDED, Webhook
from mega_crm.webhooks.repository import cancel_pending_deliveries

if TYPE_CHECKING:
    from mega_crm.webhooks.queue import AttemptRecord

log = logging.getLogger("mega_crm.webhooks")


@dataclass(frozen=True)
class Disabled:
    """A webhook the server disabled while recording attempts."""

    webhook_id: uuid.UUID
    reason: str  # models.DISABLED_GONE | DISABLED_FAILING
    consecutive_failures: int


def log_disabled(disabled: list[Disabled]) -> None:
    """Once their transaction has committed: a warning and the disabled-webhooks counter each."""
    for d in disabled:
        WEBHOOKS_DISABLED.labels(d.reason).inc()
        why = "its endpoint answered 410 Gone" if d.reason == DISABLED_GONE else "deliveries kept failing"
        log.warning(
            "webhook %s disabled (%s): %s; %d failed delivery(ies) in a row; pending ones cancelled",
            d.webhook_id,
            d.reason,
            why,
            d.consecutive_failures,
        )


def track_health(
    session: Session, records: list[AttemptRecord], counted_failures: list[AttemptRecord], disable_after: int
) -> list[Disabled]:
    """The endpoints' health after `records` (in the caller's transaction): per webhook, its
    `consecutive_failures` counts the `counted_failures` since its last success (any 2xx resets
    it, and sets `last_success_at`). A 410 Gone disables the webhook at once (reason "gone");
    `disable_after` (> 0) failures in a row disable it ("failing"); either way its pending
    deliveries are cancelled. -> the webhooks disabled."""
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
