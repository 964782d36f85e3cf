"""The migrations build exactly the schema the models describe, on each database."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Uuid, bindparam, create_engine, text
from sqlalchemy.engine import make_url

from mega_crm.app import create_app
from mega_crm.db import Database, UTCDateTime, normalize_database_url, utcnow
from mega_crm.leads.models import described_by_models
from mega_crm.migrate import upgrade
from mega_crm.models import Base
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import make_tenant
from tests.leads.api import LEADS


def test_migrations_match_the_models(db: Database) -> None:
    """A table, column, index or constraint added to a model without a migration (or the other
    way round) shows up here, not on a user's database."""
    with db.engine.connect() as connection:
        # (less each database's own search index: see described_by_models)
        include = described_by_models(connection.dialect.name)
        context = MigrationContext.configure(connection, opts={"include_object": include})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_migration_0005_makes_existing_leads_searchable(empty_database: str) -> None:
    """Leads written before the search columns existed are found once the migration has run,
    by the same rule as new ones (the backfill folds them as the write path does)."""
    upgrade(empty_database, "0004")
    db = Database(empty_database)
    try:
        tenant = make_tenant(db)
        old = [
            ("Émile Zola", "emile@example.com", "+33612345678", "3612345678"),
            ("ΟΔΥΣΣΕΥΣ", None, None, None),
            ("Zoe\u0308 Nu\u0301n\u0303ez", "ZOE@Example.com", "+12065550199", "2065550199"),
        ]
        ids = []
        with db.write_session() as session:
            for name, email, phone, last10 in old:
                ids.append(uuid.uuid4())
                session.execute(
                    text(
                        "INSERT INTO leads (id, customer_id, contact_name, contact_email, email_normalized, "
                        "contact_phone, phone_last10, source_platform, source_type, status, custom_fields, "
                        "interaction_count, created_at, updated_at) VALUES (:id, :customer_id, :name, "
                        ":email, :email_key, :phone, :last10, 'direct', 'manual', 'active', '{}', 0, "
                        ":now, :now)"
                    ).bindparams(
                        bindparam("id", type_=Uuid),
                        bindparam("customer_id", type_=Uuid),
                        bindparam("now", type_=UTCDateTime()),
                    ),
                    {
                        "id": ids[-1],
                        "customer_id": tenant.customer_id,
                        "name": name,
                        "email": email,
                        "email_key": email.lower() if email else None,
                        "phone": phone,
                        "last10": last10,
                        "now": utcnow(),
                    },
                )
        db.dispose()
        upgrade(empty_database)
        db = Database(empty_database)
        with ContractClient(create_app(make_settings(db.url), db), raise_server_exceptions=False) as client:

            def found(query: str) -> list[str]:
                response = client.get(LEADS, params={"search": query}, headers=tenant.headers)
                assert response.status_code == 200, response.text
                return [x["id"] for x in response.json()["leads"]]

            zola, greek, zoe = (str(i) for i in ids)
            assert found("émile") == [zola]
            assert found("EMILE@") == [zola]
            assert found("06 12 34 56") == [zola]  # a part of the national format
            assert found("οδυσσευς") == [greek]
            assert found("núñez") == [zoe]
            assert found("zoe@example") == [zoe]
            assert found("206-555-0199") == [zoe]
            assert found("0199") == [zoe]
            # and the index follows writes after the migration
            created = client.post(LEADS, json={"contact_name": "Ödön Új"}, headers=tenant.headers)
            assert created.status_code == 201, created.text
            assert found("odon uj") == [created.json()["lead"]["id"]]
        if db.is_sqlite:  # FTS5 checks its index against the leads rows
            with db.engine.begin() as connection:
                connection.execute(text("INSERT INTO leads_search(leads_search) VALUES ('integrity-check')"))
    finally:
        db.dispose()


def test_migrations_run_in_a_schema_of_their_own(backend: str, empty_database: str) -> None:
    """PostgreSQL: the trigram operator class is found in whatever schema pg_trgm was installed
    in earlier, though the schema being migrated has another search_path (as bench/webhooks.py
    does)."""
    if backend != "postgres":
        pytest.skip("schemas are PostgreSQL's")
    admin = create_engine(make_url(normalize_database_url(empty_database)), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public"))
        connection.execute(text("CREATE SCHEMA apart"))
    admin.dispose()
    upgrade(f"{empty_database}?options=-csearch_path%3Dapart")
    db = Database(f"{empty_database}?options=-csearch_path%3Dapart")
    try:
        with db.engine.connect() as connection:
            found = connection.execute(text("SELECT indexdef FROM pg_indexes WHERE schemaname = 'apart'"))
            assert any("gin_trgm_ops" in row[0] for row in found)
    finally:
        db.dispose()
