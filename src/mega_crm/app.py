"""create_app(): state, routers, the error envelope everywhere, rate-limit headers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mega_crm import health
from mega_crm.config import Settings, get_settings
from mega_crm.db import Database
from mega_crm.docs import install_docs
from mega_crm.errors import ApiError, error_response
from mega_crm.failures import UnexpectedErrorMiddleware
from mega_crm.leads import endpoints as lead_endpoints
from mega_crm.leads.cursor import CursorCodec
from mega_crm.leads.service import TotalsCache
from mega_crm.observability.metrics import process_exited
from mega_crm.observability.setup import install_observability
from mega_crm.openapi import contract_openapi
from mega_crm.ratelimit.limiter import RateLimiter, check_server_limits
from mega_crm.security import load_secret_key
from mega_crm.validation import describe_errors
from mega_crm.webhooks import endpoints as webhook_endpoints
from mega_crm.webhooks.running import webhook_worker_lifespan

log = logging.getLogger("mega_crm")


class BodySizeLimitMiddleware:
    """Refuses a request body over `max_bytes` with 413 before the app reads it into memory
    (a full bulk of 500 leads is well under 1 MiB)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        message = f"Request body is larger than {self.max_bytes} bytes."
        await error_response(413, "invalid_request_error", message)({"type": "http"}, _no_body, send)


class _BodyTooLarge(Exception):
    pass


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class RateLimitHeadersMiddleware:
    """Adds the RateLimit-* headers that auth computed to whatever response the request gets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = getattr(scope.get("state", {}), "get", lambda _k: None)("rate_limit_headers")
                if extra:
                    present = {k.lower() for k, _ in message.get("headers", [])}
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + [
                        (k.lower().encode(), v.encode())
                        for k, v in extra.items()
                        if k.lower().encode() not in present
                    ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A serving process: background WAL checkpoints (SQLite) and the in-process webhook worker."""
    with app.state.db.checkpoints():
        async with webhook_worker_lifespan(app):
            yield
    process_exited()  # metrics: drop this process's live gauges (multiprocess mode)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = db or Database(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        timeout=settings.db_timeout_seconds,
        statement_timeout=settings.db_statement_timeout_seconds,
    )
    secret_key = load_secret_key(settings)

    app = FastAPI(
        title="MEGA Public CRM Lead API",
        version="1.0.0",
        description="Server-to-server API to pull leads, push leads (single + bulk), and manage lead "
        "webhooks for your MEGA CRM. Authenticate with an admin-issued Personal Access Token "
        "(`Authorization: Bearer mega_...`) plus the `x-customer-id` header.",
        lifespan=_lifespan,
        # /leads/ is an unknown route (404), not a redirect some clients would follow with a GET.
        redirect_slashes=False,
        docs_url=None,  # served offline by install_docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = db
    check_server_limits(settings.rate_limit_default, settings.rate_limit_bulk)
    app.state.limiter = RateLimiter(
        settings.redis_url,
        timeout=settings.redis_timeout_seconds,
        breaker_seconds=settings.redis_breaker_seconds,
    )
    app.state.cursor_codec = CursorCodec(secret_key)
    app.state.totals = TotalsCache()
    app.state.secret_key = secret_key

    app.include_router(lead_endpoints.router)
    app.include_router(webhook_endpoints.router)
    if settings.webhook_allow_private_targets:
        log.warning(
            "MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS is set: webhooks may target http:// and private "
            "addresses. For development and tests only; never in production."
        )
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost: the others see a response
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]

    app.include_router(health.router)
    install_docs(app)
    install_observability(app, settings, db)
    return app


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)
    ]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return exc.to_response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        # Only path parameters are parsed by the framework (endpoint.Call parses the rest).
        messages = describe_errors(exc.errors())
        return error_response(400, "invalid_request_error", "; ".join(messages) or "Invalid request.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, "not_found_error", "No such route.")
        if exc.status_code == 405:
            allow = ", ".join(_allowed_methods(app, request.scope))
            message = "Method not allowed on this route."
            return error_response(405, "invalid_request_error", message, {"Allow": allow})
        kind = "api_error" if exc.status_code >= 500 else "invalid_request_error"
        return error_response(exc.status_code, kind, str(exc.detail))

    # Any other exception: UnexpectedErrorMiddleware (not an Exception handler: Starlette re-raises
    # after those, which closed the connection).
