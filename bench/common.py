"""Shared benchmark machinery: databases, tenants, the server under test, the load generator, output.

The server under test is the real app (`mega_crm.app.create_app`) served by uvicorn in a
subprocess, exactly like `mega-crm serve` (uvloop + httptools when installed), with one extra
route, `GET /bench/noop`, mounted on the same app instance: the baseline every throughput figure
is compared with. The load generator is a small asyncio HTTP/1.1 keep-alive client running in
this process (a fixed number of connections for a fixed time), cheap enough that it is not what
limits the figures; its own CPU use is printed so that can be checked.

`python -m bench.common serve --url URL --port PORT` is the subprocess entry point.

Tenants, free ports and the server process come from the tests' fixtures (tests/fixtures/
factories.py and processes.py), one copy for both: `python -m bench` runs from the repository
root, where `tests` is importable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import Request  # module level: the route's annotation is resolved here
from tests.fixtures.factories import Tenant
from tests.fixtures.factories import make_tenant as _make_tenant
from tests.fixtures.processes import ServerProcess
from tests.fixtures.processes import free_port as free_port  # for the suites

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCH_SECRET = "bench-secret-key-0123456789abcdef0123456789abcdef"
HUGE_LIMIT = "1000000000/minute"  # per-customer limits high enough never to be hit
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/mega_bench"  # made if missing
NOOP_PATH = "/bench/noop"
AUTH_ONLY_PATH = "/bench/auth-only"
BARE_CREATE_PATH = "/bench/bare-create"  # the floor of a database write: see _bare_routes
BARE_PAGE_PATH = "/bench/bare-page"  # the floor of a page read
LEADS_PATH = "/api/agents/crm/leads"


# --- configuration ---------------------------------------------------------------------------


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)  # accepts 1_000_000
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def postgres_url() -> tuple[str, str]:
    """-> (url, where it came from)."""
    for name in ("MEGA_BENCH_POSTGRES_URL", "MEGA_TEST_POSTGRES_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    return DEFAULT_POSTGRES_URL, "default"


def postgres_unreachable(url: str) -> str | None:
    """None when PostgreSQL answers at `url` (its database is created if the server lacks it),
    else a one-line reason."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from mega_crm.db import normalize_database_url

    try:  # the benchmark's own database, on a server that does not have it yet
        parsed = make_url(normalize_database_url(url))
        engine = create_engine(parsed.set(database="postgres"), connect_args={"connect_timeout": 3})
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                exists = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
                ).first()
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001, S110 - no rights, or no such server: the check below says why
        pass
    try:
        engine = create_engine(normalize_database_url(url), connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "skip PostgreSQL", with the reason
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- tenants ---------------------------------------------------------------------------------


def make_tenant(db: Any, name: str, *, owners: int = 4) -> Tenant:
    """A customer set up the way an operator would (admin service = the CLI's code), with
    custom fields, owners, its stage ids, an all-scopes key named "bench" and per-customer
    limits that are never hit."""
    return _make_tenant(
        db, name=name, owners=owners, limits=(HUGE_LIMIT, HUGE_LIMIT), key_name="bench", stages=True
    )


def new_key(db: Any, customer_id: uuid.UUID, *, owners: list[uuid.UUID], stages: list[uuid.UUID]) -> Tenant:
    """A fresh key for an existing (e.g. cached) customer, whose earlier bench keys are deleted:
    tokens are only stored hashed, so a cached tenant needs a new one every run."""
    from sqlalchemy import delete

    from mega_crm.admin import service as admin
    from mega_crm.auth.models import ApiKey
    from mega_crm.auth.scopes import ALL_SCOPES

    with db.write_session() as session:
        session.execute(delete(ApiKey).where(ApiKey.customer_id == customer_id, ApiKey.name == "bench"))
    admin.set_limits(db, customer_id, HUGE_LIMIT, HUGE_LIMIT)
    issued = admin.issue_key(db, customer_id, list(ALL_SCOPES), name="bench")
    return Tenant(customer_id, issued.token, issued.id, owners, stages)


def delete_customers_named(db: Any, prefix: str, *, exact: bool = False) -> int:
    """Remove tenants a previous (perhaps interrupted) run left behind; leads go with them.
    Every customer whose name starts with `prefix` (or, with `exact`, is exactly it)."""
    from sqlalchemy import delete, select

    from mega_crm.customers.models import Customer

    match = Customer.name == prefix if exact else Customer.name.startswith(prefix, autoescape=True)
    with db.write_session() as session:
        ids = list(session.scalars(select(Customer.id).where(match)))
        if ids:
            session.execute(delete(Customer).where(Customer.id.in_(ids)))
    return len(ids)


# --- the server under test -------------------------------------------------------------------


def server_settings(url: str) -> Any:
    from mega_crm.config import Settings

    return Settings(
        database_url=url,
        secret_key=BENCH_SECRET,
        rate_limit_default=HUGE_LIMIT,
        rate_limit_bulk=HUGE_LIMIT,
        log_level="warning",
    )


def _serve(url: str, port: int, observability: str | None = None) -> None:
    """`observability`: None = the settings' defaults (metrics on, request lines off at log level
    warning); "on" = metrics and a JSON request line per request (log level info, as `serve`);
    "off" = neither (MEGA_METRICS_ENABLED=0, log level warning)."""
    from mega_crm.app import create_app

    settings = server_settings(url)
    if observability is not None:
        on = observability == "on"
        settings = settings.model_copy(
            update={"metrics_enabled": on, "log_level": "info" if on else "warning", "log_format": "json"}
        )
        try:
            from mega_crm.observability.logging import configure_logging
        except ImportError:  # pragma: no cover - a tree without mega_crm.observability
            pass
        else:
            configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)

    @app.get(NOOP_PATH, include_in_schema=False)
    def noop() -> dict[str, bool]:
        """The baseline: a route doing nothing, run in a worker thread (as the lead routes' work is)."""
        return {"ok": True}

    _bare_routes(app)

    try:  # a diagnostic: what the key check + rate limit alone cost, with no lead work
        from starlette.responses import Response

        from mega_crm.api.pipeline import serve
        from mega_crm.auth.scopes import LEADS_READ
    except ImportError:  # pragma: no cover - the request pipeline moved: the bench skips this route
        return _run(app, port)

    @app.get(AUTH_ONLY_PATH, include_in_schema=False)
    async def auth_only(request: Request) -> Response:
        return await serve(request, LEADS_READ, lambda _call: Response(b'{"ok":true}'))

    _run(app, port)


