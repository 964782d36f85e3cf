"""Structured logs with structlog: one JSON (or key=value text) line per event, on stderr.

stderr, as uvicorn and Python's logging do by default, so stdout stays for what commands print
(`--json` output is exactly one object). MEGA_LOG_FORMAT=json|text (unset: json unless stderr,
where the lines go, is a terminal). Every line has `timestamp`
(ISO 8601, UTC), `level`, `event` and, inside a request, `request_id`. The standard library's
loggers (uvicorn, alembic, mega_crm's own `logging` calls) go through the same renderer, so a
process writes one format. uvicorn's access log is replaced by the request line of
`observability.middleware` (it printed the raw path and query string, which may hold contact
details).

Contact details and secrets never reach a line: the request line carries only the route
template, and every other string value passes `redact()` (emails, phone numbers, API tokens and
webhook secrets are masked), e.g. an exception message quoting SQL parameters.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson
import structlog

# The request being served on this task (set by the middleware; empty outside requests).
request_id_var: ContextVar[str | None] = ContextVar("mega_request_id", default=None)

_SECRETS = re.compile(
    r"mega_whsec_[A-Za-z0-9_\-]+|mega_[0-9a-fA-F]{16,}"  # webhook secrets, API tokens
    r"|[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"  # emails
    r"|\+\d{7,15}\b|\(\d{3}\)\s*\d{3}[\s.\-]\d{4}|\b\d{3}[.\-]\d{3}[.\-]\d{4}\b"  # phones
)
# Fields written by this package whose values are never contact details (not scanned: hot path).
_SAFE_KEYS = frozenset(
    {"timestamp", "level", "logger", "request_id", "method", "route", "status", "duration_ms",
     "customer_id", "client", "delivery_id", "webhook_id", "attempt", "status_code", "latency_ms",
     "outcome"}
)  # fmt: skip


def redact(text: str) -> str:
    """`text` with emails, phone numbers, API tokens (`mega_…`) and webhook secrets
    (`mega_whsec_…`) replaced by `[redacted]`."""
    return _SECRETS.sub("[redacted]", text)


def _redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if key not in _SAFE_KEYS and isinstance(value, str):
            event[key] = redact(value)
    return event


def _add_request_id(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if "request_id" not in event:
        rid = request_id_var.get()
        if rid is not None:
            event["request_id"] = rid
    return event


def _orjson_dumps(event: dict[str, Any], **_kw: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def resolve_format(configured: str | None) -> str:
    """ "json" or "text": MEGA_LOG_FORMAT, else json unless stderr (the log stream) is a terminal."""
    if configured:
        return configured
    return "text" if sys.stderr.isatty() else "json"


_HANDLER_NAME = "mega_crm"


def configure_logging(level: str = "info", log_format: str | None = None) -> None:
    """Route every log line of the process (structlog's and the standard library's) to stderr in
    `log_format` at `level` (a logging level name, e.g. "info"). Idempotent."""
    fmt = resolve_format(log_format)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact_processor,
                renderer,
            ],
        )
    )
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == _HANDLER_NAME or type(h) is logging.StreamHandler]
    for old in ours:
        root.removeHandler(old)  # ours from an earlier call, or basicConfig's (not pytest's capture)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter on every start
    # httpx logs each request's whole URL at INFO: a webhook URL's path and query string may
    # hold a receiver's token. The delivery log and webhook_attempt lines say what happened.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's own handlers would print a second, differently formatted copy of each line.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the request line replaces it
    request_line.configure(numeric, fmt, sys.stderr)


class RequestLine:
    """The line each request logs, written straight to the log stream in the configured format,
    with the keys and shape of every other line. Not through structlog's processor chain: that
    took 18–21 µs a line, this 3.5 µs, on a route whose whole cost is ~250 µs. Buffered: see
    _flush_every. Its fields are only ever route templates, ids, numbers and the client address,
    so it needs no redaction. Off until configure_logging() runs (as in tests that build the app
    in-process)."""

    def __init__(self) -> None:
        self.info = self.error = False
        self.json = True
        self.stream: IO[bytes] | None = None
        self._flusher: threading.Thread | None = None

    def configure(self, level: int, fmt: str, out: Any) -> None:
        """Write to the text stream `out` (its binary buffer for JSON) lines of `level` and above."""
        self.info, self.error = level <= logging.INFO, level <= logging.ERROR
        self.json = fmt == "json"
        self.stream = getattr(out, "buffer", None)
        self._text = out
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_every, name="mega-log-flush", daemon=True)
            self._flusher.start()

    def _flush_every(self, seconds: float = 0.2) -> None:
        """JSON request lines are buffered and flushed from here, every `seconds`: a write system
        call per request cost ~1.5 µs more in the bench (of ~9 µs for metrics + line) and hands
        the GIL to the database threads mid-request. Error lines, and other loggers' lines, are
        flushed at once; a crash loses at most the last `seconds` of request lines."""
        while True:
            time.sleep(seconds)
            stream = self.stream
            if stream is not None:
                with contextlib.suppress(Exception):  # a closed stream at exit: nothing to flush
                    stream.flush()

    def write(self, level: str, fields: dict[str, Any]) -> None:
        """Write one line (`level` "info" or "error"), if the configured level lets it through."""
        if not (self.error if level == "error" else self.info):
            return
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        if self.json and self.stream is not None:
            fields.update(event="request", level=level, timestamp=now)
            self.stream.write(orjson.dumps(fields) + b"\n")
            if level == "error":
                self.stream.flush()
            return
        pairs = " ".join(f"{key}={value}" for key, value in fields.items())
        self._text.write(f"{now} [{level:<9}] request  {pairs}\n")
        self._text.flush()


request_line = RequestLine()


# uvicorn.run(log_config=...) : keep the configuration above instead of installing its own.
UVICORN_LOG_CONFIG: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}


def get_logger(name: str = "mega_crm") -> Any:
    """A structlog logger: `log.info("event_name", key=value, ...)`."""
    return structlog.get_logger(name)
