"""leads: on PostgreSQL, the trigram index of search_text holds it without word separators

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 05:40:00

pg_trgm makes the trigrams of each word apart: `richard anderson` gave the index only the
common trigrams of two common names, and a search for a part of a common name read lists of
tens of thousands of leads (16 ms at 1M leads for `chard anderson-whi`). Indexed as
translate(search_text, PACKED_OUT, ''), the text has trigrams across words (`rda`, `nwh`) that
few leads share, and the same search asks for three of them: under 1 ms. The expression must
stay exactly this one: the search's statement (leads/filters.py) names it to use the index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD_INDEX = "ix_leads_search_text_trgm"
INDEX = "ix_leads_search_text_packed_trgm"
# leads.search.PACKED_OUT as of this revision (a migration never imports application code).
PACKED_OUT = " .,'-@_+/()"


def _trigram_ops() -> str:
    """gin_trgm_ops by its schema's name (pg_trgm may live outside the search_path; see 0005)."""
    bind = op.get_bind()
    schema = bind.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_trgm'"
        )
    ).scalar_one()
    return f"{bind.dialect.identifier_preparer.quote_identifier(schema)}.gin_trgm_ops"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    packed = "translate(search_text, '{}', '')".format(PACKED_OUT.replace("'", "''"))
    op.execute(f"CREATE INDEX {INDEX} ON leads USING gin (({packed}) {_trigram_ops()})")
    op.execute(f"DROP INDEX IF EXISTS {OLD_INDEX}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE INDEX {OLD_INDEX} ON leads USING gin (search_text {_trigram_ops()})")
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
