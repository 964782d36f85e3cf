"""A real PgBouncer (Debian's `pgbouncer` package) in transaction pooling mode, started by the
tests in front of the PostgreSQL of MEGA_TEST_POSTGRES_URL, on its own loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.fixtures.processes import free_port

# PgBouncer refuses to run as root; Debian's package runs it as `postgres`.
RUN_AS = "postgres"


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


def fresh_database(upstream: str, name: str) -> None:
    """Database `name` beside upstream's, with an empty public schema."""
    url = make_url(upstream).set(drivername="postgresql")
    conninfo = url.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    fresh = url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


def drop_database(upstream: str, name: str) -> None:
    """Drop database `name` beside upstream's, ending any session still on it (PostgreSQL 13+)."""
    conninfo = make_url(upstream).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def pgbouncer(upstream: str, database: str) -> Iterator[str]:
    """PgBouncer with pool_mode=transaction, in front of upstream's host and port, serving
    `database`. -> its URL, with `pool_mode=transaction` (what a deployment sets). Skips when
    the binary is absent. Small server pools (3) so that one client's transactions land on
    different server connections, as they do under load."""
    exe = binary()
    if exe is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    up = make_url(upstream)
    user = up.username or "postgres"
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="mega-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host={up.host or '127.0.0.1'} port={up.port or 5432} dbname={database}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 3\nmax_client_conn = 1000\n"
        # PostgreSQL may not yet know a fresh database's connections: let the pool wait.
        "query_wait_timeout = 30\n"
    )
    for file in directory.iterdir():
        file.chmod(0o644)
    command = [exe, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            pytest.skip(f"pgbouncer refuses root and there is no user {RUN_AS!r} to run it as")
        command[1:1] = ["-u", RUN_AS]
    log = open(directory / "pgbouncer.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = up.set(host="127.0.0.1", port=port, database=database).render_as_string(hide_password=False)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(
                    make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                    connect_timeout=2,
                ) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "pgbouncer did not start: " + (directory / "pgbouncer.log").read_text()
                    ) from None
                time.sleep(0.1)
        separator = "&" if "?" in url else "?"
        yield f"{url}{separator}pool_mode=transaction"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
