"""Webhook fixtures: real loopback receivers (HTTP, and HTTPS with a trustme CA) and an app
whose in-process worker delivers to them.

The webhook tests use their own database (a separate SQLite file, or a separate PostgreSQL
schema), so that the worker of any other app in this test session never claims their
deliveries, and fault tests get databases that no in-process worker touches at all.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.migrate import upgrade
from tests.conftest import POSTGRES_URL, TEST_SECRET, ContractClient, make_settings
from tests.fixtures.factories import Tenant, make_tenant

# Small waits: retries after ~50 ms, leases of 1 s + the webhook's timeout.
FAST_WEBHOOKS: dict[str, Any] = {
    "webhook_allow_private_targets": True,
    "webhook_retry_base_seconds": 0.05,
    "webhook_poll_seconds": 0.2,
    "webhook_lease_seconds": 1.0,
    "webhook_shutdown_grace_seconds": 5.0,
    "webhook_worker_in_process": True,
}


# --- receivers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Arrival:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery_id(self) -> str:
        return self.headers["x-mega-delivery"]


@dataclass
class Endpoint:
    """One URL of a receiver, with its own script of replies and its own record of arrivals."""

    url: str
    path: str
    replies: deque[Reply] = field(default_factory=deque)
    arrivals: list[Arrival] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Arrival]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.arrivals) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.arrivals)} of {count} deliveries arrived at {self.path}")
                self.changed.wait(left)
            return list(self.arrivals)

    def quiet_for(self, seconds: float) -> list[Arrival]:
        """Wait `seconds`, then return what arrived (for asserting that nothing did)."""
        time.sleep(seconds)
        with self.changed:
            return list(self.arrivals)


class Receiver:
    """A loopback HTTP(S) server recording every request; replies follow each endpoint's script."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, host_name: str = "127.0.0.1") -> None:
        self.endpoints: dict[str, Endpoint] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                endpoint = receiver.endpoints.get(self.path.split("?")[0])
                reply = Reply(404)
                if endpoint is not None:
                    with endpoint.changed:
                        endpoint.arrivals.append(
                            Arrival(
                                self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                            )
                        )
                        reply = endpoint.replies.popleft() if endpoint.replies else Reply()
                        endpoint.changed.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers:
                        self.send_header(name, value)
                    body = b"" if reply.status in (204, 304) else b"ok"
                    if body:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.base_url = f"{'https' if tls else 'http'}://{host_name}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def endpoint(self, *replies: Reply | int) -> Endpoint:
        path = f"/hooks/{uuid.uuid4().hex}"
        script = deque(r if isinstance(r, Reply) else Reply(r) for r in replies)
        endpoint = Endpoint(url=self.base_url + path, path=path, replies=script)
        self.endpoints[path] = endpoint
        return endpoint

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(certificate_authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="session")
def tls_receiver(certificate_authority: trustme.CA) -> Iterator[Receiver]:
    """HTTPS on 127.0.0.1 with a certificate for the name `localhost` only."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("localhost").configure_cert(context)
    r = Receiver(tls=context, host_name="localhost")
    yield r
    r.close()


# --- databases and apps ---------------------------------------------------------------------


def postgres_schema_url(base: str, schema: str) -> str:
    """The same database, with `schema` first on the search path (created afresh)."""
    db = Database(base)
    with db.engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db.dispose()
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}')}"


def fresh_database_url(backend: str, tmp_dir: Path, name: str) -> str:
    if backend == "postgres":
        assert POSTGRES_URL
        url = postgres_schema_url(POSTGRES_URL, f"mega_{name}")
    else:
        url = f"sqlite:///{tmp_dir / f'{name}.db'}"
    upgrade(Database(url).url)
    return url


@pytest.fixture(scope="session")
def wh_db_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_database_url(backend, tmp_path_factory.mktemp(f"wh-{backend}"), "webhooks")


@pytest.fixture(scope="session")
def wh_db(wh_db_url: str) -> Iterator[Database]:
    database = Database(wh_db_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def wh_app(wh_db_url: str, wh_db: Database, ca_file: str) -> FastAPI:
    """Allows loopback targets (the receivers) and runs the in-process worker."""
    return create_app(make_settings(wh_db_url, webhook_ca_file=ca_file, **FAST_WEBHOOKS), wh_db)


@pytest.fixture(scope="session")
def wh_client(wh_app: FastAPI) -> Iterator[TestClient]:
    with ContractClient(wh_app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def strict_client(wh_db_url: str, wh_db: Database) -> Iterator[TestClient]:
    """Production URL rules (no private targets) and no worker: for the registration rules."""
    app = create_app(make_settings(wh_db_url, webhook_worker_in_process=False), wh_db)
    with ContractClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def tenant(wh_db: Database) -> Tenant:
    return make_tenant(wh_db)


# --- helpers --------------------------------------------------------------------------------

WEBHOOKS = "/api/agents/crm/lead-webhooks"
LEADS = "/api/agents/crm/leads"


def register(client: TestClient, tenant: Tenant, url: str, **fields: Any) -> tuple[dict[str, Any], str]:
    r = client.post(WEBHOOKS, json={"url": url, **fields}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return r.json()["webhook"], r.json()["secret"]


def deliveries(client: TestClient, tenant: Tenant, webhook_id: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"{WEBHOOKS}/{webhook_id}/deliveries", params=params, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["deliveries"])


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def held(db: Database, take: Callable[[Any], object]) -> Iterator[None]:
    """`take(session)` run in a write transaction on another thread (its row locks, as another
    request or the worker would take them), kept open until the block ends."""
    taken, release = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def hold() -> None:
        try:
            with db.write_session() as session:
                take(session)
                taken.set()
                release.wait(30)
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            failed.append(exc)
            taken.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10)
        if failed:
            raise failed[0]
        yield
    finally:
        release.set()
        holder.join(30)


def settled(client: TestClient, tenant: Tenant, webhook_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The webhook's deliveries once `count` of them are no longer pending."""

    def done() -> list[dict[str, Any]] | None:
        rows = deliveries(client, tenant, webhook_id, limit=100)
        finished = [d for d in rows if d["status"] != "pending"]
        return rows if len(finished) >= count else None

    return list(wait_until(done, what="deliveries to settle"))


# --- worker processes -----------------------------------------------------------------------


class WorkerProcess:
    """`mega-crm worker` in a subprocess, its log collected for assertions."""

    def __init__(self, db_url: str, ca_file: str | None = None, **env: str) -> None:
        environment = {
            **os.environ,
            "MEGA_DATABASE_URL": db_url,
            "MEGA_SECRET_KEY": TEST_SECRET,
            "MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS": "1",
            "MEGA_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
            "MEGA_WEBHOOK_POLL_SECONDS": "0.2",
            "MEGA_WEBHOOK_LEASE_SECONDS": "1",
            "MEGA_LOG_LEVEL": "info",
            **env,
        }
        if ca_file:
            environment["MEGA_WEBHOOK_CA_FILE"] = ca_file
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mega_crm.cli", "worker"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def wait_started(self, timeout: float = 30.0) -> WorkerProcess:
        wait_until(
            lambda: (
                any("webhook worker started" in line for line in self.log) or self.proc.poll() is not None
            ),
            timeout,
            "the worker to start",
        )
        assert self.proc.poll() is None, "".join(self.log)
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def worker_processes() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()
