"""Prometheus metrics (prometheus-client), served at GET /metrics.

Names follow Prometheus conventions (`_total` counters, `_seconds` histograms). Labels hold only
route templates, methods, statuses, buckets and outcomes: never a customer's data or id.

Several processes: with PROMETHEUS_MULTIPROC_DIR set (before the process starts), every process
writes its samples to files in that directory and /metrics adds them up across processes
(prometheus-client's multiprocess mode). `mega-crm serve --workers N` sets it to a fresh
directory when it is unset; separate `mega-crm worker` processes on the same host share it when
given the same directory. Gauges read from the database (pending deliveries, inactive webhooks)
are computed at scrape time by the process answering the scrape.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from mega_crm.db import Database

# prometheus-client leaves these three unannotated: typed here once, as its source defines them.
_disable_created_metrics = cast(Callable[[], None], disable_created_metrics)
_multiprocess_collector = cast(Callable[[CollectorRegistry], Collector], multiprocess.MultiProcessCollector)
_mark_process_dead = cast(Callable[[int], None], multiprocess.mark_process_dead)

_disable_created_metrics()  # the *_created series double the output and nothing here uses them

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
UNMATCHED_ROUTE = "<unmatched>"  # any path no route serves: one label value, whatever was asked

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "mega_http_requests_total", "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)  # fmt: skip
HTTP_LATENCY = Histogram(
    "mega_http_request_duration_seconds", "Time from request to the end of the response, by route template",
    ["route"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
RATE_LIMIT_REFUSALS = Counter(
    "mega_rate_limit_refusals_total", "Requests refused with 429, by rate-limit bucket", ["bucket"]
)
IDEMPOTENT_REPLAYS = Counter(
    "mega_idempotent_replays_total", "Responses replayed for a repeated Idempotency-Key, by operation",
    ["operation"],
)  # fmt: skip
LEADS_CREATED = Counter(
    "mega_leads_created_total", "createLead requests committed, by outcome (created, merged)", ["outcome"]
)
LEAD_WRITE_RETRIES = Counter(
    "mega_lead_write_retries_total",
    "createLead writes run again with the customer's lock first, after another write changed the "
    "leads they matched between their reads and their write (PostgreSQL)",
)
BULK_ROWS = Counter(
    "mega_bulk_rows_total", "bulkImportLeads rows committed, by outcome (created, updated, skipped, failed)",
    ["outcome"],
)  # fmt: skip
WEBHOOK_ATTEMPTS = Counter(
    "mega_webhook_attempts_total", "Webhook delivery attempts, by result (succeeded, failed)", ["result"]
)
WEBHOOK_DELIVERIES = Counter(
    "mega_webhook_deliveries_total",
    "Webhook deliveries finished, by outcome (succeeded, failed)",
    ["outcome"],
)
WEBHOOK_ATTEMPT_LATENCY = Histogram(
    "mega_webhook_attempt_duration_seconds", "Time of one webhook delivery attempt (request to answer)",
    buckets=_LATENCY_BUCKETS,
)  # fmt: skip
DB_POOL_IN_USE = Gauge(
    "mega_db_pool_connections_in_use", "Database connections checked out of the pool",
    multiprocess_mode="livesum",
)  # fmt: skip

_http_children: dict[tuple[str, str, int], Counter] = {}
_latency_children: dict[str, Histogram] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request (children cached: `labels()` costs more than `inc()`)."""
    key = (route, method, status)
    child = _http_children.get(key)
    if child is None:
        child = _http_children[key] = HTTP_REQUESTS.labels(route, method, str(status))
    child.inc()
    latency = _latency_children.get(route)
    if latency is None:
        latency = _latency_children[route] = HTTP_LATENCY.labels(route)
    latency.observe(seconds)


