"""The HTTP server's connections: a deadline for a request's headers, and a cap on connections
that evicts idle ones first, so silent clients cannot exhaust the file descriptors.

uvicorn starts no timer when a connection opens: one that never sends a byte (or sends its
headers a byte at a time) was held forever, and 21,000 of them used up every file descriptor,
locking every client out. Here (a uvicorn protocol, so `mega-crm serve` needs no proxy in front):

* a connection must deliver a complete request head within MEGA_HEADER_TIMEOUT_SECONDS of
  opening, or of starting its next request on a kept-alive connection; else it is closed (the
  rule of nginx's `client_header_timeout`). Idle kept-alive connections are closed by uvicorn's
  own keep-alive timeout (5 s).
* above MEGA_MAX_CONNECTIONS open connections (at most what the file-descriptor limit leaves),
  each new connection closes the oldest one that is waiting for a request, so a flood of silent
  connections only ever displaces its own kind, while a real client sends its request at once and
  is served. Connections in the middle of a request are never evicted.
* `mega-crm serve` raises the process's soft file-descriptor limit to its hard limit.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from functools import lru_cache
from typing import Any

log = logging.getLogger("mega_crm")

FD_RESERVE = 256  # for the database pool, SQLite's files, webhook deliveries, logs


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit -> the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def listen_backlog(fd_limit: int) -> int:
    """The listening socket's backlog: connections accepted in one go count against the fds
    before the cap can act on them, so it stays a small share of the limit."""
    return max(16, min(2048, fd_limit // 8))


def connection_cap(configured: int, fd_limit: int) -> int:
    """Open connections allowed before idle ones are evicted: MEGA_MAX_CONNECTIONS, at most what
    the fd limit leaves after the reserve and the backlog."""
    room = fd_limit - FD_RESERVE - listen_backlog(fd_limit)
    return max(16, min(configured, room))


@lru_cache(maxsize=1)
def _limits() -> tuple[float, int]:
    """(header timeout seconds, connection cap) for this process (read once: the protocol class
    is instantiated per connection, in each `--workers` process)."""
    from mega_crm.config import get_settings

    settings = get_settings()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return settings.header_timeout_seconds, connection_cap(settings.max_connections, soft)


def uvicorn_options() -> dict[str, Any]:
    """Keyword arguments for uvicorn.run/Config: the guarded protocol (when httptools, the
    parser of uvicorn[standard], is installed) and the backlog that goes with the cap."""
    options: dict[str, Any] = {"backlog": listen_backlog(resource.getrlimit(resource.RLIMIT_NOFILE)[0])}
    protocol = guarded_protocol()
    if protocol is None:
        log.warning("httptools is not installed: no header timeout or connection cap (pip install httptools)")
    else:
        options["http"] = protocol
    return options


def guarded_protocol() -> type[asyncio.Protocol] | None:
    try:
        return GuardedHttpToolsProtocol
    except NameError:  # pragma: no cover - httptools missing
        return None


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn without httptools
    pass
else:

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with the header deadline and the eviction above."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            # Connections waiting for a request, oldest first (shared by the server's protocols).
            waiting = getattr(self.server_state, "mega_waiting", None)
            if waiting is None:
                waiting = self.server_state.mega_waiting = {}  # type: ignore[attr-defined]
            self._waiting: dict[GuardedHttpToolsProtocol, None] = waiting

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            timeout, cap = _limits()
            if len(self.connections) > cap:
                for victim in self._waiting:  # the oldest waiting one
                    victim._close()
                    break
            self._await_head(timeout)

        def _await_head(self, timeout: float) -> None:
            self._waiting.pop(self, None)
            self._waiting[self] = None  # newest
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout, self._close)

        def _head_arrived(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            self._waiting.pop(self, None)

        def _close(self) -> None:
            self._head_arrived()
            if not self.transport.is_closing():
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # the next request on a kept-alive connection
                self._await_head(_limits()[0])

        def on_headers_complete(self) -> None:
            self._head_arrived()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._waiting[self] = None  # idle: evictable (uvicorn's keep-alive timer runs)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_arrived()
            super().connection_lost(exc)
