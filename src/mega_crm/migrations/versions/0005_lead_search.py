"""leads.search_text / search_phone and their trigram indexes (see mega_crm/leads/search.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# SQLite: an FTS5 table over the two columns, its content read from `leads` by rowid (nothing is
# stored twice), trigram-tokenised as the folded text already is (case_sensitive 1: no folding of
# its own). Triggers keep it in the transaction of every write to `leads`; an UPDATE that leaves
# both columns as they were (most merges) does not touch it.
SQLITE_DDL = [
    "CREATE VIRTUAL TABLE leads_search USING fts5(search_text, search_phone, content='leads', "
    "content_rowid='rowid', tokenize='trigram case_sensitive 1')",
    """CREATE TRIGGER leads_search_insert AFTER INSERT ON leads BEGIN
    INSERT INTO leads_search(rowid, search_text, search_phone)
    VALUES (NEW.rowid, NEW.search_text, NEW.search_phone); END""",
    """CREATE TRIGGER leads_search_delete AFTER DELETE ON leads BEGIN
    INSERT INTO leads_search(leads_search, rowid, search_text, search_phone)
    VALUES ('delete', OLD.rowid, OLD.search_text, OLD.search_phone); END""",
    """CREATE TRIGGER leads_search_update AFTER UPDATE OF search_text, search_phone ON leads
    WHEN NEW.search_text IS NOT OLD.search_text OR NEW.search_phone IS NOT OLD.search_phone BEGIN
    INSERT INTO leads_search(leads_search, rowid, search_text, search_phone)
    VALUES ('delete', OLD.rowid, OLD.search_text, OLD.search_phone);
    INSERT INTO leads_search(rowid, search_text, search_phone)
    VALUES (NEW.rowid, NEW.search_text, NEW.search_phone); END""",
]
SQLITE_OBJECTS = ("leads_search_insert", "leads_search_delete", "leads_search_update")


def upgrade() -> None:
    # Not in leads_document_stale's column list (0003): a lead's document does not show them.
    op.add_column("leads", sa.Column("search_text", sa.Text(), nullable=True))
    op.add_column("leads", sa.Column("search_phone", sa.String(length=64), nullable=True))
    bind = op.get_bind()
    # Existing leads, with the application's own folding (it is the rule searches are read by).
    from mega_crm.leads.search import refresh_search

    refresh_search(bind)
    if bind.dialect.name == "sqlite":
        for ddl in SQLITE_DDL:
            op.execute(ddl)
        op.execute("INSERT INTO leads_search(leads_search) VALUES ('rebuild')")
    else:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # The operator class by its schema's name: the extension may live in a schema that is
        # not on this database's search_path (installed earlier for another schema's tables).
        schema = bind.execute(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'pg_trgm'"
            )
        ).scalar_one()
        ops = f"{bind.dialect.identifier_preparer.quote_identifier(schema)}.gin_trgm_ops"
        for name in ("search_text", "search_phone"):
            op.execute(f"CREATE INDEX ix_leads_{name}_trgm ON leads USING gin ({name} {ops})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_OBJECTS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS leads_search")
        # In place (SQLite 3.35+): a batch copy of `leads` would trip over 0003's triggers.
        op.execute("ALTER TABLE leads DROP COLUMN search_phone")
        op.execute("ALTER TABLE leads DROP COLUMN search_text")
        return
    for name in ("search_text", "search_phone"):
        op.drop_index(f"ix_leads_{name}_trgm", table_name="leads")
    op.drop_column("leads", "search_phone")
    op.drop_column("leads", "search_text")
