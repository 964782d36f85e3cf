"""bulkImportLeads: bounds, per-row results, merge/skip, in-batch duplicates, dry_run, owners,
custom fields, one transaction, and a statement count independent of the row count."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.leads import repository
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import Tenant, make_tenant
from tests.leads.api import BULK, bulk, by_id, create, db_count, error, every_lead, unique_email, unique_phone


def row(**fields: Any) -> dict[str, Any]:
    return {"contact_email": unique_email("bulk"), **fields}


@pytest.fixture(scope="module")
def empty_tenant(db: Database) -> Tenant:
    """Shared by tests that must not write anything."""
    return make_tenant(db)


# --- bounds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"leads": []}, "leads"),
        ({"leads": [{"contact_name": f"r{i}"} for i in range(501)]}, "leads"),
        ({}, "leads"),
        ({"leads": {"contact_name": "x"}}, "leads"),
        ({"leads": [{"contact_name": "x"}], "on_duplicate": "merge"}, "on_duplicate"),
        ({"leads": [{"contact_name": "x"}], "dry_run": "perhaps"}, "dry_run"),
        ({"leads": [{"contact_name": "x"}], "dry_run": "true"}, "dry_run"),
        ({"leads": [{"contact_name": "x"}], "dry_run": 1}, "dry_run"),
    ],
)
def test_invalid_envelope_is_400_and_writes_nothing(
    client: TestClient, db: Database, empty_tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    tenant = empty_tenant
    assert field in error(client.post(BULK, json=body, headers=tenant.headers), 400)
    assert db_count(db, tenant.customer_id) == 0


@pytest.mark.parametrize("n", [1, 500])
def test_one_to_five_hundred_rows(client: TestClient, db: Database, tenant: Tenant, n: int) -> None:
    result = bulk(client, tenant, [{"contact_name": f"Row {i}", "row_ref": str(i)} for i in range(n)])
    assert result["summary"] == {"total": n, "created": n, "updated": 0, "skipped": 0, "failed": 0}
    assert [r["row_ref"] for r in result["results"]] == [str(i) for i in range(n)]
    assert len({r["lead_id"] for r in result["results"]}) == n
    assert db_count(db, tenant.customer_id) == n


# --- per-row results --------------------------------------------------------------------------


def test_bad_rows_fail_alone(client: TestClient, db: Database, tenant: Tenant) -> None:
    other = make_tenant(db)
    rows: list[Any] = [
        row(row_ref="good-1", contact_name="Good"),
        {"row_ref": "no-contact", "contact_name": "  "},
        {"row_ref": "bad-email", "contact_email": "nope"},
        {"row_ref": "bad-phone", "contact_phone": "12"},
        row(row_ref="bad-stage", stage_slug="nowhere"),
        row(row_ref="bad-owner", owner_id=str(other.owners[0])),
        row(row_ref="not-uuid-owner", owner_id="owner-1"),
        row(row_ref="bad-line", lead_line="renter"),
        row(row_ref="bad-type", contact_name=7),
        row(row_ref="extra", favourite="blue"),
        row(row_ref="bad-custom", custom_fields={"budget": [1]}),
        row(row_ref="nul", contact_name="a\x00b"),  # PostgreSQL text cannot hold it: must fail alone
        row(row_ref="huge", custom_fields={"budget": 2**64}),
        "not an object",
        row(row_ref="good-2", contact_phone=unique_phone()),
    ]
    expected_field = {
        "no-contact": "contact_name",
        "bad-email": "contact_email",
        "bad-phone": "contact_phone",
        "bad-stage": "stage_slug",
        "bad-owner": "owner_id",
        "not-uuid-owner": "owner_id",
        "bad-line": "lead_line",
        "bad-type": "contact_name",
        "extra": "favourite",
        "bad-custom": "custom_fields",
        "nul": "contact_name",
        "huge": "custom_fields.budget",
    }
    result = bulk(client, tenant, rows)
    assert result["summary"] == {"total": 15, "created": 2, "updated": 0, "skipped": 0, "failed": 13}
    results = result["results"]
    assert [r["row_ref"] for r in results] == [
        r.get("row_ref") if isinstance(r, dict) else None for r in rows
    ]
    for r in results:
        if r["row_ref"] in ("good-1", "good-2"):
            assert r["status"] == "created"
            assert r["errors"] is None
            assert r["lead_id"]
            continue
        assert r["status"] == "failed"
        assert r["lead_id"] is None
        assert r["matched_by"] is None
        assert r["errors"], r
        if r["row_ref"] in expected_field:
            assert any(expected_field[r["row_ref"]] in e for e in r["errors"]), r
    assert results[13]["errors"] == ["A lead must be a JSON object."]
    stored = every_lead(client, tenant)
    assert sorted(x["id"] for x in stored) == sorted(r["lead_id"] for r in results if r["lead_id"])


def test_a_row_with_several_problems_reports_each(client: TestClient, tenant: Tenant) -> None:
    result = bulk(client, tenant, [{"contact_email": "bad", "contact_phone": "1", "stage_slug": "nowhere"}])
    errors = " ".join(result["results"][0]["errors"])
    assert all(f in errors for f in ("contact_email", "contact_phone", "stage_slug"))


def test_results_and_summary_for_a_mixed_batch(client: TestClient, tenant: Tenant) -> None:
    by_email = create(client, tenant, {"contact_email": unique_email("e"), "contact_name": "E"})
    by_phone = create(client, tenant, {"contact_phone": unique_phone(), "contact_name": "P"})
    result = bulk(
        client,
        tenant,
        [
            row(row_ref="new"),
            {"row_ref": "email", "contact_email": by_email["contact_email"].upper(), "contact_name": "E2"},
            {"row_ref": "phone", "contact_phone": by_phone["contact_phone"][2:], "contact_name": "P2"},
            {"row_ref": "bad"},
        ],
    )
    assert result["dry_run"] is False
    assert result["summary"] == {"total": 4, "created": 1, "updated": 2, "skipped": 0, "failed": 1}
    assert [(r["row_ref"], r["status"], r["matched_by"]) for r in result["results"]] == [
        ("new", "created", None),
        ("email", "updated", "email"),
        ("phone", "updated", "phone"),
        ("bad", "failed", None),
    ]
    assert result["results"][1]["lead_id"] == by_email["id"]
    assert result["results"][2]["lead_id"] == by_phone["id"]
    assert by_id(client, tenant, by_email["id"])["contact_name"] == "E2"
    assert by_id(client, tenant, by_phone["id"])["contact_name"] == "P2"
    assert [r["row_ref"] for r in result["results"]] == ["new", "email", "phone", "bad"]
    assert all(r["errors"] is None for r in result["results"][:3])


def test_bulk_leads_are_inert(client: TestClient, tenant: Tenant) -> None:
    single = create(client, tenant, {"contact_email": unique_email(), "contact_name": "Single"})
    result = bulk(client, tenant, [row(contact_name="Imported"), {"contact_email": single["contact_email"]}])
    imported = by_id(client, tenant, result["results"][0]["lead_id"])
    assert imported["source_type"] == "import"
    assert imported["source_platform"] == "direct"
    assert imported["interaction_count"] == 0
    assert imported["last_interaction_at"] is None
    merged = by_id(client, tenant, single["id"])
    assert merged["interaction_count"] == 1
    assert merged["last_interaction_at"] == single["last_interaction_at"]


def test_update_merges_by_the_merge_rule(client: TestClient, db: Database, tenant: Tenant) -> None:
    first = create(
        client,
        tenant,
        {
            "contact_email": unique_email(),
            "contact_name": "Old",
            "source_type": "form",
            "custom_fields": {"budget": 1, "neighborhood": "Fremont"},
        },
    )
    owner = str(tenant.owners[0])
    result = bulk(
        client,
        tenant,
        [
            {
                "contact_email": first["contact_email"],
                "contact_name": "New",
                "contact_phone": "(206) 555-0200",
                "source_type": "sms",
                "stage_slug": "won",
                "owner_id": owner,
                "lead_line": "seller",
                "custom_fields": {"budget": 2},
            }
        ],
    )
    assert result["results"][0]["status"] == "updated"
    lead = by_id(client, tenant, first["id"])
    assert lead["contact_name"] == "New"
    assert lead["contact_phone"] == "+12065550200"
    assert lead["source_type"] == "form"
    assert lead["current_stage"]["slug"] == "won"
    assert lead["owner"] == {"id": owner, "name": "Owner 0", "role_name": "Agent"}
    assert lead["custom_fields"] == {"budget": 2, "neighborhood": "Fremont", "lead_line": "seller"}
    assert lead["updated_at"] > first["updated_at"]
    assert db_count(db, tenant.customer_id) == 1


def test_skip_leaves_the_match_untouched(client: TestClient, tenant: Tenant) -> None:
    first = create(
        client,
        tenant,
        {"contact_email": unique_email(), "contact_phone": unique_phone(), "contact_name": "Keep"},
    )
    result = bulk(
        client,
        tenant,
        [
            {"row_ref": "e", "contact_email": first["contact_email"], "contact_name": "Changed"},
            {"row_ref": "p", "contact_phone": first["contact_phone"], "stage_slug": "won"},
            row(row_ref="n"),
        ],
        on_duplicate="skip",
    )
    assert [(r["status"], r["matched_by"], r["lead_id"]) for r in result["results"][:2]] == [
        ("skipped", "email", first["id"]),
        ("skipped", "phone", first["id"]),
    ]
    assert result["results"][2]["status"] == "created"
    assert result["summary"] == {"total": 3, "created": 1, "updated": 0, "skipped": 2, "failed": 0}
    assert by_id(client, tenant, first["id"]) == first


def test_duplicates_inside_one_batch_merge_with_each_other(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    email, phone = unique_email("twin"), "(206) 555-0301"
    result = bulk(
        client,
        tenant,
        [
            {"row_ref": "1", "contact_email": email, "contact_name": "First", "custom_fields": {"budget": 1}},
            {
                "row_ref": "2",
                "contact_email": email.upper(),
                "contact_phone": phone,
                "contact_name": "Second",
            },
            {"row_ref": "3", "contact_phone": "206.555.0301", "custom_fields": {"neighborhood": "Ballard"}},
            {"row_ref": "4", "contact_phone": "+1 206 555 0302", "contact_name": "Other"},
        ],
    )
    outcomes = [(r["status"], r["matched_by"]) for r in result["results"]]
    assert outcomes == [("created", None), ("updated", "email"), ("updated", "phone"), ("created", None)]
    lead_id = result["results"][0]["lead_id"]
    assert result["results"][1]["lead_id"] == result["results"][2]["lead_id"] == lead_id
    assert result["summary"] == {"total": 4, "created": 2, "updated": 2, "skipped": 0, "failed": 0}
    lead = by_id(client, tenant, lead_id)
    assert lead["contact_name"] == "Second"
    assert lead["contact_email"] == email
    assert lead["contact_phone"] == "+12065550301"
    assert lead["custom_fields"] == {"budget": 1, "neighborhood": "Ballard"}
    assert db_count(db, tenant.customer_id) == 2


def test_rows_matching_one_lead_by_email_and_by_phone_all_land_on_it(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    """The existing lead is loaded once even though both its email and its phone are in the batch:
    the second row's merge builds on the first's."""
    first = create(client, tenant, {"contact_email": unique_email(), "contact_phone": unique_phone()})
    result = bulk(
        client,
        tenant,
        [
            {"contact_email": first["contact_email"], "contact_name": "By Email"},
            {
                "contact_email": unique_email(),
                "contact_phone": first["contact_phone"],
                "custom_fields": {"budget": 7},
            },
        ],
    )
    assert [(r["status"], r["matched_by"], r["lead_id"]) for r in result["results"]] == [
        ("updated", "email", first["id"]),
        ("updated", "phone", first["id"]),
    ]
    lead = by_id(client, tenant, first["id"])
    assert (lead["contact_name"], lead["custom_fields"]) == ("By Email", {"budget": 7})
    assert db_count(db, tenant.customer_id) == 1


def test_in_batch_duplicates_with_skip(client: TestClient, db: Database, tenant: Tenant) -> None:
    email = unique_email("twin")
    result = bulk(
        client,
        tenant,
        [
            {"contact_email": email, "contact_name": "First"},
            {"contact_email": email, "contact_name": "Second"},
        ],
        on_duplicate="skip",
    )
    assert [r["status"] for r in result["results"]] == ["created", "skipped"]
    assert by_id(client, tenant, result["results"][0]["lead_id"])["contact_name"] == "First"
    assert db_count(db, tenant.customer_id) == 1


# --- dry run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("on_duplicate", ["update", "skip"])
def test_dry_run_previews_exactly_and_writes_nothing(
    client: TestClient, db: Database, tenant: Tenant, on_duplicate: str
) -> None:
    existing = create(client, tenant, {"contact_email": unique_email("x"), "contact_name": "Existing"})
    twin = unique_email("twin")
    rows = [
        {"row_ref": "new", "contact_email": twin, "contact_name": "New"},
        {"row_ref": "existing", "contact_email": existing["contact_email"], "contact_name": "Renamed"},
        {"row_ref": "twin", "contact_email": twin.upper(), "contact_name": "Twin"},
        {"row_ref": "bad", "contact_email": "bad"},
        {"row_ref": "custom", "contact_name": "C", "custom_fields": {"shoe_size": 9, "budget": 5}},
    ]
    before = every_lead(client, tenant, include_custom_fields="true")
    preview = bulk(client, tenant, rows, dry_run=True, on_duplicate=on_duplicate)
    assert preview["dry_run"] is True
    assert every_lead(client, tenant, include_custom_fields="true") == before
    assert db_count(db, tenant.customer_id) == 1

    real = bulk(client, tenant, rows, on_duplicate=on_duplicate)
    assert real["dry_run"] is False
    assert preview["summary"] == real["summary"]
    assert preview["unknown_custom_fields"] == real["unknown_custom_fields"] == ["shoe_size"]
    new_ids = {x["id"] for x in every_lead(client, tenant)} - {existing["id"]}
    for seen, done in zip(preview["results"], real["results"], strict=True):
        assert {k: v for k, v in seen.items() if k != "lead_id"} == {
            k: v for k, v in done.items() if k != "lead_id"
        }
        if done["lead_id"] in new_ids:
            assert seen["lead_id"] is None  # not created by a dry run: no id to show
        else:
            assert seen["lead_id"] == done["lead_id"]
    assert preview["results"][1]["lead_id"] == existing["id"]


def test_dry_run_is_not_cached_under_an_idempotency_key(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    rows = [row(contact_name="Once")]
    headers = {**tenant.headers, "Idempotency-Key": f"dry-{uuid.uuid4()}"}
    first = client.post(BULK, json={"leads": rows, "dry_run": True}, headers=headers)
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    real = client.post(BULK, json={"leads": rows}, headers=headers)
    assert real.status_code == 200, real.text  # not a 409: the dry run did not claim the key
    assert real.json()["summary"]["created"] == 1
    assert db_count(db, tenant.customer_id) == 1


# --- owners and custom fields -----------------------------------------------------------------


def test_owner_must_be_the_customers_team_member(client: TestClient, db: Database, tenant: Tenant) -> None:
    other = make_tenant(db)
    mine, theirs = str(tenant.owners[0]), str(other.owners[0])
    result = bulk(
        client, tenant, [row(row_ref="mine", owner_id=mine), row(row_ref="theirs", owner_id=theirs)]
    )
    ok, bad = result["results"]
    assert ok["status"] == "created"
    assert bad["status"] == "failed"
    assert any("owner_id" in e for e in bad["errors"])
    assert by_id(client, tenant, ok["lead_id"])["owner"]["id"] == mine
    assert db_count(db, tenant.customer_id) == 1


def test_unknown_and_ignored_custom_fields(client: TestClient, tenant: Tenant) -> None:
    result = bulk(
        client,
        tenant,
        [
            row(row_ref="a", custom_fields={"budget": 1, "color": "red"}),
            row(row_ref="b", custom_fields={"shoe_size": 9, "color": "blue", "lead_line": "buyer"}),
            row(row_ref="c"),
            row(row_ref="d", custom_fields={"neighborhood": None}),
        ],
    )
    assert [r["ignored_custom_fields"] for r in result["results"]] == [
        ["color"],
        ["shoe_size", "color"],
        [],
        [],
    ]
    assert result["unknown_custom_fields"] == ["color", "shoe_size"]
    fields = [by_id(client, tenant, r["lead_id"])["custom_fields"] for r in result["results"]]
    assert fields == [{"budget": 1}, {"lead_line": "buyer"}, {}, {"neighborhood": None}]


def test_lead_line_top_level_or_in_custom_fields(client: TestClient, tenant: Tenant) -> None:
    result = bulk(
        client,
        tenant,
        [
            row(lead_line="buyer"),
            row(custom_fields={"lead_line": "seller"}),
            row(custom_fields={"lead_line": "x"}),
        ],
    )
    a, b, c = result["results"]
    assert by_id(client, tenant, a["lead_id"])["custom_fields"] == {"lead_line": "buyer"}
    assert by_id(client, tenant, b["lead_id"])["custom_fields"] == {"lead_line": "seller"}
    assert c["status"] == "failed"
    assert any("lead_line" in e for e in c["errors"])


# --- one transaction, idempotent retries --------------------------------------------------------


def test_the_whole_batch_is_one_transaction(
    client: TestClient, db: Database, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = create(client, tenant, {"contact_email": unique_email(), "contact_name": "Existing"})
    rows = [row(contact_name=f"New {i}") for i in range(5)] + [
        {"contact_email": existing["contact_email"], "contact_name": "Renamed"}
    ]
    calls: list[int] = []

    def crash_after_inserts(session: Any, records: list[dict[str, Any]], changed: Any) -> None:
        calls.append(len(records))
        raise RuntimeError("simulated crash between the inserts and the updates")

    monkeypatch.setattr(repository, "update_leads", crash_after_inserts)
    key = {"Idempotency-Key": f"crash-{uuid.uuid4()}"}
    response = client.post(BULK, json={"leads": rows}, headers={**tenant.headers, **key})
    message = error(response, 500)
    assert calls == [1], "the crash must come after the inserts were sent"
    assert "simulated" not in message
    assert "Traceback" not in response.text
    assert db_count(db, tenant.customer_id) == 1
    assert by_id(client, tenant, existing["id"]) == existing

    monkeypatch.undo()
    retry = client.post(BULK, json={"leads": rows}, headers={**tenant.headers, **key})
    assert retry.status_code == 200, retry.text
    assert retry.json()["summary"] == {"total": 6, "created": 5, "updated": 1, "skipped": 0, "failed": 0}
    assert db_count(db, tenant.customer_id) == 6
    renamed = by_id(client, tenant, existing["id"])
    assert renamed["contact_name"] == "Renamed"

    replay = client.post(BULK, json={"leads": rows}, headers={**tenant.headers, **key})
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == retry.json()
    assert db_count(db, tenant.customer_id) == 6
    assert by_id(client, tenant, existing["id"]) == renamed  # not merged a second time

    other_body = client.post(BULK, json={"leads": rows[:1]}, headers={**tenant.headers, **key})
    error(other_body, 409)


# --- statements per batch ---------------------------------------------------------------------


@pytest.fixture
def counted(db: Database) -> Iterator[tuple[ContractClient, list[str]]]:
    """An app on its own engine (nothing else runs SQL on it) and the statements it executes.

    An executemany is counted once per parameter set: the database runs the statement that many
    times, so it must not hide a per-row UPDATE. (SQLAlchemy's insertmanyvalues also reports its
    multi-row statements as "many", but with one flat parameter list: that is one statement.)"""
    own_db = Database(db.url)
    statements: list[str] = []

    @event.listens_for(own_db.engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, many: bool) -> None:
        per_row = (
            many
            and isinstance(params, (list, tuple))
            and bool(params)
            and isinstance(params[0], (list, tuple, dict))
        )
        statements.extend([statement] * (len(params) if per_row else 1))

    yield ContractClient(create_app(make_settings(db.url), own_db)), statements
    own_db.dispose()


def _statements_for(
    client: ContractClient, statements: list[str], tenant: Tenant, rows: list[Any]
) -> list[str]:
    statements.clear()
    bulk(client, tenant, rows)
    return list(statements)


def test_statement_count_does_not_grow_with_the_row_count(
    counted: tuple[ContractClient, list[str]], db: Database
) -> None:
    client, statements = counted
    tenant = make_tenant(db)
    owner = str(tenant.owners[0])

    def fresh(n: int) -> list[dict[str, Any]]:
        return [
            row(
                contact_phone=unique_phone(),
                contact_name=f"Row {i}",
                owner_id=owner,
                stage_slug="contacted",
                custom_fields={"budget": i, "color": "red"},
            )
            for i in range(n)
        ]

    bulk(client, tenant, fresh(1))  # warm up: first-use queries of a new engine are not the point
    new_5 = _statements_for(client, statements, tenant, few := fresh(5))
    new_500 = _statements_for(client, statements, tenant, many := fresh(500))
    assert len(new_5) == len(new_500), "\n".join(new_500)

    def merging(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "contact_name": r["contact_name"] + " merged", "stage_slug": "won"} for r in rows]

    merge_5 = _statements_for(client, statements, tenant, merging(few))
    merge_500 = _statements_for(client, statements, tenant, merging(many))
    assert len(merge_5) == len(merge_500), "\n".join(merge_500)
    assert len(merge_500) <= 20
    assert db_count(db, tenant.customer_id) == 506
    assert {x["contact_name"] for x in every_lead(client, tenant)} >= {f"Row {i} merged" for i in range(500)}
