"""The outermost ASGI layer: request id, one log line and the HTTP metrics of every request.

It wraps the whole app, Starlette's ServerErrorMiddleware included, so it sees every response,
a 500 too: each one carries `X-Request-Id`, and each is counted and logged once.

`X-Request-Id`: the client's value when it is a sane token (1–128 characters of
`A-Z a-z 0-9 . _ : -`), else a new one (32 hex digits); echoed on the response, put on every log line
written while the request runs, and on its request line.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mega_crm.observability import metrics
from mega_crm.observability.logging import request_id_var, request_line

_SANE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
HEADER = b"x-request-id"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away

# Generated ids: 16 random hex digits per process, then a counter (32 hex digits in all). Unique
# without a uuid4's os.urandom() call per request (6 µs); ids need not be unguessable.
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def _reseed() -> None:  # a forked child (e.g. gunicorn with preload) must not repeat its parent's ids
    global _PREFIX
    _PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """A fresh request id: 32 lowercase hex digits, unique across processes and restarts."""
    return f"{_PREFIX}{next(_COUNTER):016x}"


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):  # FastAPI's routes name themselves
        return path
    # Starlette's own routes (/openapi.json, /docs) and mounts (/docs-assets) leave only their
    # endpoint in the scope: find the route or mount that holds it.
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        for candidate in getattr(scope.get("app"), "routes", ()):
            if isinstance(candidate, Mount) and candidate.app is endpoint:
                return candidate.path + "/{path}"
            if getattr(candidate, "endpoint", None) is endpoint:
                return str(candidate.path)
    return metrics.UNMATCHED_ROUTE


class ObservabilityMiddleware:
    """Request id, request line (level info; error for 5xx) and HTTP metrics (when `metrics_on`)."""

    def __init__(self, app: ASGIApp, *, metrics_on: bool) -> None:
        self.app = app
        self.metrics_on = metrics_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        for name, value in scope["headers"]:
            if name == HEADER:
                if _SANE_ID.fullmatch(value):
                    request_id = value.decode()
                break
        if request_id is None:
            request_id = new_request_id()
        token = request_id_var.set(request_id)
        header = (HEADER, request_id.encode())
        status = 500  # if the app raises before answering
        gone = False  # the client went away before the request was read (or sent malformed bytes)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        async def receive_noting_disconnect() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        failed = False
        try:
            await self.app(scope, receive_noting_disconnect, send_with_id)
        except BaseException:
            failed = True
            raise
        finally:
            if gone and status >= 500:
                # Not a server error: the body never arrived whole (a dropped upload; a bad chunk
                # or Content-Length, which the HTTP server answered 400 itself). Counted and logged
                # as nginx's 499, "client closed request", not as a 500 to page someone about.
                status, failed = CLIENT_CLOSED_REQUEST, False
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            if self.metrics_on:
                metrics.observe_request(route, scope["method"], status, elapsed)
            self._log(scope, route, status, elapsed, request_id, failed)
            request_id_var.reset(token)

    @staticmethod
    def _log(scope: Scope, route: str, status: int, elapsed: float, request_id: str, failed: bool) -> None:
        level = "error" if status >= 500 or failed else "info"
        if not (request_line.error if level == "error" else request_line.info):
            return
        state: Any = scope.get("state") or {}
        principal = state.get("principal") if isinstance(state, dict) else None
        client = scope.get("client")
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "customer_id": str(principal.customer_id) if principal is not None else None,
            "client": client[0] if client else None,
        }
        request_line.write(level, fields)
