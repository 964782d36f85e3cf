"""Fixtures: the real server, started from the server package (the only use of it here).

One SQLite database per session, migrated by the server's Alembic migrations; the app served by
uvicorn on a loopback port (with its webhook delivery worker, private targets allowed so that
loopback receivers can be registered) and a second app instance on the same database for
in-process tests through httpx's ASGI transport. Each test gets its own customer (tenant) with
generous rate limits, set through the server's admin service as `mega-crm admin limits set` does.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mega_crm", reason="the client's tests start the server package (pip install -e .)")

import uvicorn  # noqa: E402
from mega_crm.admin import service as admin  # noqa: E402
from mega_crm.app import create_app  # noqa: E402
from mega_crm.config import Settings  # noqa: E402
from mega_crm.db import Database  # noqa: E402
from mega_crm.migrate import upgrade  # noqa: E402

from mega_crm_client import MegaClient  # noqa: E402

ALL_SCOPES = ["public_api:leads:read", "public_api:leads:write", "public_api:webhooks:manage"]
GENEROUS = "1000000/minute"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    db: Database
    url: str
    asgi_app: Any  # a second app on the same database, for httpx.ASGITransport


@dataclass
class Tenant:
    customer_id: str
    token: str
    url: str

    @property
    def env(self) -> dict[str, str]:
        return {"MEGA_API_URL": self.url, "MEGA_TOKEN": self.token, "MEGA_CUSTOMER_ID": self.customer_id}

    def client(self, **kwargs: Any) -> MegaClient:
        return MegaClient(self.url, self.token, self.customer_id, **kwargs)


def settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "secret_key": "client-tests-secret-key-0123456789abcdef",
        "webhook_allow_private_targets": True,
        "webhook_retry_base_seconds": 0.05,
        "webhook_poll_seconds": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = f"sqlite:///{tmp_path_factory.mktemp('server') / 'client-tests.db'}"
    db = Database(url)
    upgrade(db.url)
    app = create_app(settings(url, webhook_worker_in_process=True), db)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    asgi_app = create_app(settings(url, webhook_worker_in_process=False), db)
    yield Server(db, f"http://127.0.0.1:{port}", asgi_app)
    uv.should_exit = True
    thread.join(timeout=10)
    db.dispose()


def make_tenant(
    server: Server,
    *,
    scopes: list[str] | None = None,
    limits: tuple[str | None, str | None] = (GENEROUS, GENEROUS),
    fields: tuple[str, ...] = ("budget", "neighborhood"),  # lead_line is built in, not a field
) -> Tenant:
    customer = admin.create_customer(server.db, f"Client test {uuid.uuid4().hex[:8]}")
    for slug in fields:
        admin.add_field(server.db, customer.id, slug, slug.title())
    admin.set_limits(server.db, customer.id, *limits)
    issued = admin.issue_key(server.db, customer.id, scopes or ALL_SCOPES)
    return Tenant(str(customer.id), issued.token, server.url)


@pytest.fixture
def tenant(server: Server) -> Tenant:
    return make_tenant(server)


@pytest.fixture
def client(tenant: Tenant) -> Iterator[MegaClient]:
    with tenant.client() as c:
        yield c


@pytest.fixture
def cli_env(tenant: Tenant) -> dict[str, str]:
    """The environment for running `mega-crm-client` against the tenant."""
    env = dict(os.environ)
    env.update(tenant.env)
    env["COLUMNS"] = "200"
    return env


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path
