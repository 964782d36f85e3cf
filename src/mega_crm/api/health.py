"""Liveness and readiness: GET /livez (alias /healthz) and GET /readyz.

/livez answers 200 whenever the process can answer at all. /readyz answers 200 only when the
database answers within MEGA_READYZ_TIMEOUT_SECONDS with its migrations at Alembic's head, and
Redis (when MEGA_REDIS_URL is set) answers a PING within the same time; else 503 naming each
failed check. Failures name the kind of error, never a URL, user or message from the driver.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from mega_crm.api.state import app_state

if TYPE_CHECKING:
    from mega_crm.config import Settings
    from mega_crm.db import Database

router = APIRouter(include_in_schema=False)


@router.get("/livez")
@router.get("/healthz")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    results = await app_state(request.app).readiness.run()
    ready = all(v == "ok" for v in results.values())
    failed = [name for name, v in results.items() if v != "ok"]
    body: dict[str, Any] = {"status": "ready" if ready else "unavailable", "checks": results}
    if failed:
        body["failed"] = failed
    return JSONResponse(body, status_code=200 if ready else 503)


class Readiness:
    """The checks of one app. Each runs on a small thread pool of its own, so a database that
    hangs holds one of these threads, never a request lane; the answer comes at the timeout.
    Nothing connects before the first check (the pool's threads start with it)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.timeout: float = settings.readyz_timeout_seconds
        self.redis_url: str | None = settings.redis_url
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mega-readyz")

    async def run(self) -> dict[str, str]:
        """-> {check ("database", and "redis" when configured): "ok" or what failed}."""
        checks: dict[str, Callable[[], str]] = {"database": self.check_database}
        if self.redis_url:
            checks["redis"] = self.check_redis
        names = list(checks)
        futures = [asyncio.wrap_future(self._pool.submit(_guarded, checks[n])) for n in names]
        done = await asyncio.gather(*(self._within(f) for f in futures))
        return dict(zip(names, done, strict=True))

    async def _within(self, future: asyncio.Future[str]) -> str:
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            return f"timed out after {self.timeout:g}s"

    @cached_property
    def _heads(self) -> set[str]:
        from alembic.script import ScriptDirectory

        from mega_crm.migrate import alembic_config

        return set(ScriptDirectory.from_config(alembic_config(self.db.url)).get_heads())

    @cached_property
    def _engine(self) -> Any:
        """SQLite: the app's own engine (the file is local). PostgreSQL: a pool-less engine with
        a connect timeout, so a check never waits on, or takes, one of the app's connections."""
        if self.db.is_sqlite:
            return self.db.engine
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        from mega_crm.db.engines import connection_options, driver_connect_args

        timeout = max(2, math.ceil(self.timeout))  # libpq's smallest useful connect_timeout is 2
        # Without our pool_mode parameter (libpq refuses it: behind PgBouncer every check
        # failed), and with what a transaction pooler needs, as the app's own engine.
        url, pooled = connection_options(self.db.url)
        args = {"connect_timeout": timeout, **driver_connect_args(pooled)}
        return create_engine(url, poolclass=NullPool, connect_args=args)

    def check_database(self) -> str:
        """ "ok" when the database answers with its migrations at Alembic's head (blocking)."""
        from sqlalchemy import text

        with self._engine.connect() as conn:
            try:
                versions = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
            except Exception:  # noqa: BLE001 - no table: never migrated
                return "migrations not applied (run `mega-crm db upgrade`)"
        if versions != self._heads:
            return f"migrations not at head (at {', '.join(sorted(versions)) or 'none'})"
        return "ok"

    @cached_property
    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(
            self.redis_url or "", socket_connect_timeout=self.timeout, socket_timeout=self.timeout
        )

    def check_redis(self) -> str:
        """ "ok" when Redis answers a PING (blocking; raises when it does not)."""
        self._redis.ping()
        return "ok"


def _guarded(check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - the kind of failure, never the driver's message
        return f"unreachable ({type(exc).__name__})"
