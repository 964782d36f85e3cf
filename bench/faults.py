"""The fault benchmark (issue 8): the server with a dependency that stops answering.

- Hung Redis: requests/s of the key check + rate limit route (`/bench/auth-only`, 8 keep-alive
  connections) with MEGA_REDIS_URL at a healthy Redis (baseline; in-memory counters when none is
  configured), at a listener that accepts connections and never answers (the breaker skips it),
  and at the same listener with the breaker off (MEGA_REDIS_BREAKER_SECONDS=0: each request waits
  for MEGA_REDIS_TIMEOUT_SECONDS), all in this run.
- Hung database: GET leads under load from 8 connections against a private PostgreSQL cluster
  whose processes are stopped (SIGSTOP) for 12 s: the worst latency and the answers meanwhile,
  and how long after SIGCONT the first 200 came. Baseline: the p99 before the stop. Skipped when
  no PostgreSQL server binaries are installed.
- Silent connections: `mega-crm serve` with its file-descriptor limit set to 4096; silent
  connections opened in steps up to 4× the limit, 20 real requests after each step. Baseline:
  plain uvicorn serving the same app (what `mega-crm serve` ran before).

Knobs: MEGA_BENCH_FAULTS_SECONDS (load per measurement, default 5), MEGA_BENCH_REDIS_URL (or
MEGA_TEST_REDIS_URL).
"""

from __future__ import annotations

import http.client
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    AUTH_ONLY_PATH,
    BENCH_SECRET,
    LEADS_PATH,
    ROOT,
    Server,
    env_float,
    free_port,
    http_request,
    make_tenant,
    run_load,
)

FD_LIMIT = 4096
CONNECTIONS = 8


@contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def seeded_sqlite(tmp: str, name: str) -> tuple[str, Any]:
    from mega_crm.db import Database
    from mega_crm.migrate import upgrade

    url = f"sqlite:///{Path(tmp) / name}"
    upgrade(Database(url).url)
    db = Database(url)
    return url, make_tenant(db, "bench faults")


# --- hung Redis ------------------------------------------------------------------------------


def redis_figures(seconds: float) -> list[tuple[str, str]]:
    from tests.fixtures.hung import SilentListener

    print("\n=== Rate limits with a Redis that never answers (/bench/auth-only, 8 connections) ===")
    healthy = os.environ.get("MEGA_BENCH_REDIS_URL") or os.environ.get("MEGA_TEST_REDIS_URL") or ""
    out = []
    with tempfile.TemporaryDirectory() as tmp, SilentListener() as hung:
        url, tenant = seeded_sqlite(tmp, "redis.db")
        request = http_request("GET", AUTH_ONLY_PATH, tenant.headers)
        runs = [
            ("healthy Redis" if healthy else "in-memory counters (no Redis configured)", healthy, "10"),
            *([("in-memory counters (no Redis), for scale", "", "10")] if healthy else []),
            ("hung Redis, breaker on", f"redis://127.0.0.1:{hung.port}/0", "10"),
            ("hung Redis, breaker off", f"redis://127.0.0.1:{hung.port}/0", "0"),
        ]
        baseline = None
        for label, redis_url, breaker in runs:
            with (
                environment(MEGA_REDIS_URL=redis_url, MEGA_REDIS_BREAKER_SECONDS=breaker),
                Server(url) as server,
            ):
                result = run_load(
                    server, lambda _i: request, connections=CONNECTIONS, seconds=seconds, warmup=1
                )
            baseline = baseline or result.rps
            share = result.rps / baseline if baseline else float("nan")
            print(
                f"  {label:<44} {result.rps:8.0f} req/s ({share:6.1%})  p50 {result.p50:7.1f} ms"
                f"  p99 {result.p99:7.1f} ms  {result.unexpected(200) or 'all 200'}"
            )
            out.append((f"req/s, {label}", f"{result.rps:.0f} ({share:.0%})"))
        print(f"  (the hung listener accepted {hung.accepted} connection(s) in all)")
    return out


# --- hung database ---------------------------------------------------------------------------


