"""leads: every run of 4 digits a search can find, in its own table, beside the lead's updated_at

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 09:20:00

A phone's last four digits (`search=0958`) are in about 1 lead of 800: 1,233 of 1M. The trigram
indexes found them by reading the lists of two digit trigrams that every database's leads share
(about 2% of all leads each, every customer's), then each match's lead row for its customer and
sort value: 9 ms on SQLite, 14 ms on PostgreSQL, against a 1.8 ms page read.

`leads.search_grams` lists, once each, the runs of 4 digits in a lead's search_text and in each
of its search_phone forms (a JSON array, written by the application with the other searchable
forms, leads/search.py). lead_digit_grams holds a row for each, keyed by (customer_id, gram,
updated_at, lead_id), kept by triggers in the transaction of every write to `leads` (insert;
update of search_grams, updated_at or customer_id; delete, cascades included) on both
databases: the customer's matches of a 4-digit query are one index range, counted without
reading a lead and in listLeads' default order (updated_at, id). The phone part of the trigram
indexes goes: SQLite's FTS5 table is made anew over search_text alone, PostgreSQL's index of
search_phone is dropped.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "lead_digit_grams"
TRIGGERS = ("lead_digit_grams_insert", "lead_digit_grams_update", "lead_digit_grams_delete")

# SQLite: row triggers reading the JSON array with json_each.
_SQLITE_DELETE_OLD = (
    f"DELETE FROM {TABLE} WHERE customer_id = OLD.customer_id AND updated_at = OLD.updated_at "
    "AND lead_id = OLD.id AND gram IN (SELECT value FROM json_each(OLD.search_grams));"
)
_SQLITE_INSERT_NEW = (
    f"INSERT OR IGNORE INTO {TABLE} SELECT NEW.customer_id, g.value, NEW.updated_at, NEW.id "
    "FROM json_each(NEW.search_grams) AS g;"
)
SQLITE_TRIGGERS = {
    "lead_digit_grams_insert": "AFTER INSERT ON leads WHEN NEW.search_grams IS NOT NULL "
    f"BEGIN {_SQLITE_INSERT_NEW} END",
    "lead_digit_grams_update": "AFTER UPDATE OF search_grams, updated_at, customer_id ON leads "
    "WHEN NEW.search_grams IS NOT OLD.search_grams OR NEW.updated_at IS NOT OLD.updated_at "
    f"OR NEW.customer_id IS NOT OLD.customer_id BEGIN {_SQLITE_DELETE_OLD} {_SQLITE_INSERT_NEW} END",
    "lead_digit_grams_delete": "AFTER DELETE ON leads WHEN OLD.search_grams IS NOT NULL "
    f"BEGIN {_SQLITE_DELETE_OLD} END",
}

# PostgreSQL: row triggers, each change an index probe per gram. (Statement triggers over
# transition tables took 4.4 s for a bulk merge of 500 leads: the planner, knowing nothing of a
# transition table's rows, scanned all of the table to delete their old grams.) Generic plans:
# PL/pgSQL would otherwise plan its statements anew for each lead (1 ms a merged lead). A merge
# that moves only updated_at moves the rows' updated_at in place.
_PG_GRAMS = "json_array_elements_text(CAST({row}.search_grams AS json))"
PG_DDL = [
    f"""CREATE FUNCTION lead_digit_grams_sync() RETURNS trigger LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
    BEGIN
      IF TG_OP = 'UPDATE' AND NEW.search_grams = OLD.search_grams AND NEW.customer_id = OLD.customer_id THEN
        UPDATE {TABLE} SET updated_at = NEW.updated_at WHERE customer_id = OLD.customer_id
          AND gram = ANY (ARRAY(SELECT {_PG_GRAMS.format(row="OLD")}))
          AND updated_at = OLD.updated_at AND lead_id = OLD.id;
        RETURN NULL;
      END IF;
      IF TG_OP <> 'INSERT' AND OLD.search_grams IS NOT NULL THEN
        DELETE FROM {TABLE} WHERE customer_id = OLD.customer_id
          AND gram = ANY (ARRAY(SELECT {_PG_GRAMS.format(row="OLD")}))
          AND updated_at = OLD.updated_at AND lead_id = OLD.id;
      END IF;
      IF TG_OP <> 'DELETE' AND NEW.search_grams IS NOT NULL THEN
        INSERT INTO {TABLE} (customer_id, gram, updated_at, lead_id)
        SELECT NEW.customer_id, gram, NEW.updated_at, NEW.id FROM {_PG_GRAMS.format(row="NEW")} AS gram
        ON CONFLICT DO NOTHING;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE TRIGGER lead_digit_grams_insert AFTER INSERT ON leads FOR EACH ROW
    WHEN (NEW.search_grams IS NOT NULL) EXECUTE FUNCTION lead_digit_grams_sync()""",
    """CREATE TRIGGER lead_digit_grams_update AFTER UPDATE OF search_grams, updated_at, customer_id
    ON leads FOR EACH ROW WHEN ((NEW.search_grams, NEW.updated_at, NEW.customer_id)
    IS DISTINCT FROM (OLD.search_grams, OLD.updated_at, OLD.customer_id))
    EXECUTE FUNCTION lead_digit_grams_sync()""",
    """CREATE TRIGGER lead_digit_grams_delete AFTER DELETE ON leads FOR EACH ROW
    WHEN (OLD.search_grams IS NOT NULL) EXECUTE FUNCTION lead_digit_grams_sync()""",
]

# SQLite's FTS5 table (0005) over search_text alone: its phone column is no longer asked.
FTS_TRIGGERS = ("leads_search_insert", "leads_search_delete", "leads_search_update")


def _sqlite_fts(columns: list[str]) -> list[str]:
    """0005's FTS5 table and triggers over `columns` of leads, filled from them."""
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


