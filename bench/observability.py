"""What metrics and request logging cost per request: the same server, the same requests, with
both off (MEGA_METRICS_ENABLED=0, log level warning) and both on (metrics, one JSON line per
request written to a file, as `mega-crm serve` does by default).

A short run on a small SQLite customer (not the 1M dataset): the no-op route, createLead and
listLeads (a page of 100), each measured with off and on servers alternately (off, on, off, on)
so drift on a shared machine hits both. Reported: requests/s per mode and the server's CPU per
request (medians over rounds, and each mode's range), whose difference is the cost of metrics +
logging; then the middleware alone, in this process, around an app that answers at once (the
figure least disturbed by other load); then a trimmed /metrics scrape.

Environment: MEGA_BENCH_OBS_SECONDS (per figure, default 3), MEGA_BENCH_CONNECTIONS (default 8),
MEGA_BENCH_OBS_ROUNDS (off/on pairs, default 2).
"""

from __future__ import annotations

import os
import re
import statistics
import uuid
from typing import Any

import httpx
import orjson

from bench.common import (
    LEADS_PATH,
    NOOP_PATH,
    RESULTS_DIR,
    Server,
    delete_customers_named,
    env_float,
    env_int,
    fmt_rps,
    heading,
    http_request,
    line,
    make_tenant,
    run_load,
)

LIST_QUERY = "?status=active&limit=100"
PREFIX = "bench-obs-"


def _cases(tenant: Any) -> list[tuple[str, Any, int]]:
    run = uuid.uuid4().hex[:6]

    def create(i: int) -> bytes:
        body = orjson.dumps(
            {
                "contact_name": f"Obs Lead {i}",
                "contact_email": f"obs.{run}.{i}.{os.getpid()}@example.com",
                "custom_fields": {"lead_line": "buyer"},
            }
        )
        return http_request("POST", LEADS_PATH, tenant.headers, body)

    noop = http_request("GET", NOOP_PATH)
    listing = http_request("GET", LEADS_PATH + LIST_QUERY, tenant.headers)
    return [
        ("no-op GET /bench/noop", lambda _i: noop, 200),
        ("createLead", create, 201),
        (f"listLeads {LIST_QUERY}", lambda _i: listing, 200),
    ]


def in_process_cost(log_file: Any, calls: int = 20_000) -> None:
    """The middleware alone around an app that answers at once, called in this process: the CPU
    it adds per request without the HTTP server, the threads or the machine's noise around it."""
    import asyncio
    import logging
    import time

    try:
        from mega_crm.observability.logging import request_line
        from mega_crm.observability.middleware import ObservabilityMiddleware
    except ImportError:  # pragma: no cover - a tree without mega_crm.observability
        return

    class Route:
        path = "/api/agents/crm/leads"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = Route
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(_message: Any) -> None:
        return None

    headers = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer x"), (b"x-customer-id", b"y")]

    async def loop(target: Any) -> float:
        started = time.process_time()
        for _ in range(calls):
            scope = {"type": "http", "method": "GET", "headers": headers, "client": ("127.0.0.1", 1)}
            await target(scope, receive, send)
        return (time.process_time() - started) / calls * 1e6

    with open(log_file, "w") as sink:
        request_line.configure(logging.WARNING, "json", sink)
        bare = asyncio.run(loop(app))
        off = asyncio.run(loop(ObservabilityMiddleware(app, metrics_on=False)))
        request_line.configure(logging.INFO, "json", sink)
        on = asyncio.run(loop(ObservabilityMiddleware(app, metrics_on=True)))
        request_line.configure(logging.WARNING, "json", sink)
    line(
        "in-process: the middleware alone, CPU per request",
        f"+{on - bare:.1f} µs",
        f"(metrics + request line; {off - bare:+.1f} µs with both off; bare app {bare:.1f} µs)",
    )


def main() -> None:
    from mega_crm.db import Database
    from mega_crm.migrate import upgrade

    seconds = env_float("MEGA_BENCH_OBS_SECONDS", 3.0)
    connections = env_int("MEGA_BENCH_CONNECTIONS", 8)
    rounds = env_int("MEGA_BENCH_OBS_ROUNDS", 2)
    heading(
        f"Observability cost — metrics + JSON request log on vs off, SQLite, {connections} connections, "
        f"{seconds:g} s per figure, {rounds} off/on round(s)"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{RESULTS_DIR / 'observability.db'}"
    log_path = RESULTS_DIR / "observability-server.log"
    log_path.unlink(missing_ok=True)
    db = Database(url)
    try:
        upgrade(db.url)
        delete_customers_named(db, PREFIX)
        tenant = make_tenant(db, f"{PREFIX}{uuid.uuid4().hex[:8]}")
        labels = [label for label, _make, _expected in _cases(tenant)]
        rps: dict[tuple[str, str], list[float]] = {}
        cpu_ms: dict[tuple[str, str], list[float]] = {}
        scrape = ""
        for round_ in range(rounds):
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):  # neither always first
                with Server(url, observability=mode, output=log_path) as server:
                    for label, make, expected in _cases(tenant):  # new contacts every time: all created
                        result = run_load(server, make, connections=connections, seconds=seconds, warmup=1.0)
                        bad = result.unexpected(expected)
                        if bad:
                            print(f"  UNEXPECTED statuses for {label} ({mode}): {bad}")
                        rps.setdefault((label, mode), []).append(result.rps)
                        cpu_ms.setdefault((label, mode), []).append(
                            result.server_cpu / result.rps * 1000 if result.rps else float("nan")
                        )
                    if mode == "on":
                        scrape = httpx.get(server.base + "/metrics", timeout=10).text
        print(f"  {'':<40} {'off':>12} {'on':>12} {'on/off':>8}   server CPU per request off → on")
        for label in labels:
            off, on = (statistics.median(rps[(label, m)]) for m in ("off", "on"))
            c_off, c_on = (statistics.median(cpu_ms[(label, m)]) for m in ("off", "on"))
            spread = " / ".join(
                f"{min(cpu_ms[(label, m)]) * 1000:.0f}–{max(cpu_ms[(label, m)]) * 1000:.0f}"
                for m in ("off", "on")
            )
            print(
                f"  {label:<40} {fmt_rps(off):>12} {fmt_rps(on):>12} {on / off:8.1%}   "
                f"{c_off * 1000:.0f} µs → {c_on * 1000:.0f} µs ({(c_on - c_off) * 1000:+.0f} µs; "
                f"rounds {spread} µs)",
                flush=True,
            )
        in_process_cost(RESULTS_DIR / "observability-inprocess.log")
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        requests = sum(1 for raw in lines if '"event":"request"' in raw)
        line("JSON request lines written by the 'on' servers", f"{requests:,}", f"({log_path.name})")
        heading("A /metrics scrape after the run (trimmed: mega_* series, no histogram buckets)")
        for raw in scrape.splitlines():
            if raw.startswith("mega_") and "_bucket{" not in raw and not raw.startswith("mega_metrics_"):
                print("  " + re.sub(r"(\d+\.\d{4})\d+", r"\1", raw))
    finally:
        try:
            delete_customers_named(db, PREFIX)
        finally:
            db.dispose()
