"""Unit tests of the merge rule, leads.dedup.plan_merge (a pure function)."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mega_crm.leads.dedup import LeadInput, MergeDefaults, MergePlan, RowOutcome, plan_merge

CUSTOMER = uuid.uuid4()
DEFAULT_STAGE = uuid.uuid4()
THEN = datetime(2024, 1, 1, tzinfo=UTC)
NOW = THEN + timedelta(days=1)


def defaults(*, interaction: bool = False) -> MergeDefaults:
    return MergeDefaults(
        customer_id=CUSTOMER,
        now=NOW,
        default_stage_id=DEFAULT_STAGE,
        source_platform="direct",
        source_type="import",
        counts_as_interaction=interaction,
    )


def existing(**fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": uuid.uuid4(),
        "customer_id": CUSTOMER,
        "contact_name": None,
        "contact_email": None,
        "email_normalized": None,
        "contact_phone": None,
        "phone_last10": None,
        "source_platform": "google_ads",
        "source_type": "form",
        "status": "won",
        "score": 80,
        "qualified": True,
        "stage_id": DEFAULT_STAGE,
        "owner_id": None,
        "lead_line": None,
        "custom_fields": {},
        "last_interaction_at": THEN,
        "interaction_count": 3,
        "created_at": THEN,
        "updated_at": THEN,
    }
    rec.update(fields)
    if rec["contact_email"] and not rec["email_normalized"]:
        rec["email_normalized"] = rec["contact_email"].lower()
    if rec["contact_phone"] and not rec["phone_last10"]:
        rec["phone_last10"] = rec["contact_phone"][-10:]
    return rec


def incoming(**fields: Any) -> LeadInput:
    lead = LeadInput(**fields)
    if lead.contact_email and not lead.email_normalized:
        lead.email_normalized = lead.contact_email.lower()
    if lead.contact_phone and not lead.phone_last10:
        lead.phone_last10 = lead.contact_phone[-10:]
    return lead


def plan(
    inputs: list[LeadInput | None], leads: list[dict[str, Any]], *, on_duplicate: str = "update", **kw: Any
) -> MergePlan:
    rows = [(i, RowOutcome(row_ref=str(n), status="failed")) for n, i in enumerate(inputs)]
    return plan_merge(rows, leads, defaults(**kw), on_duplicate=on_duplicate)


def test_no_match_creates_with_defaults() -> None:
    p = plan([incoming(contact_name="New", contact_email="new@example.com")], [])
    assert [o.status for o in p.outcomes] == ["created"]
    assert p.updates == []
    assert len(p.inserts) == 1
    rec = p.inserts[0]
    assert rec["id"] == p.outcomes[0].lead_id
    assert p.outcomes[0].matched_by is None
    assert rec["customer_id"] == CUSTOMER
    assert (rec["source_platform"], rec["source_type"], rec["status"]) == ("direct", "import", "active")
    assert rec["stage_id"] == DEFAULT_STAGE
    assert rec["created_at"] == rec["updated_at"] == NOW
    assert rec["interaction_count"] == 0
    assert rec["last_interaction_at"] is None


def test_a_new_lead_from_a_single_create_is_an_interaction() -> None:
    rec = plan([incoming(contact_name="New")], [], interaction=True).inserts[0]
    assert rec["interaction_count"] == 1
    assert rec["last_interaction_at"] == NOW


def test_incoming_values_are_used_on_create() -> None:
    stage, owner = uuid.uuid4(), uuid.uuid4()
    rec = plan(
        [
            incoming(
                contact_name="N",
                source_platform="meta_ads",
                source_type="chat",
                stage_id=stage,
                owner_id=owner,
                lead_line="buyer",
                custom_fields={"budget": 1},
            )
        ],
        [],
    ).inserts[0]
    assert (rec["source_platform"], rec["source_type"]) == ("meta_ads", "chat")
    assert (rec["stage_id"], rec["owner_id"], rec["lead_line"]) == (stage, owner, "buyer")
    assert rec["custom_fields"] == {"budget": 1}


@pytest.mark.parametrize(
    ("lead_fields", "row", "matched_by"),
    [
        ({"contact_email": "a@example.com"}, {"contact_email": "A@Example.com"}, "email"),
        ({"contact_phone": "+12065550100"}, {"contact_phone": "+12065550100"}, "phone"),
    ],
)
def test_match_by_email_or_phone(lead_fields: dict[str, str], row: dict[str, str], matched_by: str) -> None:
    lead = existing(**lead_fields)
    p = plan([incoming(contact_name="New", **row)], [lead])
    outcome = p.outcomes[0]
    assert (outcome.status, outcome.matched_by, outcome.lead_id) == ("updated", matched_by, lead["id"])
    assert p.inserts == []
    assert p.updates == [lead]
    assert lead["contact_name"] == "New"
    assert lead["updated_at"] == NOW


def test_email_match_wins_and_the_phone_match_is_untouched() -> None:
    by_email = existing(contact_email="a@example.com")
    by_phone = existing(contact_phone="+12065550100", contact_name="Phone")
    untouched = copy.deepcopy(by_phone)
    p = plan(
        [incoming(contact_email="a@example.com", contact_phone="+12065550100", contact_name="X")],
        [by_email, by_phone],
    )
    assert (p.outcomes[0].lead_id, p.outcomes[0].matched_by) == (by_email["id"], "email")
    assert by_phone == untouched
    assert p.updates == [by_email]
    assert by_email["contact_phone"] is None  # another lead holds that phone: not filled in


def test_what_a_merge_overwrites_fills_and_keeps() -> None:
    stage, owner = uuid.uuid4(), uuid.uuid4()
    lead = existing(
        contact_email="a@example.com",
        contact_name="Old",
        custom_fields={"budget": 1, "area": "x"},
        lead_line="buyer",
    )
    p = plan(
        [
            incoming(
                contact_email="A@EXAMPLE.COM",
                contact_name="New",
                contact_phone="+12065550101",
                source_platform="meta_ads",
                source_type="chat",
                stage_id=stage,
                owner_id=owner,
                lead_line="seller",
                custom_fields={"budget": 2, "new_field": None},
            )
        ],
        [lead],
    )
    assert p.updates == [lead]
    # overwritten
    assert (lead["contact_name"], lead["stage_id"], lead["owner_id"], lead["lead_line"]) == (
        "New",
        stage,
        owner,
        "seller",
    )
    assert lead["custom_fields"] == {"budget": 2, "area": "x", "new_field": None}
    # filled in (the lead had no phone)
    assert (lead["contact_phone"], lead["phone_last10"]) == ("+12065550101", "2065550101")
    # kept
    assert lead["contact_email"] == "a@example.com"
    assert (lead["source_platform"], lead["source_type"]) == ("google_ads", "form")
    assert (lead["status"], lead["score"], lead["qualified"]) == ("won", 80, True)
    assert lead["created_at"] == THEN
    assert lead["updated_at"] == NOW
    # bulk (not an interaction)
    assert lead["interaction_count"] == 3
    assert lead["last_interaction_at"] == THEN


def test_absent_values_do_not_clear_anything() -> None:
    owner = uuid.uuid4()
    lead = existing(
        contact_email="a@example.com",
        contact_name="Keep",
        owner_id=owner,
        lead_line="buyer",
        custom_fields={"budget": 1},
    )
    before = copy.deepcopy(lead)
    p = plan([incoming(contact_email="a@example.com")], [lead])
    assert p.outcomes[0].status == "updated"
    assert lead == before  # nothing to change: the record is untouched, updated_at included
    assert p.updates == []


def test_email_and_phone_are_never_replaced() -> None:
    lead = existing(contact_email="a@example.com", contact_phone="+12065550102")
    p = plan([incoming(contact_email="a@example.com", contact_phone="+12065550199")], [lead])
    assert p.outcomes[0].matched_by == "email"
    assert lead["contact_phone"] == "+12065550102"
    lead2 = existing(contact_email="b@example.com", contact_phone="+12065550103")
    plan([incoming(contact_email="c@example.com", contact_phone="+12065550103")], [lead2])
    assert lead2["contact_email"] == "b@example.com"


def test_email_is_filled_in_only_if_nobody_holds_it() -> None:
    phone_only = existing(contact_phone="+12065550104")
    holder = existing(contact_email="held@example.com")
    # matched by email to the holder: email wins, phone_only is untouched
    p = plan([incoming(contact_email="held@example.com", contact_phone="+12065550104")], [phone_only, holder])
    assert p.outcomes[0].lead_id == holder["id"]
    assert phone_only["contact_email"] is None
    # matched by phone: the lead gets the email, because nobody holds it
    p = plan([incoming(contact_email="free@example.com", contact_phone="+12065550104")], [phone_only, holder])
    assert p.outcomes[0].lead_id == phone_only["id"]
    assert (phone_only["contact_email"], phone_only["email_normalized"]) == (
        "free@example.com",
        "free@example.com",
    )


def test_single_create_merge_counts_an_interaction() -> None:
    lead = existing(contact_email="a@example.com")
    p = plan([incoming(contact_email="a@example.com")], [lead], interaction=True)
    assert p.updates == [lead]
    assert lead["interaction_count"] == 4
    assert lead["last_interaction_at"] == NOW
    assert lead["updated_at"] == NOW


def test_skip_reports_the_match_and_changes_nothing() -> None:
    lead = existing(contact_phone="+12065550105", contact_name="Keep")
    before = copy.deepcopy(lead)
    p = plan(
        [incoming(contact_phone="+12065550105", contact_name="Changed")],
        [lead],
        on_duplicate="skip",
        interaction=True,
    )
    outcome = p.outcomes[0]
    assert (outcome.status, outcome.matched_by, outcome.lead_id) == ("skipped", "phone", lead["id"])
    assert lead == before
    assert p.updates == []
    assert p.inserts == []


def test_failed_rows_keep_their_outcome_and_place() -> None:
    lead = existing(contact_email="a@example.com")
    failed = RowOutcome(row_ref="bad", status="failed", errors=["contact_email: bad"])
    rows = [
        (incoming(contact_name="first"), RowOutcome(row_ref="1", status="failed")),
        (None, failed),
        (incoming(contact_email="a@example.com"), RowOutcome(row_ref="3", status="failed")),
    ]
    p = plan_merge(rows, [lead], defaults())
    assert [o.row_ref for o in p.outcomes] == ["1", "bad", "3"]
    assert [o.status for o in p.outcomes] == ["created", "failed", "updated"]
    assert p.outcomes[1] is failed
    assert failed.lead_id is None
    assert failed.errors == ["contact_email: bad"]


def test_rows_of_one_batch_merge_with_each_other() -> None:
    p = plan(
        [
            incoming(contact_email="t@example.com", contact_name="First", custom_fields={"a": 1}),
            incoming(contact_email="T@example.com", contact_phone="+12065550106", contact_name="Second"),
            incoming(contact_phone="+12065550106", custom_fields={"b": 2}),
        ],
        [],
    )
    assert [(o.status, o.matched_by) for o in p.outcomes] == [
        ("created", None),
        ("updated", "email"),
        ("updated", "phone"),
    ]
    assert len({o.lead_id for o in p.outcomes}) == 1
    assert len(p.inserts) == 1
    assert p.updates == []
    rec = p.inserts[0]
    assert rec["contact_name"] == "Second"
    assert rec["contact_phone"] == "+12065550106"
    assert rec["custom_fields"] == {"a": 1, "b": 2}
    assert p.leads == {rec["id"]: rec}


def test_an_existing_lead_matched_twice_is_updated_once() -> None:
    lead = existing(contact_email="a@example.com")
    p = plan(
        [
            incoming(contact_email="a@example.com", contact_name="1"),
            incoming(contact_email="a@example.com", contact_name="2"),
        ],
        [lead],
    )
    assert p.updates == [lead]
    assert lead["contact_name"] == "2"


def test_skip_applies_to_in_batch_duplicates_too() -> None:
    p = plan(
        [
            incoming(contact_email="t@example.com", contact_name="First"),
            incoming(contact_email="t@example.com", contact_name="Second"),
        ],
        [],
        on_duplicate="skip",
    )
    assert [o.status for o in p.outcomes] == ["created", "skipped"]
    assert p.inserts[0]["contact_name"] == "First"


def test_no_two_planned_leads_share_an_email_or_phone() -> None:
    """Whatever the batch, the plan never gives one key to two leads (the unique indexes would refuse)."""
    a = existing(contact_email="a@example.com")
    b = existing(contact_phone="+12065550107")
    p = plan(
        [
            incoming(contact_phone="+12065550108", contact_email="a@example.com"),  # fills a phone into a
            incoming(contact_phone="+12065550107", contact_email="new@example.com"),  # fills new email into b
            incoming(contact_email="new@example.com", contact_phone="+12065550108"),  # matches b by email
            incoming(contact_email="other@example.com", contact_phone="+12065550108"),  # matches a by phone
        ],
        [a, b],
    )
    assert [o.lead_id for o in p.outcomes] == [a["id"], b["id"], b["id"], a["id"]]
    everything = [a, b, *p.inserts]
    emails = [r["email_normalized"] for r in everything if r["email_normalized"]]
    phones = [r["phone_last10"] for r in everything if r["phone_last10"]]
    assert len(emails) == len(set(emails))
    assert len(phones) == len(set(phones))
    assert b["contact_email"] == "new@example.com"
    assert a["contact_phone"] == "+12065550108"
