"""Benchmark: `mega-crm-client import` of a 100,000-row CSV against the raw bulk API, same run.

Two servers, `mega-crm serve` each on a fresh SQLite file (subprocesses on loopback, no webhook
worker), customers made with `mega-crm admin` with limits that are never hit. The file has
tests/messy_csv.py's shape (BOM, `;`, quoted newlines, mixed phone formats, repeats, name-only and
invalid rows, unknown columns). Side by side, started at the same moment:

* baseline: the same rows, already mapped to bulk JSON before the clock starts, POSTed to one
  server by a bare httpx loop (a thread of this process) in chunks of 500 with an
  Idempotency-Key each: the fastest a client can go;
* client: `mega-crm-client import FILE` as a user runs it, against the other server (process
  start, format detection, dry-run preview, import with progress, results CSV, state file).

Each side's progress (rows done, from the raw loop and from the import's state file) is sampled
until the first side finishes; the figure is the client's rows done divided by the raw loop's at
that moment: the client's share of the baseline's throughput over the same interval, under the
same machine load (on a shared machine, load swings between sequential runs were ±50%).

Target: at least 80%. `python clients/python/bench/import_bench.py [--rows N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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


class RawLoop(threading.Thread):
    """The baseline: POST the prepared bodies one after another, noting the rows done."""

    def __init__(self, tenant: dict[str, str], chunks: list[bytes], rows_per_chunk: list[int]) -> None:
        super().__init__(daemon=True)
        self.tenant, self.chunks, self.rows_per_chunk = tenant, chunks, rows_per_chunk
        self.rows_done = 0
        self.finished_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        headers = {
            "Authorization": f"Bearer {self.tenant['MEGA_TOKEN']}",
            "x-customer-id": self.tenant["MEGA_CUSTOMER_ID"],
            "Content-Type": "application/json",
        }
        try:
            with httpx.Client(base_url=self.tenant["MEGA_API_URL"], headers=headers, timeout=300) as http:
                for body, rows in zip(self.chunks, self.rows_per_chunk, strict=True):
                    response = http.post(
                        "/api/agents/crm/leads/bulk",
                        content=body,
                        headers={"Idempotency-Key": str(uuid.uuid4())},
                    )
                    response.raise_for_status()
                    self.rows_done += rows
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        self.finished_at = time.perf_counter()


def import_rows_done(state_path: Path) -> int:
    try:
        return int(json.loads(state_path.read_text())["rows_done"])
    except (OSError, ValueError, KeyError):
        return 0


def prepared_chunks(path: Path, tenant: dict[str, str]) -> tuple[list[bytes], list[int]]:
    """The exact bulk bodies the client sends (same mapping, same 500-row chunks), as bytes."""
    from mega_crm_client import MegaClient

    with MegaClient(tenant["MEGA_API_URL"], tenant["MEGA_TOKEN"], tenant["MEGA_CUSTOMER_ID"]) as c:
        job = CsvImport(c, path)
        job.preview()  # the same unknown columns dropped
        with job._open() as f:
            chunks = [[lead for _, lead in chunk] for chunk in job.chunks(f)]
    bodies = [json.dumps({"leads": ch, "on_duplicate": "update", "dry_run": False}).encode() for ch in chunks]
    return bodies, [len(ch) for ch in chunks]


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


def side_by_side(
    work: Path, round_: int, path: Path, chunks: list[bytes], rows_per_chunk: list[int]
) -> float:
    """One round; returns the client's rows done / the raw loop's when the first finished."""
    rows = sum(rows_per_chunk)
    raw_server, client_server = Server(work, f"raw{round_}"), Server(work, f"client{round_}")
    try:
        raw = RawLoop(new_customer(raw_server.env, raw_server.url), chunks, rows_per_chunk)
        tenant = new_customer(client_server.env, client_server.url)
        results = work / f"results{round_}.csv"
        state_path = results.with_name(results.name + ".state.json")
        command = [
            sys.executable,
            "-m",
            "mega_crm_client.cli",
            "import",
            str(path),
            "--results",
            str(results),
        ]
        env = {**client_server.env, **tenant, "COLUMNS": "120"}
        started = time.perf_counter()
        cli = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        raw.start()
        while raw.finished_at is None and cli.poll() is None:
            time.sleep(0.02)
        stopped = time.perf_counter()
        client_done = rows if cli.poll() == 0 else import_rows_done(state_path)
        raw_done = rows if raw.finished_at is not None else raw.rows_done
        first = "client" if cli.poll() is not None else "raw"
        raw.join()
        out, err = cli.communicate()
        if cli.returncode != 0 or raw.error is not None:
            raise SystemExit(f"a side failed: {raw.error!r} {err[-2000:]}")
        client_wall = time.perf_counter() - started if first == "raw" else stopped - started
        assert raw.finished_at is not None
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["rows"] == rows, summary
        ratio = client_done / raw_done
        print(
            f"round {round_}: {first} finished first after {stopped - started:.1f}s; then client "
            f"{client_done:,} rows, raw {raw_done:,} rows: {ratio:.0%}  (whole runs: client "
            f"{client_wall:.1f}s, raw {raw.finished_at - started:.1f}s; {summary['created']:,} created, "
            f"{summary['updated']:,} updated, {summary['failed']:,} failed)"
        )
        return ratio
    finally:
        raw_server.stop()
        client_server.stop()


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
            chunks, rows_per_chunk = prepared_chunks(path, new_customer(server.env, server.url))
        finally:
            server.stop()
        ratios = [side_by_side(work, r, path, chunks, rows_per_chunk) for r in range(1, args.rounds + 1)]
        median = statistics.median(ratios)
        verdict = "OK" if median >= 0.8 else "BELOW TARGET"
        print(
            f"\nclient import vs raw bulk API, side by side, {sum(rows_per_chunk):,} rows, median of "
            f"{len(ratios)} rounds: {median:.0%} (each: {', '.join(f'{r:.0%}' for r in ratios)}; "
            f"target >= 80%): {verdict}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