def _bare_routes(app: Any) -> None:
    """Issue 12's floors, on the same server, driver, pool and lanes as the lead routes, with no
    key check, validation or rules: POST BARE_CREATE_PATH writes the body's contact as one lead
    row (one INSERT and its commit, in a write session as createLead's); GET BARE_PAGE_PATH
    reads 100 stored lead documents of the x-customer-id's active leads in listLeads' default
    order, updated_at then id ascending: the rows and index range (customer, status,
    updated_at, id) of the bench's `listLeads ?status=active&limit=100`, in one SELECT. (Until
    session 8 it read the newest created, which sit together at the end of the table: 34
    buffers against the 105 of listLeads' rows at 10k leads, a cheaper floor for other rows.)"""
    from sqlalchemy import bindparam, insert, literal_column, select
    from starlette.responses import Response

    from mega_crm.api.state import app_state
    from mega_crm.db import Query, RawConnection, new_id, utcnow
    from mega_crm.leads.models import Lead

    db = app_state(app).db

    table = Lead.__table__
    columns = [
        "id",
        "customer_id",
        "contact_name",
        "contact_email",
        "email_normalized",
        "source_platform",
        "source_type",
        "status",
        "custom_fields",
        "interaction_count",
        "created_at",
        "updated_at",
    ]
    create = Query(insert(table).values({name: bindparam(name) for name in columns}))
    page = Query(
        select(table.c.document)
        .where(table.c.customer_id == bindparam("customer_id"), table.c.status == "active")
        .order_by(table.c.updated_at, table.c.id)
        .limit(literal_column("100"))  # written out: a prepared statement planned once
    )

    @app.post(BARE_CREATE_PATH, include_in_schema=False)
    async def bare_create(request: Request) -> Response:
        body = orjson.loads(await request.body())
        now = utcnow()
        row = {
            "id": new_id(),
            "customer_id": uuid.UUID(request.headers["x-customer-id"]),
            "contact_name": body.get("contact_name"),
            "contact_email": body["contact_email"],
            "email_normalized": body["contact_email"].lower(),
            "source_platform": body.get("source_platform") or "other",
            "source_type": "form",
            "status": "active",
            "custom_fields": orjson.dumps(body.get("custom_fields") or {}).decode(),
            "interaction_count": 0,
            "created_at": now,
            "updated_at": now,
        }

        def write() -> None:
            with db.write_session() as session:
                RawConnection.of(session).run(create, row)

        await db.run("write", write)
        return Response(orjson.dumps({"id": str(row["id"])}), 201, media_type="application/json")

    @app.get(BARE_PAGE_PATH, include_in_schema=False)
    async def bare_page(request: Request) -> Response:
        customer_id = uuid.UUID(request.headers["x-customer-id"])

        def read() -> bytes:
            with db.raw_read() as raw:
                documents = [d for (d,) in raw.all(page, {"customer_id": customer_id}) if d]
            return b'{"leads":[' + ",".join(documents).encode() + b"]}"

        return Response(await db.run("read", read), media_type="application/json")


