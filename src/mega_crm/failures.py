"""What the server answers when a dependency fails or a bug escapes: one place for both.

* An exception no route handled is answered here, in the envelope, and logged once: 500
  `api_error`, or 503 `api_error` when the database is unavailable (`database_unavailable`).
  Starlette's own last-resort handler (ServerErrorMiddleware) sends its 500 and then re-raises,
  so uvicorn logged the traceback a second time and closed the keep-alive connection: the
  client's next request on it was reset, and it could not tell whether a POST had been applied.
  Answered here, the exception never reaches it, and the connection stays usable.
* `OutageLog`: a dependency's outage is logged when it starts and when it ends, not per request.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

import psycopg
from sqlalchemy import exc as sa_exc
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mega_crm.errors import ServiceUnavailableError, error_response

log = logging.getLogger("mega_crm")

DATABASE_UNAVAILABLE = "The database is not answering; retry shortly."
CONCURRENT_CONFLICT = "A concurrent request conflicted with this one; retry it."


class OutageLog:
    """Logs a dependency going down once, and coming back once (thread-safe).

    `down(detail)` -> True when this call started the outage (it logged); `up()` -> True when
    this call ended one (it logged)."""

    def __init__(self, what: str, consequence: str) -> None:
        self.what = what
        self.consequence = consequence
        self._down = False
        self._lock = threading.Lock()

    @property
    def is_down(self) -> bool:
        return self._down

    def down(self, detail: str) -> bool:
        with self._lock:
            if self._down:
                return False
            self._down = True
        log.error("%s unavailable, %s: %s", self.what, self.consequence, detail)
        return True

    def up(self) -> bool:
        if not self._down:  # the common case: no lock
            return False
        with self._lock:
            if not self._down:
                return False
            self._down = False
        log.warning("%s available again", self.what)
        return True


database_outage = OutageLog("database", "requests are answered 503")


def concurrent_conflict(exc: BaseException) -> bool:
    """True for a transaction PostgreSQL rolled back for another's sake (SQLSTATE class 40: a
    deadlock, a serialization failure): the request may simply be sent again, and the database
    is not down. psycopg raises them as OperationalErrors: checked first."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return isinstance(orig, psycopg.Error) and (orig.sqlstate or "").startswith("40")


def database_unavailable(exc: BaseException) -> bool:
    """True for the failures of the database rather than of the request: a timeout (ours, the
    pool's checkout, the connect timeout, PostgreSQL's statement_timeout), a lost connection, a
    locked, full or unreadable SQLite file. PostgreSQL's OperationalError is exactly that class
    of errors ("related to the database's operation and not necessarily under the control of the
    programmer", PEP 249); SQLite's also covers a mistyped table or column, which stays a 500."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(orig, sqlite3.OperationalError):
        return any(sign in str(orig).lower() for sign in _SQLITE_UNAVAILABLE)
    return isinstance(exc, _UNAVAILABLE) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    )


# The drivers' own classes too: the hot paths use raw DBAPI connections (Database.raw_read),
# whose errors SQLAlchemy does not wrap.
_UNAVAILABLE = (
    ServiceUnavailableError,
    sa_exc.TimeoutError,
    sa_exc.OperationalError,
    psycopg.OperationalError,
)
_SQLITE_UNAVAILABLE = ("locked", "busy", "disk", "full", "unable to open", "i/o error", "readonly")


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class UnexpectedErrorMiddleware:
    """Answers any exception the app raised while handling a request (see the module docstring).

    Installed innermost among the middlewares, so the others (rate-limit headers, metrics)
    see an ordinary response. Exceptions raised by `receive` (a client that went away, a body
    over the size limit) belong to the layers outside and pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        from_receive: list[BaseException] = []

        async def tracking_receive() -> Message:
            try:
                return await receive()
            except Exception as exc:
                from_receive.append(exc)
                raise

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, tracking_receive, tracking_send)
        except Exception as exc:
            if exc in from_receive:
                raise
            if isinstance(exc, ClientDisconnect):  # nobody to answer, nothing wrong here
                return
            where = f"{scope.get('method')} {scope.get('path')}"
            if concurrent_conflict(exc):  # not an outage: said once per request, as a warning
                log.warning("a concurrent transaction conflicted on %s: %s", where, _short(exc))
                response = error_response(503, "api_error", CONCURRENT_CONFLICT, {"Retry-After": "1"})
            elif database_unavailable(exc):
                database_outage.down(_short(exc))  # logs once per outage (Database.run ends it)
                response = error_response(503, "api_error", DATABASE_UNAVAILABLE, {"Retry-After": "1"})
            else:
                log.error("unhandled error on %s", where, exc_info=exc)
                response = error_response(500, "api_error", "Internal server error.")
            if started:  # half a response is out: nothing to answer with; uvicorn closes the connection
                return
            await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
