"""The client's exceptions: one tree mirroring the server's error envelope.

Every error response of the API is ``{"error": {"type", "code", "message"}}``; the client raises
the class for its HTTP status (falling back on ``type``):

    MegaError                       anything this package raises on purpose
    ├── APIError                    an error response: status, type, message, request_id
    │   ├── InvalidRequestError     400 invalid_request_error (validation; the message names the field)
    │   ├── AuthenticationError     401 authentication_error (missing/invalid token or x-customer-id)
    │   ├── AuthorizationError      403 authorization_error (the key lacks the scope)
    │   ├── NotFoundError           404 not_found_error
    │   ├── ConflictError           409 api_error (Idempotency-Key reused or still in progress)
    │   └── RateLimitError          429 rate_limit_error, with retry_after (seconds)
    └── APIConnectionError          no response at all (refused, reset, timed out)
        └── APITimeoutError         the request timed out

A 5xx, or any other status, is a plain ``APIError``.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "AuthorizationError",
    "ConflictError",
    "InvalidRequestError",
    "MegaError",
    "NotFoundError",
    "RateLimitError",
]

REQUEST_ID_HEADERS = ("x-request-id", "request-id")


class MegaError(Exception):
    """Base class of every exception this package raises on purpose."""


class APIError(MegaError):
    """An error response from the API.

    Attributes: ``status`` (HTTP status), ``type`` (the envelope's ``error.type``, e.g.
    ``"invalid_request_error"``), ``message`` (the envelope's ``error.message``), ``request_id``
    (the response's ``X-Request-Id`` header, or None when the server sent none) and ``response``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str = "api_error",
        request_id: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.request_id = request_id
        self.response = response

    def __str__(self) -> str:
        suffix = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.status} {self.type}: {self.message}{suffix}"


class InvalidRequestError(APIError):
    """400: the request was refused as invalid; nothing was changed."""


class AuthenticationError(APIError):
    """401: missing or invalid token, or missing/invalid ``x-customer-id``."""


class AuthorizationError(APIError):
    """403: the key lacks the scope, or is locked to another customer."""


class NotFoundError(APIError):
    """404: no such resource (or route)."""


class ConflictError(APIError):
    """409: an Idempotency-Key was reused with another body, or its first request is still running."""

    @property
    def in_progress(self) -> bool:
        """True when the key's first request is still running (retrying later is safe)."""
        return "in progress" in self.message


class RateLimitError(APIError):
    """429: the key's budget is spent; ``retry_after`` is the server's Retry-After in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class APIConnectionError(MegaError):
    """No response: the connection was refused, reset, or the request could not be sent."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthorizationError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}
_BY_TYPE: dict[str, type[APIError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "authorization_error": AuthorizationError,
    "not_found_error": NotFoundError,
    "rate_limit_error": RateLimitError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (RFC 9110 delay-seconds; an HTTP-date is not sent by this API)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0)


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response (status >= 400), read from the contract's envelope."""
    status = response.status_code
    error_type = "api_error"
    message = response.reason_phrase or f"HTTP {status}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"]
        error_type = str(detail.get("type") or error_type)
        message = str(detail.get("message") or message)
    cls = _BY_STATUS.get(status) or (_BY_TYPE.get(error_type) if status < 500 else None) or APIError
    request_id = next((response.headers[h] for h in REQUEST_ID_HEADERS if h in response.headers), None)
    kwargs: dict[str, Any] = {
        "status": status,
        "type": error_type,
        "request_id": request_id,
        "response": response,
    }
    if cls is RateLimitError:
        return RateLimitError(
            message, retry_after=parse_retry_after(response.headers.get("retry-after")), **kwargs
        )
    return cls(message, **kwargs)
