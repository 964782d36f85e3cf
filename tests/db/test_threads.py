"""PostgreSQL's request threads (Database's `threads`, MEGA_DB_THREADS): reads and writes share
that many, slow work has two more, and the connection pool opens enough for all of them to hold
two connections at once (a request's key check and its write), whatever MEGA_DB_POOL_SIZE is."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import text

from mega_crm.db import Database
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="MEGA_TEST_POSTGRES_URL is not set")


def test_requests_share_the_threads_and_never_wait_for_a_connection() -> None:
    assert POSTGRES_URL
    db = Database(POSTGRES_URL, pool_size=1, threads=3, timeout=2.0)
    running: dict[str, set[str]] = {"read": set(), "slow": set()}
    most = {"read": 0, "slow": 0}
    lock = threading.Lock()

    def work(kind: str) -> int:
        name = threading.current_thread().name
        with lock:
            running[kind].add(name)
            most[kind] = max(most[kind], len(running[kind]))
        try:
            # Two connections held at once, as createLead's key check and write do.
            with db.raw_read() as reader, db.write_session() as session:
                reader.execute("SELECT 1")
                time.sleep(0.05)
                return int(session.execute(text("SELECT 2")).scalar_one())
        finally:
            with lock:
                running[kind].discard(name)

    async def burst() -> list[int]:
        jobs = [db.run("read", work, "read") for _ in range(6)]
        jobs += [db.run("write", work, "read") for _ in range(6)]
        jobs += [db.run("slow", work, "slow") for _ in range(4)]
        return await asyncio.gather(*jobs)

    try:
        assert asyncio.run(burst()) == [2] * 16  # no pool timeout: every job got both connections
    finally:
        db.dispose()
    assert most == {"read": 3, "slow": 2}
