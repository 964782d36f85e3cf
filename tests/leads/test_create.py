"""createLead: validation, normalisation, stages, custom fields and the merge rule."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from mega_crm.app import create_app
from mega_crm.db import Database
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import Tenant, make_tenant
from tests.leads.api import (
    LEADS,
    by_id,
    create,
    db_count,
    error,
    every_lead,
    listing,
    total,
    ts,
    unique_email,
)


def test_a_new_lead_and_its_defaults(client: TestClient, tenant: Tenant) -> None:
    r = client.post(LEADS, json={"contact_name": "Ada Lovelace"}, headers=tenant.headers)
    assert r.status_code == 201
    lead = r.json()["lead"]
    assert lead["customer_id"] == str(tenant.customer_id)
    assert lead["contact_name"] == "Ada Lovelace"
    assert lead["contact_email"] is None
    assert lead["contact_phone"] is None
    assert (lead["source_platform"], lead["source_type"], lead["status"]) == ("direct", "manual", "active")
    assert lead["current_stage"]["slug"] == "new"  # the first stage of the pipeline
    assert lead["owner"] is None
    assert lead["interaction_count"] == 1  # a submission is an interaction
    assert lead["last_interaction_at"] == lead["created_at"] == lead["updated_at"]
    assert lead["custom_fields"] == {}
    assert every_lead(client, tenant) == [{k: v for k, v in lead.items() if k != "custom_fields"}]


@pytest.mark.parametrize(
    "body",
    [
        {"contact_name": "Only a name"},
        {"contact_email": "only@example.com"},
        {"contact_phone": "(206) 555-0100"},
    ],
)
def test_any_one_contact_field_is_enough(client: TestClient, tenant: Tenant, body: dict[str, str]) -> None:
    lead = create(client, tenant, body)
    assert total(client, tenant) == 1
    assert lead["id"] == every_lead(client, tenant)[0]["id"]


def test_source_fields_are_stored(client: TestClient, tenant: Tenant) -> None:
    lead = create(
        client, tenant, {"contact_name": "Ad click", "source_platform": "google_ads", "source_type": "form"}
    )
    assert (lead["source_platform"], lead["source_type"]) == ("google_ads", "form")


INVALID_BODIES: list[tuple[Any, str]] = [
    ({}, "contact_name"),
    ({"contact_name": ""}, "contact_name"),
    ({"contact_name": "   "}, "contact_name"),
    ({"contact_name": None, "contact_email": None}, "contact_email"),
    ({"contact_email": "not-an-email"}, "contact_email"),
    ({"contact_email": "a@b"}, "contact_email"),
    ({"contact_email": 42}, "contact_email"),
    ({"contact_phone": "12345"}, "contact_phone"),
    ({"contact_phone": "555-0123"}, "contact_phone"),  # no area code
    ({"contact_phone": "call me"}, "contact_phone"),
    ({"contact_name": 5}, "contact_name"),
    ({"contact_name": "x", "source_platform": "myspace"}, "source_platform"),
    ({"contact_name": "x", "source_type": "fax"}, "source_type"),
    ({"contact_name": "x", "stage_slug": "nope"}, "stage_slug"),
    ({"contact_name": "x", "custom_fields": {"budget": {"nested": 1}}}, "custom_fields"),
    ({"contact_name": "x", "custom_fields": {"budget": [1, 2]}}, "custom_fields"),
    ({"contact_name": "x", "custom_fields": "budget=1"}, "custom_fields"),
    ({"contact_name": "x", "custom_fields": {"lead_line": "renter"}}, "lead_line"),
    ({"contact_name": "x", "custom_fields": {"lead_line": 1}}, "lead_line"),
    ({"contact_name": "x", "owner_id": "not on the single route"}, "owner_id"),
    ({"contact_name": "x", "surprise": 1}, "surprise"),
    # values no store or encoder can hold: refused up front, never a 500 or a poisoned lead
    ({"contact_name": "a\x00b"}, "contact_name"),
    ({"contact_name": "x", "custom_fields": {"neighborhood": "a\x00b"}}, "custom_fields.neighborhood"),
    ({"contact_name": "x", "custom_fields": {"budget": 2**63}}, "custom_fields.budget"),
    ({"contact_name": "x", "custom_fields": {"budget": -(2**63) - 1}}, "custom_fields.budget"),
]


@pytest.fixture(scope="module")
def target(client: TestClient, db: Database) -> tuple[Tenant, dict[str, Any]]:
    """A tenant with one lead, shared by the validation tests: none of them may change it."""
    tenant = make_tenant(db)
    return tenant, create(client, tenant, {"contact_name": "Before", "contact_email": unique_email()})


@pytest.mark.parametrize(("body", "field"), INVALID_BODIES)
def test_invalid_create_is_400_naming_the_field_and_changes_nothing(
    client: TestClient, db: Database, target: tuple[Tenant, dict[str, Any]], body: Any, field: str
) -> None:
    tenant, existing = target
    # Aim every bad request at the existing lead too, so a partial merge would show.
    name = body.get("contact_name")
    if isinstance(name, str) and name.strip() and "contact_email" not in body and "contact_phone" not in body:
        body = {**body, "contact_email": existing["contact_email"]}
    message = error(client.post(LEADS, json=body, headers=tenant.headers), 400)
    assert field in message
    assert db_count(db, tenant.customer_id) == 1
    assert by_id(client, tenant, existing["id"]) == existing


@pytest.mark.parametrize("body", [[{"contact_name": "x"}], "x", 1, None])
def test_a_body_that_is_not_an_object_is_400(
    client: TestClient, db: Database, tenant: Tenant, body: Any
) -> None:
    error(client.post(LEADS, json=body, headers=tenant.headers), 400)
    assert db_count(db, tenant.customer_id) == 0


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_custom_field_numbers_are_400(
    client: TestClient, db: Database, target: tuple[Tenant, dict[str, Any]], literal: bytes
) -> None:
    """Python's JSON reader accepts NaN/Infinity; JSON (and PostgreSQL's json type) has no such value."""
    tenant, _ = target
    body = b'{"contact_name": "x", "custom_fields": {"budget": ' + literal + b"}}"
    response = client.post(
        LEADS, content=body, headers={**tenant.headers, "content-type": "application/json"}
    )
    assert "custom_fields.budget" in error(response, 400)
    assert db_count(db, tenant.customer_id) == 1


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 0.1, 1e300])
def test_custom_field_numbers_at_the_edges_round_trip(client: TestClient, tenant: Tenant, value: Any) -> None:
    lead = create(client, tenant, {"contact_name": "Edge", "custom_fields": {"budget": value}})
    assert lead["custom_fields"] == {"budget": value}
    assert by_id(client, tenant, lead["id"])["custom_fields"] == {"budget": value}


def test_malformed_json_is_400(client: TestClient, db: Database, tenant: Tenant) -> None:
    response = client.post(
        LEADS,
        content=b'{"contact_name": "x",',
        headers={**tenant.headers, "content-type": "application/json"},
    )
    error(response, 400)
    assert db_count(db, tenant.customer_id) == 0


# --- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "(206) 555-0123",
        "206.555.0123",
        "206-555-0123",
        "2065550123",
        "+12065550123",
        "+1 206 555 0123",
        "1 (206) 555-0123",
    ],
)
def test_phone_is_stored_in_e164(client: TestClient, tenant: Tenant, typed: str) -> None:
    assert create(client, tenant, {"contact_phone": typed})["contact_phone"] == "+12065550123"


def test_email_is_stored_normalised(client: TestClient, tenant: Tenant) -> None:
    lead = create(client, tenant, {"contact_email": "  Ada.Lovelace@Example.COM "})
    assert lead["contact_email"] == "Ada.Lovelace@example.com"


@pytest.fixture
def app_in_region(db: Database, monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(region: str | None) -> ContractClient:
        if region is None:
            monkeypatch.delenv("MEGA_DEFAULT_PHONE_REGION", raising=False)
        else:
            monkeypatch.setenv("MEGA_DEFAULT_PHONE_REGION", region)
        return ContractClient(create_app(make_settings(db.url), db), raise_server_exceptions=False)

    return make


def test_default_phone_region_comes_from_the_environment(db: Database, app_in_region: Any) -> None:
    tenant = make_tenant(db)
    london = app_in_region("GB")
    lead = create(london, tenant, {"contact_phone": "020 7946 0958"})
    assert lead["contact_phone"] == "+442079460958"
    # a number with its country code is read as written whatever the region
    assert create(london, tenant, {"contact_phone": "+1 (206) 555-0142"})["contact_phone"] == "+12065550142"


def test_default_phone_region_is_us(db: Database, app_in_region: Any) -> None:
    tenant = make_tenant(db)
    us = app_in_region(None)
    assert create(us, tenant, {"contact_phone": "(206) 555-0143"})["contact_phone"] == "+12065550143"
    # the London number has no area code in the US reading: not a complete number
    assert "contact_phone" in error(
        us.post(LEADS, json={"contact_phone": "020 7946 0958"}, headers=tenant.headers), 400
    )


# --- stages and custom fields -----------------------------------------------------------------


def test_stage_slug_picks_the_stage(client: TestClient, tenant: Tenant) -> None:
    lead = create(client, tenant, {"contact_name": "Qualified", "stage_slug": "qualified"})
    stage = lead["current_stage"]
    assert (stage["slug"], stage["name"], stage["color"]) == ("qualified", "Qualified", "#f59e0b")
    assert listing(client, tenant, stageId=stage["id"])["total"] == 1


def test_another_customers_stage_slug_is_unknown(client: TestClient, db: Database, tenant: Tenant) -> None:
    from mega_crm.admin import service as admin

    other = make_tenant(db)
    admin.add_stage(db, other.customer_id, "theirs-only", "Theirs", None)
    response = client.post(
        LEADS, json={"contact_name": "x", "stage_slug": "theirs-only"}, headers=tenant.headers
    )
    assert "stage_slug" in error(response, 400)
    assert create(client, other, {"contact_name": "x", "stage_slug": "theirs-only"})["current_stage"]["slug"]


def test_custom_fields_known_are_stored_unknown_ignored(client: TestClient, tenant: Tenant) -> None:
    values = {"budget": 650000, "neighborhood": "Ballard", "lead_line": "seller"}
    lead = create(client, tenant, {"contact_name": "Fields", "custom_fields": {**values, "shoe_size": 44}})
    assert lead["custom_fields"] == values
    assert by_id(client, tenant, lead["id"])["custom_fields"] == values


@pytest.mark.parametrize("value", ["text", 7, 2.5, True, False, None])
def test_custom_field_values_are_any_scalar(client: TestClient, tenant: Tenant, value: Any) -> None:
    lead = create(client, tenant, {"contact_name": "Scalar", "custom_fields": {"budget": value}})
    assert lead["custom_fields"] == {"budget": value}
    assert by_id(client, tenant, lead["id"])["custom_fields"] == {"budget": value}


@pytest.mark.parametrize("line", ["buyer", "seller"])
def test_lead_line_is_reserved_even_when_not_defined(client: TestClient, db: Database, line: str) -> None:
    tenant = make_tenant(db, fields=("budget",))
    lead = create(client, tenant, {"contact_name": "Line", "custom_fields": {"lead_line": line}})
    assert lead["custom_fields"] == {"lead_line": line}
    assert listing(client, tenant, lead_line=line)["total"] == 1


# --- de-duplication and the merge rule --------------------------------------------------------


def test_merge_by_email_is_case_insensitive(client: TestClient, db: Database, tenant: Tenant) -> None:
    first = create(client, tenant, {"contact_email": "Pat.Doe@Example.com", "contact_name": "Pat"})
    r = client.post(
        LEADS, json={"contact_email": "PAT.DOE@example.COM", "contact_name": "Pat D."}, headers=tenant.headers
    )
    assert r.status_code == 201
    merged = r.json()["lead"]
    assert merged["id"] == first["id"]
    assert merged["contact_name"] == "Pat D."
    assert merged["contact_email"] == "Pat.Doe@example.com"  # the stored form is kept
    assert merged["interaction_count"] == 2
    assert db_count(db, tenant.customer_id) == 1


@pytest.mark.parametrize("again", ["+1 206 555 0111", "206.555.0111", "(206) 555-0111", "12065550111"])
def test_merge_by_phone_last_10(client: TestClient, db: Database, tenant: Tenant, again: str) -> None:
    first = create(client, tenant, {"contact_phone": "206-555-0111", "contact_name": "Phone"})
    merged = create(client, tenant, {"contact_phone": again, "contact_name": "Phone again"})
    assert merged["id"] == first["id"]
    assert merged["contact_name"] == "Phone again"
    assert db_count(db, tenant.customer_id) == 1


def test_phones_from_different_countries_with_the_same_last_10_digits_merge(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    """The contract matches on the last 10 digits, whatever the country code."""
    first = create(client, tenant, {"contact_phone": "+44 20 7946 0958"})
    assert create(client, tenant, {"contact_phone": "+1 207 946 0958"})["id"] == first["id"]
    assert db_count(db, tenant.customer_id) == 1


def test_email_match_wins_over_phone_match(client: TestClient, tenant: Tenant) -> None:
    by_email = create(
        client,
        tenant,
        {"contact_email": unique_email("e"), "contact_phone": "(206) 555-0001", "contact_name": "E"},
    )
    by_phone = create(
        client,
        tenant,
        {"contact_email": unique_email("p"), "contact_phone": "(206) 555-0002", "contact_name": "P"},
    )
    merged = create(
        client,
        tenant,
        {
            "contact_email": by_email["contact_email"],
            "contact_phone": "(206) 555-0002",
            "contact_name": "Incoming",
        },
    )
    assert merged["id"] == by_email["id"]
    assert merged["contact_name"] == "Incoming"
    assert merged["contact_phone"] == "+12065550001"  # never replaced, and the other lead holds 0002
    assert by_id(client, tenant, by_phone["id"]) == {**by_phone, "custom_fields": {}}  # untouched
    assert total(client, tenant) == 2


def test_phone_is_not_filled_in_when_another_lead_holds_it(client: TestClient, tenant: Tenant) -> None:
    email_only = create(client, tenant, {"contact_email": unique_email(), "contact_name": "No phone yet"})
    holder = create(client, tenant, {"contact_phone": "(206) 555-0003", "contact_name": "Holder"})
    merged = create(
        client, tenant, {"contact_email": email_only["contact_email"], "contact_phone": "206.555.0003"}
    )
    assert merged["id"] == email_only["id"]
    assert merged["contact_phone"] is None
    assert by_id(client, tenant, holder["id"])["contact_name"] == "Holder"


def test_what_a_merge_may_overwrite(client: TestClient, tenant: Tenant) -> None:
    email = unique_email("merge")
    first = create(
        client,
        tenant,
        {
            "contact_email": email,
            "contact_name": "Old Name",
            "source_platform": "google_ads",
            "source_type": "form",
            "stage_slug": "contacted",
            "custom_fields": {"budget": 1, "neighborhood": "Fremont", "lead_line": "buyer"},
        },
    )
    merged = create(
        client,
        tenant,
        {
            "contact_email": email.upper(),
            "contact_name": "New Name",
            "contact_phone": "(206) 555-0004",
            "source_platform": "meta_ads",
            "source_type": "chat",
            "stage_slug": "qualified",
            "custom_fields": {"budget": 2, "lead_line": "seller", "not_defined": "x"},
        },
    )
    assert merged["id"] == first["id"]
    # overwritten: name, stage, lead_line and each custom field sent
    assert merged["contact_name"] == "New Name"
    assert merged["current_stage"]["slug"] == "qualified"
    assert merged["custom_fields"] == {"budget": 2, "neighborhood": "Fremont", "lead_line": "seller"}
    # filled in because the lead had none
    assert merged["contact_phone"] == "+12065550004"
    # kept
    assert merged["contact_email"] == first["contact_email"]
    assert (merged["source_platform"], merged["source_type"]) == ("google_ads", "form")
    assert merged["status"] == "active"
    assert merged["created_at"] == first["created_at"]
    # a submission counts as an interaction and is a change
    assert merged["interaction_count"] == 2
    assert ts(merged["updated_at"]) > ts(first["updated_at"])  # type: ignore[operator]
    assert merged["last_interaction_at"] == merged["updated_at"]
    assert by_id(client, tenant, first["id"]) == merged


def test_a_merge_never_replaces_the_email_and_omitted_fields_are_kept(
    client: TestClient, tenant: Tenant
) -> None:
    first = create(
        client,
        tenant,
        {
            "contact_email": unique_email("keep"),
            "contact_phone": "(206) 555-0005",
            "contact_name": "Keep",
            "custom_fields": {"budget": 10},
            "stage_slug": "contacted",
        },
    )
    other_email = unique_email("other")
    merged = create(client, tenant, {"contact_phone": "2065550005", "contact_email": other_email})
    assert merged["id"] == first["id"]
    assert merged["contact_email"] == first["contact_email"]
    assert merged["contact_name"] == "Keep"
    assert merged["custom_fields"] == {"budget": 10}
    assert merged["current_stage"]["slug"] == "contacted"
    # the other email was not stored anywhere: it now makes a lead of its own
    assert create(client, tenant, {"contact_email": other_email})["id"] != first["id"]
    assert total(client, tenant) == 2


def test_merge_fills_in_a_missing_email(client: TestClient, tenant: Tenant) -> None:
    first = create(client, tenant, {"contact_phone": "(206) 555-0006"})
    email = unique_email("fill")
    merged = create(client, tenant, {"contact_phone": "206 555 0006", "contact_email": email})
    assert merged["id"] == first["id"]
    assert merged["contact_email"] == email
    assert create(client, tenant, {"contact_email": email.upper()})["id"] == first["id"]


def test_dedup_is_per_customer(client: TestClient, db: Database, tenant: Tenant) -> None:
    email = unique_email("shared")
    mine = create(client, tenant, {"contact_email": email, "contact_phone": "(206) 555-0007"})
    other = make_tenant(db)
    theirs = create(client, other, {"contact_email": email, "contact_phone": "(206) 555-0007"})
    assert theirs["id"] != mine["id"]
    assert total(client, tenant) == 1
    assert total(client, other) == 1