def database_figures() -> list[tuple[str, str]]:
    from tests.fixtures.pgcluster import PrivateCluster

    print("\n=== A PostgreSQL stopped for 12 s under load (GET leads, 8 connections) ===")
    if (reason := PrivateCluster.unavailable()) is not None:
        print(f"  skipped: {reason}")
        return []
    from mega_crm.db import Database
    from mega_crm.migrate import upgrade

    with PrivateCluster() as cluster:
        upgrade(Database(cluster.url).url)
        tenant = make_tenant(Database(cluster.url), "bench faults")
        request = http_request("GET", LEADS_PATH + "?limit=10", tenant.headers)
        timeline: list[tuple[float, int, float]] = []  # (sent at, status, ms)
        with Server(cluster.url) as server:
            stop = threading.Event()
            paused: dict[str, float] = {}

            def pause_and_resume() -> None:
                time.sleep(3)
                paused["at"] = time.monotonic()
                cluster.pause()
                time.sleep(12)
                cluster.resume()
                paused["until"] = time.monotonic()
                time.sleep(5)
                stop.set()

            threading.Thread(target=pause_and_resume, daemon=True).start()
            clients = [
                threading.Thread(target=_client, args=(server.port, request, stop, timeline))
                for _ in range(8)
            ]
            for c in clients:
                c.start()
            for c in clients:
                c.join()
        before = sorted(ms for at, _s, ms in timeline if at < paused["at"])
        during = [(s, ms) for at, s, ms in timeline if paused["at"] <= at < paused["until"]]
        after_ok = [at for at, s, _ms in timeline if at >= paused["until"] and s == 200]
        worst = max(ms for _s, ms in during) if during else float("nan")
        p99 = before[int(len(before) * 0.99)] if before else float("nan")
        statuses = Counter(s for s, _ms in during)
        recovery = (min(after_ok) - paused["until"]) if after_ok else float("nan")
        print(f"  before the stop: p99 {p99:.1f} ms ({len(before)} requests)")
        print(f"  during the 12 s stop: worst latency {worst:.0f} ms; answers {dict(statuses)}")
        print(f"  after SIGCONT: first 200 after {recovery * 1000:.0f} ms")
    return [
        ("worst latency, PostgreSQL stopped 12 s", f"{worst / 1000:.2f} s"),
        ("first 200 after the database resumed", f"{recovery * 1000:.0f} ms"),
    ]


def _client(
    port: int, request: bytes, stop: threading.Event, timeline: list[tuple[float, int, float]]
) -> None:
    """One keep-alive connection, sequential requests (a new connection if one is lost)."""
    sock: socket.socket | None = None
    while not stop.is_set():
        sent = time.monotonic()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(request)
            status = _read_status(sock)
        except OSError:
            status = 0
            if sock is not None:
                sock.close()
            sock = None
        timeline.append((sent, status, (time.monotonic() - sent) * 1000))
    if sock is not None:
        sock.close()


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError
        body += chunk
    return int(head.split()[1])


# --- silent connections ----------------------------------------------------------------------


class ServeProcess:
    """`mega-crm serve` (or, as the baseline, plain uvicorn on the same app) with a small fd limit."""

    def __init__(self, url: str, *, guarded: bool) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "MEGA_DATABASE_URL": url,
            "MEGA_SECRET_KEY": BENCH_SECRET,
            "MEGA_LOG_LEVEL": "error",
        }
        if guarded:
            command = [sys.executable, "-m", "mega_crm.cli", "serve", "--port", str(self.port), "--no-worker"]
        else:
            env["MEGA_WEBHOOK_WORKER_IN_PROCESS"] = "0"
            command = [sys.executable, "-m", "uvicorn", "mega_crm.asgi:app", "--port", str(self.port)]
            command += ["--log-level", "error"]

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            preexec_fn=limit,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # noqa: PLW1509
        )
        deadline = time.monotonic() + 60
        while not self.served(1.0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    def served(self, timeout: float = 3.0) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def silent_figures() -> list[tuple[str, str]]:
    print(f"\n=== Silent connections (server fd limit {FD_LIMIT}; 20 real requests after each step) ===")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    steps = [1000, 2000, 4000, 8000, 16000]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    room = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200
    steps = [n for n in steps if n <= room] or [room]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        url, _tenant = seeded_sqlite(tmp, "silent.db")
        for label, guarded in (("plain uvicorn (before)", False), ("mega-crm serve", True)):
            server = ServeProcess(url, guarded=guarded)
            flood: list[socket.socket] = []
            survived = 0
            try:
                for target in steps:
                    while len(flood) < target:
                        sock = socket.socket()
                        sock.setblocking(False)
                        sock.connect_ex(("127.0.0.1", server.port))
                        flood.append(sock)
                    served = sum(server.served() for _ in range(20))
                    print(f"  {label:<24} {target:6d} silent connections: {served}/20 real requests served")
                    if served < 20:
                        break
                    survived = target
            finally:
                for sock in flood:
                    sock.close()
                server.stop()
            out.append(
                (
                    f"silent connections survived, {label}",
                    f"{survived}" + ("+" if survived == steps[-1] else ""),
                )
            )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return out


def main() -> None:
    print(f"MEGA CRM fault benchmark — {os.cpu_count()} CPUs", flush=True)
    seconds = env_float("MEGA_BENCH_FAULTS_SECONDS", 5.0)
    figures: list[tuple[str, str]] = []
    runs: list[Callable[[], list[tuple[str, str]]]] = [
        lambda: redis_figures(seconds),
        database_figures,
        silent_figures,
    ]
    for run in runs:
        figures += run()
    print("\n=== Fault summary ===")
    for what, figure in figures:
        print(f"  {what:<58} {figure:>12}")


if __name__ == "__main__":
    main()