def _run(app: Any, port: int) -> None:
    import uvicorn

    # What `mega-crm serve` runs, minus the per-request access log (it is off at log level warning).
    try:
        from mega_crm.api.connections import uvicorn_options
        from mega_crm.observability.logging import UVICORN_LOG_CONFIG
    except ImportError:  # pragma: no cover - an older server
        options: dict[str, Any] = {}
        log_config: Any = None
    else:
        options = uvicorn_options()  # header timeout and connection cap, as `mega-crm serve`
        log_config = UVICORN_LOG_CONFIG
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        proxy_headers=False,
        access_log=False,
        log_config=log_config,
        **options,
    )


class Server(ServerProcess):
    """`python -m bench.common serve` in a subprocess; the context manager waits until its
    /healthz answers (the database is reachable) and stops it with SIGINT."""

    health_path = "/healthz"
    stop_signal = signal.SIGINT
    stop_timeout = 15.0

    def __init__(self, url: str, observability: str | None = None, output: Path | None = None) -> None:
        argv = [sys.executable, "-m", "bench.common", "serve", "--url", url, "--port", "{port}"]
        if observability:
            argv += ["--observability", observability]
        super().__init__(argv, cwd=ROOT)
        self.url = url
        self.observability = observability  # see _serve
        self.output = output  # the server's stdout and stderr (its log lines), else inherited

    def output_path(self) -> Path | None:
        return self.output

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (all its threads)."""
        assert self.proc is not None
        return _process_cpu(self.proc.pid)

    def database_cpu(self) -> dict[int, float] | None:
        """PostgreSQL on this machine: the CPU seconds so far of each backend connected to the
        server's database (its pool's connections), by pid; None for SQLite or a database whose
        processes are not this machine's."""
        if not self.url.startswith("postgresql"):
            return None
        try:
            if self._sampler is None:
                import psycopg
                from sqlalchemy.engine import make_url

                url = make_url(self.url).set(drivername="postgresql").difference_update_query(["pool_mode"])
                self._sampler = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            rows = self._sampler.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        except Exception:  # no sampling: the figure is left out
            return None
        found = {pid: _process_cpu(pid) for (pid,) in rows}
        return {pid: cpu for pid, cpu in found.items() if cpu == cpu} or None  # NaN: not ours

    _sampler: Any = None

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None
        super().__exit__(*exc)


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (NaN if it is not readable here)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- load generator --------------------------------------------------------------------------


