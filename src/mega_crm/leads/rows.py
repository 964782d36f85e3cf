"""A lead row read against the customer's configuration (stages, custom fields, owners): the
validation createLead and bulkImportLeads share, before any write."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from mega_crm.leads import repository as repo
from mega_crm.leads.dedup import LeadInput
from mega_crm.leads.documents import LEAD_LINE
from mega_crm.leads.normalize import ContactError, normalize_email, normalize_phone
from mega_crm.leads.schemas import BulkLeadRow, LeadCreateRequest

LEAD_LINES = ("buyer", "seller")


@dataclass
class CustomerConfig:
    """What a lead row is checked against: the customer's pipeline, custom-field slugs and the
    owners loaded so far (bulk rows name owners; a merge may add the existing lead's)."""

    stages: list[Any]  # rows: id, slug, name, color, in pipeline order
    field_slugs: set[str]
    owners: dict[uuid.UUID, Any] = field(default_factory=dict)  # rows: id, name, role_name

    @property
    def default_stage_id(self) -> uuid.UUID | None:
        return self.stages[0].id if self.stages else None

    @property
    def owner_ids(self) -> set[uuid.UUID]:
        return set(self.owners)

    def stage(self, stage_id: uuid.UUID | None) -> Any | None:
        return next((s for s in self.stages if s.id == stage_id), None) if stage_id else None


def resolve_contact(row: LeadCreateRequest | BulkLeadRow, phone_region: str) -> tuple[LeadInput, list[str]]:
    """The row's contact read without the customer's configuration -> (the input with its name,
    source, email and phone, normalised as far as they are valid; the errors so far). What a
    write matches existing leads by is known before anything is read."""
    errors: list[str] = []
    lead = LeadInput(
        contact_name=row.contact_name or None,
        source_platform=row.source_platform,
        source_type=row.source_type,
    )
    if not (row.contact_name or row.contact_phone or row.contact_email):
        errors.append("At least one of contact_name, contact_phone, contact_email is required.")
    if row.contact_email:
        try:
            lead.contact_email, lead.email_normalized = normalize_email(row.contact_email)
        except ContactError as exc:
            errors.append(str(exc))
    if row.contact_phone:
        try:
            lead.contact_phone, lead.phone_last10 = normalize_phone(row.contact_phone, phone_region)
        except ContactError as exc:
            errors.append(str(exc))
    return lead, errors


def resolve_row(
    row: LeadCreateRequest | BulkLeadRow,
    config: CustomerConfig,
    phone_region: str,
    contact: tuple[LeadInput, list[str]] | None = None,
) -> tuple[LeadInput | None, list[str], list[str]]:
    """-> (input or None, errors, ignored custom-field slugs). `contact`: resolve_contact's
    answer for this row, when the caller has it already."""
    lead, errors = contact or resolve_contact(row, phone_region)
    if row.stage_slug:
        stage = next((s for s in config.stages if s.slug == row.stage_slug), None)
        if stage is None:
            errors.append(f"stage_slug '{row.stage_slug}' is not a stage of this customer's pipeline.")
        else:
            lead.stage_id = stage.id
    if isinstance(row, BulkLeadRow):
        if row.owner_id:
            owner_id = parse_uuid(row.owner_id)
            if owner_id is None or owner_id not in config.owner_ids:
                errors.append(f"owner_id '{row.owner_id}' is not a team member of this customer.")
            else:
                lead.owner_id = owner_id
        lead.lead_line = row.lead_line
    ignored: list[str] = []
    for slug, value in (row.custom_fields or {}).items():
        if slug == LEAD_LINE:
            if value is not None and value not in LEAD_LINES:
                errors.append("custom_fields.lead_line must be 'buyer' or 'seller'.")
            elif value is not None:
                lead.lead_line = lead.lead_line or str(value)
        elif slug in config.field_slugs:
            lead.custom_fields[slug] = value
        else:
            ignored.append(slug)
    return (None if errors else lead), errors, ignored


def parse_uuid(value: str) -> uuid.UUID | None:
    """`value` as a UUID, or None when it is not one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def load_config(session: Session, customer_id: uuid.UUID, owner_ids: set[uuid.UUID]) -> CustomerConfig:
    """The customer's stages and field slugs, and those of `owner_ids` that are its owners."""
    stages, field_slugs = repo.customer_config(session, customer_id)
    return CustomerConfig(stages, field_slugs, repo.owners_by_id(session, customer_id, owner_ids))
