"""psycopg's echo of a pipelined transaction's error ("error ignored terminating <Pipeline>") is
not logged: the error itself is raised (observability.logging.drop_pipeline_echo)."""

from __future__ import annotations

import logging
import subprocess
import sys

import psycopg
import pytest

from mega_crm.observability.logging import drop_pipeline_echo
from tests.conftest import POSTGRES_URL

ECHO = "error ignored terminating"


def failed_pipeline() -> None:
    """A real pipeline whose statement fails while the block raises: psycopg warns on exit."""
    assert POSTGRES_URL
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, pytest.raises(RuntimeError):
        fail_in_pipeline(conn)


def fail_in_pipeline(conn: psycopg.Connection) -> None:
    with conn.pipeline():
        conn.cursor().execute("BEGIN")
        conn.cursor().execute("SELECT 1 / 0")
        raise RuntimeError("the block's own error, raised")


@pytest.mark.skipif(not POSTGRES_URL, reason="MEGA_TEST_POSTGRES_URL is not set")
def test_the_echo_is_dropped_and_other_psycopg_warnings_kept(caplog: pytest.LogCaptureFixture) -> None:
    psycopg_log = logging.getLogger("psycopg")
    caplog.set_level(logging.WARNING, logger="psycopg")
    failed_pipeline()
    assert any(ECHO in r.getMessage() for r in caplog.records)  # psycopg does warn
    caplog.clear()
    psycopg_log.addFilter(drop_pipeline_echo)
    try:
        failed_pipeline()
        psycopg_log.warning("some other psycopg warning")
    finally:
        psycopg_log.removeFilter(drop_pipeline_echo)
    assert [r.getMessage() for r in caplog.records] == ["some other psycopg warning"]


def test_configure_logging_installs_it_once() -> None:
    """In a process of its own: configure_logging changes the process's whole logging."""
    check = (
        "import logging\n"
        "from mega_crm.observability.logging import configure_logging, drop_pipeline_echo\n"
        "configure_logging('info', 'json')\n"
        "configure_logging('info', 'json')\n"
        "print(logging.getLogger('psycopg').filters.count(drop_pipeline_echo))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "1"
