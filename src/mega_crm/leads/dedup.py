"""The merge rule, as one pure function over a batch of validated rows.

Rows are applied in order, as if sent one by one, against the customer's existing leads that
share an email or phone with the batch (loaded in one query) and the rows before them:

* A row matches the lead with the same email (case-insensitive) first, else the lead with the
  same phone (last 10 digits). When its email matches one lead and its phone another, the email
  match wins and the other lead is left untouched.
* A merge may overwrite: contact_name, stage, owner, lead_line and each custom field it sends.
  It fills contact_email / contact_phone only where the lead has none and no other lead holds
  that value; it never replaces them. source_platform / source_type keep their first value.
* `skip` leaves a matched lead untouched and reports it as skipped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mega_crm.db import new_id

Record = dict[str, Any]  # a lead as column -> value


@dataclass
class LeadInput:
    """One incoming lead, validated and normalised against the customer's configuration."""

    contact_name: str | None = None
    contact_email: str | None = None
    email_normalized: str | None = None
    contact_phone: str | None = None
    phone_last10: str | None = None
    source_platform: str | None = None
    source_type: str | None = None
    stage_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None
    lead_line: str | None = None
    custom_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class RowOutcome:
    row_ref: str | None
    status: str  # created | updated | skipped | failed
    lead_id: uuid.UUID | None = None
    matched_by: str | None = None
    errors: list[str] | None = None
    ignored_custom_fields: list[str] = field(default_factory=list)


@dataclass
class MergePlan:
    inserts: list[Record]
    updates: list[Record]  # full records of existing leads that changed
    outcomes: list[RowOutcome]
    leads: dict[uuid.UUID, Record]  # every lead a row resolved to, in its final state
    changed_columns: dict[uuid.UUID, set[str]]  # of each record in `updates`


@dataclass
class MergeDefaults:
    customer_id: uuid.UUID
    now: datetime
    default_stage_id: uuid.UUID | None
    source_platform: str
    source_type: str
    counts_as_interaction: bool  # single create: a submission is an interaction; bulk: inert


def plan_merge(
    rows: list[tuple[LeadInput | None, RowOutcome]],
    existing: list[Record],
    defaults: MergeDefaults,
    on_duplicate: str = "update",
) -> MergePlan:
    by_email: dict[str, Record] = {}
    by_phone: dict[str, Record] = {}
    for rec in existing:
        _index(rec, by_email, by_phone)
    new_ids: set[uuid.UUID] = set()
    changed: dict[uuid.UUID, Record] = {}
    changed_columns: dict[uuid.UUID, set[str]] = {}
    leads: dict[uuid.UUID, Record] = {}
    outcomes: list[RowOutcome] = []

    for lead_input, outcome in rows:
        outcomes.append(outcome)
        if lead_input is None:
            continue
        match, matched_by = None, None
        if lead_input.email_normalized and lead_input.email_normalized in by_email:
            match, matched_by = by_email[lead_input.email_normalized], "email"
        elif lead_input.phone_last10 and lead_input.phone_last10 in by_phone:
            match, matched_by = by_phone[lead_input.phone_last10], "phone"

        if match is None:
            rec = _new_record(lead_input, defaults)
            _index(rec, by_email, by_phone)
            new_ids.add(rec["id"])
            outcome.status = "created"
        else:
            rec = match
            outcome.matched_by = matched_by
            if on_duplicate == "skip":
                outcome.status = "skipped"
            else:
                outcome.status = "updated"
                columns = _merge_into_existing(rec, lead_input, by_email, by_phone, defaults)
                if columns and rec["id"] not in new_ids:
                    changed[rec["id"]] = rec
                    changed_columns.setdefault(rec["id"], set()).update(columns)
        outcome.lead_id = rec["id"]
        leads[rec["id"]] = rec

    inserts = [rec for rec in leads.values() if rec["id"] in new_ids]
    return MergePlan(inserts, list(changed.values()), outcomes, leads, changed_columns)


def _index(rec: Record, by_email: dict[str, Record], by_phone: dict[str, Record]) -> None:
    if rec.get("email_normalized"):
        by_email[rec["email_normalized"]] = rec
    if rec.get("phone_last10"):
        by_phone[rec["phone_last10"]] = rec


def _new_record(lead_input: LeadInput, defaults: MergeDefaults) -> Record:
    interaction = defaults.counts_as_interaction
    return {
        "id": new_id(),
        "customer_id": defaults.customer_id,
        "contact_name": lead_input.contact_name,
        "contact_email": lead_input.contact_email,
        "email_normalized": lead_input.email_normalized,
        "contact_phone": lead_input.contact_phone,
        "phone_last10": lead_input.phone_last10,
        "source_platform": lead_input.source_platform or defaults.source_platform,
        "source_type": lead_input.source_type or defaults.source_type,
        "status": "active",
        "score": None,
        "qualified": None,
        "stage_id": lead_input.stage_id or defaults.default_stage_id,
        "owner_id": lead_input.owner_id,
        "lead_line": lead_input.lead_line,
        "custom_fields": dict(lead_input.custom_fields),
        "last_interaction_at": defaults.now if interaction else None,
        "interaction_count": 1 if interaction else 0,
        "created_at": defaults.now,
        "updated_at": defaults.now,
    }


def _merge_into_existing(
    rec: Record,
    lead_input: LeadInput,
    by_email: dict[str, Record],
    by_phone: dict[str, Record],
    defaults: MergeDefaults,
) -> set[str]:
    """Apply the merge rule to `rec` in place; -> the columns it changed."""
    before = dict(rec)
    for name in ("contact_name", "stage_id", "owner_id", "lead_line"):
        value = getattr(lead_input, name)
        if value is not None:
            rec[name] = value
    if lead_input.custom_fields:
        rec["custom_fields"] = {**(rec.get("custom_fields") or {}), **lead_input.custom_fields}
    email = lead_input.email_normalized
    if email and not rec.get("email_normalized") and email not in by_email:
        rec["contact_email"], rec["email_normalized"] = lead_input.contact_email, email
        by_email[email] = rec
    phone = lead_input.phone_last10
    if phone and not rec.get("phone_last10") and phone not in by_phone:
        rec["contact_phone"], rec["phone_last10"] = lead_input.contact_phone, phone
        by_phone[phone] = rec
    if defaults.counts_as_interaction:
        rec["interaction_count"] = (rec.get("interaction_count") or 0) + 1
        rec["last_interaction_at"] = defaults.now
    columns = {name for name, value in rec.items() if before[name] != value}
    if columns:
        rec["updated_at"] = defaults.now
        columns.add("updated_at")
    return columns
