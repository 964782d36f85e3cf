"""Request and response shapes of the lead operations, named as in the contract's OpenAPI."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    create_model,
)
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypeAliasType

from mega_crm.lead_shape import LEAD_MEMBERS, OWNER_FIELDS, STAGE_FIELDS, LeadField
from mega_crm.schema_types import FIELDS_OPTIONAL_IN_SCHEMA, CustomFieldMap
from mega_crm.validation import Text, rfc3339_or_none

__all__ = ["FIELDS_OPTIONAL_IN_SCHEMA", "CustomFieldMap"]  # here first; kept for importers

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


# The response's Lead, and its Stage and Owner, built from the field table (mega_crm/lead_shape.py):
# a field's kind says its type, `required` whether it has a default. Times are text (the form is
# mega_crm.timestamps'), published as date-time.
_TYPES: dict[str, type] = {"uuid": str, "text": str, "int": int, "bool": bool, "time": str}
_DATE_TIME: dict[str, Any] = {"json_schema_extra": {"format": "date-time"}}
_CustomFields: TypeAlias = CustomFieldMap | SkipJsonSchema[None]  # optional, never null in the schema


def _definition(field: LeadField, objects: dict[str, type[BaseModel]]) -> tuple[Any, Any]:
    """(annotation, default or FieldInfo) of one field, for pydantic.create_model."""
    if field.kind == "custom_fields":
        return _CustomFields, None
    if field.kind == "object":
        return objects[field.name] | None, None
    if field.kind == "count":
        return int, 0
    base = _TYPES[field.kind]
    extra = _DATE_TIME if field.kind == "time" else {}
    if field.required:
        return base, Field(**extra)
    return base | None, Field(None, **extra)


def _model(
    name: str,
    fields: tuple[LeadField, ...],
    objects: dict[str, type[BaseModel]],
    config: ConfigDict | None = None,
) -> Any:
    """The pydantic model `name` of `fields`; `objects`: the models of its object fields."""
    definitions: dict[str, Any] = {field.name: _definition(field, objects) for field in fields}
    return create_model(name, __module__=__name__, __config__=config, **definitions)


Stage = _model("Stage", STAGE_FIELDS, {}, FIELDS_OPTIONAL_IN_SCHEMA)
Owner = _model("Owner", OWNER_FIELDS, {}, FIELDS_OPTIONAL_IN_SCHEMA)
Lead = _model("Lead", LEAD_MEMBERS, {"current_stage": Stage, "owner": Owner})


class LeadListResponse(BaseModel):
    leads: list[Lead]  # type: ignore[valid-type]  # a model built from the field table
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class LeadCreateResponse(BaseModel):
    lead: Lead  # type: ignore[valid-type]  # a model built from the field table


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