def http_request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    """One raw HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    header_lines = head.decode("latin-1").split("\r\n")
    status = int(header_lines[0].split(" ", 2)[1])
    length = 0
    chunked = False
    for line in header_lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: Counter[int]
    latencies_ms: list[float]
    client_cpu: float  # fraction of one core used by the load generator
    server_cpu: float  # fraction of one core used by the server process
    database_cpu: float | None = None  # fraction of one core used by its PostgreSQL backends

    def cpu_ms(self) -> float:
        """Server + database CPU per request, ms (the database's when it was measured)."""
        per_core = self.server_cpu + (self.database_cpu or 0.0)
        return per_core / self.rps * 1000 if self.rps else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def unexpected(self, expected: int) -> str:
        bad = {s: n for s, n in self.statuses.items() if s != expected}
        return ", ".join(f"{n}×{s}" for s, n in sorted(bad.items()))


def combined(loads: list[LoadResult]) -> LoadResult:
    """Several windows of the same load as one: requests and seconds summed, CPU shares
    weighted by each window's length (None for the database's if any window lacked it)."""
    seconds = sum(load.seconds for load in loads)

    def share(values: list[float]) -> float:
        weighted = sum(v * load.seconds for v, load in zip(values, loads, strict=True))
        return weighted / seconds if seconds else 0.0

    statuses: Counter[int] = Counter()
    for load in loads:
        statuses.update(load.statuses)
    database = [load.database_cpu for load in loads]
    return LoadResult(
        requests=sum(load.requests for load in loads),
        seconds=seconds,
        statuses=statuses,
        latencies_ms=[ms for load in loads for ms in load.latencies_ms],
        client_cpu=share([load.client_cpu for load in loads]),
        server_cpu=share([load.server_cpu for load in loads]),
        database_cpu=None if None in database else share([v for v in database if v is not None]),
    )


def run_load(
    server: Server,
    make_request: Callable[[int], bytes],
    *,
    connections: int,
    seconds: float,
    warmup: float,
) -> LoadResult:
    """`connections` keep-alive connections, each sending its next request as soon as the previous
    answer arrived, for `warmup` + `seconds`; only requests completed in the last `seconds` count."""
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        runner = asyncio.run
    return runner(_load(server, make_request, connections, seconds, warmup))  # type: ignore[no-any-return]


async def _load(
    server: Server, make_request: Callable[[int], bytes], connections: int, seconds: float, warmup: float
) -> LoadResult:
    counter = iter(range(10**12))
    start = time.perf_counter()
    window_start = start + warmup
    window_end = window_start + seconds
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    marks: dict[str, float] = {}
    database: dict[str, dict[int, float] | None] = {}

    async def worker() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        done = 0
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= window_end:
                    return done
                if t0 >= window_start and "cpu" not in marks:
                    marks["cpu"] = time.process_time()
                    marks["server_cpu"] = server.cpu_seconds()
                    database["start"] = server.database_cpu()
                writer.write(make_request(next(counter)))
                status, _body = await _read_response(reader)
                t1 = time.perf_counter()
                if window_start <= t1 < window_end:
                    done += 1
                    statuses[status] += 1
                    latencies.append((t1 - t0) * 1000)
        finally:
            writer.close()

    counts = await asyncio.gather(*(worker() for _ in range(connections)))
    cpu = time.process_time() - marks.get("cpu", time.process_time())
    server_cpu = server.cpu_seconds() - marks.get("server_cpu", server.cpu_seconds())
    first, last = database.get("start"), server.database_cpu()
    # Backends that ended in the window are missed (a pool keeps its connections).
    database_cpu = None
    if first is not None and last is not None:
        database_cpu = sum(c - first.get(p, 0.0) for p, c in last.items())
    return LoadResult(
        sum(counts), seconds, statuses, latencies, cpu / seconds, server_cpu / seconds,
        None if database_cpu is None else database_cpu / seconds,
    )  # fmt: skip


# --- latency of sequential calls -------------------------------------------------------------


def timed_ms(
    fn: Callable[[int], Any],
    *,
    reps: int,
    warmup: int = 1,
    max_seconds: float = 10.0,
    min_reps: int = 5,
    before: Callable[[int], Any] | None = None,
) -> list[float]:
    """Run fn(i) `warmup` times, then up to `reps` timed times (at least `min_reps`, and no more
    once `max_seconds` of timed calls have passed). `before(i)` runs untimed ahead of each call."""
    for i in range(warmup):
        if before:
            before(-1 - i)
        fn(-1 - i)
    samples: list[float] = []
    spent = 0.0
    for i in range(reps):
        if before:
            before(i)
        t0 = time.perf_counter()
        fn(i)
        dt = time.perf_counter() - t0
        samples.append(dt * 1000)
        spent += dt
        if spent > max_seconds and len(samples) >= min_reps:
            break
    return samples


def p50(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


@contextmanager
def http_client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as client:
        yield client


# --- output ----------------------------------------------------------------------------------


LABEL_WIDTH = 56


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def heading(title: str) -> None:
    print(f"\n{title}", flush=True)


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<{LABEL_WIDTH}} {value:>14}   {note}".rstrip(), flush=True)


def fmt_ms(ms: float) -> str:
    return f"{ms:,.2f} ms" if ms < 100 else f"{ms:,.0f} ms"


def fmt_rps(rps: float) -> str:
    return f"{rps:,.0f} req/s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.common")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the app (plus GET /bench/noop) on 127.0.0.1")
    serve.add_argument("--url", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--observability", choices=["on", "off"], default=None)
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args.url, args.port, args.observability)


if __name__ == "__main__":
    main()
