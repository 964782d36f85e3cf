"""leads: every 4-digit run of a lead's phone, in its own table, beside the lead's updated_at

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 09:20:00

A phone's last four digits (`search=0958`) are in about 1 lead of 800: 1,233 of 1M. The trigram
indexes found them by reading the lists of two digit trigrams that every database's leads share
(about 2% of all leads each, every customer's), then each match's lead row for its customer and
sort value: 9 ms on SQLite, 32 ms on PostgreSQL, against a 1.8 ms page read. lead_phone_grams
holds each 4-digit run (gram) of each of a lead's phone forms once, keyed by (customer_id, gram,
updated_at, lead_id): the customer's matches of a gram are one index range, counted without
reading a lead, and in listLeads' default order (updated_at, id). Triggers keep it in the
transaction of every write to `leads` (insert, update of the phone or updated_at, delete,
cascades included), on both databases. The phone part of the trigram indexes goes: SQLite's
FTS5 table is made anew over search_text alone, PostgreSQL's index of search_phone is dropped.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "lead_phone_grams"
# search_phone is a String(64): its forms' 4-digit runs start at positions 1..61.
_POSITIONS = "'[" + ",".join(str(i) for i in range(1, 62)) + "]'"


def _sqlite_grams(row: str, tables: str = "") -> str:
    """SELECT of (customer_id, gram, updated_at, lead_id) for each 4-digit run of `row`'s
    search_phone (`row`: NEW, or a table of `tables`), without a CTE: triggers allow none."""
    return (
        f"SELECT {row}.customer_id, substr({row}.search_phone, p.value, 4), {row}.updated_at, {row}.id "
        f"FROM {tables}json_each({_POSITIONS}) AS p WHERE p.value <= length({row}.search_phone) - 3 "
        f"AND instr(substr({row}.search_phone, p.value, 4), ' ') = 0"
    )


_SQLITE_CHANGED = (
    "NEW.search_phone IS NOT OLD.search_phone OR NEW.updated_at IS NOT OLD.updated_at "
    "OR NEW.customer_id IS NOT OLD.customer_id"
)
_SQLITE_DELETE_OLD = (
    f"DELETE FROM {TABLE} WHERE customer_id = OLD.customer_id AND updated_at = OLD.updated_at "
    f"AND lead_id = OLD.id AND gram IN (SELECT substr(OLD.search_phone, p.value, 4) "
    f"FROM json_each({_POSITIONS}) AS p WHERE p.value <= length(OLD.search_phone) - 3);"
)
SQLITE_TRIGGERS = {
    "lead_phone_grams_insert": f"""AFTER INSERT ON leads WHEN NEW.search_phone IS NOT NULL BEGIN
    INSERT OR IGNORE INTO {TABLE} {_sqlite_grams("NEW")}; END""",
    "lead_phone_grams_update": f"""AFTER UPDATE OF search_phone, updated_at, customer_id ON leads
    WHEN {_SQLITE_CHANGED} BEGIN
    {_SQLITE_DELETE_OLD}
    INSERT OR IGNORE INTO {TABLE} {_sqlite_grams("NEW")}; END""",
    "lead_phone_grams_delete": f"AFTER DELETE ON leads BEGIN {_SQLITE_DELETE_OLD} END",
}

# SQLite's FTS5 table (0005) over search_text alone: its phone column is no longer asked.
FTS_TRIGGERS = ("leads_search_insert", "leads_search_delete", "leads_search_update")


def _sqlite_fts(columns: list[str]) -> list[str]:
    """0005's FTS5 table and triggers over `columns` of leads."""
    names = ", ".join(columns)
    new = ", ".join(f"NEW.{c}" for c in columns)
    old = ", ".join(f"OLD.{c}" for c in columns)
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns)
    return [
        f"CREATE VIRTUAL TABLE leads_search USING fts5({names}, content='leads', "
        "content_rowid='rowid', tokenize='trigram case_sensitive 1')",
        f"""CREATE TRIGGER leads_search_insert AFTER INSERT ON leads BEGIN
        INSERT INTO leads_search(rowid, {names}) VALUES (NEW.rowid, {new}); END""",
        f"""CREATE TRIGGER leads_search_delete AFTER DELETE ON leads BEGIN
        INSERT INTO leads_search(leads_search, rowid, {names}) VALUES ('delete', OLD.rowid, {old}); END""",
        f"""CREATE TRIGGER leads_search_update AFTER UPDATE OF {names} ON leads WHEN {changed} BEGIN
        INSERT INTO leads_search(leads_search, rowid, {names}) VALUES ('delete', OLD.rowid, {old});
        INSERT INTO leads_search(rowid, {names}) VALUES (NEW.rowid, {new}); END""",
        "INSERT INTO leads_search(leads_search) VALUES ('rebuild')",
    ]


def _replace_fts(columns: list[str]) -> None:
    for name in FTS_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS leads_search")
    for ddl in _sqlite_fts(columns):
        op.execute(ddl)