# leads.search.search_grams as of this revision (a migration never imports application code).
_DIGIT_RUN = re.compile("[0-9]{4,}")
_BATCH = 5_000


def _grams(text: str | None, phone: str | None) -> str | None:
    runs = _DIGIT_RUN.findall(text) if text else []
    if sum(len(run) - 3 for run in runs) > 32:  # MAX_TEXT_GRAMS
        found = {"more"}  # MORE_GRAMS
    else:
        found = {run[i : i + 4] for run in runs for i in range(len(run) - 3)}
    for form in phone.split() if phone else ():
        found.update(form[i : i + 4] for i in range(len(form) - 3))
    return "[" + ",".join(f'"{gram}"' for gram in sorted(found)) + "]" if found else None


def _fill_search_grams(bind: Any) -> None:
    """leads.search_grams of the existing leads, in batches by id."""
    is_sqlite = bind.dialect.name == "sqlite"
    select_batch = sa.text(
        "SELECT id, search_text, search_phone FROM leads WHERE id > :after AND "
        "(search_text GLOB '*[0-9][0-9][0-9][0-9]*' OR search_phone IS NOT NULL) ORDER BY id LIMIT :n"
        if is_sqlite
        else "SELECT id, search_text, search_phone FROM leads WHERE id > :after AND "
        "(search_text ~ '[0-9]{4}' OR search_phone IS NOT NULL) ORDER BY id LIMIT :n"
    )
    if is_sqlite:
        update = sa.text("UPDATE leads SET search_grams = :g WHERE id = :id")
    else:
        update = sa.text(
            "UPDATE leads SET search_grams = b.g FROM unnest(CAST(:ids AS uuid[]), CAST(:gs AS text[])) "
            "AS b(id, g) WHERE leads.id = b.id"
        )
    after: Any = "" if is_sqlite else uuid.UUID(int=0)
    while True:
        rows = bind.execute(select_batch, {"after": after, "n": _BATCH}).all()
        if not rows:
            return
        values = [(row[0], _grams(row[1], row[2])) for row in rows]
        if is_sqlite:
            bind.execute(update, [{"id": i, "g": g} for i, g in values])
        else:
            bind.execute(update, {"ids": [i for i, _ in values], "gs": [g for _, g in values]})
        after = rows[-1][0]


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("leads", sa.Column("search_grams", sa.Text(), nullable=True))
    _fill_search_grams(bind)
    columns: list[sa.Column[Any]] = [
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("gram", sa.String(length=4), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
    ]
    key = sa.PrimaryKeyConstraint("customer_id", "gram", "updated_at", "lead_id", name="pk_lead_digit_grams")
    if bind.dialect.name == "sqlite":
        op.create_table(TABLE, *columns, key, sqlite_with_rowid=False)
        # In key order: appends to the b-tree, not inserts all over it.
        op.execute(
            f"INSERT OR IGNORE INTO {TABLE} SELECT * FROM (SELECT l.customer_id, g.value, l.updated_at, "
            "l.id FROM leads AS l, json_each(l.search_grams) AS g WHERE l.search_grams IS NOT NULL "
            "ORDER BY 1, 2, 3, 4)"
        )
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
        _replace_fts(["search_text"])
        return
    op.create_table(TABLE, *columns)  # keyed once filled: one index build, not 10M inserts
    op.execute(
        f"INSERT INTO {TABLE} (customer_id, gram, updated_at, lead_id) "
        f"SELECT DISTINCT customer_id, gram, updated_at, id FROM leads, {_PG_GRAMS.format(row='leads')} "
        "AS gram WHERE search_grams IS NOT NULL"
    )
    op.create_primary_key("pk_lead_digit_grams", TABLE, ["customer_id", "gram", "updated_at", "lead_id"])
    for ddl in PG_DDL:
        op.execute(ddl)
    op.execute("DROP INDEX IF EXISTS ix_leads_search_phone_trgm")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        _replace_fts(["search_text", "search_phone"])
        op.drop_table(TABLE)
        # In place (SQLite 3.35+): a batch copy of `leads` would trip over 0003's triggers.
        op.execute("ALTER TABLE leads DROP COLUMN search_grams")
        return
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON leads")
    op.execute("DROP FUNCTION IF EXISTS lead_digit_grams_sync()")
    schema = bind.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_trgm'"
        )
    ).scalar_one()
    ops = f"{bind.dialect.identifier_preparer.quote_identifier(schema)}.gin_trgm_ops"
    op.execute(f"CREATE INDEX ix_leads_search_phone_trgm ON leads USING gin (search_phone {ops})")
    op.drop_table(TABLE)
    op.drop_column("leads", "search_grams")