def observe_webhook_attempt(succeeded: bool, final: bool, latency_ms: int | None) -> None:
    """One delivery attempt; `final`: the delivery is finished with it (succeeded or given up)."""
    outcome = "succeeded" if succeeded else "failed"
    WEBHOOK_ATTEMPTS.labels(outcome).inc()
    if final:
        WEBHOOK_DELIVERIES.labels(outcome).inc()
    if latency_ms is not None:
        WEBHOOK_ATTEMPT_LATENCY.observe(latency_ms / 1000)


_instrumented_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def instrument_pool(engine: Engine) -> None:
    """Keep DB_POOL_IN_USE current from the engine's pool checkout/checkin events."""
    from sqlalchemy import event

    if engine in _instrumented_engines:  # one app per engine in production; tests share
        return
    _instrumented_engines.add(engine)

    @event.listens_for(engine, "checkout")
    def _checkout(*_args: Any) -> None:
        DB_POOL_IN_USE.inc()

    @event.listens_for(engine, "checkin")
    def _checkin(*_args: Any) -> None:
        DB_POOL_IN_USE.dec()


class DeliveryBacklogCollector(Collector):
    """Scrape-time gauges from the database: pending deliveries, the age of the oldest one, and
    webhooks that are inactive. One aggregate query each, across customers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import text

        from mega_crm.db import as_datetime, utcnow

        # By table name: the webhooks package imports this one (no import back, no cycle).
        with self.db.read_session() as session:
            pending, oldest = session.execute(
                text("SELECT count(*), min(created_at) FROM webhook_deliveries WHERE status = 'pending'")
            ).one()
            inactive = session.scalar(text("SELECT count(*) FROM webhooks WHERE is_active IS false"))
        oldest_at = as_datetime(oldest)
        age = (utcnow() - oldest_at).total_seconds() if oldest_at else 0.0
        yield GaugeMetricFamily(
            "mega_webhook_deliveries_pending", "Deliveries waiting for an attempt", pending
        )
        yield GaugeMetricFamily(
            "mega_webhook_oldest_pending_age_seconds", "Age of the oldest pending delivery (0: none)", age
        )
        yield GaugeMetricFamily("mega_webhooks_inactive", "Webhooks switched off (is_active false)", inactive)


WEBHOOKS_DISABLED = Counter(
    "mega_webhooks_disabled_total",
    "Webhooks the delivery worker switched off, by reason (gone: 410; failing: failures in a row)",
    ["reason"],
)
# Rate-limit storage breaker (ratelimit.limiter.CircuitBreaker.STATES), of the answering process.
REDIS_CIRCUIT_STATES = {"closed": 0, "open": 1, "half_open": 2}


def render(db: Database, redis_circuit: str | None = None) -> tuple[bytes, str]:
    """-> (the exposition text of every metric of this deployment's processes, its content type).
    `redis_circuit`: the Redis breaker's state in this process ("closed", "open", "half_open"),
    None without Redis. Blocking (database queries): call it off the event loop."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        _multiprocess_collector(registry)  # registers itself
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if redis_circuit is not None:
        body += (
            b"# HELP mega_redis_circuit_state Redis breaker of the answering process: "
            b"0 closed, 1 open (Redis skipped), 2 half-open (probing)\n"
            b"# TYPE mega_redis_circuit_state gauge\n"
            + f"mega_redis_circuit_state {REDIS_CIRCUIT_STATES[redis_circuit]}\n".encode()
        )
    scraped = CollectorRegistry()
    scraped.register(DeliveryBacklogCollector(db))
    started = time.perf_counter()
    body += generate_latest(scraped)
    body += (
        b"# HELP mega_metrics_scrape_db_seconds Time the scrape-time database gauges took\n"
        b"# TYPE mega_metrics_scrape_db_seconds gauge\n"
        + f"mega_metrics_scrape_db_seconds {time.perf_counter() - started:.6f}\n".encode()
    )
    return body, CONTENT_TYPE_LATEST


def process_exited() -> None:
    """In multiprocess mode, drop this process's live gauges (call at shutdown)."""
    if MULTIPROCESS:
        _mark_process_dead(os.getpid())
