"""The webhook benchmark: delivery throughput against a bare httpx loop, and createLead-to-arrival
latency with an idle worker.

- Throughput: N pending deliveries committed at once to one webhook; one `mega-crm worker`
  process (concurrency C) delivers them to a local receiver. Baseline: a bare httpx loop in this
  process posting the same signed bodies to the same receiver with the same concurrency.
  Target: the worker reaches at least 70% of the bare loop's rate, with endpoint health tracking on.
- Latency: the real server (`mega-crm serve`-like, in-process worker, idle) receives createLead
  calls one at a time; the figure is the time from the createLead response to the delivery's
  arrival at the receiver. Targets: p50 < 50 ms, p99 < 250 ms.

The receiver is a minimal asyncio HTTP/1.1 server in its own process (`python -m bench.webhooks
receive --port P`), so neither side shares a GIL with it. Knobs: MEGA_BENCH_WEBHOOK_DELIVERIES
(default 3000), MEGA_BENCH_WEBHOOK_CONCURRENCY (16), MEGA_BENCH_WEBHOOK_LATENCY_SAMPLES (200),
MEGA_BENCH_SKIP_POSTGRES.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import (
    BENCH_SECRET,
    ROOT,
    Server,
    env_int,
    free_port,
    make_tenant,
    postgres_unreachable,
    postgres_url,
    redacted,
)

HOOK_PATH = "/hook"
BARE_PATH = "/bare"


# --- the receiver (subprocess) ----------------------------------------------------------------


async def _receive(port: int) -> None:
    counts = {HOOK_PATH: 0, BARE_PATH: 0}
    arrivals: dict[str, float] = {}  # lead id -> time.time() of its first arrival
    marker = b'"lead":{"id":"'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.time()
                request_line, _, rest = head.partition(b"\r\n")
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                length = 0
                for line in rest.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                reply = b"ok"
                if path == "/reset":
                    counts.update({HOOK_PATH: 0, BARE_PATH: 0})
                    arrivals.clear()
                elif method == "POST":
                    counts[path] = counts.get(path, 0) + 1
                    at = body.find(marker)
                    if at >= 0:
                        arrivals.setdefault(body[at + len(marker) : at + len(marker) + 36].decode(), now)
                elif path == "/stats":
                    reply = orjson.dumps(counts)
                elif path.startswith("/arrival/"):
                    reply = orjson.dumps(arrivals.get(path.rsplit("/", 1)[1]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


@contextmanager
def receiver_process() -> Any:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.webhooks", "receive", "--port", str(port)], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base + "/stats", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the receiver did not start") from None
            time.sleep(0.05)
    try:
        yield base
    finally:
        proc.kill()
        proc.wait()


# --- databases --------------------------------------------------------------------------------


def fresh_postgres_url(base: str) -> str:
    from urllib.parse import quote

    from sqlalchemy import text

    from mega_crm.db import Database

    db = Database(base)
    with db.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS mega_bench_webhooks CASCADE"))
        conn.execute(text("CREATE SCHEMA mega_bench_webhooks"))
    db.dispose()
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote('-csearch_path=mega_bench_webhooks')}"


def register_webhook(db: Any, customer_id: uuid.UUID, url: str) -> uuid.UUID:
    from mega_crm.webhooks import service
    from mega_crm.webhooks.schemas import WebhookCreateRequest
    from mega_crm.webhooks.signing import SecretBox

    request = WebhookCreateRequest(url=url, retry_attempts=0)
    target = service.check_url(url, allow_private=True)
    with db.write_session() as session:
        created = service.create_webhook(
            session, customer_id, request, target, SecretBox(BENCH_SECRET.encode())
        )
    return uuid.UUID(created["webhook"]["id"])


def sample_lead(i: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "id": str(uuid.uuid4()),
        "contact_name": f"Bench Lead {i}",
        "contact_phone": f"+1206555{i % 10000:04d}",
        "contact_email": f"bench{i}@example.com",
        "source_platform": "direct",
        "source_type": "manual",
        "lead_line": "buyer",
        "current_stage": {"slug": "new", "name": "New"},
        "custom_fields": {"lead_line": "buyer", "budget": 500000},
        "created_at": now,
        "updated_at": now,
    }


def seed_deliveries(db: Any, customer_id: uuid.UUID, webhook_id: uuid.UUID, count: int) -> None:
    """`count` lead.created events with one pending delivery each, committed at once."""
    from mega_crm.db import utcnow
    from mega_crm.events import outbox

    with db.write_session() as session:
        now = utcnow()
        for i in range(count):
            lead = sample_lead(i)
            event_id = outbox.insert_event(
                session, customer_id, "lead.created", uuid.UUID(lead["id"]), lead, None, now
            )
            outbox.insert_deliveries(session, event_id, [webhook_id], now)
        outbox.notify_workers(session)


def pending_count(db: Any) -> int:
    from sqlalchemy import func, select

    from mega_crm.webhooks.models import WebhookDelivery

    with db.read_session() as session:
        return int(
            session.scalar(select(func.count()).where(WebhookDelivery.status == "pending")) or 0  # type: ignore[arg-type]
        )


# --- throughput -------------------------------------------------------------------------------


def worker_env(url: str, concurrency: int) -> dict[str, str]:
    return {
        **os.environ,
        "MEGA_DATABASE_URL": url,
        "MEGA_SECRET_KEY": BENCH_SECRET,
        "MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS": "1",
        "MEGA_WEBHOOK_WORKER_CONCURRENCY": str(concurrency),
        # One webhook here: let it use every slot, as the bare loop does.
        "MEGA_WEBHOOK_ENDPOINT_CONCURRENCY": str(concurrency),
        # SQLite has no NOTIFY across processes: poll often, so the figure is not the idle sleep.
        "MEGA_WEBHOOK_POLL_SECONDS": "0.05",
        "MEGA_LOG_LEVEL": "warning",
    }


def wait_for_count(base: str, path: str, count: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base) as client:
        while True:
            if client.get("/stats").json().get(path, 0) >= count:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {client.get('/stats').json()} of {count} arrived")
            time.sleep(0.01)


def worker_throughput(url: str, base: str, deliveries: int, concurrency: int) -> tuple[float, float]:
    """-> (arrivals per second, settled (recorded) deliveries per second)."""
    from mega_crm.db import Database

    db = Database(url)
    try:
        tenant = make_tenant(db, f"bench-webhooks-{uuid.uuid4().hex[:6]}", owners=1)
        webhook_id = register_webhook(db, tenant.customer_id, base + HOOK_PATH)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mega_crm.cli", "worker"], env=worker_env(url, concurrency), cwd=ROOT
        )
        try:
            time.sleep(3.0)  # started and idle
            httpx.post(base + "/reset")
            seed_started = time.perf_counter()
            seed_deliveries(db, tenant.customer_id, webhook_id, deliveries)
            committed = time.perf_counter()
            arrived = wait_for_count(base, HOOK_PATH, deliveries)
            while pending_count(db):
                time.sleep(0.01)
            settled = time.perf_counter()
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"    (seeding {deliveries} deliveries took {committed - seed_started:.2f} s)")
        return deliveries / (arrived - committed), deliveries / (settled - committed)
    finally:
        db.dispose()


def bare_loop_throughput(base: str, deliveries: int, concurrency: int) -> float:
    from mega_crm.webhooks.delivery import build_body, signed_headers
    from mega_crm.webhooks.signing import new_webhook_secret

    secret = new_webhook_secret()
    requests = []
    for i in range(deliveries):
        now = datetime.now(UTC)
        body = build_body("lead.created", sample_lead(i), now)
        requests.append(
            (body, signed_headers(secret, str(uuid.uuid4()), "lead.created", body, int(now.timestamp())))
        )

    async def run() -> float:
        queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:

            async def poster() -> None:
                while not queue.empty():
                    body, headers = queue.get_nowait()
                    response = await client.post(base + BARE_PATH, content=body, headers=headers)
                    response.raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(poster() for _ in range(concurrency)))
            return deliveries / (time.perf_counter() - started)

    httpx.post(base + "/reset")
    return asyncio.run(run())


# --- latency ----------------------------------------------------------------------------------


def create_to_arrival_latency(url: str, base: str, samples: int) -> tuple[list[float], list[float]]:
    """-> (ms from createLead response to arrival, ms from createLead request to arrival)."""
    from mega_crm.db import Database

    db = Database(url)
    os.environ["MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS"] = "1"
    try:
        with Server(url) as server:
            tenant = make_tenant(db, f"bench-webhooks-{uuid.uuid4().hex[:6]}", owners=1)
            with (
                httpx.Client(base_url=server.base, headers=tenant.headers) as api,
                httpx.Client(base_url=base) as rx,
            ):
                r = api.post("/api/agents/crm/lead-webhooks", json={"url": base + HOOK_PATH})
                r.raise_for_status()
                from_response: list[float] = []
                from_request: list[float] = []
                for i in range(samples + 5):
                    sent = time.time()
                    r = api.post(
                        "/api/agents/crm/leads", json={"contact_email": f"lat{uuid.uuid4().hex}@example.com"}
                    )
                    answered = time.time()
                    r.raise_for_status()
                    lead_id = r.json()["lead"]["id"]
                    deadline = time.monotonic() + 5
                    while (arrived := rx.get(f"/arrival/{lead_id}").json()) is None:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"lead {lead_id} was not delivered within 5 s")
                        time.sleep(0.001)
                    if i >= 5:  # warm-up
                        from_response.append((arrived - answered) * 1000)
                        from_request.append((arrived - sent) * 1000)
                    time.sleep(0.02)  # let the worker go idle again
        return from_response, from_request
    finally:
        os.environ.pop("MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS", None)
        db.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# --- main ---------------------------------------------------------------------------------------


def run_backend(name: str, url: str, base: str) -> list[tuple[str, str, bool]]:
    from mega_crm.db import Database
    from mega_crm.migrate import upgrade

    upgrade(Database(url).url)
    deliveries = env_int("MEGA_BENCH_WEBHOOK_DELIVERIES", 3000)
    concurrency = env_int("MEGA_BENCH_WEBHOOK_CONCURRENCY", 16)
    samples = env_int("MEGA_BENCH_WEBHOOK_LATENCY_SAMPLES", 200)
    print(f"\n=== Webhooks on {name} ({redacted(url)}) ===", flush=True)
    print(f"  throughput: {deliveries} deliveries, concurrency {concurrency}", flush=True)
    bare = bare_loop_throughput(base, deliveries, concurrency)
    arrived_rate, settled_rate = worker_throughput(url, base, deliveries, concurrency)
    ratio = settled_rate / bare
    print(f"    bare httpx loop         {bare:8.0f} posts/s")
    print(f"    one worker, arrivals    {arrived_rate:8.0f} deliveries/s")
    print(f"    one worker, recorded    {settled_rate:8.0f} deliveries/s  ({ratio:.0%} of the bare loop)")
    print(f"  latency: {samples} createLead calls, idle worker", flush=True)
    from_response, from_request = create_to_arrival_latency(url, base, samples)
    p50, p99 = statistics.median(from_response), percentile(from_response, 0.99)
    print(f"    response -> arrival     p50 {p50:6.1f} ms   p99 {percentile(from_response, 0.99):6.1f} ms")
    print(
        f"    request  -> arrival     p50 {statistics.median(from_request):6.1f} ms   "
        f"p99 {percentile(from_request, 0.99):6.1f} ms"
    )
    return [
        (f"{name}: worker rate >= 70% of bare loop", f"{ratio:.0%}", ratio >= 0.7),
        (f"{name}: createLead -> arrival p50 < 50 ms", f"{p50:.1f} ms", p50 < 50),
        (f"{name}: createLead -> arrival p99 < 250 ms", f"{p99:.1f} ms", p99 < 250),
    ]


def main() -> None:
    print(f"MEGA CRM webhook benchmark — {os.cpu_count()} CPUs", flush=True)
    results: list[tuple[str, str, bool]] = []
    with receiver_process() as base, tempfile.TemporaryDirectory() as tmp:
        results += run_backend("SQLite", f"sqlite:///{Path(tmp) / 'webhooks.db'}", base)
        pg_url, source = postgres_url()
        if os.environ.get("MEGA_BENCH_SKIP_POSTGRES"):
            print("\n=== Webhooks on PostgreSQL: skipped (MEGA_BENCH_SKIP_POSTGRES is set) ===")
        elif (reason := postgres_unreachable(pg_url)) is not None:
            print(f"\n=== Webhooks on PostgreSQL: skipped — {redacted(pg_url)} ({source}): {reason} ===")
        else:
            results += run_backend("PostgreSQL", fresh_postgres_url(pg_url), base)
    print("\n=== Webhook summary ===")
    for what, figure, ok in results:
        print(f"  {'PASS' if ok else 'MISS'}  {what:<50} {figure:>9}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks")
    sub = parser.add_subparsers(dest="command")
    receive = sub.add_parser("receive", help="run the benchmark's receiver")
    receive.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "receive":
        asyncio.run(_receive(args.port))
    else:
        main()
