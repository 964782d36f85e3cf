"""Each lead row keeps its `Lead` JSON (leads.document) for listLeads: rendered in Python by every
write, in SQL for rows written some other way. Both must say the same, and a document must never
outlive a change to its row, stage or owner, whoever made the change."""

from __future__ import annotations

import random
import uuid
from typing import Any

import orjson
from alembic import command
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from mega_crm.admin import service as admin
from mega_crm.customers.models import Owner, Stage
from mega_crm.db import Database
from mega_crm.leads import repository
from mega_crm.leads.documents import refresh_documents, render_document
from mega_crm.leads.models import Lead
from mega_crm.leads.pages import SEPARATOR, Page, in_page_order, position_of_key
from mega_crm.leads.schemas import LeadCreateRequest
from mega_crm.leads.service import create_lead
from mega_crm.migrate import alembic_config, upgrade
from tests.fixtures.factories import Tenant
from tests.leads.api import bulk, by_id, create, every_lead, unique_email, unique_phone

AWKWARD_NAMES = ['Zoë "Quote" O\'Brien', "back\\slash", "tab\tand\nnewline", "emoji 🏠", "<b>&amp;</b>"]


def stored(db: Database, customer_id: uuid.UUID) -> dict[str, Any]:
    """lead id -> its stored document, parsed (None when there is none)."""
    with db.read_session() as session:
        rows = session.execute(select(Lead.id, Lead.document).where(Lead.customer_id == customer_id))
        return {str(i): (orjson.loads(d) if d is not None else None) for i, d in rows}


def python_rendering(db: Database, customer_id: uuid.UUID) -> dict[str, Any]:
    """lead id -> render_document() of the row as it is in the database now."""
    with db.read_session() as session:
        stages = {s.id: s for s in session.scalars(select(Stage).where(Stage.customer_id == customer_id))}
        owners = {o.id: o for o in session.scalars(select(Owner).where(Owner.customer_id == customer_id))}
        leads = session.scalars(select(Lead).where(Lead.customer_id == customer_id)).all()
        return {
            str(lead.id): orjson.loads(
                render_document(
                    {c.key: getattr(lead, c.key) for c in Lead.__table__.columns},
                    stages.get(lead.stage_id),  # type: ignore[arg-type]
                    owners.get(lead.owner_id),  # type: ignore[arg-type]
                )
            )
            for lead in leads
        }


def refresh(db: Database, customer_id: uuid.UUID) -> int:
    with db.write_session() as session:
        return refresh_documents(session, customer_id)


def varied_leads(client: TestClient, db: Database, tenant: Tenant) -> None:
    admin.add_stage(db, tenant.customer_id, "toured", "Toured", None)
    for name in AWKWARD_NAMES:
        create(client, tenant, {"contact_name": name, "contact_email": unique_email()})
    create(client, tenant, {"contact_phone": unique_phone(), "stage_slug": "toured"})
    create(
        client,
        tenant,
        {"contact_email": unique_email(), "custom_fields": {"lead_line": "buyer", "budget": 1.5}},
    )
    email = unique_email()
    create(client, tenant, {"contact_email": email})
    create(
        client, tenant, {"contact_email": email, "contact_name": "Merged", "stage_slug": "toured"}
    )  # a merge
    bulk(
        client,
        tenant,
        [
            {"contact_email": unique_email(), "owner_id": str(tenant.owners[0]), "lead_line": "seller"},
            {"contact_name": "No contact but a name", "source_platform": "zoho", "source_type": "import"},
        ],
    )


def test_written_documents_are_the_leads_as_listed(client: TestClient, db: Database, tenant: Tenant) -> None:
    varied_leads(client, db, tenant)
    documents = stored(db, tenant.customer_id)
    assert documents
    assert all(d is not None for d in documents.values())
    for lead in every_lead(client, tenant, include_custom_fields="true"):
        listed = dict(lead)
        listed.pop("custom_fields")
        assert documents[lead["id"]] == listed


