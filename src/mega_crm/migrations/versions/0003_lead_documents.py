"""leads.document: each lead's Lead JSON, rendered on write (see mega_crm/leads/documents.py)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# A document is a copy of its row: an UPDATE of a lead's columns that leaves its document as it
# was (an operator's UPDATE, a stage or owner removed), and any change to its stage or owner,
# drops the copy (NULL), which pages then render from the row. An UPDATE of the document alone
# (documents.refresh_documents) is not a change. A migration adding a lead column adds it here.
LEAD_COLUMNS = (
    "id, customer_id, contact_name, contact_email, email_normalized, contact_phone, phone_last10, "
    "source_platform, source_type, status, score, qualified, stage_id, owner_id, lead_line, "
    "custom_fields, last_interaction_at, interaction_count, created_at, updated_at"
)
SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER leads_document_stale AFTER UPDATE OF {LEAD_COLUMNS} ON leads
    WHEN NEW.document IS OLD.document AND NEW.document IS NOT NULL
    BEGIN UPDATE leads SET document = NULL WHERE id = NEW.id; END""",
    """CREATE TRIGGER stages_lead_documents_stale AFTER UPDATE ON stages
    BEGIN UPDATE leads SET document = NULL WHERE stage_id = NEW.id; END""",
    """CREATE TRIGGER owners_lead_documents_stale AFTER UPDATE ON owners
    BEGIN UPDATE leads SET document = NULL WHERE owner_id = NEW.id; END""",
]
POSTGRES_TRIGGERS = [
    """CREATE FUNCTION leads_document_stale() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.document IS NOT DISTINCT FROM OLD.document THEN NEW.document := NULL; END IF;
        RETURN NEW;
    END $$""",
    f"""CREATE TRIGGER leads_document_stale BEFORE UPDATE OF {LEAD_COLUMNS} ON leads
    FOR EACH ROW EXECUTE FUNCTION leads_document_stale()""",
    """CREATE FUNCTION lead_documents_stale() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        EXECUTE format('UPDATE leads SET document = NULL WHERE %I = $1', TG_ARGV[0]) USING NEW.id;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER stages_lead_documents_stale AFTER UPDATE ON stages
    FOR EACH ROW EXECUTE FUNCTION lead_documents_stale('stage_id')""",
    """CREATE TRIGGER owners_lead_documents_stale AFTER UPDATE ON owners
    FOR EACH ROW EXECUTE FUNCTION lead_documents_stale('owner_id')""",
]


def upgrade() -> None:
    op.add_column("leads", sa.Column("document", sa.Text(), nullable=True))
    dialect = op.get_bind().dialect.name
    # Existing leads get their documents now, in this revision's shape (a later shape is the
    # business of the migration that changes it, and of documents.refresh_documents).
    op.execute(f"UPDATE leads SET document = {sql_document(dialect)}")
    for ddl in SQLITE_TRIGGERS if dialect == "sqlite" else POSTGRES_TRIGGERS:
        op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("leads_document_stale", "stages_lead_documents_stale", "owners_lead_documents_stale"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS stages_lead_documents_stale ON stages")
        op.execute("DROP TRIGGER IF EXISTS owners_lead_documents_stale ON owners")
        op.execute("DROP TRIGGER IF EXISTS leads_document_stale ON leads")
        op.execute("DROP FUNCTION IF EXISTS lead_documents_stale()")
        op.execute("DROP FUNCTION IF EXISTS leads_document_stale()")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("document")


# --- the document's SQL form, frozen as of this revision ---------------------------------------
# A copy of mega_crm/leads/documents.py's SQL rendering when this revision was written: a
# migration never imports application code, so that a later change to the document cannot
# change what this revision does.


def _sqlite_uuid(column: str) -> str:  # SQLite stores UUIDs as 32 hex digits
    parts = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    return " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length in parts)


def _sqlite_time(column: str) -> str:  # stored as "YYYY-MM-DD HH:MM:SS.ffffff" UTC
    return f"replace({column}, ' ', 'T') || 'Z'"


def _postgres_uuid(column: str) -> str:
    return column


def _postgres_time(column: str) -> str:
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _document(dialect: str, row: str) -> str:
    """The Lead JSON (without custom_fields) of the lead `row` (a table alias), with its stage `s`
    and owner `o` joined in."""
    if dialect == "sqlite":
        obj, uid, when = "json_object", _sqlite_uuid, _sqlite_time
        qualified = f"CASE {row}.qualified WHEN 1 THEN json('true') WHEN 0 THEN json('false') END"
        suffix = ""
    else:
        obj, uid, when = "json_build_object", _postgres_uuid, _postgres_time
        qualified = f"{row}.qualified"
        suffix = "::text"
    stage = f"{obj}('id', {uid('s.id')}, 'slug', s.slug, 'name', s.name, 'color', s.color)"
    owner = f"{obj}('id', {uid('o.id')}, 'name', o.name, 'role_name', o.role_name)"
    plain = "contact_name contact_phone contact_email source_platform source_type status score".split()
    fields = [
        ("id", uid(f"{row}.id")),
        ("customer_id", uid(f"{row}.customer_id")),
        *((name, f"{row}.{name}") for name in plain),
        ("qualified", qualified),
        ("current_stage", f"CASE WHEN s.id IS NOT NULL THEN {stage} END"),
        ("owner", f"CASE WHEN o.id IS NOT NULL THEN {owner} END"),
        ("last_interaction_at", when(f"{row}.last_interaction_at")),
        ("interaction_count", f"coalesce({row}.interaction_count, 0)"),
        ("created_at", when(f"{row}.created_at")),
        ("updated_at", when(f"{row}.updated_at")),
    ]
    pairs = ", ".join(f"'{name}', {value}" for name, value in fields)
    return f"{obj}({pairs}){suffix}"


def sql_document(dialect: str) -> str:
    """A scalar subquery: the document of the `leads` row in the enclosing statement."""
    joined = "leads AS d LEFT JOIN stages s ON s.id = d.stage_id LEFT JOIN owners o ON o.id = d.owner_id"
    return f"(SELECT {_document(dialect, 'd')} FROM {joined} WHERE d.id = leads.id)"
