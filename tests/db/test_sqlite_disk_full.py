"""SQLite on a full disk (issue 8, item 11): writes are 503s, the checkpoint thread logs once per
change of state (not a traceback a second), and writes work again once space is freed.

A real small filesystem: a tmpfs of a few MB mounted for the test (needs root). 8 MB: in WAL
mode a checkpoint needs room for the log and the pages it copies at once, and a bulk import
fills a log with more distinct pages than row-by-row writes did."""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.migrate import upgrade
from tests.conftest import LiveServer, make_settings
from tests.fixtures.factories import lead, make_tenant

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Writes `path` until the filesystem is full."""
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass
    try:  # the last partial block too
        with path.open("ab") as f:
            while True:
                f.write(b"\0" * 512)
                f.flush()
    except OSError:
        pass


def post(port: int, headers: dict[str, str], body: object, path: str = LEADS) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST", path, body=json.dumps(body), headers={**headers, "Content-Type": "application/json"}
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status not in (200, 201, 503):
            raise AssertionError(answer)
        if response.status == 503:
            assert answer["error"]["type"] == "api_error"
        return response.status
    finally:
        conn.close()


def test_a_full_disk_is_503_logged_once_and_writes_recover_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{small_disk / 'mega.db'}"
    upgrade(Database(url).url)
    db = Database(url)
    app = create_app(make_settings(url), db)
    tenant = make_tenant(db)
    caplog.set_level(logging.INFO)
    filler = small_disk / "filler"
    try:
        with LiveServer(app) as server:
            assert post(server.port, tenant.headers, lead()) == 201
            fill(filler)
            os.truncate(filler, max(0, filler.stat().st_size - 1_500_000))  # 1.5 MB left
            statuses = []
            for _ in range(100):  # the write-ahead log grows until the disk is full
                rows = [lead(contact_name="x" * 200) for _ in range(100)]
                statuses.append(post(server.port, tenant.headers, {"leads": rows}, BULK))
                if statuses[-3:] == [503] * 3:
                    break
            assert 503 in statuses, statuses
            time.sleep(3.5)  # three checkpoint rounds on the full disk
            checkpoint_logs = [r for r in caplog.records if "checkpoint" in r.getMessage()]
            assert len(checkpoint_logs) <= 1, [r.getMessage() for r in checkpoint_logs]
            assert not any(r.exc_info for r in checkpoint_logs)

            wal = small_disk / "mega.db-wal"
            full_wal = wal.stat().st_size
            filler.unlink()
            deadline = time.monotonic() + 15
            while post(server.port, tenant.headers, lead()) != 201:
                assert time.monotonic() < deadline, "writes did not recover once space was freed"
                time.sleep(0.2)
            ok = [post(server.port, tenant.headers, lead()) for _ in range(20)]
            assert ok == [201] * 20
            # The write-ahead log is emptied by the checkpoint rounds with space (one a second;
            # a slow machine may need several), not left at the size that filled the disk.
            deadline = time.monotonic() + 15
            while wal.stat().st_size >= full_wal / 2:
                assert time.monotonic() < deadline, (wal.stat().st_size, full_wal)
                time.sleep(0.25)
    finally:
        db.dispose()
    messages = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert len(messages) == 2, messages  # failing once, working again once
    assert "working again" in messages[1]
    # Once per change of state: a loaded machine may see a write succeed between two full-disk
    # failures (a checkpoint freed room), which is two outages, each logged once, not a flood.
    states = [
        "down" if "database unavailable" in m else "up"
        for m in (r.getMessage() for r in caplog.records)
        if "database unavailable" in m or "database available again" in m
    ]
    assert all(a != b for a, b in zip(states, states[1:], strict=False)), states
    assert states.count("down") <= 3, states
