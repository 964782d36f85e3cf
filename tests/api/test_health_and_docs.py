"""/livez, /readyz against reachable and unreachable dependencies, offline /docs and /redoc
(issue 11, items 3–4), /metrics access settings, X-Request-Id on a 500, and proxy headers."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import POSTGRES_URL, REDIS_URL, TEST_SECRET
from tests.fixtures.processes import Served, clean_env, cli


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def asgi_server(workdir: Path, env: dict[str, str]) -> Served:
    """The ASGI entry point under uvicorn (what process managers run): it starts whatever the
    database's state, where `mega-crm serve` would first migrate."""
    argv = [sys.executable, "-m", "uvicorn", "mega_crm.asgi:app", "--port", "{port}", "--no-access-log"]
    return Served(workdir, {"MEGA_WEBHOOK_WORKER_IN_PROCESS": "0", **env}, argv)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    workdir = tmp_path_factory.mktemp("health")
    env = clean_env(MEGA_DATABASE_URL=f"sqlite:///{workdir / 'ready.db'}")
    assert cli(workdir, env, "db", "upgrade").returncode == 0
    return workdir, env


def test_livez_readyz_ok(migrated: tuple[Path, dict[str, str]]) -> None:
    workdir, env = migrated
    with Served(workdir, env) as s:
        assert httpx.get(s.base + "/livez").json() == {"status": "ok"}
        assert httpx.get(s.base + "/healthz").json() == {"status": "ok"}  # the old name, an alias
        r = httpx.get(s.base + "/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "checks": {"database": "ok"}}


def test_readyz_with_an_unreachable_postgresql(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    env = clean_env(MEGA_DATABASE_URL=url, MEGA_SECRET_KEY=TEST_SECRET, MEGA_READYZ_TIMEOUT_SECONDS="2")
    with asgi_server(tmp_path, env) as s:
        assert httpx.get(s.base + "/livez").status_code == 200  # the process itself is fine
        r = httpx.get(s.base + "/readyz", timeout=10)
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unavailable"
        assert body["failed"] == ["database"]
        assert body["checks"]["database"].startswith("unreachable (")
        assert "127.0.0.1" not in r.text
        assert "postgres" not in r.text
        assert r.headers["x-request-id"]


def test_readyz_when_migrations_are_not_applied(tmp_path: Path) -> None:
    env = clean_env(MEGA_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}", MEGA_SECRET_KEY=TEST_SECRET)
    with asgi_server(tmp_path, env) as s:
        r = httpx.get(s.base + "/readyz")
        assert r.status_code == 503
        assert r.json()["failed"] == ["database"]
        assert "migrations" in r.json()["checks"]["database"]


def test_readyz_with_an_unreachable_redis(migrated: tuple[Path, dict[str, str]]) -> None:
    workdir, env = migrated
    with Served(workdir, {**env, "MEGA_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}) as s:
        r = httpx.get(s.base + "/readyz", timeout=10)
        assert r.status_code == 503
        assert r.json()["checks"] == {"database": "ok", "redis": "unreachable (ConnectionError)"}
        assert r.json()["failed"] == ["redis"]


@pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL), reason="MEGA_TEST_POSTGRES_URL/MEGA_TEST_REDIS_URL unset"
)
def test_readyz_with_postgresql_and_redis(tmp_path: Path) -> None:
    assert POSTGRES_URL
    assert REDIS_URL
    env = clean_env(MEGA_DATABASE_URL=POSTGRES_URL, MEGA_SECRET_KEY=TEST_SECRET, MEGA_REDIS_URL=REDIS_URL)
    assert cli(tmp_path, env, "db", "upgrade").returncode == 0
    with Served(tmp_path, {**env, "MEGA_WEBHOOK_WORKER_IN_PROCESS": "0"}) as s:
        r = httpx.get(s.base + "/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["checks"] == {"database": "ok", "redis": "ok"}


# --- /metrics access ---------------------------------------------------------------------------


def test_metrics_token_and_switch(migrated: tuple[Path, dict[str, str]]) -> None:
    workdir, env = migrated
    with Served(workdir, {**env, "MEGA_METRICS_TOKEN": "s3cret-scrape"}) as s:
        assert httpx.get(s.base + "/metrics").status_code == 401
        assert httpx.get(s.base + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = httpx.get(s.base + "/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        assert r.status_code == 200
        assert "mega_http_requests_total" in r.text
    with Served(workdir, {**env, "MEGA_METRICS_ENABLED": "false"}) as s:
        assert httpx.get(s.base + "/metrics").status_code == 404
        assert httpx.get(s.base + "/readyz").status_code == 200
        s.wait_for_log(lambda r: r.get("route") == "/readyz")  # logs do not depend on metrics


# --- a 500: request id on the response and on the error line ------------------------------------

FAILING_APP = """
import sys
import uvicorn
from mega_crm.app import create_app
from mega_crm.config import Settings
from mega_crm.observability.logging import configure_logging

configure_logging("info", "json")
app = create_app(Settings())

@app.get("/boom")
def boom() -> None:
    raise RuntimeError("failed while handling ada@example.com / +12065550123")

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
"""


def test_request_id_on_a_500_and_its_log_line(migrated: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _workdir, env = migrated
    script = tmp_path / "failing_app.py"
    script.write_text(FAILING_APP)
    env = {**env, "MEGA_SECRET_KEY": TEST_SECRET, "MEGA_WEBHOOK_WORKER_IN_PROCESS": "0"}
    with Served(tmp_path, env, [sys.executable, str(script), "{port}"]) as s:
        r = httpx.get(s.base + "/boom", headers={"X-Request-Id": "boom-1"})
        assert r.status_code == 500
        assert r.headers["x-request-id"] == "boom-1"
        assert r.json()["error"]["type"] == "api_error"
        line = s.wait_for_log(lambda rec: rec.get("event") == "request" and rec.get("request_id") == "boom-1")
        assert line["level"] == "error"
        assert line["status"] == 500
        assert line["route"] == "/boom"
        traceback_line = s.wait_for_log(lambda rec: "exception" in rec and "RuntimeError" in rec["exception"])
        assert traceback_line["request_id"] == "boom-1"
    text = s.log_path.read_text()
    assert "ada@example.com" not in text
    assert "+12065550123" not in text


# --- behind a proxy ----------------------------------------------------------------------------


def test_forwarded_headers_only_from_trusted_proxies(migrated: tuple[Path, dict[str, str]]) -> None:
    workdir, env = migrated
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Request-Id": "fwd"}
    with Served(workdir, env) as s:  # MEGA_FORWARDED_ALLOW_IPS unset: headers ignored
        httpx.get(s.base + "/livez", headers=forwarded)
        assert s.wait_for_log(lambda r: r.get("request_id") == "fwd")["client"] == "127.0.0.1"
    with Served(workdir, {**env, "MEGA_FORWARDED_ALLOW_IPS": "127.0.0.1"}) as s:
        httpx.get(s.base + "/livez", headers=forwarded)
        assert s.wait_for_log(lambda r: r.get("request_id") == "fwd")["client"] == "203.0.113.7"
    with Served(workdir, {**env, "MEGA_FORWARDED_ALLOW_IPS": "192.0.2.1"}) as s:  # another proxy
        httpx.get(s.base + "/livez", headers=forwarded)
        assert s.wait_for_log(lambda r: r.get("request_id") == "fwd")["client"] == "127.0.0.1"


# --- offline docs ------------------------------------------------------------------------------


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


@pytest.fixture(scope="module")
def docs_server(migrated: tuple[Path, dict[str, str]]) -> Iterator[Served]:
    workdir, env = migrated
    with Served(workdir, env) as s:
        yield s


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_only_served_assets(docs_server: Served, page: str) -> None:
    r = httpx.get(docs_server.base + page)
    assert r.status_code == 200
    parser = _Refs()
    parser.feed(r.text)
    assert parser.refs, "the page loads its scripts from somewhere"
    assert not re.search(r"https?://", r.text.replace(docs_server.base, "")), "no absolute URL at all"
    for ref in parser.refs:
        assert ref.startswith("/"), ref
        assert not ref.startswith("//"), ref
        asset = httpx.get(docs_server.base + ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 100
    # and the document they render
    assert httpx.get(docs_server.base + "/openapi.json").json()["paths"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    not _chromium(), reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)
@pytest.mark.parametrize(("page", "expected"), [
    ("/docs", ["listLeads", "createLead", "bulkImportLeads", "List / search leads"]),
    ("/redoc", ["List / search leads", "Create a single lead", "Bulk create / merge leads"]),
])  # fmt: skip
def test_docs_render_in_a_real_browser(docs_server: Served, page: str, expected: list[str]) -> None:
    browser = _chromium()
    assert browser
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
             "--virtual-time-budget=15000", "--dump-dom", docs_server.base + page],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": profile},
        )  # fmt: skip
    dom = done.stdout
    assert dom, done.stderr[-2000:]
    for text in expected:
        assert text in dom, f"{text!r} not rendered on {page}"
