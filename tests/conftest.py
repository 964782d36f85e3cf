"""Shared fixtures.

Every test runs against SQLite, and against PostgreSQL when MEGA_TEST_POSTGRES_URL is set
(`backend` is parametrised). The schema is built by the real Alembic migrations once per backend.
Tests isolate by tenant: each makes its own customer, so nothing is truncated between tests.
Every response that goes through `client` is validated against the reference OpenAPI schema.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mega_crm.app import create_app
from mega_crm.config import Settings
from mega_crm.db import Database, normalize_database_url
from mega_crm.migrate import upgrade
from tests.fixtures.contract import reference_available, validate_response
from tests.fixtures.factories import Tenant, make_tenant
from tests.fixtures.processes import free_port

POSTGRES_URL = os.environ.get("MEGA_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("MEGA_TEST_REDIS_URL")
TEST_SECRET = "test-secret-key-0123456789abcdef"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=pytest.mark.skipif(not POSTGRES_URL, reason="MEGA_TEST_POSTGRES_URL is not set"),
    ),
]


def reset_postgres(url: str) -> None:
    db = Database(url)
    with db.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    db.dispose()


def database_url(backend: str, tmp_dir: Path) -> str:
    if backend == "postgres":
        assert POSTGRES_URL
        reset_postgres(POSTGRES_URL)
        return POSTGRES_URL
    return f"sqlite:///{tmp_dir / 'test.db'}"


def make_settings(url: str, **overrides: Any) -> Settings:
    # No delivery worker in the shared test apps: tests/webhooks runs its own.
    values: dict[str, Any] = {
        "database_url": url,
        "secret_key": TEST_SECRET,
        "webhook_worker_in_process": False,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def db_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = database_url(backend, tmp_path_factory.mktemp(backend))
    upgrade(Database(url).url)
    return url


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own, empty, to migrate step by step (the session's is already at
    head): SQLite, or a PostgreSQL database beside the test one, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    assert POSTGRES_URL
    url = make_url(normalize_database_url(POSTGRES_URL))
    name = f"{url.database}_empty"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def app(db_url: str, db: Database) -> FastAPI:
    return create_app(make_settings(db_url), db)


class ContractClient(TestClient):
    """A TestClient that checks every JSON response against the reference OpenAPI schema."""

    app: FastAPI  # always made with the app itself (TestClient says only "an ASGI app")

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> httpx.Response:
        response = super().request(method, url, *args, **kwargs)
        if reference_available() and response.headers.get("content-type", "").startswith("application/json"):
            validate_response(method, httpx.URL(str(url)).path, response.status_code, response.json())
        return response


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with ContractClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def tenant(db: Database) -> Tenant:
    return make_tenant(db)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where a server or CLI subprocess runs (tests/fixtures/processes.py): its files and logs."""
    return tmp_path


class LiveServer:
    """The app served by uvicorn on a loopback port, in a thread: real HTTP, real concurrency."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server
