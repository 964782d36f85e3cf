"""Request and response shapes of the webhook operations, named as in the contract's OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from pydantic.json_schema import SkipJsonSchema

from mega_crm.schema_types import FIELDS_OPTIONAL_IN_SCHEMA, CustomFieldMap, component
from mega_crm.validation import Rfc3339, Text
from mega_crm.webhooks.urls import MAX_URL_LENGTH

# What a webhook subscribes to; "lead.updated" is an extension (the contract has lead.created).
EventType = Literal["lead.created", "lead.updated"]
DeliveryStatus = Literal["pending", "succeeded", "failed", "cancelled"]
DeliveryEvent = Literal["lead.created", "lead.updated", "webhook.test"]

# Characters here; webhooks.urls holds the URL to MAX_URL_BYTES of UTF-8 (what the index counts).
Url = Annotated[
    Text,
    Field(
        max_length=MAX_URL_LENGTH,
        json_schema_extra={"format": "uri"},
        description="Public HTTPS URL. Validated against SSRF before it is stored.",
    ),
]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=10)]
TimeoutSeconds = Annotated[StrictInt, Field(ge=1, le=60)]
RetryAttempts = Annotated[StrictInt, Field(ge=0, le=10)]
Description = Annotated[Text | None, Field(max_length=500)]
SignatureScheme = Annotated[
    Literal["mega", "standard-webhooks"],
    Field(
        description="Extension. `mega`: X-Mega-Signature only. `standard-webhooks`: also the Standard "
        "Webhooks headers `webhook-id`, `webhook-timestamp`, `webhook-signature` (see the README for "
        "the key)."
    ),
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class WebhookCreateRequest(_Input):
    url: Url
    event_types: EventTypes = ["lead.created"]
    timeout_seconds: TimeoutSeconds = 10
    retry_attempts: RetryAttempts = 5
    description: Description = None
    is_active: StrictBool = True
    signature_scheme: SignatureScheme = "mega"


class WebhookUpdateRequest(_Input):
    """Only the fields sent change; `description: null` clears the description."""

    url: Url | SkipJsonSchema[None] = None
    event_types: EventTypes | SkipJsonSchema[None] = None
    timeout_seconds: TimeoutSeconds | SkipJsonSchema[None] = None
    retry_attempts: RetryAttempts | SkipJsonSchema[None] = None
    description: Description = None
    is_active: StrictBool | SkipJsonSchema[None] = None
    signature_scheme: SignatureScheme | SkipJsonSchema[None] = None
    rotate_secret: Annotated[
        StrictBool | SkipJsonSchema[None],
        Field(description="When true, a fresh signing secret is minted and returned once."),
    ] = None
    secret_overlap_seconds: Annotated[
        StrictInt | SkipJsonSchema[None],
        Field(
            ge=0,
            le=86_400,
            description="Extension, with `rotate_secret: true`: for this many seconds every attempt "
            "is signed with the new and the previous secret (`X-Mega-Signature: "
            "sha256=<new>,sha256=<previous>`), so receivers holding either verify it. "
            "0 (the default): the new secret alone at once.",
        ),
    ] = None

    # Absent means "unchanged"; null is not a value of these (the published schema says so), and
    # reading it as "unchanged" would hide a client's mistake. Defaults are not validated.
    @field_validator(
        "url",
        "event_types",
        "timeout_seconds",
        "retry_attempts",
        "is_active",
        "signature_scheme",
        "rotate_secret",
        "secret_overlap_seconds",
        mode="before",
    )
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null (leave the field out to keep its value)")
        return value


class Webhook(BaseModel):
    id: str
    url: str
    event_types: list[str]
    is_active: bool
    timeout_seconds: int
    retry_attempts: int
    description: str | None = None  # always sent; optional in the contract's schema
    created_at: datetime
    updated_at: datetime
    # Extensions (not in the contract; always sent): the endpoint's health.
    disabled_reason: Literal["gone", "failing"] | None = Field(
        default=None,
        description="Why the server disabled this webhook: `gone` (the endpoint answered 410), "
        "`failing` (MEGA_WEBHOOK_DISABLE_AFTER_FAILURES deliveries in a row failed); null when "
        'active or deactivated through the API. `PATCH {"is_active": true}` clears it.',
    )
    disabled_at: datetime | None = Field(default=None, description="When it last became inactive.")
    consecutive_failures: int = Field(
        default=0, description="Deliveries that ended failed since the last success (or re-enabling)."
    )
    last_success_at: datetime | None = Field(default=None, description="When an attempt last got a 2xx.")
    signature_scheme: Literal["mega", "standard-webhooks"] = Field(
        default="mega", description="How attempts are signed (an extension; see the README)."
    )


class WebhookListResponse(BaseModel):
    webhooks: list[Webhook]


class WebhookCreateResponse(BaseModel):
    webhook: Webhook
    secret: str = Field(description="HMAC signing secret (`mega_whsec_...`). Shown only on creation.")


class WebhookUpdateResponse(BaseModel):
    webhook: Webhook
    secret: str | SkipJsonSchema[None] = Field(default=None, description="Present only when rotated.")


class WebhookResponse(BaseModel):
    webhook: Webhook


class WebhookDeleteResponse(BaseModel):
    deleted: bool


class WebhookDelivery(BaseModel):
    id: str = Field(description="The X-Mega-Delivery header of every attempt of this delivery.")
    webhook_id: str
    event: DeliveryEvent
    event_id: str
    lead_id: str | None
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = Field(description="HTTP status of the last attempt, if it got one.")
    last_error: str | None = Field(description="Why the last attempt failed, when it did.")
    last_latency_ms: int | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending only).")
    created_at: datetime
    completed_at: datetime | None


class WebhookDeliveryListResponse(BaseModel):
    deliveries: list[WebhookDelivery]
    next_cursor: str | None = Field(description="Pass back as `cursor` for the next (older) page.")


class WebhookDeliveryResponse(BaseModel):
    delivery: WebhookDelivery


class WebhookRecoverRequest(_Input):
    since: Rfc3339 = Field(description="Start of the window (inclusive), an RFC 3339 date-time.")
    until: Rfc3339 | SkipJsonSchema[None] = Field(
        default=None, description="End of the window (exclusive); default now."
    )

    @field_validator("until", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null (leave it out for now)")
        return value


class WebhookRecoverResponse(BaseModel):
    count: int = Field(description="Fresh deliveries queued.")


class WebhookLeadStage(BaseModel):
    model_config = FIELDS_OPTIONAL_IN_SCHEMA

    slug: str
    name: str


class WebhookLead(BaseModel):
    """The lead as it was created."""

    id: str
    contact_name: str | None = None
    contact_phone: str | None = None
    contact_email: str | None = None
    source_platform: str
    source_type: str
    lead_line: str | None = None
    current_stage: WebhookLeadStage | None = None
    custom_fields: CustomFieldMap
    created_at: datetime
    updated_at: datetime


# Built by events/outbox.py; tests/webhooks/test_delivery.py checks a delivered body against it.
@component
class LeadCreatedWebhookPayload(BaseModel):
    """Body POSTed to your webhook URL for a `lead.created` event."""

    event: Literal["lead.created"]
    delivered_at: datetime
    lead: WebhookLead


ChangedField = Literal[
    "contact_name", "contact_phone", "contact_email", "lead_line", "current_stage", "custom_fields"
]


class WebhookLeadPrevious(BaseModel):
    """The changed fields' values before the change (only those named in `changed_fields`)."""

    contact_name: str | None = None
    contact_phone: str | None = None
    contact_email: str | None = None
    lead_line: str | None = None
    current_stage: WebhookLeadStage | None = None
    custom_fields: CustomFieldMap | None = None


# Built by events/outbox.py; tests/webhooks/test_lead_updated.py checks a delivered body against it.
@component
class LeadUpdatedWebhookPayload(BaseModel):
    """Body POSTed for a `lead.updated` event (an extension): a single createLead merged into an
    existing lead and changed at least one of these fields. Never for bulk imports, idempotent
    replays, or merges that changed nothing."""

    event: Literal["lead.updated"]
    delivered_at: datetime
    lead: WebhookLead = Field(description="The lead after the change.")
    changed_fields: list[ChangedField] = Field(min_length=1)
    previous: WebhookLeadPrevious


@component
class WebhookTestPayload(BaseModel):
    """Body POSTed by `POST /api/agents/crm/lead-webhooks/{id}/test` (an extension): a fixed
    example lead (always the same id, no real lead), signed and delivered like any event."""

    event: Literal["webhook.test"]
    delivered_at: datetime
    lead: WebhookLead
