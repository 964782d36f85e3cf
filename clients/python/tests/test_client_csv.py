"""`mega-crm-client import` / `export`: formats, mapping, a 20,000-row messy file, resume after kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Server, make_tenant
from mega_crm_client import MegaClient
from mega_crm_client.csv_import import ImportState, detect_format, map_headers, read_rows
from messy_csv import UNKNOWN_COLUMNS, generate

CLI = [sys.executable, "-m", "mega_crm_client.cli"]


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_detects_encodings_and_delimiters(tmp_path: Path) -> None:
    cases = {
        "bom.csv": ("\ufeffName;Email\nJosé;j@example.com\n", "utf-8", "utf-8-sig", ";"),
        "plain.csv": ("Name,Email\nJosé,j@example.com\n", "utf-8", "utf-8", ","),
        "excel.csv": ("Name\tEmail\nJosé\tj@example.com\n", "cp1252", "cp1252", "\t"),
        "latin.csv": ("Name|Email\nJos\x81|j@example.com\n", "latin-1", "latin-1", "|"),
    }
    for name, (text, encoding, want_encoding, want_delimiter) in cases.items():
        path = tmp_path / name
        path.write_bytes(text.encode(encoding))
        assert detect_format(path) == (fmt := detect_format(path))
        assert (fmt.encoding, fmt.delimiter) == (want_encoding, want_delimiter), name


def test_maps_common_header_names() -> None:
    mapping = map_headers(["First Name", "Surname", "E-Mail", "Tel", "Budget", "Stage", " "])
    assert mapping.describe() == [
        ("First Name", "first_name"), ("Surname", "last_name"), ("E-Mail", "contact_email"),
        ("Tel", "contact_phone"), ("Budget", "custom:budget"), ("Stage", "stage_slug"),
    ]  # fmt: skip
    assert mapping.unmapped == [" "]
    overridden = map_headers(["Client", "Cell", "Budget", "Area"], {"Client": "contact_name", "Budget": "-",
                                                                     "Area": "neighborhood"})  # fmt: skip
    assert overridden.describe() == [
        ("Client", "contact_name"), ("Cell", "contact_phone"), ("Area", "custom:neighborhood"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no column"):
        map_headers(["Name"], {"Nope": "contact_name"})
    with pytest.raises(ValueError, match="same field"):
        map_headers(["A", "B"], {"A": "contact_name", "B": "contact_name"})
    twice = map_headers(["Email", "E-mail", "Budget", "budget "])
    assert twice.describe() == [("Email", "contact_email"), ("Budget", "custom:budget")]
    assert twice.unmapped == ["E-mail", "budget "]


def test_dry_run_previews_and_writes_nothing(
    tmp_path: Path, cli_env: dict[str, str], client: MegaClient
) -> None:
    path = tmp_path / "windows.csv"
    text = (
        "First name,Last name,Mobile,Area,Shoe size,Hat\r\n"
        "José,Núñez,(206) 555-0100,Downtown,44,\r\n"
        "Bad,Row,12,,,\r\n"
    )
    path.write_bytes(text.encode("cp1252"))
    done = run_cli(cli_env, "import", str(path), "--map", "Area=neighborhood", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "encoding cp1252" in done.stderr
    assert "1 would be created" in done.stderr
    assert "1 failed" in done.stderr
    assert "'Shoe size'" in done.stderr  # listed, not guessed
    assert "'Hat'" in done.stderr  # though empty in every previewed row
    assert client.leads.list().total == 0
    done = run_cli(cli_env, "import", str(path), "--map", "Area=neighborhood")
    assert done.returncode == 0, done.stderr
    lead = client.leads.list(include_custom_fields=True).leads[0]
    assert lead["contact_name"] == "José Núñez"
    assert lead["contact_phone"] == "+12065550100"
    assert lead["custom_fields"] == {"neighborhood": "Downtown"}
    rows = read_results(tmp_path / "windows.results.csv")
    assert [(r["line"], r["status"]) for r in rows] == [("2", "created"), ("3", "failed")]
    assert rows[1]["errors"]
    exported = run_cli(cli_env, "export", "-")  # to stdout; the progress goes to stderr
    assert exported.returncode == 0, exported.stderr
    assert list(csv.DictReader(exported.stdout.splitlines()))[0]["neighborhood"] == "Downtown"


def test_bad_usage_is_a_clear_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "x.csv"
    path.write_text("colour,size\nred,1\n")
    done = run_cli(cli_env, "import", str(path))
    assert done.returncode == 2
    assert "no column maps to a name, email or phone" in done.stderr
    assert run_cli(cli_env, "import", str(path), "--resume", "--map", "colour=contact_name").returncode == 2
    huge = tmp_path / "huge.csv"
    huge.write_text("name,notes\nAda," + "x" * 200_000 + "\n")  # beyond the csv module's field limit
    done = run_cli(cli_env, "import", str(huge))
    assert done.returncode == 2
    assert "field larger than field limit" in done.stderr
    env = {**cli_env, "MEGA_TOKEN": "mega_" + "0" * 64}
    done = run_cli(env, "import", str(path), "--map", "colour=contact_name")
    assert done.returncode == 1
    assert "401 authentication_error" in done.stderr


def test_imports_a_messy_20000_row_file_and_exports_it_back(
    tmp_path: Path, cli_env: dict[str, str], client: MegaClient
) -> None:
    path = tmp_path / "messy.csv"
    expected = generate(path, 20_000, seed=7)
    done = run_cli(cli_env, "import", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == expected.records
    assert (summary["created"], summary["updated"], summary["failed"]) == (
        expected.created, expected.updated, expected.failed,
    )  # fmt: skip
    assert "encoding utf-8-sig, delimiter ';'" in done.stderr
    for column in UNKNOWN_COLUMNS:
        assert repr(column) in done.stderr
    results = read_results(Path(summary["results"]))
    assert [int(r["line"]) for r in results] == expected.lines
    assert all(r["errors"] for r in results if r["status"] == "failed")
    assert all(r["lead_id"] and r["matched_by"] for r in results if r["status"] == "updated")
    assert client.leads.list().total == expected.created

    exported = tmp_path / "export.csv"
    done = run_cli(cli_env, "export", str(exported))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_results(exported)
    assert len(rows) == expected.created
    assert len({r["id"] for r in rows}) == expected.created
    assert {r["contact_email"] for r in rows if r["contact_email"]} == expected.emails
    assert {r["lead_line"] for r in rows} <= {"buyer", "seller", ""}
    assert any(r["budget"] for r in rows)
    buyers = tmp_path / "buyers.csv"
    assert run_cli(cli_env, "export", str(buyers), "--lead-line", "buyer").returncode == 0
    assert len(read_results(buyers)) == client.leads.list(lead_line="buyer").total > 0


def test_resume_after_kill_creates_nothing_twice_and_skips_nothing(tmp_path: Path, server: Server) -> None:
    # A bulk budget of 4 a second stretches the import over seconds, so it is killed mid-file, and
    # makes the importer wait out 429s on the way.
    tenant = make_tenant(server, limits=("1000000/minute", "4/second"))
    env = {**os.environ, **tenant.env, "COLUMNS": "200"}
    path = tmp_path / "resume.csv"
    expected = generate(path, 8_000, seed=11)
    results = tmp_path / "resume.results.csv"
    state_path = tmp_path / "resume.results.csv.state.json"
    proc = subprocess.Popen(
        [*CLI, "import", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if state_path.exists() and _chunks_done(state_path) >= 4:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=10)
    killed = ImportState.load(state_path)
    assert not killed.finished
    assert 0 < killed.rows_done < expected.records

    restart = run_cli(env, "import", str(path))  # without --resume: refused, it would duplicate
    assert restart.returncode == 2
    assert "--resume" in restart.stderr
    done = run_cli(env, "import", str(path), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_results(results)
    assert [int(r["line"]) for r in rows] == expected.lines  # each row once, none missing
    with tenant.client() as c:
        assert c.leads.list().total == expected.created  # nothing created twice
        assert c.leads.list(search="Walk-in").total == expected.walk_ins
    final = ImportState.load(state_path)
    assert final.finished
    assert final.summary["created"] == expected.created
    assert final.summary["failed"] == expected.failed


def _chunks_done(state_path: Path) -> int:
    try:
        data: dict[str, Any] = json.loads(state_path.read_text())
    except (ValueError, OSError):
        return 0
    return int(data.get("chunks_done", 0))


# --- properties of the reading side -------------------------------------------------------------

CELL = st.text(alphabet="ab Zé,;|\t\"'\n0-9", max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    width=st.integers(2, 5),
    rows=st.lists(st.lists(CELL, min_size=5, max_size=5), max_size=12),
    delimiter=st.sampled_from(",;\t|"),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_any_written_csv_reads_back_the_same(
    tmp_path: Path, width: int, rows: list[list[str]], delimiter: str, encoding: str, newline: str
) -> None:
    header = [f"col{i}" for i in range(width)]
    records = [row[:width] for row in rows]
    path = tmp_path / "prop.csv"
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f, delimiter=delimiter, lineterminator=newline).writerows([header, *records])
    fmt = detect_format(path)
    assert fmt.delimiter == delimiter
    with path.open(encoding=fmt.encoding, newline="") as f:
        got_header, got = read_rows(f, fmt.delimiter)
        got_rows = [r.values for r in got]
    assert got_header == header
    assert got_rows == [r for r in records if any(v.strip() for v in r)]


@given(st.lists(st.text(max_size=15), max_size=12))
def test_every_column_is_mapped_once_or_listed(header: list[str]) -> None:
    mapping = map_headers(header)
    assert len(mapping.fields) + len(mapping.unmapped) == len(header)
    targets = list(mapping.fields.values())
    assert len(targets) == len(set(targets))  # no field fed by two columns
