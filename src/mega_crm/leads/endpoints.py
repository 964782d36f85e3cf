"""HTTP surface of the lead operations: listLeads, createLead, bulkImportLeads."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from mega_crm.auth.dependencies import CustomerIdHeader, Principal, require
from mega_crm.auth.scopes import LEADS_READ, LEADS_WRITE
from mega_crm.errors import error_responses
from mega_crm.http import json_response
from mega_crm.idempotency.service import StoredResponse, request_fingerprint, run_idempotent
from mega_crm.leads import service
from mega_crm.leads.schemas import (
    BulkImportResponse,
    LeadCreateRequest,
    LeadCreateResponse,
    LeadLine,
    LeadListResponse,
    SortBy,
    SortDir,
)
from mega_crm.ratelimit.limiter import BULK_BUCKET

router = APIRouter(prefix="/api/agents/crm", tags=["Leads"])

ReadKey = Annotated[Principal, Depends(require(LEADS_READ))]
WriteKey = Annotated[Principal, Depends(require(LEADS_WRITE))]
BulkKey = Annotated[Principal, Depends(require(LEADS_WRITE, BULK_BUCKET))]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Client-generated unique key. Replaying the same key returns the original stored "
        "response instead of creating duplicates. Scoped per customer + endpoint; reuse with a "
        "different body returns 409.",
    ),
]


class BulkImportBody(BaseModel):
    """The bulk envelope; rows are validated one by one so a bad row fails alone."""

    model_config = ConfigDict(extra="forbid")
    leads: Annotated[list[Any], Field(min_length=1, max_length=500)]
    on_duplicate: Annotated[str, Field(pattern="^(update|skip)$")] = "update"
    dry_run: bool = False


def _reply(result: StoredResponse) -> Response:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return json_response(result.body, result.status, headers)


@router.get(
    "/leads",
    operation_id="listLeads",
    summary="List / search leads",
    description="Returns leads for the authenticated customer. Requires the `public_api:leads:read` "
    "scope. Use `sort_by=updated_at&sort_dir=asc` with `cursor` for stable incremental polling.",
    response_model=LeadListResponse,
    responses=error_responses(400, 401, 403, 429),
)
def list_leads(
    request: Request,
    principal: ReadKey,
    x_customer_id: CustomerIdHeader,
    status: Annotated[
        str | None, Query(description="Filter by lead status (e.g. active, won, lost, nurture, archived).")
    ] = None,
    stage_id: Annotated[
        uuid.UUID | None, Query(alias="stageId", description="Filter by current pipeline stage id.")
    ] = None,
    search: Annotated[
        str | None, Query(description="Free-text match on name / email / phone (phone-format-agnostic).")
    ] = None,
    created_since: Annotated[
        datetime | None, Query(description="Only leads created at/after this ISO-8601 timestamp.")
    ] = None,
    updated_since: Annotated[
        datetime | None, Query(description="Only leads updated at/after this ISO-8601 timestamp.")
    ] = None,
    sort_by: SortBy = "updated_at",
    sort_dir: SortDir = "asc",
    lead_line: Annotated[
        LeadLine | None, Query(description="Filter by the reserved `lead_line` custom field.")
    ] = None,
    include_custom_fields: Annotated[
        bool, Query(description="When true, include a `custom_fields` object on each lead.")
    ] = False,
    cursor: Annotated[
        str | None,
        Query(
            description="Opaque keyset cursor from a previous response's `next_cursor`. "
            "Only valid with the same `sort_by`/`sort_dir`."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[
        int, Query(ge=0, description="Offset paging (back-compat). Prefer `cursor` for incremental polling.")
    ] = 0,
) -> Response:
    state = request.app.state
    query = service.ListQuery(
        status=status,
        stage_id=stage_id,
        search=search,
        created_since=created_since,
        updated_since=updated_since,
        sort_by=sort_by,
        sort_dir=sort_dir,
        lead_line=lead_line,
        include_custom_fields=include_custom_fields,
        cursor=cursor,
        limit=limit,
        offset=offset,
    )
    with state.db.read_session() as session:
        body = service.list_leads(session, principal.customer_id, query, state.cursor_codec, state.totals)
    return json_response(body)


@router.post(
    "/leads",
    operation_id="createLead",
    summary="Create a single lead",
    description="Creates one lead (or merges into an existing lead by email / phone-last-10). Requires "
    "the `public_api:leads:write` scope. Send an `Idempotency-Key` so a retry returns the original "
    "result instead of double-creating.",
    status_code=201,
    response_model=LeadCreateResponse,
    responses=error_responses(400, 401, 403, 409, 429),
)
def create_lead(
    request: Request,
    principal: WriteKey,
    x_customer_id: CustomerIdHeader,
    body: LeadCreateRequest,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    state = request.app.state
    region = state.settings.default_phone_region
    result = run_idempotent(
        state.db,
        customer_id=principal.customer_id,
        endpoint="createLead",
        key=idempotency_key,
        fingerprint=request_fingerprint(body.model_dump(mode="json", exclude_none=True)),
        ttl=timedelta(hours=state.settings.idempotency_ttl_hours),
        work=lambda session: service.create_lead(session, principal.customer_id, body, region),
    )
    return _reply(result)


@router.post(
    "/leads/bulk",
    operation_id="bulkImportLeads",
    summary="Bulk create / merge leads",
    description="Import up to 500 leads in one request. Requires the `public_api:leads:write` scope. "
    "Uploaded leads are inert (no downstream automation). Use `dry_run: true` to preview, "
    "`on_duplicate` to control merge behavior, and `Idempotency-Key` to make retries safe. Subject "
    "to a stricter per-minute rate limit than the other endpoints.",
    response_model=BulkImportResponse,
    responses=error_responses(400, 401, 403, 409, 429),
    openapi_extra={"x-request-schema": "BulkImportRequest"},
)
def bulk_import_leads(
    request: Request,
    principal: BulkKey,
    x_customer_id: CustomerIdHeader,
    body: BulkImportBody,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    state = request.app.state
    region = state.settings.default_phone_region

    def work(session: Any) -> tuple[int, dict[str, Any]]:
        return service.bulk_import(
            session,
            principal.customer_id,
            body.leads,
            on_duplicate=body.on_duplicate,
            dry_run=body.dry_run,
            phone_region=region,
        )

    if body.dry_run:  # previews are neither written nor cached
        with state.db.write_session(commit=False) as session:
            status, payload = work(session)
        return json_response(payload, status)
    result = run_idempotent(
        state.db,
        customer_id=principal.customer_id,
        endpoint="bulkImportLeads",
        key=idempotency_key,
        fingerprint=request_fingerprint(body.model_dump(mode="json")),
        ttl=timedelta(hours=state.settings.idempotency_ttl_hours),
        work=work,
    )
    return _reply(result)
