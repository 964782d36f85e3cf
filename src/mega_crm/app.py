"""create_app(): state, routers, the error envelope everywhere, rate-limit headers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mega_crm.config import Settings, get_settings
from mega_crm.db import Database
from mega_crm.errors import ApiError, error_response
from mega_crm.leads import endpoints as lead_endpoints
from mega_crm.leads.cursor import CursorCodec
from mega_crm.leads.service import TotalsCache
from mega_crm.openapi import contract_openapi
from mega_crm.ratelimit.limiter import RateLimiter
from mega_crm.security import load_secret_key
from mega_crm.validation import describe_errors

log = logging.getLogger("mega_crm")


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


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = db or Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
    secret_key = load_secret_key(settings)

    app = FastAPI(
        title="MEGA Public CRM Lead API",
        version="1.0.0",
        description="Server-to-server API to pull leads, push leads (single + bulk), and manage lead "
        "webhooks for your MEGA CRM. Authenticate with an admin-issued Personal Access Token "
        "(`Authorization: Bearer mega_...`) plus the `x-customer-id` header.",
    )
    app.state.settings = settings
    app.state.db = db
    app.state.limiter = RateLimiter(settings.redis_url)
    app.state.cursor_codec = CursorCodec(secret_key)
    app.state.totals = TotalsCache()
    app.state.secret_key = secret_key

    app.include_router(lead_endpoints.router)
    app.add_middleware(RateLimitHeadersMiddleware)
    _install_error_handlers(app)
    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return exc.to_response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        messages = describe_errors(exc.errors())
        return error_response(400, "invalid_request_error", "; ".join(messages) or "Invalid request.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, "not_found_error", "No such route.")
        if exc.status_code == 405:
            return error_response(
                405, "invalid_request_error", "Method not allowed on this route.", dict(exc.headers or {})
            )
        kind = "api_error" if exc.status_code >= 500 else "invalid_request_error"
        return error_response(exc.status_code, kind, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "api_error", "Internal server error.")
