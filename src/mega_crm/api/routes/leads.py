"""HTTP surface of the lead operations: listLeads, createLead, bulkImportLeads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from mega_crm.api.openapi import IDEMPOTENCY_KEY, query_parameters, request_body
from mega_crm.api.pipeline import Call, serve
from mega_crm.api.responses import json_response
from mega_crm.auth.access import confirming
from mega_crm.auth.scopes import LEADS_READ, LEADS_WRITE
from mega_crm.errors import error_responses
from mega_crm.idempotency.service import StoredResponse, request_fingerprint, run_idempotent
from mega_crm.leads import service
from mega_crm.leads.models import list_lane
from mega_crm.leads.schemas import (
    BulkImportEnvelope,
    BulkImportRequest,
    BulkImportResponse,
    LeadCreateRequest,
    LeadCreateResponse,
    LeadListResponse,
    ListLeadsQuery,
)
from mega_crm.observability import metrics
from mega_crm.ratelimit.limiter import BULK_BUCKET

router = APIRouter(prefix="/api/agents/crm", tags=["Leads"])


def _reply(result: StoredResponse, operation: str) -> Response:
    if result.replayed:
        metrics.IDEMPOTENT_REPLAYS.labels(operation).inc()
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
    openapi_extra=query_parameters(ListLeadsQuery),
)
async def list_leads(request: Request) -> Response:
    return await serve(
        request, LEADS_READ, _list_leads, lane=list_lane, query=ListLeadsQuery, confirms_key=True
    )


def _list_leads(call: Call) -> Response:
    query = call.query(ListLeadsQuery)
    state = call.state
    region = state.settings.default_phone_region
    body = service.list_leads(
        call.reader, call.customer_id, query, state.cursor_codec, state.totals, region, call.key_check
    )
    return Response(body, media_type="application/json")


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
    openapi_extra=request_body(LeadCreateRequest),
)
async def create_lead(request: Request) -> Response:
    return await serve(request, LEADS_WRITE, _create_lead, lane="write", confirms_key=True)


def _create_lead(call: Call) -> Response:
    body = call.body(LeadCreateRequest)
    state = call.state
    region = state.settings.default_phone_region
    outcomes: list[str] = []
    key = call.header(IDEMPOTENCY_KEY)
    # A cached key is confirmed in the write's first round trip: by the create's own first
    # statement without an Idempotency-Key (one statement fewer); with one, by a statement of
    # its own, since a replay runs no create.
    folded = call.key_check if key is None else None

    def attempt(provisional: service.Provisional | None) -> StoredResponse:
        outcomes.clear()
        if provisional is None and call.key_check is not None:
            call.key_check.reopen()  # a second try (rolled back) confirms the key again
        result = run_idempotent(
            state.db,
            customer_id=call.customer_id,
            endpoint="createLead",
            key=key,
            fingerprint=lambda: request_fingerprint(body.model_dump(mode="json", exclude_none=True)),
            ttl=timedelta(hours=state.settings.idempotency_ttl_hours),
            work=lambda session: service.create_lead(
                session, call.customer_id, body, region, outcomes, folded, provisional
            ),
            confirm=None if folded is not None else confirming(call.key_check),
        )
        if provisional is not None and not result.replayed:  # a replay's times are stored
            provisional.settle()
        return result

    result = service.create_lead_retrying(attempt, state.db.is_sqlite)
    if outcomes and not result.replayed:
        metrics.LEADS_CREATED.labels(outcomes[-1]).inc()
    return _reply(result, "createLead")


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
    openapi_extra=request_body(BulkImportRequest),
)
async def bulk_import_leads(request: Request) -> Response:
    return await serve(request, LEADS_WRITE, _bulk_import_leads, lane="write", bucket=BULK_BUCKET)


def _bulk_import_leads(call: Call) -> Response:
    body = call.body(BulkImportEnvelope)
    state = call.state
    region = state.settings.default_phone_region

    def work(session: Any) -> tuple[int, dict[str, Any]]:
        return service.bulk_import(
            session,
            call.customer_id,
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
        customer_id=call.customer_id,
        endpoint="bulkImportLeads",
        key=call.header(IDEMPOTENCY_KEY),
        fingerprint=lambda: request_fingerprint(body.model_dump(mode="json")),
        ttl=timedelta(hours=state.settings.idempotency_ttl_hours),
        work=work,
    )
    if not result.replayed and result.status == 200:
        for outcome, rows in result.body.get("summary", {}).items():
            if outcome != "total" and rows:
                metrics.BULK_ROWS.labels(outcome).inc(rows)
    return _reply(result, "bulkImportLeads")
