"""leads.search_text / search_phone and their trigram indexes (see mega_crm/leads/search.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:20:00
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any

import phonenumbers
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
    # Existing leads, folded by this revision's rule (the copy below; a later rule is the
    # business of the migration that changes it, and of search.refresh_search).
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


# --- the searchable forms, frozen as of this revision ------------------------------------------
# A copy of mega_crm/leads/search.py's fold / search_text / search_phone / refresh_search (and
# normalize.digits_of) when this revision was written: a migration never imports application
# code, so that a later change to the rule cannot change what this revision does.

SEPARATOR = "\x1f"
_NON_DIGITS = re.compile(r"\D+")
_REFRESH_BATCH = 5_000


def _digits_of(value: str) -> str:
    return _NON_DIGITS.sub("", value)


def _fold(value: str) -> str:
    """NFKC, full case folding, combining marks removed, whitespace runs as one space, trimmed."""
    if value.isascii():
        return " ".join(value.lower().split())
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", value).casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(unicodedata.normalize("NFKC", bare).split())


def _search_text(name: str | None, email: str | None) -> str:
    return f"{_fold(name) if name else ''}{SEPARATOR}{_fold(email) if email else ''}"


def _search_phone(e164: str | None) -> str | None:
    """The digits of the E.164 number, then those of its national format when not a part of them."""
    if not e164:
        return None
    digits = _digits_of(e164)
    if e164.startswith("+1"):
        return digits
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return digits
    national = _digits_of(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    return digits if national in digits else f"{digits} {national}"


def refresh_search(connection: sa.Connection) -> int:
    """Compute `search_text` / `search_phone` of every lead, in batches. -> leads rewritten."""
    is_sqlite = connection.dialect.name == "sqlite"
    select_batch = sa.text(
        "SELECT id, contact_name, contact_email, contact_phone FROM leads WHERE id > :after "
        "ORDER BY id LIMIT :n"
    )
    if is_sqlite:
        update = sa.text("UPDATE leads SET search_text = :t, search_phone = :p WHERE id = :id")
    else:  # one statement per batch
        update = sa.text(
            "UPDATE leads SET search_text = b.t, search_phone = b.p FROM unnest("
            "CAST(:ids AS uuid[]), CAST(:ts AS text[]), CAST(:ps AS text[])) AS b(id, t, p) "
            "WHERE leads.id = b.id"
        )
    after: Any = "" if is_sqlite else uuid.UUID(int=0)
    done = 0
    while True:
        rows = connection.execute(select_batch, {"after": after, "n": _REFRESH_BATCH}).all()
        if not rows:
            return done
        values = [(row[0], _search_text(row[1], row[2]), _search_phone(row[3])) for row in rows]
        if is_sqlite:
            connection.execute(update, [{"id": i, "t": t, "p": p} for i, t, p in values])
        else:
            connection.execute(
                update, {"ids": [i for i, _, _ in values], "ts": [t for _, t, _ in values],
                         "ps": [p for _, _, p in values]}
            )  # fmt: skip
        done += len(rows)
        after = rows[-1][0]
