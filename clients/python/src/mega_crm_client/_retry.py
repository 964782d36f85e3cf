"""When to retry a request, and how long to wait: pure functions, used by both clients.

Retried: 429 (waiting at least Retry-After), 5xx, and connection errors/timeouts; only for
requests that are safe to repeat: GETs, and POSTs that carry an Idempotency-Key (the server
answers a repeat with the stored response instead of writing twice). Never a POST without a
key, a PATCH or a DELETE: the first attempt may have done its work before the answer was lost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from mega_crm_client._exceptions import parse_retry_after

DEFAULT_MAX_RETRIES = 3
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class RetryEvent:
    """Passed to `on_retry` before each wait: the attempt that failed (1 = the first), the wait
    in seconds, and why (`"429"`, `"503"`, `"ConnectError"`…)."""

    attempt: int
    delay: float
    reason: str
    method: str
    path: str


def safe_to_retry(method: str, headers: httpx.Headers) -> bool:
    """GETs, and POSTs with an Idempotency-Key."""
    method = method.upper()
    return method in ("GET", "HEAD") or (method == "POST" and "idempotency-key" in headers)


def backoff(attempt: int, *, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_MAX_SECONDS) -> float:
    """Exponential backoff with jitter: random in [half, all] of min(cap, base × 2^(attempt-1))."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


# No answer, but the request may succeed if sent again: the network, a timeout, or a server that
# closed the connection. Not an unsupported URL scheme or a bad proxy setting.
RETRYABLE_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


def retry_delay(
    attempt: int,
    response: httpx.Response | None,
    error: Exception | None = None,
    *,
    base: float = BACKOFF_BASE_SECONDS,
) -> float | None:
    """Seconds to wait before retrying after `attempt` (1 = the first) failed with `response`, or
    with `error` when there was no response; None when that outcome is not worth retrying."""
    if response is None:
        return backoff(attempt, base=base) if isinstance(error, RETRYABLE_ERRORS) else None
    status = response.status_code
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return max(retry_after or 0.0, backoff(attempt, base=base))
    if status >= 500:
        return backoff(attempt, base=base)
    return None
