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
    # Existing leads get their documents now. The renderer is the application's own: a
    # document is a copy of the row, in today's shape.
    from mega_crm.leads.documents import sql_document

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
