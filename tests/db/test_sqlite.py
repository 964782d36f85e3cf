"""The embedded SQLite default under concurrency: WAL, a busy timeout, write locks taken up front."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from mega_crm.api.state import app_state
from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.leads.models import Lead
from mega_crm.migrate import upgrade
from tests.conftest import ContractClient, LiveServer, make_settings
from tests.fixtures.factories import Tenant, lead, make_tenant

LEADS = "/api/agents/crm/leads"


@pytest.fixture(scope="module")
def sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "embedded.db"
    upgrade(Database(f"sqlite:///{path}").url)
    return path


@pytest.fixture
def sqlite_db(sqlite_file: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{sqlite_file}")
    yield db
    db.dispose()


def test_the_database_file_is_in_wal_mode(sqlite_file: Path, sqlite_db: Database) -> None:
    with sqlite_db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    # WAL is a property of the file: any other process opening it sees it too.
    with sqlite3.connect(sqlite_file) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_connections_wait_for_the_lock_instead_of_failing(sqlite_db: Database) -> None:
    with sqlite_db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000  # type: ignore[operator]
    with sqlite_db.write_session() as session:
        assert session.execute(text("PRAGMA busy_timeout")).scalar() >= 5000  # type: ignore[operator]


def test_a_write_transaction_takes_the_write_lock_up_front(sqlite_file: Path, sqlite_db: Database) -> None:
    """A deferred transaction that reads first and writes later can fail with "database is locked"
    when another writer got in between; a write transaction must hold the lock from its start."""
    other = sqlite3.connect(sqlite_file, timeout=0, isolation_level=None)
    try:
        with sqlite_db.write_session() as session:
            session.execute(select(1))  # only a read so far
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released on commit
        other.execute("ROLLBACK")
        with sqlite_db.read_session() as session:
            session.execute(select(1))
            other.execute("BEGIN IMMEDIATE")  # reads do not block writers
            other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.fixture
def two_servers(sqlite_file: Path) -> Iterator[tuple[list[LiveServer], Database]]:
    """Two app instances with their own engines on one file: two server processes, in effect
    (the in-process write lock does not span them; the busy timeout must)."""
    url = f"sqlite:///{sqlite_file}"
    databases = [Database(url), Database(url)]
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                LiveServer(create_app(make_settings(url, webhook_worker_in_process=False), db))
            )
            for db in databases
        ]
        yield servers, databases[0]
    for db in databases:
        db.dispose()


def test_a_burst_of_parallel_writes_all_get_answers(two_servers: tuple[list[LiveServer], Database]) -> None:
    servers, db = two_servers
    tenant: Tenant = make_tenant(db)
    shared_email = "burst-shared@example.com"

    def request(i: int) -> httpx.Response:
        base = servers[i % 2].url
        with httpx.Client(base_url=base, timeout=120) as http:
            # Phones of their own (lead()'s are random: two alike would merge two leads).
            if i % 10 == 0:  # a bulk import among the single creates
                rows = [
                    lead(contact_name=f"Bulk {i}-{n}", contact_phone=f"+1206555{i:02d}{n:02d}")
                    for n in range(20)
                ]
                return http.post(f"{LEADS}/bulk", json={"leads": rows}, headers=tenant.headers)
            if i % 10 == 5:  # a read among the writes
                return http.get(LEADS, headers=tenant.headers)
            if i % 7 == 0:  # several requests merging into one lead
                body = lead(contact_email=shared_email, contact_phone=f"+12065558{i:03d}")
                return http.post(LEADS, json=body, headers=tenant.headers)
            body = lead(contact_name=f"Burst {i}", contact_phone=f"+12065559{i:03d}")
            return http.post(LEADS, json=body, headers=tenant.headers)

    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(request, range(60)))

    failures: list[Any] = [(r.status_code, r.text[:200]) for r in responses if r.status_code >= 300]
    assert failures == []
    assert not any("locked" in r.text for r in responses)

    bulk_rows = sum(20 for i in range(60) if i % 10 == 0)
    merged = [i for i in range(60) if i % 10 not in (0, 5) and i % 7 == 0]
    singles = [i for i in range(60) if i % 10 not in (0, 5) and i % 7 != 0]
    with httpx.Client(base_url=servers[0].url) as http:
        total = http.get(LEADS, headers=tenant.headers).json()["total"]
        shared = http.get(LEADS, params={"search": shared_email}, headers=tenant.headers).json()["total"]
    assert shared == 1
    with db.read_session() as session:  # the counts against the rows, for a failure's message
        rows = session.scalar(
            select(func.count()).select_from(Lead).where(Lead.customer_id == tenant.customer_id)
        )
    assert total == bulk_rows + len(singles) + (1 if merged else 0), f"{rows} lead rows"


def test_writes_queued_behind_a_write_commit_together_and_fail_alone(sqlite_db: Database) -> None:
    """The write lane's group commit: the jobs that queued while one ran share one transaction,
    each in a savepoint; a job that fails leaves no trace and takes no other job down with it."""
    from mega_crm.customers.models import Customer

    started, release = threading.Event(), threading.Event()
    sessions: dict[str, Any] = {}

    def blocker() -> str:
        started.set()
        release.wait(30)
        return "first"

    def write(name: str, fail: bool = False) -> Any:
        def job() -> str:
            with sqlite_db.write_session() as session:
                sessions[name] = session
                session.add(Customer(name=name))
                session.flush()
                if fail:
                    raise RuntimeError(f"{name} failed after writing")
            return name

        return job

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(sqlite_db.run("write", blocker))
        await asyncio.to_thread(started.wait, 30)  # the lane is busy: what follows queues up
        queued = [
            asyncio.ensure_future(sqlite_db.run("write", write(name, fail=name.endswith("bad"))))
            for name in ("group-a", "group-bad", "group-c")
        ]
        await asyncio.sleep(0.05)  # let the three reach the lane's queue before it frees up
        release.set()
        return await asyncio.gather(first, *queued, return_exceptions=True)

    results = asyncio.run(scenario())
    assert results[0] == "first"
    assert results[1] == "group-a"
    assert isinstance(results[2], RuntimeError)
    assert results[3] == "group-c"
    assert sessions["group-a"] is sessions["group-bad"] is sessions["group-c"]  # one transaction
    with sqlite_db.read_session() as session:
        names = set(session.scalars(select(Customer.name).where(Customer.name.like("group-%"))))
    assert names == {"group-a", "group-c"}


def test_requests_grouped_in_one_commit_are_each_authorised(client: ContractClient, tenant: Tenant) -> None:
    """In a group commit the key is checked inside the group's transaction: a bad key still gets
    its 401 alone, the others their own leads."""
    app_db = app_state(client.app).db
    if not app_db.is_sqlite:
        pytest.skip("group commit is SQLite's write lane")
    other = make_tenant(app_db)
    started, release = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(30)

    holder = threading.Thread(target=asyncio.run, args=(app_db.run("write", blocker),))
    holder.start()
    assert started.wait(30)
    bad = {**tenant.headers, "Authorization": "Bearer mega_" + "0" * 64}
    calls = [
        (tenant.headers, "one@example.com"),
        (bad, "two@example.com"),
        (other.headers, "three@example.com"),
    ]
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [
            pool.submit(client.post, LEADS, json={"contact_email": email}, headers=headers)
            for headers, email in calls
        ]
        time.sleep(0.2)  # let the three queue behind the blocker, so they run as one group
        release.set()
        statuses = [f.result().status_code for f in futures]
    holder.join(30)
    assert statuses == [201, 401, 201]
    with app_db.read_session() as session:
        owners = dict(
            session.execute(
                select(Lead.contact_email, Lead.customer_id)
                .where(Lead.contact_email.like("%@example.com"))
                .where(Lead.customer_id.in_([tenant.customer_id, other.customer_id]))
            ).all()
        )
    assert owners == {"one@example.com": tenant.customer_id, "three@example.com": other.customer_id}
