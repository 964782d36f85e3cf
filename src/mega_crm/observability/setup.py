"""Wiring into the app: GET /metrics and the outermost request middleware."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from mega_crm.api.state import AppState
from mega_crm.errors import error_response
from mega_crm.observability import metrics
from mega_crm.observability.middleware import ObservabilityMiddleware


def install_observability(app: FastAPI, state: AppState) -> None:
    """GET /metrics (unless MEGA_METRICS_ENABLED is off; behind MEGA_METRICS_TOKEN when set) and
    ObservabilityMiddleware around everything, Starlette's error handling included."""
    settings, db = state.settings, state.db
    if settings.metrics_enabled:
        metrics.instrument_pool(db.engine)
        expected = f"Bearer {settings.metrics_token}".encode() if settings.metrics_token else None

        @app.get("/metrics", include_in_schema=False)
        async def metrics_endpoint(request: Request) -> Response:
            if expected is not None:
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return error_response(
                        401, "authentication_error", "Send 'Authorization: Bearer <MEGA_METRICS_TOKEN>'.",
                        {"WWW-Authenticate": "Bearer"},
                    )  # fmt: skip
            breaker = state.limiter.breaker.state if settings.redis_url else None
            body, content_type = await asyncio.to_thread(metrics.render, db, breaker)
            return Response(body, media_type=content_type)

    build = app.build_middleware_stack

    def build_with_observability() -> Any:
        return ObservabilityMiddleware(build(), metrics_on=settings.metrics_enabled)

    app.build_middleware_stack = build_with_observability  # type: ignore[method-assign]
