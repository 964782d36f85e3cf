"""Alembic, driven from code: `mega-crm db upgrade` and `mega-crm serve` call upgrade()."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def schema_revision(url: str) -> str | None:
    """The migration revision the database at `url` is at; None for a database without the
    schema (or one that cannot be reached: the upgrade then reports why)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    from mega_crm.db.engines import connection_options, driver_connect_args, normalize_database_url

    try:
        plain, transaction_pooling = connection_options(normalize_database_url(url))
        engine = create_engine(
            plain, poolclass=pool.NullPool, connect_args=driver_connect_args(transaction_pooling)
        )
        try:
            with engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001 - judged by the upgrade that follows
        return None