def test_the_sql_rendering_equals_the_python_one(client: TestClient, db: Database, tenant: Tenant) -> None:
    varied_leads(client, db, tenant)
    with db.write_session() as session:  # values no API operation sets: exercised through SQL
        first, second = session.scalars(select(Lead.id).where(Lead.customer_id == tenant.customer_id)).all()[
            :2
        ]
        session.execute(update(Lead).where(Lead.id == first).values(qualified=True, score=87))
        session.execute(update(Lead).where(Lead.id == second).values(qualified=False, score=0))
    written = stored(db, tenant.customer_id)
    assert refresh(db, tenant.customer_id) == len(written)
    assert stored(db, tenant.customer_id) == python_rendering(db, tenant.customer_id)


def test_a_lead_changed_outside_the_service_is_listed_as_it_is_now(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    lead = create(client, tenant, {"contact_name": "Before", "contact_email": unique_email()})
    with db.write_session() as session:
        session.execute(update(Lead).where(Lead.id == uuid.UUID(lead["id"])).values(contact_name="After"))
    assert stored(db, tenant.customer_id)[lead["id"]] is None  # the trigger dropped the copy
    assert by_id(client, tenant, lead["id"])["contact_name"] == "After"
    refresh(db, tenant.customer_id)
    assert stored(db, tenant.customer_id)[lead["id"]]["contact_name"] == "After"


def test_renaming_a_stage_or_an_owner_reaches_their_leads(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    owner_id = tenant.owners[0]
    row = {"contact_email": unique_email(), "owner_id": str(owner_id), "stage_slug": "new"}
    lead_id = bulk(client, tenant, [row])["results"][0]["lead_id"]
    with db.write_session() as session:
        session.execute(
            update(Stage)
            .where(Stage.customer_id == tenant.customer_id, Stage.slug == "new")
            .values(name="Fresh")
        )
        session.execute(update(Owner).where(Owner.id == owner_id).values(role_name="Team lead"))
    lead = by_id(client, tenant, lead_id)
    assert lead["current_stage"]["name"] == "Fresh"
    assert lead["owner"]["role_name"] == "Team lead"


def test_a_deleted_owner_disappears_from_its_leads(client: TestClient, db: Database, tenant: Tenant) -> None:
    owner_id = tenant.owners[0]
    lead_id = bulk(client, tenant, [{"contact_email": unique_email(), "owner_id": str(owner_id)}])["results"][
        0
    ]["lead_id"]
    assert by_id(client, tenant, lead_id)["owner"]["id"] == str(owner_id)
    with db.write_session() as session:  # ON DELETE SET NULL updates the lead: the trigger sees it
        session.execute(Owner.__table__.delete().where(Owner.id == owner_id))  # type: ignore[attr-defined]
    assert by_id(client, tenant, lead_id)["owner"] is None


def test_custom_fields_are_spliced_into_the_listed_documents(client: TestClient, tenant: Tenant) -> None:
    cases = [
        ({}, {}),
        ({"lead_line": "buyer"}, {"lead_line": "buyer"}),
        ({"budget": 10, "neighborhood": 'Queen "Anne"'}, {"budget": 10, "neighborhood": 'Queen "Anne"'}),
        ({"budget": 1e300, "lead_line": "seller"}, {"budget": 1e300, "lead_line": "seller"}),
    ]
    for sent, expected in cases:
        lead = create(client, tenant, {"contact_email": unique_email(), "custom_fields": sent})
        assert by_id(client, tenant, lead["id"])["custom_fields"] == expected


def test_a_page_out_of_order_is_put_back_in_order() -> None:
    keys = [f"2026-01-0{d} 00:00:00.000000 {uuid.UUID(int=d).hex}" for d in range(1, 8)] + ["~ " + "f" * 32]
    shuffled = list(zip(keys, [f'"doc{i}"'.encode() for i in range(len(keys))], strict=True))
    random.Random(7).shuffle(shuffled)
    documents = SEPARATOR.join(d for _, d in shuffled)
    ascending, ascending_keys = in_page_order(documents, [k for k, _ in shuffled], descending=False)
    assert ascending_keys == keys
    items = Page(ascending, 8).json_items(8)
    assert orjson.loads(b"[" + items + b"]") == [f"doc{i}" for i in range(len(keys))]
    assert in_page_order(documents, [k for k, _ in shuffled], descending=True)[1] == keys[::-1]
    assert position_of_key(keys[-1]).value is None


@given(
    st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"])), max_size=12),
    st.integers(min_value=0, max_value=14),
)
def test_a_pages_json_items_are_its_first_documents(texts: list[str], count: int) -> None:
    """Any documents (JSON strings of any text, "\\u001e" in them escaped), any count: the
    items are the first `count` documents, whole."""
    documents = [orjson.dumps(text) for text in texts]
    page = Page(SEPARATOR.join(documents), len(texts))
    assert orjson.loads(b"[" + page.json_items(count) + b"]") == texts[:count]


def test_the_migration_renders_the_documents_of_existing_leads(tmp_path: Any) -> None:
    db = Database(f"sqlite:///{tmp_path / 'upgrade.db'}")
    try:
        upgrade(db.url)
        customer = admin.create_customer(db, "Before documents")
        with db.write_session() as session:
            for name in AWKWARD_NAMES:
                create_lead(session, customer.id, LeadCreateRequest(contact_name=name), "US")
        command.downgrade(alembic_config(db.url), "0002")
        command.upgrade(alembic_config(db.url), "head")
        documents = stored(db, customer.id)
        assert len(documents) == len(AWKWARD_NAMES)
        assert documents == python_rendering(db, customer.id)
    finally:
        db.dispose()


def test_repository_reads_the_stored_text_unchanged(db: Database, client: TestClient, tenant: Tenant) -> None:
    """A page is the stored documents byte for byte (the lead service wrote them)."""
    lead = create(client, tenant, {"contact_name": AWKWARD_NAMES[0], "contact_email": unique_email()})
    with db.read_session() as session:
        document = session.scalar(select(Lead.document).where(Lead.id == uuid.UUID(lead["id"])))
    with db.raw_read() as reader:
        page = repository.page_of_leads(
            reader,
            tenant.customer_id,
            repository.LeadFilters(),
            sort_by="updated_at",
            descending=False,
            limit=10,
            offset=0,
            after=None,
            with_custom_fields=False,
        )
    assert document is not None
    assert page.documents == document.encode()
    assert page.total == 1


# --- the one definition (mega_crm/lead_shape.py) -------------------------------------------


def test_every_form_of_a_lead_follows_the_field_table() -> None:
    from mega_crm.events.outbox import webhook_lead
    from mega_crm.lead_shape import DOCUMENT_FIELDS, LEAD_MEMBERS, WEBHOOK_ORDER
    from mega_crm.leads import schemas
    from mega_crm.webhooks.schemas import WebhookLead, WebhookLeadStage

    columns = {c.key for c in Lead.__table__.columns}
    assert {f.source for f in DOCUMENT_FIELDS} <= columns
    assert list(schemas.Lead.model_fields) == [f.name for f in LEAD_MEMBERS]
    for field in DOCUMENT_FIELDS:
        if field.kind == "object":
            model, table = (schemas.Stage, Stage) if field.name == "current_stage" else (schemas.Owner, Owner)
            assert list(model.model_fields) == [p.name for p in field.parts]
            assert {p.name for p in field.parts} <= {c.key for c in table.__table__.columns}
    assert list(WebhookLead.model_fields) == list(WEBHOOK_ORDER)
    assert list(WebhookLeadStage.model_fields) == ["slug", "name"]
    lead = {
        "id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()), "contact_name": "Ada",
        "contact_phone": None, "contact_email": "ada@example.com", "source_platform": "direct",
        "source_type": "manual", "status": "active", "score": None, "qualified": None,
        "current_stage": {"id": str(uuid.uuid4()), "slug": "new", "name": "New", "color": None},
        "owner": None, "last_interaction_at": None, "interaction_count": 0,
        "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": "2026-01-01T00:00:00.000000Z",
        "custom_fields": {"lead_line": "buyer", "budget": 3},
    }  # fmt: skip
    payload = webhook_lead(lead)
    assert list(payload) == list(WEBHOOK_ORDER)
    assert WebhookLead.model_validate(payload).model_dump(mode="json") == {
        **payload,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    assert payload["lead_line"] == "buyer"
    assert payload["current_stage"] == {"slug": "new", "name": "New"}
    assert schemas.Lead.model_validate(lead).model_dump() == lead
