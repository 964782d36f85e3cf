"""The database itself refuses a second lead with one email or phone-last-10 for one customer."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from mega_crm.db import Database, utcnow
from mega_crm.leads.models import Lead
from tests.fixtures.factories import make_tenant
from tests.leads.api import db_count


def lead_row(customer_id: uuid.UUID, **fields: Any) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": uuid.uuid4(),
        "customer_id": customer_id,
        "source_platform": "direct",
        "source_type": "manual",
        "status": "active",
        "custom_fields": {},
        "interaction_count": 0,
        "created_at": now,
        "updated_at": now,
        **fields,
    }


def insert_lead(db: Database, customer_id: uuid.UUID, **fields: Any) -> None:
    with db.write_session() as session:
        session.execute(insert(Lead).values(lead_row(customer_id, **fields)))


@pytest.mark.parametrize(
    "key",
    [
        {"email_normalized": "twin@example.com", "contact_email": "twin@example.com"},
        {"phone_last10": "2065550142", "contact_phone": "+12065550142"},
    ],
    ids=["email", "phone"],
)
def test_one_customer_cannot_hold_two_leads_with_one_key(db: Database, key: dict[str, str]) -> None:
    a, b = make_tenant(db), make_tenant(db)
    insert_lead(db, a.customer_id, contact_name="first", **key)
    with pytest.raises(IntegrityError):
        insert_lead(db, a.customer_id, contact_name="second", **key)
    # ... not even inside one multi-row statement
    with pytest.raises(IntegrityError), db.write_session() as session:
        session.execute(insert(Lead).values([lead_row(b.customer_id, **key), lead_row(b.customer_id, **key)]))
    assert db_count(db, a.customer_id) == 1
    assert db_count(db, b.customer_id) == 0
    # another customer may hold the same key
    insert_lead(db, b.customer_id, contact_name="other customer", **key)
    assert db_count(db, b.customer_id) == 1


def test_leads_without_email_or_phone_do_not_collide(db: Database) -> None:
    a = make_tenant(db)
    for i in range(3):
        insert_lead(db, a.customer_id, contact_name=f"name only {i}")
    assert db_count(db, a.customer_id) == 3
