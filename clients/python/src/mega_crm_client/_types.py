"""Response shapes, as the API's JSON (TypedDicts) and small result containers (dataclasses).

Field names and meanings are the contract's OpenAPI components (Lead, LeadListResponse,
BulkImportResponse, Webhook, WebhookDelivery); timestamps stay ISO-8601 strings as sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypedDict

CustomFieldValue = str | int | float | bool | None
OnDuplicate = Literal["update", "skip"]
RowStatus = Literal["created", "updated", "skipped", "failed"]
SignatureScheme = Literal["mega", "standard-webhooks"]
DisabledReason = Literal["gone", "failing"]


class Stage(TypedDict):
    id: str
    slug: str
    name: str
    color: str | None


class Owner(TypedDict):
    id: str
    name: str
    role_name: str | None


class Lead(TypedDict):
    """One lead (contract component `Lead`)."""

    id: str
    customer_id: str
    contact_name: str | None
    contact_phone: str | None
    contact_email: str | None
    source_platform: str
    source_type: str
    status: str
    score: int | None
    qualified: bool | None
    current_stage: Stage | None
    owner: Owner | None
    last_interaction_at: str | None
    interaction_count: int
    created_at: str
    updated_at: str
    custom_fields: NotRequired[dict[str, CustomFieldValue]]


@dataclass(frozen=True)
class LeadPage:
    """One page of listLeads: `leads`, `total` (every match, regardless of paging), `limit`,
    `offset`, and `next_cursor` (None on the last page)."""

    leads: list[Lead]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class BulkRowResult(TypedDict):
    """The outcome of one bulk row; `row_ref` is echoed from the request."""

    row_ref: str | None
    status: RowStatus
    lead_id: str | None
    matched_by: Literal["email", "phone"] | None
    errors: list[str] | None
    ignored_custom_fields: NotRequired[list[str]]


class BulkSummary(TypedDict):
    total: int
    created: int
    updated: int
    skipped: int
    failed: int


@dataclass
class BulkImportResult:
    """The combined outcome of every chunk of a bulk import, rows in input order."""

    dry_run: bool
    summary: BulkSummary = field(
        default_factory=lambda: BulkSummary(total=0, created=0, updated=0, skipped=0, failed=0)
    )
    results: list[BulkRowResult] = field(default_factory=list)
    unknown_custom_fields: list[str] = field(default_factory=list)

    def add_chunk(self, body: dict[str, object]) -> None:
        """Fold one bulkImportLeads response into the totals."""
        summary = body["summary"]
        assert isinstance(summary, dict)
        for name in ("total", "created", "updated", "skipped", "failed"):
            self.summary[name] += int(summary[name])
        results = body["results"]
        assert isinstance(results, list)
        self.results.extend(results)
        unknown = body.get("unknown_custom_fields") or []
        assert isinstance(unknown, list)
        for slug in unknown:
            if slug not in self.unknown_custom_fields:
                self.unknown_custom_fields.append(slug)


class Webhook(TypedDict):
    """A webhook registration (contract component `Webhook`, plus this server's extensions).

    The extensions (NotRequired: this server always sends them, a contract-only server does not):
    `disabled_reason` why the server disabled it (`"gone"`: the endpoint answered 410;
    `"failing"`: MEGA_WEBHOOK_DISABLE_AFTER_FAILURES deliveries in a row failed; None when active
    or deactivated through the API), `disabled_at` when it last became inactive,
    `consecutive_failures` deliveries ended failed since the last success or re-enabling,
    `last_success_at` the last 2xx answer, `signature_scheme` how attempts are signed."""

    id: str
    url: str
    event_types: list[str]
    is_active: bool
    timeout_seconds: int
    retry_attempts: int
    description: str | None
    created_at: str
    updated_at: str
    disabled_reason: NotRequired[DisabledReason | None]
    disabled_at: NotRequired[str | None]
    consecutive_failures: NotRequired[int]
    last_success_at: NotRequired[str | None]
    signature_scheme: NotRequired[SignatureScheme]


@dataclass(frozen=True)
class WebhookWithSecret:
    """A webhook and its signing secret (`mega_whsec_…`), which the API shows once: on creation
    and on rotation. `secret` is None after an update that did not rotate."""

    webhook: Webhook
    secret: str | None


class WebhookDelivery(TypedDict):
    """One delivery of an event to a webhook; `id` is every attempt's X-Mega-Delivery header.
    `event`: "lead.created", or this server's extensions "lead.updated" and "webhook.test"."""

    id: str
    webhook_id: str
    event: str
    event_id: str
    lead_id: str | None
    status: Literal["pending", "succeeded", "failed", "cancelled"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: int | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    created_at: str
    completed_at: str | None


@dataclass(frozen=True)
class DeliveryPage:
    """A page of a webhook's delivery log, newest first; `next_cursor` None on the last page."""

    deliveries: list[WebhookDelivery]
    next_cursor: str | None
