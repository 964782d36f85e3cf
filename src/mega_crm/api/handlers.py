"""The error envelope for what the framework refuses itself: an unknown route (404), a method the
route does not serve (405, with every allowed method), a path parameter that does not parse (400),
and any ApiError a route raised."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from mega_crm.errors import ApiError, error_response
from mega_crm.validation import describe_errors


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, the framework's validation errors and its HTTP errors in the envelope."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return exc.to_response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        # Only path parameters are parsed by the framework (api.pipeline parses the rest).
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
