"""HTTP surface of the webhook operations: the contract's four, plus one webhook, its delivery
log, redelivery, recovery and the test event. Every route needs `public_api:webhooks:manage`
(default rate-limit bucket)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from mega_crm.api.openapi import query_parameters, request_body
from mega_crm.api.pipeline import Call, serve
from mega_crm.api.responses import json_response
from mega_crm.auth.scopes import WEBHOOKS_MANAGE
from mega_crm.errors import error_responses
from mega_crm.webhooks import service
from mega_crm.webhooks.schemas import (
    WebhookCreateRequest,
    WebhookCreateResponse,
    WebhookDeleteResponse,
    WebhookDeliveryListResponse,
    WebhookDeliveryResponse,
    WebhookListResponse,
    WebhookRecoverRequest,
    WebhookRecoverResponse,
    WebhookResponse,
    WebhookUpdateRequest,
    WebhookUpdateResponse,
)
from mega_crm.webhooks.signing import SecretBox

router = APIRouter(prefix="/api/agents/crm/lead-webhooks", tags=["Webhooks"])

# Taken as text so that a malformed id is a 404 (no such webhook), like another customer's id.
WebhookId = Annotated[str, Path(json_schema_extra={"format": "uuid"})]
DeliveryId = Annotated[str, Path(json_schema_extra={"format": "uuid"})]


class DeliveryListQuery(BaseModel):
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")


def _box(call: Call) -> SecretBox:
    return SecretBox(call.state.secret_key)


def _allow_private(call: Call) -> bool:
    return call.state.settings.webhook_allow_private_targets


@router.get(
    "",
    operation_id="listWebhooks",
    summary="List webhooks",
    description="Lists the caller's registered lead webhooks. Signing secrets are never returned. "
    "Requires the `public_api:webhooks:manage` scope.",
    response_model=WebhookListResponse,
    responses=error_responses(400, 401, 403, 429),
)
async def list_webhooks(request: Request) -> Response:
    return await serve(request, WEBHOOKS_MANAGE, _list_webhooks)


def _list_webhooks(call: Call) -> Response:
    with call.state.db.read_session() as session:
        return json_response(service.list_webhooks(session, call.customer_id))


@router.post(
    "",
    operation_id="createWebhook",
    summary="Register a webhook",
    description="Registers a webhook URL for `lead.created` events. The URL is SSRF-validated (must be "
    "public HTTPS). The signing `secret` is returned EXACTLY ONCE — store it. Requires the "
    "`public_api:webhooks:manage` scope.",
    status_code=201,
    response_model=WebhookCreateResponse,
    responses=error_responses(400, 401, 403, 409, 429),
    openapi_extra=request_body(WebhookCreateRequest),
)
async def create_webhook(request: Request) -> Response:
    return await serve(request, WEBHOOKS_MANAGE, _create_webhook, lane="slow")  # resolves the URL


def _create_webhook(call: Call) -> Response:
    body = call.body(WebhookCreateRequest)
    target = service.check_url(body.url, allow_private=_allow_private(call))
    with call.state.db.write_session() as session:
        created = service.create_webhook(session, call.customer_id, body, target, _box(call))
    return json_response(created, 201)


@router.get(
    "/{id}",
    operation_id="getWebhook",
    summary="Get one webhook",
    description="One of the caller's webhooks (never its secret). Requires the "
    "`public_api:webhooks:manage` scope.",
    response_model=WebhookResponse,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_webhook(request: Request, id: WebhookId) -> Response:
    def work(call: Call) -> Response:
        webhook_id = service.parse_id(id)
        with call.state.db.read_session() as session:
            return json_response(service.get_webhook(session, call.customer_id, webhook_id))

    return await serve(request, WEBHOOKS_MANAGE, work)


@router.patch(
    "/{id}",
    operation_id="updateWebhook",
    summary="Update / rotate a webhook",
    description="Updates a webhook. Set `rotate_secret: true` to mint a fresh signing secret (returned "
    "once). Requires the `public_api:webhooks:manage` scope.",
    response_model=WebhookUpdateResponse,
    responses=error_responses(400, 401, 403, 404, 429),
    openapi_extra=request_body(WebhookUpdateRequest),
)
async def update_webhook(request: Request, id: WebhookId) -> Response:
    def work(call: Call) -> Response:
        body = call.body(WebhookUpdateRequest)
        webhook_id = service.parse_id(id)
        target = None
        if body.url is not None:
            target = service.check_url(body.url, allow_private=_allow_private(call))
        with call.state.db.write_session() as session:
            updated = service.update_webhook(session, call.customer_id, webhook_id, body, target, _box(call))
        return json_response(updated)

    return await serve(request, WEBHOOKS_MANAGE, work, lane="slow")  # may resolve a new URL


@router.delete(
    "/{id}",
    operation_id="deleteWebhook",
    summary="Delete a webhook",
    description="Soft-deletes a webhook and cancels its pending deliveries. Requires the "
    "`public_api:webhooks:manage` scope.",
    response_model=WebhookDeleteResponse,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def delete_webhook(request: Request, id: WebhookId) -> Response:
    def work(call: Call) -> Response:
        webhook_id = service.parse_id(id)
        with call.state.db.write_session() as session:
            return json_response(service.delete_webhook(session, call.customer_id, webhook_id))

    return await serve(request, WEBHOOKS_MANAGE, work, lane="write")


@router.get(
    "/{id}/deliveries",
    operation_id="listWebhookDeliveries",
    summary="List a webhook's deliveries",
    description="Recent deliveries to this webhook, newest first, with their status (pending, "
    "succeeded, failed, cancelled), attempt count, last answer and next attempt. Page with "
    "`next_cursor`. Requires the `public_api:webhooks:manage` scope.",
    response_model=WebhookDeliveryListResponse,
    responses=error_responses(400, 401, 403, 404, 429),
    openapi_extra=query_parameters(DeliveryListQuery),
)
async def list_webhook_deliveries(request: Request, id: WebhookId) -> Response:
    def work(call: Call) -> Response:
        query = call.query(DeliveryListQuery)
        webhook_id = service.parse_id(id)
        codec = service.DeliveryCursor(call.state.secret_key)
        with call.state.db.read_session() as session:
            page = service.list_deliveries(
                session, call.customer_id, webhook_id, limit=query.limit, cursor=query.cursor, codec=codec
            )
        return json_response(page)

    return await serve(request, WEBHOOKS_MANAGE, work, query=DeliveryListQuery)


@router.post(
    "/{id}/deliveries/{delivery_id}/redeliver",
    operation_id="redeliverWebhookDelivery",
    summary="Redeliver an event",
    description="Queues a fresh delivery (new `X-Mega-Delivery` id, full retry budget) of the same "
    "event to this webhook. Requires the `public_api:webhooks:manage` scope.",
    status_code=201,
    response_model=WebhookDeliveryResponse,
    responses=error_responses(400, 401, 403, 404, 409, 429),
)
async def redeliver_webhook_delivery(request: Request, id: WebhookId, delivery_id: DeliveryId) -> Response:
    def work(call: Call) -> Response:
        webhook_id = service.parse_id(id)
        delivery_uuid = service.parse_id(delivery_id, "delivery")
        with call.state.db.write_session() as session:
            created = service.redeliver(session, call.customer_id, webhook_id, delivery_uuid)
        return json_response(created, 201)

    return await serve(request, WEBHOOKS_MANAGE, work, lane="write")


@router.post(
    "/{id}/recover",
    operation_id="recoverWebhookDeliveries",
    summary="Resend what failed in a window",
    description="Queues a fresh delivery of every event whose delivery to this webhook ended `failed` or "
    "`cancelled` between `since` (inclusive) and `until` (exclusive, default now), once per event and "
    "leaving out events that already have a pending or succeeded delivery to it: for the day an endpoint "
    "was down, or after re-enabling it. At most 10,000 deliveries; more is a 400 asking for a narrower "
    "window. The webhook must be active (409). Answers 202 with the count. Requires the "
    "`public_api:webhooks:manage` scope.",
    status_code=202,
    response_model=WebhookRecoverResponse,
    responses=error_responses(400, 401, 403, 404, 409, 429),
    openapi_extra=request_body(WebhookRecoverRequest),
)
async def recover_webhook_deliveries(request: Request, id: WebhookId) -> Response:
    def work(call: Call) -> Response:
        body = call.body(WebhookRecoverRequest)
        webhook_id = service.parse_id(id)
        with call.state.db.write_session() as session:
            queued = service.recover(session, call.customer_id, webhook_id, body)
        return json_response(queued, 202)

    return await serve(request, WEBHOOKS_MANAGE, work, lane="write")


@router.post(
    "/{id}/test",
    operation_id="sendWebhookTestEvent",
    summary="Send a test event",
    description="Sends a signed `webhook.test` event (a fixed example lead; body `WebhookTestPayload`) to "
    "this webhook now, so a receiver can be checked before real leads flow. It is a delivery like any "
    "other (signed, retried, in the log); answers 201 with it as queued. The webhook must be active "
    "(409). Requires the `public_api:webhooks:manage` scope.",
    status_code=201,
    response_model=WebhookDeliveryResponse,
    responses=error_responses(400, 401, 403, 404, 409, 429),
)
async def send_webhook_test_event(request: Request, id: WebhookId) -> Response:
    def work(call: Call) -> Response:
        webhook_id = service.parse_id(id)
        with call.state.db.write_session() as session:
            created = service.send_test_event(session, call.customer_id, webhook_id)
        return json_response(created, 201)

    return await serve(request, WEBHOOKS_MANAGE, work, lane="write")