# PostgreSQL: row triggers, each change an index probe per gram. (Statement triggers over
# transition tables took 4.4 s for a bulk merge of 500 leads: the planner, knowing nothing of
# a transition table's rows, scanned all of lead_phone_grams to delete their old grams.)
PG_DDL = [
    # Called in FROM clauses only, where PostgreSQL inlines it into the calling statement (in a
    # select list it was planned anew at every call: 0.6 ms a lead). Repeats are left in: the
    # inserts skip them (ON CONFLICT), the deletes' = ANY does not mind them.
    """CREATE FUNCTION lead_phone_grams_of(phone text) RETURNS SETOF text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substr(form, i, 4) FROM unnest(string_to_array(phone, ' ')) AS form,
    generate_series(1, length(form) - 3) AS i $$""",
    # Generic plans: PL/pgSQL would otherwise plan its statements anew for each lead (the
    # first five calls, then whenever a custom plan looks cheaper: 1 ms a merged lead).
    f"""CREATE FUNCTION lead_phone_grams_sync() RETURNS trigger LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
    BEGIN
      IF TG_OP = 'UPDATE' AND NEW.search_phone = OLD.search_phone AND NEW.customer_id = OLD.customer_id THEN
        UPDATE {TABLE} SET updated_at = NEW.updated_at WHERE customer_id = OLD.customer_id
          AND gram = ANY (ARRAY(SELECT gram FROM lead_phone_grams_of(OLD.search_phone) AS gram))
          AND updated_at = OLD.updated_at AND lead_id = OLD.id;
        RETURN NULL;
      END IF;
      IF TG_OP <> 'INSERT' AND OLD.search_phone IS NOT NULL THEN
        DELETE FROM {TABLE} WHERE customer_id = OLD.customer_id
          AND gram = ANY (ARRAY(SELECT gram FROM lead_phone_grams_of(OLD.search_phone) AS gram))
          AND updated_at = OLD.updated_at AND lead_id = OLD.id;
      END IF;
      IF TG_OP <> 'DELETE' AND NEW.search_phone IS NOT NULL THEN
        INSERT INTO {TABLE} (customer_id, gram, updated_at, lead_id)
        SELECT NEW.customer_id, gram, NEW.updated_at, NEW.id
        FROM lead_phone_grams_of(NEW.search_phone) AS gram
        ON CONFLICT DO NOTHING;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE TRIGGER lead_phone_grams_insert AFTER INSERT ON leads FOR EACH ROW
    WHEN (NEW.search_phone IS NOT NULL) EXECUTE FUNCTION lead_phone_grams_sync()""",
    """CREATE TRIGGER lead_phone_grams_update AFTER UPDATE OF search_phone, updated_at, customer_id
    ON leads FOR EACH ROW WHEN ((NEW.search_phone, NEW.updated_at, NEW.customer_id)
    IS DISTINCT FROM (OLD.search_phone, OLD.updated_at, OLD.customer_id))
    EXECUTE FUNCTION lead_phone_grams_sync()""",
    """CREATE TRIGGER lead_phone_grams_delete AFTER DELETE ON leads FOR EACH ROW
    WHEN (OLD.search_phone IS NOT NULL) EXECUTE FUNCTION lead_phone_grams_sync()""",
]
PG_TRIGGERS = ("lead_phone_grams_insert", "lead_phone_grams_update", "lead_phone_grams_delete")


def upgrade() -> None:
    bind = op.get_bind()
    columns: list[sa.Column[Any]] = [
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("gram", sa.String(length=4), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
    ]
    key = sa.PrimaryKeyConstraint("customer_id", "gram", "updated_at", "lead_id", name="pk_lead_phone_grams")
    if bind.dialect.name == "sqlite":
        op.create_table(TABLE, *columns, key, sqlite_with_rowid=False)
        # The existing leads' grams, in key order (appends to the b-tree, not inserts all over it).
        op.execute(
            f"INSERT OR IGNORE INTO {TABLE} SELECT * FROM ({_sqlite_grams('leads', 'leads, ')} "
            "AND leads.search_phone IS NOT NULL ORDER BY 1, 2, 3, 4)"
        )
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
        _replace_fts(["search_text"])
        return
    op.create_table(TABLE, *columns)  # keyed once filled: one index build, not 10M inserts
    for ddl in PG_DDL[:1]:
        op.execute(ddl)
    op.execute(
        f"INSERT INTO {TABLE} (customer_id, gram, updated_at, lead_id) "
        "SELECT DISTINCT customer_id, gram, updated_at, id FROM leads, lead_phone_grams_of(search_phone) "
        "AS gram WHERE search_phone IS NOT NULL"
    )
    op.create_primary_key("pk_lead_phone_grams", TABLE, ["customer_id", "gram", "updated_at", "lead_id"])
    for ddl in PG_DDL[1:]:
        op.execute(ddl)
    op.execute("DROP INDEX IF EXISTS ix_leads_search_phone_trgm")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        _replace_fts(["search_text", "search_phone"])
    else:
        for name in PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON leads")
        op.execute("DROP FUNCTION IF EXISTS lead_phone_grams_sync()")
        op.execute("DROP FUNCTION IF EXISTS lead_phone_grams_of(text)")
        schema = bind.execute(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'pg_trgm'"
            )
        ).scalar_one()
        ops = f"{bind.dialect.identifier_preparer.quote_identifier(schema)}.gin_trgm_ops"
        op.execute(f"CREATE INDEX ix_leads_search_phone_trgm ON leads USING gin (search_phone {ops})")
    op.drop_table(TABLE)
