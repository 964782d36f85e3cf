"""`total` for status / stage / lead_line filters comes from per-bucket counts kept in the write
transaction; they must always equal a real count, whatever the writes did."""

from __future__ import annotations

from typing import Any

from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mega_crm.admin import service as admin
from mega_crm.db import Database
from mega_crm.leads import repository
from mega_crm.leads.models import Lead, LeadCount
from mega_crm.migrate import alembic_config
from tests.fixtures.factories import Tenant, make_tenant
from tests.leads.api import bulk, create, listing


def _real_counts(db: Database, tenant: Tenant) -> dict[tuple[Any, ...], int]:
    with db.read_session() as session:
        rows = session.execute(
            select(Lead.status, Lead.stage_id, Lead.lead_line, func.count())
            .where(Lead.customer_id == tenant.customer_id)
            .group_by(Lead.status, Lead.stage_id, Lead.lead_line)
        )
        return {(s, st, ll): n for s, st, ll, n in rows}


def _kept_counts(db: Database, tenant: Tenant) -> dict[tuple[Any, ...], int]:
    with db.read_session() as session:
        rows = session.execute(
            select(LeadCount.status, LeadCount.stage_id, LeadCount.lead_line, LeadCount.n).where(
                LeadCount.customer_id == tenant.customer_id, LeadCount.n != 0
            )
        )
        return {(s, st, ll): n for s, st, ll, n in rows}


def test_counts_follow_creates_merges_and_bulk_imports(client: TestClient, db: Database) -> None:
    tenant = make_tenant(db)
    admin.add_stage(db, tenant.customer_id, "toured", "Toured", None)
    create(client, tenant, {"contact_email": "a@example.com", "custom_fields": {"lead_line": "buyer"}})
    create(client, tenant, {"contact_email": "b@example.com"})
    # merges that move a lead to another stage and another lead_line
    create(client, tenant, {"contact_email": "A@example.com", "stage_slug": "toured"})
    create(client, tenant, {"contact_email": "b@example.com", "custom_fields": {"lead_line": "seller"}})
    bulk(
        client,
        tenant,
        [
            {"contact_email": "c@example.com", "stage_slug": "toured"},
            {"contact_email": "c@example.com", "stage_slug": "new", "lead_line": "buyer"},  # in-batch merge
            {"contact_email": "a@example.com", "stage_slug": "new"},  # moves a lead back
            {"contact_email": "d@example.com"},
            {"contact_email": "not-an-email"},  # fails alone, counts nothing
        ],
    )
    bulk(client, tenant, [{"contact_email": "e@example.com"}], dry_run=True)  # writes nothing

    assert _kept_counts(db, tenant) == _real_counts(db, tenant)
    assert sum(_real_counts(db, tenant).values()) == 4

    toured = next(s for s in admin_stages(db, tenant) if s.slug == "toured")
    new = next(s for s in admin_stages(db, tenant) if s.slug == "new")
    assert listing(client, tenant)["total"] == 4
    assert listing(client, tenant, status="active")["total"] == 4
    assert listing(client, tenant, status="won")["total"] == 0
    assert listing(client, tenant, stageId=str(new.id))["total"] == 4
    assert listing(client, tenant, stageId=str(toured.id))["total"] == 0
    assert listing(client, tenant, lead_line="buyer")["total"] == 2
    assert listing(client, tenant, lead_line="seller", status="active")["total"] == 1


def admin_stages(db: Database, tenant: Tenant) -> list[Any]:
    with db.read_session() as session:
        return repository.customer_config(session, tenant.customer_id)[0]


def test_recount_rebuilds_counts_from_the_leads(client: TestClient, db: Database) -> None:
    tenant = make_tenant(db)
    for i in range(3):
        create(client, tenant, {"contact_email": f"r{i}@example.com"})
    with db.write_session() as session:  # a writer that bypassed the service
        session.execute(LeadCount.__table__.delete().where(LeadCount.customer_id == tenant.customer_id))  # type: ignore[attr-defined]
    assert listing(client, tenant, status="active")["total"] == 0
    with db.write_session() as session:
        repository.recount(session, tenant.customer_id)
    assert _kept_counts(db, tenant) == _real_counts(db, tenant)
    assert listing(client, tenant, status="active")["total"] == 3


def test_the_models_and_the_migrations_describe_the_same_schema(db_url: str) -> None:
    """`alembic check` fails when a model changed without a migration."""
    command.check(alembic_config(Database(db_url).url))
