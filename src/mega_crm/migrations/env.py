from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from mega_crm.db import connection_options, driver_connect_args
from mega_crm.leads.models import described_by_models
from mega_crm.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    url, transaction_pooling = connection_options(url)
    connectable = create_engine(
        url, poolclass=pool.NullPool, connect_args=driver_connect_args(transaction_pooling)
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            include_object=described_by_models(connection.dialect.name),
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Several processes may start at once: one migrates, the others wait, then find
                # nothing left to do (the version is read after the lock).
                connection.execute(text("SELECT pg_advisory_xact_lock(7254361029)"))
            context.run_migrations()


run_migrations_online()
