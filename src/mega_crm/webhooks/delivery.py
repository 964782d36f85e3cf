"""One delivery attempt over HTTP: check the address, sign a fresh body, POST, judge the answer.

The connection goes to the IP that the address rules just approved (the URL is rewritten to
it), while the Host header and TLS (SNI and certificate check) use the registered host name.
Clients are pooled per (host, address, port), so a kept-alive connection is only reused for
the host name its certificate was verified for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import certifi
import httpx
import orjson

from mega_crm import __version__ as server_version
from mega_crm.timestamps import format_time
from mega_crm.webhooks.signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    compute_signature,
    standard_webhooks_headers,
)
from mega_crm.webhooks.urls import Resolver, Target, UrlRefused, check_literal_webhook_url, check_webhook_url

USER_AGENT = f"MEGA-CRM-Webhooks/{server_version} (lead webhooks)"
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 600.0  # a receiver's Retry-After is honoured up to this long
RESPONSE_BYTES_READ = 64 * 1024  # of an answer's body: enough to keep the connection reusable


def retry_delay(retry_number: int, base_seconds: float, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """Exponential backoff with "equal jitter": uniform in [step/2, step], step = min(cap,
    base * 2^(n-1)). The jitter spreads retries of many deliveries; the lower bound keeps each
    retry at least half a step after the last, so a struggling receiver does get the pause."""
    step = min(cap, base_seconds * (2 ** max(0, retry_number - 1)))
    return random.uniform(step / 2, step)


def build_body(
    event_type: str, lead: dict[str, Any], delivered_at: datetime, details: dict[str, Any] | None = None
) -> bytes:
    """`details`: the event's other payload members (lead.updated: changed_fields, previous)."""
    stamp = format_time(delivered_at)
    return orjson.dumps({"event": event_type, "delivered_at": stamp, "lead": lead, **(details or {})})


def signed_headers(
    secret: str,
    delivery_id: str,
    event_type: str,
    body: bytes,
    timestamp: int,
    previous_secret: str | None = None,
    signature_scheme: str = "mega",
) -> dict[str, str]:
    """During a rotation's overlap `previous_secret` signs too: "sha256=<new>,sha256=<previous>".
    The "standard-webhooks" scheme adds webhook-id/-timestamp/-signature (same id and time)."""
    signature = compute_signature(secret, timestamp, body)
    if previous_secret is not None:
        signature += "," + compute_signature(previous_secret, timestamp, body)
    extra: dict[str, str] = {}
    if signature_scheme == "standard-webhooks":
        live = [secret] if previous_secret is None else [secret, previous_secret]
        extra = standard_webhooks_headers(live, delivery_id, timestamp, body)
    return {
        **extra,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature,
        DELIVERY_HEADER: delivery_id,
        "X-Mega-Event": event_type,
    }


@dataclass(frozen=True)
class AttemptResult:
    succeeded: bool
    status_code: int | None
    error: str | None
    latency_ms: int | None
    refused: bool = False  # by the address rules: fail at once, no retries
    gone: bool = False  # 410 Gone: the receiver asks never to be called again
    retry_after: float | None = None  # seconds, from a 429/503's Retry-After (capped)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 10.2.3: delay-seconds or an
    HTTP-date), capped at MAX_RETRY_AFTER_SECONDS; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²" (a latin-1 header byte)
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, seconds))


def ssl_context(extra_ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


class ClientPool:
    """httpx clients per (scheme, host, address, port), least recently used evicted."""

    def __init__(self, *, tls: ssl.SSLContext, per_client_connections: int, max_clients: int = 256) -> None:
        self._tls = tls
        self._connections = per_client_connections
        self._max = max_clients
        self._clients: OrderedDict[tuple[str, str, str, int], httpx.AsyncClient] = OrderedDict()

    def client_for(self, target: Target) -> httpx.AsyncClient:
        key = (target.scheme, target.host, target.address, target.port)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                verify=self._tls,
                follow_redirects=False,
                trust_env=False,  # never route deliveries through an environment proxy
                limits=httpx.Limits(
                    max_connections=self._connections, max_keepalive_connections=self._connections
                ),
            )
            self._clients[key] = client
            while len(self._clients) > self._max:
                _, old = self._clients.popitem(last=False)
                asyncio.get_running_loop().create_task(old.aclose())
        self._clients.move_to_end(key)
        return client

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()


