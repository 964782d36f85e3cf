"""Real `mega-crm serve` processes on loopback, their JSON log lines captured to a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

SCRIPT = Path(sys.executable).with_name("mega-crm")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "mega_crm.cli"]
READ, WRITE, HOOKS = "public_api:leads:read", "public_api:leads:write", "public_api:webhooks:manage"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGA_", "PROMETHEUS_"))}
    env.update(extra)
    return env


def cli(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=60)


def cli_json(workdir: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = cli(workdir, env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


class Served:
    """A server process (`mega-crm serve` unless `argv` says otherwise) with stdout+stderr in a file.
    `argv` may hold "{port}"; without it, `port` must be passed (the port is then fixed)."""

    def __init__(
        self, workdir: Path, env: dict[str, str], argv: list[str] | None = None, port: int | None = None
    ) -> None:
        self.workdir = workdir
        self.fixed_port = port
        self.env = {"MEGA_LOG_FORMAT": "json", **env}
        self.argv_template = argv or [*COMMAND, "serve", "--port", "{port}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Served:
        for _try in range(5):  # another process on the machine may take the free port first
            self.port = self.fixed_port or free_port()
            self.base = f"http://127.0.0.1:{self.port}"
            self.log_path = self.workdir / f"server-{self.port}.log"
            try:
                return self._start()
            except AssertionError:
                if self.fixed_port or "address already in use" not in self.log_path.read_text():
                    raise
        raise AssertionError("no free port")

    def _start(self) -> Served:
        self._log = self.log_path.open("wb")
        argv = [a.replace("{port}", str(self.port)) for a in self.argv_template]
        self.proc = subprocess.Popen(
            argv, env=self.env, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base + "/livez", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not come up:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text().splitlines() if line.strip()]

    def log_records(self) -> list[dict[str, Any]]:
        """Every line, parsed (each must be one JSON object)."""
        return [json.loads(line) for line in self.log_lines()]

    def requests_logged(self) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if r.get("event") == "request"]

    def wait_for_log(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.log_records():
                if predicate(record):
                    return record
            time.sleep(0.05)
        raise AssertionError("no such log line")


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value}, with the official parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
