"""The migrations build exactly the schema the models describe, on each database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mega_crm.db import Database
from mega_crm.models import Base


def test_migrations_match_the_models(db: Database) -> None:
    """A table, column, index or constraint added to a model without a migration (or the other
    way round) shows up here, not on a user's database."""
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
