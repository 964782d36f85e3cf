"""Request and response shapes of the lead operations, named as in the contract's OpenAPI."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema
from typing_extensions import TypeAliasType

from mega_crm.validation import Text, rfc3339_or_none

# Named aliases: the published schema refers to them as components, as the contract's does.
SourcePlatform = TypeAliasType("SourcePlatform", Literal[
    "google_ads", "meta_ads", "google_organic", "direct", "referral", "hubspot",
    "zoho", "ghl", "shopify", "zenmaid", "lead_docket", "salesforce",
])  # fmt: skip
SourceType = TypeAliasType(
    "SourceType", Literal["form", "phone_call", "email", "chat", "sms", "manual", "import"]
)
LeadStatus = Literal["active", "won", "lost", "nurture", "archived"]
LeadLine = Literal["buyer", "seller"]
SortBy = Literal["created_at", "updated_at", "last_interaction_at"]
SortDir = Literal["asc", "desc"]


# Values every store and the JSON encoder can hold: text any store can hold (validation.Text), JSON
# has no NaN/Infinity, and the response encoder (like most JSON readers) stops at 64-bit integers.
# Validators only, so the published schema stays the contract's.
def _not_an_int(value: object) -> object:
    if isinstance(value, int):  # an integer too large for the int branch: refuse, don't round
        raise ValueError("must fit in a signed 64-bit integer")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _int64(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise ValueError("must fit in a signed 64-bit integer")
    return value


CustomFieldValue = (
    Text
    | Annotated[StrictInt, AfterValidator(_int64)]
    | Annotated[StrictFloat, BeforeValidator(_not_an_int), AfterValidator(_finite)]
    | StrictBool
    | None
)
CustomFieldMap = TypeAliasType(
    "CustomFieldMap",
    Annotated[
        dict[Text, CustomFieldValue],
        WithJsonSchema(
            {
                "type": "object",
                "description": "Map of custom-field slug to a scalar value "
                "(string | number | boolean | null).",
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            }
        ),
    ],
)

# Optional in the request, `type: string` in the schema; an explicit null counts as absent.
OptStr = Annotated[Text | SkipJsonSchema[None], Field()]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LeadCreateRequest(_Input):
    """At least one of contact_name, contact_phone, contact_email is required."""

    contact_name: OptStr = None
    contact_phone: OptStr = None
    contact_email: Annotated[Text | SkipJsonSchema[None], Field(json_schema_extra={"format": "email"})] = None
    source_platform: SourcePlatform | SkipJsonSchema[None] = None
    source_type: SourceType | SkipJsonSchema[None] = None
    stage_slug: OptStr = None
    custom_fields: CustomFieldMap | SkipJsonSchema[None] = None


class BulkLeadRow(LeadCreateRequest):
    """At least one of contact_name, contact_phone, contact_email is required."""

    row_ref: Annotated[
        Text | SkipJsonSchema[None],
        Field(description="Your correlation id, echoed back in the per-row result."),
    ] = None
    owner_id: Annotated[
        Text | SkipJsonSchema[None],
        Field(
            json_schema_extra={"format": "uuid"}, description="Must be one of the customer's team members."
        ),
    ] = None
    lead_line: LeadLine | SkipJsonSchema[None] = None


# Absent, or an RFC 3339 date-time (numbers, dates alone and missing offsets are refused).
DateTimeParam = Annotated[datetime | None, BeforeValidator(rfc3339_or_none)]


class ListLeadsQuery(BaseModel):
    """listLeads' query string."""

    model_config = ConfigDict(frozen=True)

    status: str | None = Field(
        None, description="Filter by lead status (e.g. active, won, lost, nurture, archived)."
    )
    stage_id: uuid.UUID | None = Field(
        None, alias="stageId", description="Filter by current pipeline stage id."
    )
    search: str | None = Field(
        None, description="Free-text match on name / email / phone (phone-format-agnostic)."
    )
    created_since: DateTimeParam = Field(
        None, description="Only leads created at/after this ISO-8601 timestamp."
    )
    updated_since: DateTimeParam = Field(
        None, description="Only leads updated at/after this ISO-8601 timestamp."
    )
    sort_by: SortBy = "updated_at"
    sort_dir: SortDir = "asc"
    lead_line: LeadLine | None = Field(None, description="Filter by the reserved `lead_line` custom field.")
    include_custom_fields: bool = Field(
        False, description="When true, include a `custom_fields` object on each lead."
    )
    cursor: str | None = Field(
        None,
        description="Opaque keyset cursor from a previous response's `next_cursor`. "
        "Only valid with the same `sort_by`/`sort_dir`.",
    )
    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(
        0, ge=0, description="Offset paging (back-compat). Prefer `cursor` for incremental polling."
    )


class BulkImportEnvelope(BaseModel):
    """What bulkImportLeads parses up front; rows are validated one by one (a bad row fails alone)."""

    model_config = ConfigDict(extra="forbid")
    leads: Annotated[list[object], Field(min_length=1, max_length=500)]
    on_duplicate: Literal["update", "skip"] = "update"
    dry_run: StrictBool = False  # "yes" or 1 is a 400, not a dry run


class BulkImportRequest(BaseModel):
    leads: Annotated[list[BulkLeadRow], Field(min_length=1, max_length=500)]
    on_duplicate: Literal["update", "skip"] = "update"
    dry_run: StrictBool = False


def _fields_optional_in_schema(schema: dict[str, Any]) -> None:
    schema.pop("required", None)


# For response shapes whose fields the contract publishes as optional; the server always sends them.
FIELDS_OPTIONAL_IN_SCHEMA = ConfigDict(json_schema_extra=_fields_optional_in_schema)


class Stage(BaseModel):
    model_config = FIELDS_OPTIONAL_IN_SCHEMA

    id: str
    slug: str
    name: str
    color: str | None = None


class Owner(BaseModel):
    model_config = FIELDS_OPTIONAL_IN_SCHEMA

    id: str
    name: str
    role_name: str | None = None


class Lead(BaseModel):
    id: str
    customer_id: str
    contact_name: str | None = None
    contact_phone: str | None = None
    contact_email: str | None = None
    source_platform: str
    source_type: str
    status: str
    score: int | None = None
    qualified: bool | None = None
    current_stage: Stage | None = None
    owner: Owner | None = None
    last_interaction_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    interaction_count: int = 0
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    updated_at: str = Field(json_schema_extra={"format": "date-time"})
    custom_fields: CustomFieldMap | SkipJsonSchema[None] = None


class LeadListResponse(BaseModel):
    leads: list[Lead]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class LeadCreateResponse(BaseModel):
    lead: Lead


class BulkRowResult(BaseModel):
    row_ref: str | None
    status: Literal["created", "updated", "skipped", "failed"]
    lead_id: str | None
    matched_by: Literal["email", "phone"] | None
    errors: list[str] | None
    ignored_custom_fields: list[str] = []


class BulkSummary(BaseModel):
    total: int
    created: int
    updated: int
    skipped: int
    failed: int


class BulkImportResponse(BaseModel):
    dry_run: bool
    summary: BulkSummary
    results: list[BulkRowResult]
    unknown_custom_fields: list[str]
