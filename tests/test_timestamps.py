"""One text form of a time in every response (issue 10, item 7): `YYYY-MM-DDTHH:MM:SS.ffffffZ`,
microseconds always, whatever the value and wherever it is printed."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson

from mega_crm.leads.documents import lead_body
from mega_crm.timestamps import format_time, format_time_or_none
from mega_crm.validation import parse_rfc3339
from mega_crm.webhooks.delivery import build_body
from mega_crm.webhooks.models import PENDING, Webhook, WebhookDelivery
from mega_crm.webhooks.service import EXAMPLE_LEAD, delivery_body, webhook_body

FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
WHOLE_SECOND = datetime(2026, 1, 1, tzinfo=UTC)
SOME_MICROS = datetime(2026, 1, 1, 12, 30, 5, 120, tzinfo=UTC)


def test_the_form_keeps_zero_microseconds_and_converts_to_utc() -> None:
    assert format_time(WHOLE_SECOND) == "2026-01-01T00:00:00.000000Z"
    assert format_time(SOME_MICROS) == "2026-01-01T12:30:05.000120Z"
    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 1, 1, 1, 0, tzinfo=paris)) == "2026-01-01T00:00:00.000000Z"
    assert format_time_or_none(None) is None


def test_the_form_is_rfc_3339_and_reads_back_exactly() -> None:
    for value in (WHOLE_SECOND, SOME_MICROS, datetime(1, 1, 1, tzinfo=UTC) + timedelta(days=800_000)):
        text = format_time(value)
        assert FORM.fullmatch(text), text
        assert parse_rfc3339(text) == value


def test_every_response_prints_times_in_the_form() -> None:
    webhook = Webhook(
        id=uuid.uuid4(), url="https://example.com/hook", event_types=["lead.created"], is_active=True,
        timeout_seconds=10, retry_attempts=5, description=None, created_at=WHOLE_SECOND,
        updated_at=SOME_MICROS, disabled_reason=None, disabled_at=WHOLE_SECOND,
        consecutive_failures=0, last_success_at=SOME_MICROS, signature_scheme="mega",
    )  # fmt: skip
    body = webhook_body(webhook)
    for name in ("created_at", "updated_at", "disabled_at", "last_success_at"):
        assert FORM.fullmatch(body[name]), (name, body[name])
    delivery = WebhookDelivery(
        id=uuid.uuid4(), webhook_id=webhook.id, event_id=uuid.uuid4(), status=PENDING, attempts=1,
        next_attempt_at=WHOLE_SECOND, last_attempt_at=SOME_MICROS, created_at=WHOLE_SECOND,
        completed_at=SOME_MICROS,
    )  # fmt: skip
    logged = delivery_body(delivery, "lead.created", None)
    for name in ("next_attempt_at", "last_attempt_at", "created_at", "completed_at"):
        assert FORM.fullmatch(logged[name]), (name, logged[name])
    payload = orjson.loads(build_body("lead.created", EXAMPLE_LEAD, WHOLE_SECOND))
    assert payload["delivered_at"] == "2026-01-01T00:00:00.000000Z"
    assert FORM.fullmatch(EXAMPLE_LEAD["created_at"])
    assert FORM.fullmatch(EXAMPLE_LEAD["updated_at"])
    lead = {
        "id": uuid.uuid4(), "customer_id": uuid.uuid4(), "contact_name": None, "contact_phone": None,
        "contact_email": None, "source_platform": "direct", "source_type": "manual", "status": "active",
        "score": None, "qualified": None, "last_interaction_at": SOME_MICROS, "interaction_count": 0,
        "created_at": WHOLE_SECOND, "updated_at": WHOLE_SECOND,
    }  # fmt: skip
    document = lead_body(lead, None, None, include_custom_fields=False)
    for name in ("last_interaction_at", "created_at", "updated_at"):
        assert FORM.fullmatch(document[name]), (name, document[name])