async def resolve_target(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> Target:
    """The address rules, with DNS off the event loop (an IP literal needs none: checked here)."""
    target = check_literal_webhook_url(url, allow_private=allow_private)
    if target is not None:
        return target
    return await asyncio.to_thread(check_webhook_url, url, allow_private=allow_private, resolver=resolver)


async def attempt_delivery(
    pool: ClientPool,
    *,
    url: str,
    secret: str,
    delivery_id: str,
    event_type: str,
    lead: dict[str, Any],
    timeout_seconds: float,
    allow_private: bool,
    resolver: Resolver | None = None,
    previous_secret: str | None = None,
    signature_scheme: str = "mega",
    details: dict[str, Any] | None = None,
) -> AttemptResult:
    started = time.monotonic()
    try:
        target = await resolve_target(url, allow_private=allow_private, resolver=resolver)
    except UrlRefused as exc:
        return AttemptResult(False, None, f"refused: {exc}", None, refused=True)

    now = datetime.now(UTC)
    body = build_body(event_type, lead, now, details)
    headers = signed_headers(
        secret, delivery_id, event_type, body, int(now.timestamp()), previous_secret, signature_scheme
    )
    headers["Host"] = target.host_header
    extensions: dict[str, Any] = {}
    if target.scheme == "https" and not target.is_ip_literal:
        extensions["sni_hostname"] = target.host
    client = pool.client_for(target)
    deadline = started + timeout_seconds
    remaining = max(0.1, deadline - time.monotonic())
    try:
        async with asyncio.timeout(remaining):
            request = client.build_request(
                "POST",
                target.pinned_url,
                content=body,
                headers=headers,
                extensions=extensions,
                timeout=httpx.Timeout(remaining),
            )
            response = await client.send(request, stream=True)  # returns once the headers are in
    except TimeoutError:
        return AttemptResult(False, None, f"timed out after {timeout_seconds:g} s", _ms(started))
    except httpx.TimeoutException:
        return AttemptResult(False, None, f"timed out after {timeout_seconds:g} s", _ms(started))
    except httpx.HTTPError as exc:
        return AttemptResult(False, None, _describe(exc), _ms(started))
    latency = _ms(started)
    # The status line is the answer. The body is read (so that the connection can be reused) only
    # for the time left and up to RESPONSE_BYTES_READ: a 2xx whose body is slow, cut short or
    # broken is still a 2xx that arrived in time.
    await _drain_body(response, deadline)
    status = response.status_code
    if 200 <= status < 300:
        return AttemptResult(True, status, None, latency)
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        return AttemptResult(False, status, f"redirect to {location[:200]!r} not followed", latency)
    if status == 410:
        return AttemptResult(False, status, "HTTP 410 Gone: webhook disabled", latency, gone=True)
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    return AttemptResult(False, status, f"HTTP {status}", latency, retry_after=retry_after)


async def _drain_body(response: httpx.Response, deadline: float) -> None:
    """Reads at most RESPONSE_BYTES_READ of the body until `deadline` (monotonic), then closes
    the response (an unfinished body closes its connection instead of returning it to the pool)."""
    try:
        left = deadline - time.monotonic()
        if left > 0:
            async with asyncio.timeout(left):
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= RESPONSE_BYTES_READ:
                        break
    except (TimeoutError, httpx.HTTPError):
        pass
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await response.aclose()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _describe(exc: httpx.HTTPError) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in detail:
        return f"TLS certificate verification failed: {detail[:300]}"
    return f"{type(exc).__name__}: {detail[:300]}"
