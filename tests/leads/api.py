"""Small helpers for the lead tests: call the three operations, read the error envelope."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mega_crm.customers.models import Customer
from mega_crm.db import Database
from mega_crm.leads import repository
from mega_crm.leads.models import Lead
from tests.fixtures.factories import Tenant

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"


def create(client: TestClient, tenant: Tenant, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    """createLead that must succeed: the lead."""
    r = client.post(LEADS, json=body, headers={**tenant.headers, **headers})
    assert r.status_code == 201, r.text
    return dict(r.json()["lead"])


def bulk(
    client: TestClient, tenant: Tenant, rows: list[Any], *, expected: int = 200, **options: Any
) -> dict[str, Any]:
    r = client.post(BULK, json={"leads": rows, **options}, headers=tenant.headers)
    assert r.status_code == expected, r.text
    return dict(r.json())


def listing(client: TestClient, tenant: Tenant, **params: Any) -> dict[str, Any]:
    """listLeads that must succeed: the whole response body."""
    r = client.get(LEADS, params=params, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def every_lead(client: TestClient, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    """All of the tenant's leads (offset paging, default sort)."""
    out: list[dict[str, Any]] = []
    while True:
        page = listing(client, tenant, limit=100, offset=len(out), **params)
        out += page["leads"]
        if len(page["leads"]) < 100:
            return out


def by_id(client: TestClient, tenant: Tenant, lead_id: str) -> dict[str, Any]:
    found = [x for x in every_lead(client, tenant, include_custom_fields="true") if x["id"] == lead_id]
    assert len(found) == 1, f"lead {lead_id} not found exactly once"
    return found[0]


def total(client: TestClient, tenant: Tenant) -> int:
    return int(listing(client, tenant, limit=1)["total"])


def error(response: httpx.Response, status: int) -> str:
    """Assert the contract's error envelope with `status`; return its message."""
    assert response.status_code == status, response.text
    err = response.json()["error"]
    expected_type = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "authorization_error",
        404: "not_found_error",
        409: "api_error",
        429: "rate_limit_error",
        500: "api_error",
    }[status]
    assert err["type"] == expected_type
    assert err["code"] == status
    return str(err["message"])


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def unique_email(prefix: str = "lead") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def unique_phone() -> str:
    """A US number, E.164, that no other test uses (random line within a random 2xx-9xx area)."""
    n = uuid.uuid4().int
    return f"+1{200 + n % 800}{200 + (n >> 10) % 800}{(n >> 20) % 10_000:04d}"


def db_count(db: Database, customer_id: uuid.UUID) -> int:
    with db.read_session() as session:
        return int(
            session.scalar(select(func.count()).select_from(Lead).where(Lead.customer_id == customer_id))  # type: ignore[arg-type]
        )


def set_status(db: Database, customer_id: uuid.UUID, lead_id: str, status: str) -> None:
    """No API operation changes a lead's status; tests set it in the database (bumping the
    customer's leads_version and rebuilding its counts, as every writer outside the service must)."""
    with db.write_session() as session:
        session.execute(update(Lead).where(Lead.id == uuid.UUID(lead_id)).values(status=status))
        session.execute(
            update(Customer)
            .where(Customer.id == customer_id)
            .values(leads_version=Customer.leads_version + 1)
        )
        repository.recount(session, customer_id)
