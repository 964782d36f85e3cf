"""create_app(): the shared state, routers, the error envelope everywhere, rate-limit headers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mega_crm.api import health
from mega_crm.api.docs import install_docs
from mega_crm.api.handlers import install_error_handlers
from mega_crm.api.metrics_route import install_observability
from mega_crm.api.middleware import BodySizeLimitMiddleware, RateLimitHeadersMiddleware
from mega_crm.api.openapi import contract_openapi
from mega_crm.api.routes import leads as lead_endpoints
from mega_crm.api.routes import webhooks as webhook_endpoints
from mega_crm.api.state import AppState, app_state
from mega_crm.auth.access import KeyCache
from mega_crm.config import Settings, get_settings
from mega_crm.db import Database
from mega_crm.failures import UnexpectedErrorMiddleware
from mega_crm.leads.cursor import CursorCodec
from mega_crm.leads.service import TotalsCache
from mega_crm.observability.metrics import process_exited
from mega_crm.ratelimit.limiter import RateLimiter, check_server_limits
from mega_crm.security import load_secret_key
from mega_crm.webhooks.running import in_process_worker

log = logging.getLogger("mega_crm")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A serving process: background WAL checkpoints (SQLite) and the in-process webhook worker."""
    state = app_state(app)
    with state.db.checkpoints():
        async with in_process_worker(state.db, state.settings, state.secret_key):
            yield
    process_exited()  # metrics: drop this process's live gauges (multiprocess mode)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    """The API app: `settings` default to the environment's (MEGA_*), `db` to a Database they
    describe. ConfigurationError when a MEGA_RATE_LIMIT_* is not a rate limit."""
    settings = settings or get_settings()
    db = db or Database(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        threads=settings.db_threads,
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
    check_server_limits(settings.rate_limit_default, settings.rate_limit_bulk)
    state = AppState(
        settings=settings,
        db=db,
        limiter=RateLimiter(
            settings.redis_url,
            timeout=settings.redis_timeout_seconds,
            breaker_seconds=settings.redis_breaker_seconds,
        ),
        cursor_codec=CursorCodec(secret_key),
        totals=TotalsCache(),
        secret_key=secret_key,
        readiness=health.Readiness(db, settings),
        keys=KeyCache(),
    )
    state.attach(app)

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
    install_error_handlers(app)
    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]

    app.include_router(health.router)
    install_docs(app)
    install_observability(app, state)
    return app
