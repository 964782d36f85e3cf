"""The `mega-crm` console script, run as a real subprocess against a temporary SQLite file."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from mega_crm.admin import service as admin
from mega_crm.api.state import app_state
from mega_crm.app import create_app
from mega_crm.db import Database
from tests.conftest import make_settings
from tests.fixtures.processes import free_port

SCRIPT = Path(sys.executable).with_name("mega-crm")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "mega_crm.cli"]
LEADS = "/api/agents/crm/leads"
READ, WRITE, HOOKS = "public_api:leads:read", "public_api:leads:write", "public_api:webhooks:manage"


class Cli:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.url = f"sqlite:///{db_path}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEGA_")}
        self.env["MEGA_DATABASE_URL"] = self.url

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.db_path.parent,
        )

    def json(self, *args: str) -> dict[str, Any]:
        """Runs a --json command: exit 0, and stdout is exactly one JSON object."""
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr
        return one_json_object(done.stdout)


def one_json_object(stdout: str) -> dict[str, Any]:
    decoder = json.JSONDecoder()
    text = stdout.strip()
    value, end = decoder.raw_decode(text)
    assert end == len(text), f"more than one JSON value on stdout: {stdout!r}"
    assert isinstance(value, dict)
    assert stdout.count("\n") == 1, "one line of JSON, nothing else"
    return value


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(tmp_path_factory.mktemp("cli") / "operator.db")


CUSTOMER_ID = str(uuid.uuid4())


@pytest.fixture(scope="module")
def customer(cli: Cli) -> dict[str, Any]:
    return cli.json("admin", "customers", "create", "--name", "Acme Homes", "--id", CUSTOMER_ID)


@pytest.fixture(scope="module")
def key(cli: Cli, customer: dict[str, Any]) -> dict[str, Any]:
    return cli.json(
        "admin", "keys", "issue", "--customer", customer["id"],
        "--scope", READ, "--scope", WRITE, "--name", "zapier",
    )  # fmt: skip


@pytest.fixture(scope="module")
def api(cli: Cli, customer: dict[str, Any]) -> Iterator[TestClient]:
    """The API served from the database the CLI wrote."""
    db = Database(cli.url)
    app = create_app(make_settings(cli.url, webhook_worker_in_process=False), db)
    with TestClient(app) as c:
        yield c
    db.dispose()


def auth(token: str, customer_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "x-customer-id": customer_id}


# --- each command -----------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    fresh = Cli(tmp_path / "fresh.db")
    done = fresh.run("db", "upgrade")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(fresh.db_path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"customers", "api_keys", "leads", "idempotency_records", "stages"} <= tables
    assert version
    # It says what it did: a new database is upgraded from nothing, and then is current.
    assert f"upgraded from nothing to revision {version}" in " ".join(done.stdout.split())
    again = fresh.run("db", "upgrade")
    assert again.returncode == 0, again.stderr
    assert f"schema is current (revision {version};" in " ".join(again.stdout.split())


def test_customers_create(customer: dict[str, Any]) -> None:
    assert customer == {"id": CUSTOMER_ID, "name": "Acme Homes"}


def test_a_new_customers_first_stage_is_new(
    customer: dict[str, Any], key: dict[str, Any], api: TestClient
) -> None:
    r = api.post(LEADS, json={"contact_name": "Stage probe"}, headers=auth(key["token"], customer["id"]))
    assert r.status_code == 201, r.text
    assert r.json()["lead"]["current_stage"]["slug"] == "new"


def test_keys_issue_gives_a_working_token_of_which_only_the_hash_is_stored(
    cli: Cli, customer: dict[str, Any], key: dict[str, Any], api: TestClient
) -> None:
    assert key["token"].startswith("mega_")
    assert len(key["token"]) == 5 + 64
    assert sorted(key["scopes"]) == sorted([READ, WRITE])
    assert key["customer_id"] == customer["id"]
    assert key["name"] == "zapier"
    uuid.UUID(key["id"])
    headers = auth(key["token"], customer["id"])
    assert api.post(LEADS, json={"contact_name": "Via CLI key"}, headers=headers).status_code == 201
    assert api.get(LEADS, headers=headers).status_code == 200

    with sqlite3.connect(cli.db_path) as conn:
        dump = "\n".join(conn.iterdump())
    assert key["token"][5:] not in dump
    assert hashlib.sha256(key["token"].encode()).hexdigest() in dump


def test_keys_revoke_takes_effect_on_the_next_request(
    cli: Cli, customer: dict[str, Any], api: TestClient
) -> None:
    issued = admin.issue_key(app_state(api.app).db, uuid.UUID(customer["id"]), [READ])  # type: ignore[arg-type]
    headers = auth(issued.token, customer["id"])
    assert api.get(LEADS, headers=headers).status_code == 200
    assert cli.json("admin", "keys", "revoke", str(issued.id)) == {"id": str(issued.id), "revoked": True}
    assert api.get(LEADS, headers=headers).status_code == 401


def test_stages_owners_and_fields_add(
    cli: Cli, customer: dict[str, Any], key: dict[str, Any], api: TestClient
) -> None:
    cid = customer["id"]
    stage = cli.json("admin", "stages", "add", "--customer", cid, "--slug", "tour", "--name", "Tour booked",
                     "--color", "#ff8800")  # fmt: skip
    assert (stage["slug"], stage["name"], stage["color"]) == ("tour", "Tour booked", "#ff8800")
    owner = cli.json("admin", "owners", "add", "--customer", cid, "--name", "Rita Realtor", "--role", "Agent")
    uuid.UUID(owner["id"])
    field = cli.json("admin", "fields", "add", "--customer", cid, "--slug", "budget", "--label", "Budget")
    assert field["slug"] == "budget"

    # What they configure is what the API uses.
    headers = auth(key["token"], cid)
    row = {"contact_name": "Configured", "stage_slug": "tour", "owner_id": owner["id"],
           "custom_fields": {"budget": 500000, "unknown_slug": 1}}  # fmt: skip
    r = api.post("/api/agents/crm/leads/bulk", json={"leads": [row]}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["status"] == "created", r.text
    assert r.json()["unknown_custom_fields"] == ["unknown_slug"]
    listed = api.get(LEADS, params={"include_custom_fields": "true", "search": "Configured"}, headers=headers)
    (lead,) = listed.json()["leads"]
    assert lead["current_stage"]["slug"] == "tour"
    assert lead["current_stage"]["color"] == "#ff8800"
    assert lead["owner"] == {"id": owner["id"], "name": "Rita Realtor", "role_name": "Agent"}
    assert lead["custom_fields"]["budget"] == 500000


def test_limits_set(cli: Cli, customer: dict[str, Any], key: dict[str, Any], api: TestClient) -> None:
    cid = customer["id"]
    out = cli.json(
        "admin", "limits", "set", "--customer", cid, "--default", "5/hour;9/day", "--bulk", "2/day"
    )
    assert out == {"customer_id": cid, "default": "5/hour;9/day", "bulk": "2/day"}
    assert api.get(LEADS, headers=auth(key["token"], cid)).headers["ratelimit-limit"] == "5"


# --- bad input --------------------------------------------------------------------------------

NOBODY = "00000000-0000-4000-8000-000000000bad"


def bad_inputs(customer_id: str) -> list[tuple[str, list[str], str]]:
    """(what, argv, a word the message must contain)"""
    keys, cid = ["admin", "keys"], customer_id
    return [
        ("bad uuid", ["admin", "customers", "create", "--name", "X", "--id", "not-a-uuid", "--json"], "UUID"),
        ("unknown customer", [*keys, "issue", "--customer", NOBODY, "--scope", READ, "--json"], NOBODY),
        ("bad scope", [*keys, "issue", "--customer", cid, "--scope", "leads:all", "--json"], "scope"),
        ("bad limit", ["admin", "limits", "set", "--customer", cid, "--default", "lots", "--json"], "lots"),
        ("unknown key", [*keys, "revoke", NOBODY], NOBODY),
        # serve used to say "running on :99999" (and listen elsewhere), exit 3, or print a traceback
        ("port above 65535", ["serve", "--port", "99999"], "99999"),
        ("port zero", ["serve", "--port", "0"], "--port"),
        ("negative port", ["serve", "--port", "-1"], "--port"),
        ("no workers", ["serve", "--workers", "0"], "--workers"),
        ("host not UTF-8", ["serve", "--host", "local\udcffhost"], "--host"),
    ]


def test_bad_input_is_a_one_line_error_and_exit_status_2(cli: Cli, customer: dict[str, Any]) -> None:
    cases = bad_inputs(customer["id"])
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(lambda case: cli.run(*case[1]), cases))
    for (what, argv, word), done in zip(cases, results, strict=True):
        context = f"{what}: {shlex.join(argv)} -> {done.returncode} {done.stderr!r}"
        assert done.returncode == 2, context
        assert done.stdout == "", context
        assert done.stderr.count("\n") == 1, context
        assert "Traceback" not in done.stderr, context
        assert word in done.stderr, context


# --- demo and serve ---------------------------------------------------------------------------


def demo_rows(demo: Cli) -> dict[str, Any]:
    with sqlite3.connect(demo.db_path) as conn:
        counts: dict[str, Any] = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("customers", "owners", "custom_field_definitions", "stages")
        }
        counts["field slugs"] = {s for (s,) in conn.execute("SELECT slug FROM custom_field_definitions")}
    return counts


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Cli, str]]:
    """`mega-crm serve` on a fresh database file."""
    fresh = Cli(tmp_path / "served.db")
    port = free_port()
    env = {**fresh.env, "MEGA_WEBHOOK_WORKER_IN_PROCESS": "0"}
    server = subprocess.Popen(
        [*COMMAND, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "mega-crm serve did not come up"
            time.sleep(0.1)
        yield fresh, base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_serve_and_demo(served: tuple[Cli, str]) -> None:
    """serve migrates a fresh file; demo is idempotent, its key and its curl commands work."""
    demo, base = served
    first = demo.json("demo", "--base-url", base)
    assert set(first["scopes"]) == {READ, WRITE, HOOKS}
    counts = demo_rows(demo)
    assert counts["customers"] == 1
    assert counts["field slugs"] == {"budget", "neighborhood"}  # lead_line is built in
    assert counts["owners"] >= 1

    if shutil.which("curl"):
        created = subprocess.run(first["curl_create"], shell=True, capture_output=True, text=True)
        assert json.loads(created.stdout)["lead"]["contact_phone"] == "+12065550123"
        listed = subprocess.run(first["curl_list"], shell=True, capture_output=True, text=True)
        assert json.loads(listed.stdout)["leads"][0]["custom_fields"]["lead_line"] == "buyer"

    again = demo.run("demo", "--base-url", base)  # again, in its human form: a key and two curl commands
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("curl ") == 2
    tokens = [w.strip("\"'") for w in again.stdout.split() if w.strip("\"'").startswith("mega_")]
    assert tokens
    assert tokens[0] != first["token"]
    assert demo_rows(demo) == counts  # nothing was created twice

    for token in (first["token"], tokens[0]):
        r = httpx.post(
            f"{base}{LEADS}",
            json={"contact_name": "Demo", "custom_fields": {"lead_line": "seller"}},
            headers=auth(token, first["customer_id"]),
        )
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("setting", "value", "rule"),
    [
        ("MEGA_DB_THREADS", "0", "greater than or equal to 1"),
        ("MEGA_DB_POOL_SIZE", "secret-looking-value", "valid integer"),
    ],
)
def test_a_setting_that_does_not_parse_is_one_line_and_status_2(
    cli: Cli, setting: str, value: str, rule: str
) -> None:
    """Every command reads the MEGA_* settings first: one that does not parse is named on one
    line with the rule it breaks (never its value, which may be a secret), exit status 2."""
    done = subprocess.run(
        [*COMMAND, "admin", "customers", "list", "--json"],
        env={**cli.env, setting: value},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cli.db_path.parent,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"error: {setting}: ")
    assert rule in done.stderr
    assert value not in done.stderr
