"""The migrations build exactly the schema the models describe, on each database."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mega_crm.db import Database
from mega_crm.models import Base


def test_migrations_match_the_models(db: Database) -> None:
    """A table, column, index or constraint added to a model without a migration (or the other
    way round) shows up here, not on a user's database."""
    sqlite = db.is_sqlite

    def described(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        """Each database's search index is its own (migration 0005): on SQLite an FTS5 table
        (and its shadow tables) that no model describes, on PostgreSQL the models' trigram
        indexes, which SQLite does not have."""
        if not sqlite or name is None:
            return True
        if type_ == "table" and reflected:
            return not name.startswith("leads_search")
        return not (type_ == "index" and name.endswith("_trgm"))

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": described})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
