"""Benchmark: `mega-crm-client import` of a 100,000-row CSV against the raw bulk API, same run.

The server is `mega-crm serve` on a fresh SQLite file (a subprocess on loopback, no webhook
worker), its customers made with `mega-crm admin` and given limits that are never hit. The file is
tests/messy_csv.py's shape (BOM, `;`, quoted newlines, mixed phone formats, repeats, name-only and
invalid rows, unknown columns). Each run imports it into a fresh customer:

* baseline: the same rows, already mapped to bulk JSON before the clock starts, POSTed by a bare
  httpx loop in chunks of 500 with an Idempotency-Key each (the fastest a client can go);
* client: `mega-crm-client import FILE` as a user runs it (process start, format detection,
  dry-run preview, row count, import with progress and a results CSV), wall clock.

Runs alternate raw, client, raw, …, raw, each on a fresh server database; each client run is
compared with the mean of the raw runs on either side of it (the shared machine's load drifts).

Target: the client's rows/s at least 80% of the baseline's. `python clients/python/bench/import_bench.py
[--rows N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from mega_crm_client.csv_import import CsvImport  # noqa: E402
from messy_csv import generate  # noqa: E402

HUGE = "1000000000/minute"
SCOPES = ["public_api:leads:read", "public_api:leads:write"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mega_crm(env: dict[str, str], *args: str) -> dict[str, Any]:
    exe = shutil.which("mega-crm", path=str(Path(sys.executable).parent)) or "mega-crm"
    done = subprocess.run([exe, *args, "--json"], env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def new_customer(env: dict[str, str], url: str) -> dict[str, str]:
    customer = mega_crm(env, "admin", "customers", "create", "--name", f"bench {uuid.uuid4().hex[:6]}")
    cid = customer["id"]
    mega_crm(env, "admin", "fields", "add", "--customer", cid, "--slug", "budget")
    mega_crm(env, "admin", "fields", "add", "--customer", cid, "--slug", "lead_line")
    mega_crm(env, "admin", "limits", "set", "--customer", cid, "--default", HUGE, "--bulk", HUGE)
    key = mega_crm(env, "admin", "keys", "issue", "--customer", cid, *[f"--scope={s}" for s in SCOPES])
    return {"MEGA_API_URL": url, "MEGA_TOKEN": key["token"], "MEGA_CUSTOMER_ID": cid}


def raw_bulk(tenant: dict[str, str], chunks: list[bytes]) -> float:
    headers = {
        "Authorization": f"Bearer {tenant['MEGA_TOKEN']}",
        "x-customer-id": tenant["MEGA_CUSTOMER_ID"],
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=tenant["MEGA_API_URL"], headers=headers, timeout=120) as http:
        started = time.perf_counter()
        for body in chunks:
            response = http.post(
                "/api/agents/crm/leads/bulk", content=body, headers={"Idempotency-Key": str(uuid.uuid4())}
            )
            response.raise_for_status()
        return time.perf_counter() - started


def client_import(
    env: dict[str, str], tenant: dict[str, str], path: Path
) -> tuple[float, float, dict[str, Any]]:
    """-> (wall seconds, the CLI process's CPU seconds, its JSON summary)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mega_crm_client.cli", "import", str(path),
         "--results", str(path.with_name(f"results-{uuid.uuid4().hex[:6]}.csv"))],
        env={**env, **tenant, "COLUMNS": "120"}, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(done.stdout.strip().splitlines()[-1])


def prepared_chunks(path: Path, tenant: dict[str, str]) -> tuple[list[bytes], int]:
    """The exact bulk bodies the client sends (same mapping, same 500-row chunks), as bytes."""
    from mega_crm_client import MegaClient

    with MegaClient(tenant["MEGA_API_URL"], tenant["MEGA_TOKEN"], tenant["MEGA_CUSTOMER_ID"]) as c:
        job = CsvImport(c, path)
        job.preview()  # the same unknown columns dropped
        with job._open() as f:
            chunks = [[lead for _, lead in chunk] for chunk in job.chunks(f)]
    bodies = [json.dumps({"leads": ch, "on_duplicate": "update", "dry_run": False}).encode() for ch in chunks]
    return bodies, sum(len(ch) for ch in chunks)


class Server:
    """`mega-crm serve` on a fresh SQLite file: every measurement starts from the same empty
    database, so neither side pays for the other's leads."""

    def __init__(self, work: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "MEGA_DATABASE_URL": f"sqlite:///{work / (name + '.db')}",
            "MEGA_SECRET_KEY": "client-bench-secret-0123456789abcdef0123456789",
            "MEGA_LOG_LEVEL": "warning",
        }
        exe = str(Path(sys.executable).parent / "mega-crm")
        self.process = subprocess.Popen([exe, "serve", "--port", str(self.port), "--no-worker"], env=self.env)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mega-client-bench-"))
    print(f"mega-crm-client import benchmark: {args.rows:,} rows, {args.rounds} rounds, SQLite, {work}")
    path = work / "leads.csv"
    t0 = time.perf_counter()
    generate(path, args.rows, seed=3)
    print(f"generated {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f}s")
    try:
        server = Server(work, "prepare")
        try:
            chunks, rows = prepared_chunks(path, new_customer(server.env, server.url))
        finally:
            server.stop()
        # raw, client, raw, client, …, raw: each client run is compared with the mean of the raw runs
        # just before and after it, which cancels a drift in the machine's load between them.
        raw_rates: list[float] = []
        client_rates: list[float] = []
        for step in range(2 * args.rounds + 1):
            mode = "raw" if step % 2 == 0 else "client"
            server = Server(work, f"{mode}{step}")
            try:
                tenant = new_customer(server.env, server.url)
                if mode == "raw":
                    seconds = raw_bulk(tenant, chunks)
                    raw_rates.append(rows / seconds)
                    print(
                        f"raw bulk API   {raw_rates[-1]:7,.0f} rows/s ({seconds:.1f}s, {len(chunks)} chunks)"
                    )
                else:
                    wall, cpu, summary = client_import(server.env, tenant, path)
                    assert summary["rows"] == rows, summary
                    client_rates.append(rows / wall)
                    print(
                        f"client import  {client_rates[-1]:7,.0f} rows/s ({wall:.1f}s wall, "
                        f"{cpu:.1f}s CPU in the CLI; {summary['created']:,} created, "
                        f"{summary['updated']:,} updated, {summary['failed']:,} failed)"
                    )
            finally:
                server.stop()
        ratios = [c / ((raw_rates[i] + raw_rates[i + 1]) / 2) for i, c in enumerate(client_rates)]
        median = statistics.median(ratios)
        verdict = "OK" if median >= 0.8 else "BELOW TARGET"
        print(
            f"\nclient import vs raw bulk API (mean of the raw runs either side), {rows:,} rows, median of "
            f"{len(ratios)}: {median:.0%} (each: {', '.join(f'{r:.0%}' for r in ratios)}; target >= 80%): "
            f"{verdict}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
