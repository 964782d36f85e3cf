"""The contract's `Lead`, defined once: the field table every form of a lead follows.

A lead leaves this server as JSON in three ways, all derived from LEAD_FIELDS:

* the stored document and listLeads' pages (leads/documents.py: in Python on write, in SQL for
  rows written some other way, SQLite and PostgreSQL);
* the `Lead` response model that the published OpenAPI describes (leads/schemas.py);
* the `lead` of webhook payloads (events/outbox.py, the fields with `webhook=True`).

A new field is one row here (and its column, in a migration). The rows are in the contract's
member order; a document never holds `custom_fields` (a page splices them in), and the webhook
lead has a member of its own, `lead_line` (the reserved custom field, read out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a field holds, which says how each form renders it:
#   uuid   a UUID column, as its canonical text            text   a text column, as it is
#   int    an integer column, null when null              bool   a boolean column, null when null
#   count  an integer column, 0 when null                 time   a UTC time (timestamps.FORMAT)
#   object the joined row (stage or owner) as an object of its own fields, null without one
#   custom_fields  the JSON map, with lead_line (its own column) as the member "lead_line"
#   lead_line      the webhook lead's: custom_fields' "lead_line", null without one
Kind = Literal["uuid", "text", "int", "bool", "count", "time", "object", "custom_fields", "lead_line"]


@dataclass(frozen=True)
class LeadField:
    """One member of the Lead JSON.

    name: the JSON member; column: the `leads` column it comes from (for an object, the foreign
    key); required: the response model has no default for it (the contract requires it);
    document: in the stored document (else added by the reader); webhook: in the webhook
    payload's lead (its order there: WEBHOOK_ORDER); parts: an object's fields, read from the
    joined table (`stages` / `owners`), and `webhook_parts` those the webhook lead keeps."""

    name: str
    kind: Kind
    column: str = ""
    required: bool = False
    document: bool = True
    webhook: bool = False
    parts: tuple[LeadField, ...] = ()
    webhook_parts: tuple[str, ...] = ()
    table: str = ""  # an object's joined table

    @property
    def source(self) -> str:
        """The column read: `column`, else the field's own name."""
        return self.column or self.name


STAGE_FIELDS = (
    LeadField("id", "uuid", required=True),
    LeadField("slug", "text", required=True),
    LeadField("name", "text", required=True),
    LeadField("color", "text"),
)
OWNER_FIELDS = (
    LeadField("id", "uuid", required=True),
    LeadField("name", "text", required=True),
    LeadField("role_name", "text"),
)

LEAD_FIELDS = (
    LeadField("id", "uuid", required=True, webhook=True),
    LeadField("customer_id", "uuid", required=True),
    LeadField("contact_name", "text", webhook=True),
    LeadField("contact_phone", "text", webhook=True),
    LeadField("contact_email", "text", webhook=True),
    LeadField("source_platform", "text", required=True, webhook=True),
    LeadField("source_type", "text", required=True, webhook=True),
    LeadField("status", "text", required=True),
    LeadField("score", "int"),
    LeadField("qualified", "bool"),
    LeadField("current_stage", "object", column="stage_id", table="stages", parts=STAGE_FIELDS,
              webhook=True, webhook_parts=("slug", "name")),
    LeadField("owner", "object", column="owner_id", table="owners", parts=OWNER_FIELDS),
    LeadField("last_interaction_at", "time"),
    LeadField("interaction_count", "count"),
    LeadField("created_at", "time", required=True, webhook=True),
    LeadField("updated_at", "time", required=True, webhook=True),
    LeadField("custom_fields", "custom_fields", document=False, webhook=True),
    # Not a member of Lead: the webhook lead's copy of the reserved custom field.
    LeadField("lead_line", "lead_line", document=False, webhook=True),
)  # fmt: skip

# The members of the Lead JSON (response model, pages) and of the stored document.
LEAD_MEMBERS = tuple(f for f in LEAD_FIELDS if f.kind != "lead_line")
DOCUMENT_FIELDS = tuple(f for f in LEAD_FIELDS if f.document)
# The webhook payload's lead, in its published member order (WebhookLead in webhooks/schemas.py).
WEBHOOK_ORDER = (
    "id", "contact_name", "contact_phone", "contact_email", "source_platform", "source_type",
    "lead_line", "current_stage", "custom_fields", "created_at", "updated_at",
)  # fmt: skip
WEBHOOK_FIELDS = tuple(
    sorted((f for f in LEAD_FIELDS if f.webhook), key=lambda f: WEBHOOK_ORDER.index(f.name))
)
assert {f.name for f in WEBHOOK_FIELDS} == set(WEBHOOK_ORDER), "a webhook field without its place"
