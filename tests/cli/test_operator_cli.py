"""The operator CLI, complete (issue 11, items 6–7): list commands, input checks, signals,
file modes, and the newcomer path (`make run PORT=…`, `demo` printing the served address)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.processes import COMMAND, READ, Served, clean_env, cli, cli_json, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("operator")
    env = clean_env(MEGA_DATABASE_URL=f"sqlite:///{workdir / 'op.db'}")
    customer = cli_json(
        workdir, env, "admin", "customers", "create", "--name", "A very long customer name " * 3
    )
    cid = customer["id"]
    stage = ["--slug", "toured", "--name", "Toured", "--color", "#12ab9F"]
    cli_json(workdir, env, "admin", "stages", "add", "--customer", cid, *stage)
    cli_json(
        workdir, env, "admin", "owners", "add", "--customer", cid, "--name", "Alex Agent", "--role", "Agent"
    )
    cli_json(
        workdir, env, "admin", "fields", "add", "--customer", cid, "--slug", "budget_2", "--label", "Budget"
    )
    for name in ("zapier", "a key with a rather long descriptive name that must wrap somewhere"):
        cli_json(workdir, env, "admin", "keys", "issue", "--customer", cid, "--scope", READ, "--name", name)
    return workdir, env, customer


def test_lists_as_json(op: tuple[Path, dict[str, str], dict[str, Any]]) -> None:
    workdir, env, customer = op
    cid = customer["id"]
    customers = cli_json(workdir, env, "admin", "customers", "list")["customers"]
    assert [c["id"] for c in customers] == [cid]
    stages = cli_json(workdir, env, "admin", "stages", "list", "--customer", cid)["stages"]
    assert [s["slug"] for s in stages] == ["new", "contacted", "qualified", "won", "lost", "toured"]
    assert stages[-1]["color"] == "#12ab9F"
    assert stages[0]["position"] == 0
    owners = cli_json(workdir, env, "admin", "owners", "list", "--customer", cid)["owners"]
    assert [(o["name"], o["role_name"]) for o in owners] == [("Alex Agent", "Agent")]
    fields = cli_json(workdir, env, "admin", "fields", "list", "--customer", cid)["fields"]
    assert [(f["slug"], f["label"]) for f in fields] == [("budget_2", "Budget")]
    keys = cli_json(workdir, env, "admin", "keys", "list", "--customer", cid)["keys"]
    assert len(keys) == 2
    assert all(len(k["id"]) == 36 for k in keys)


def snapshot(workdir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """What the operator tables hold, read straight from the file."""
    with sqlite3.connect(workdir / "op.db") as conn:
        return {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in ("customers", "stages", "owners", "custom_field_definitions", "api_keys")
        }


@pytest.mark.parametrize("columns", ["40", "200"])
def test_human_tables_never_cut_ids(op: tuple[Path, dict[str, str], dict[str, Any]], columns: str) -> None:
    workdir, env, customer = op
    cid = customer["id"]
    narrow = {**env, "COLUMNS": columns}
    rows = snapshot(workdir)
    for args, table in [
        (["admin", "keys", "list", "--customer", cid], "api_keys"),
        (["admin", "customers", "list"], "customers"),
        (["admin", "stages", "list", "--customer", cid], "stages"),
        (["admin", "owners", "list", "--customer", cid], "owners"),
        (["admin", "fields", "list", "--customer", cid], "custom_field_definitions"),
    ]:
        done = cli(workdir, narrow, *args)
        assert done.returncode == 0, done.stderr
        ids = [str(uuid.UUID(str(row[0]))) for row in rows[table]]
        assert ids
        for id_ in ids:
            assert id_ in done.stdout, f"{args[1]}: {id_} cut at {columns} columns:\n{done.stdout}"


@pytest.mark.parametrize(("args", "message"), [
    (["fields", "add", "--slug", "Budget"], "field slug must match"),
    (["fields", "add", "--slug", "2nd"], "field slug must match"),
    (["fields", "add", "--slug", "has-dash"], "field slug must match"),
    (["fields", "add", "--slug", "a" * 65], "field slug must match"),
    (["fields", "add", "--slug", "lead_line"], "reserved"),
    (["fields", "add", "--slug", "contact_email"], "reserved"),
    (["stages", "add", "--slug", "Bad Slug", "--name", "X"], "stage slug must match"),
    (["stages", "add", "--slug", "ok", "--name", "X", "--color", "red"], "#rrggbb"),
    (["stages", "add", "--slug", "ok", "--name", "X", "--color", "#12345"], "#rrggbb"),
    (["stages", "add", "--slug", "ok", "--name", "X", "--color", "#12345g"], "#rrggbb"),
    (["limits", "set", "--default", "0/minute"], "at least 1 request"),
    (["limits", "set", "--bulk", "10/minute;0/hour"], "at least 1 request"),
    (["limits", "set", "--bulk", "lots"], "not a rate limit"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(
    op: tuple[Path, dict[str, str], dict[str, Any]], args: list[str], message: str
) -> None:
    workdir, env, customer = op
    before = snapshot(workdir)
    done = cli(workdir, env, "admin", *args[:2], "--customer", customer["id"], *args[2:])
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: ")
    assert message in done.stderr
    assert done.stdout == ""
    assert snapshot(workdir) == before  # nothing changed


@pytest.mark.parametrize("slug", ["a", "budget", "x_1", "a" * 64])
def test_good_field_slugs(slug: Any) -> None:
    from mega_crm.admin.service import check_field_slug

    assert check_field_slug(slug) == slug


def test_list_of_an_unknown_customer(op: tuple[Path, dict[str, str], dict[str, Any]]) -> None:
    workdir, env, _customer = op
    done = cli(workdir, env, "admin", "stages", "list", "--customer", "00000000-0000-4000-8000-000000000001")
    assert done.returncode == 2
    assert done.stderr.startswith("error: no customer")


# --- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_0_on_signals(op: tuple[Path, dict[str, str], dict[str, Any]], sig: Any) -> None:
    workdir, env, _customer = op
    served = Served(workdir, env).__enter__()
    assert served.stop(sig) == 0
    assert any("Application shutdown complete" in r.get("event", "") for r in served.log_records())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_exits_0_on_signals(op: tuple[Path, dict[str, str], dict[str, Any]], sig: Any) -> None:
    workdir, env, _customer = op
    proc = subprocess.Popen([*COMMAND, "worker"], env={**env, "MEGA_LOG_FORMAT": "json"}, cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    started = ""
    while "webhook worker started" not in started and time.monotonic() < deadline:
        started += proc.stdout.readline()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, started + out
    assert "webhook worker stopped" in out


# --- files owner-only ---------------------------------------------------------------------------


def test_sqlite_file_wal_and_secret_are_owner_only(tmp_path: Path) -> None:
    env = clean_env(MEGA_DATABASE_URL=f"sqlite:///{tmp_path / 'private.db'}")
    old = os.umask(0o022)  # a usual umask: files would be world-readable by default
    try:
        with Served(tmp_path, env) as s:
            cli_json(tmp_path, env, "admin", "customers", "create", "--name", "X")  # a write: the WAL exists
            assert httpx.get(s.base + "/readyz").status_code == 200
            files = ["private.db", "private.db-wal", "private.db-shm", "private.db.secret"]
            for name in files:
                path = tmp_path / name
                assert path.exists(), name
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{name}: {oct(path.stat().st_mode)}"
    finally:
        os.umask(old)


# --- newcomer path ------------------------------------------------------------------------------


def test_demo_prints_the_address_serve_binds(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(MEGA_DATABASE_URL=f"sqlite:///{tmp_path / 'demo.db'}", MEGA_PORT=str(port))
    demo = cli_json(tmp_path, env, "demo")
    assert demo["base_url"] == f"http://127.0.0.1:{port}"
    assert f"http://127.0.0.1:{port}/api/agents/crm/leads" in demo["curl_create"]
    with Served(tmp_path, env, [*COMMAND, "serve"], port=port):  # no --port: MEGA_PORT, as demo said
        created = subprocess.run(demo["curl_create"], shell=True, capture_output=True, text=True, timeout=30)
        assert json.loads(created.stdout)["lead"]["contact_name"] == "Ada Lovelace"
    everywhere = cli_json(tmp_path, {**env, "MEGA_HOST": "0.0.0.0"}, "demo")
    assert everywhere["base_url"] == f"http://127.0.0.1:{port}"  # reachable from this machine


def test_make_run_passes_port_and_host() -> None:
    done = subprocess.run(["make", "-n", "run", "PORT=8080"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "mega-crm" in line]
    demo = next(line for line in lines if "mega-crm demo" in line)
    serve = next(line for line in lines if "mega-crm serve" in line)
    for line in (demo, serve):
        assert "MEGA_PORT=8080" in line or "--port 8080" in line, line
