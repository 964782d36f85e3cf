"""The API's error tree and the contract's envelope.

ApiError                      -> {"error": {"type", "code", "message"}}
├── AuthenticationError       401 authentication_error
├── AuthorizationError        403 authorization_error
├── InvalidRequestError       400 invalid_request_error
├── NotFoundError             404 not_found_error
├── RateLimitError            429 rate_limit_error
├── ConflictError             409 api_error
└── ServiceUnavailableError   503 api_error (a dependency is not answering; see failures.py)
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    status_code = 500
    error_type = "api_error"

    def __init__(self, message: str = "Internal server error.", *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> JSONResponse:
        return error_response(self.status_code, self.error_type, self.message, self.headers)


class AuthenticationError(ApiError):
    status_code = 401
    error_type = "authentication_error"


class AuthorizationError(ApiError):
    status_code = 403
    error_type = "authorization_error"


class InvalidRequestError(ApiError):
    status_code = 400
    error_type = "invalid_request_error"


class NotFoundError(ApiError):
    status_code = 404
    error_type = "not_found_error"


class RateLimitError(ApiError):
    status_code = 429
    error_type = "rate_limit_error"


class ConflictError(ApiError):
    status_code = 409
    error_type = "api_error"


class ServiceUnavailableError(ApiError):
    status_code = 503
    error_type = "api_error"


def error_body(status: int, error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "code": status, "message": message}}


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, error_type, message), status_code=status, headers=headers)


# --- OpenAPI: the shared error responses of every operation ---------------------------------

from pydantic import BaseModel  # noqa: E402


class ErrorDetail(BaseModel):
    type: str
    code: int
    message: str


class Error(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request (also: an unknown or repeated query parameter, on every operation).",
    401: "Missing or invalid token / `x-customer-id`.",
    403: "Key lacks the required scope, or is locked to a different customer.",
    404: "Resource not found.",
    409: "Idempotency-Key reused with a different body, or duplicate resource.",
    429: "Rate limit exceeded.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Error, "description": _DESCRIPTIONS[code]} for code in codes}
