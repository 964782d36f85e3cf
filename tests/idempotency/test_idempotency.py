"""Idempotency-Key on createLead and bulkImportLeads.

Bodies carry only a contact_name where a repeat must not write: a name never de-duplicates, so a
second write would show up as a second lead instead of hiding in a merge.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from mega_crm.app import create_app
from mega_crm.db import Database, utcnow
from mega_crm.idempotency import service as idempotency
from mega_crm.idempotency.models import IdempotencyRecord
from mega_crm.leads import service as lead_service
from tests.conftest import LiveServer, make_settings
from tests.fixtures.factories import Tenant, make_tenant

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"
REPLAYED = "idempotent-replayed"


def named(prefix: str = "Idem") -> dict[str, Any]:
    return {"contact_name": f"{prefix} {uuid.uuid4().hex[:10]}"}


def bulk_body(n: int = 2, **extra: Any) -> dict[str, Any]:
    return {"leads": [{**named("Row"), "row_ref": f"r{i}"} for i in range(n)], **extra}


def with_key(tenant: Tenant, key: str) -> dict[str, str]:
    return {**tenant.headers, "Idempotency-Key": key}


def total(client: TestClient, tenant: Tenant) -> int:
    r = client.get(LEADS, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def records(db: Database, customer_id: uuid.UUID) -> list[IdempotencyRecord]:
    with db.read_session() as session:
        return list(
            session.scalars(select(IdempotencyRecord).where(IdempotencyRecord.customer_id == customer_id))
        )


# --- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "status"), [(LEADS, named, 201), (BULK, bulk_body, 200)])
def test_a_replay_returns_the_stored_response_and_writes_nothing(
    client: TestClient, tenant: Tenant, path: str, body: Callable[[], dict[str, Any]], status: int
) -> None:
    key, payload = new_key(), body()
    first = client.post(path, json=payload, headers=with_key(tenant, key))
    assert first.status_code == status, first.text
    assert REPLAYED not in first.headers
    written = total(client, tenant)
    assert written >= 1
    listing = client.get(LEADS, headers=tenant.headers).json()

    for _ in range(2):
        again = client.post(path, json=payload, headers=with_key(tenant, key))
        assert again.status_code == status
        assert again.headers[REPLAYED] == "true"
        assert again.json() == first.json()
    assert total(client, tenant) == written
    assert client.get(LEADS, headers=tenant.headers).json() == listing  # not even updated_at moved


def test_the_same_body_written_differently_is_the_same_request(client: TestClient, tenant: Tenant) -> None:
    key = new_key()
    first = client.post(
        LEADS, content=b'{"contact_name": "Same Body", "source_type": "form"}',
        headers={**with_key(tenant, key), "content-type": "application/json"},
    )  # fmt: skip
    again = client.post(
        LEADS, content=b'{ "source_type":"form",\n "contact_name":"Same Body" }',
        headers={**with_key(tenant, key), "content-type": "application/json"},
    )  # fmt: skip
    assert again.headers.get(REPLAYED) == "true"
    assert again.json() == first.json()
    assert total(client, tenant) == 1


def test_an_explicit_null_is_the_same_request_as_an_omitted_field(client: TestClient, tenant: Tenant) -> None:
    """The API reads `"contact_email": null` as "not sent", so a retry that spells it either way
    must replay, not 409."""
    key = new_key()
    first = client.post(
        LEADS, json={"contact_name": "Null Or Not", "contact_email": None}, headers=with_key(tenant, key)
    )
    again = client.post(LEADS, json={"contact_name": "Null Or Not"}, headers=with_key(tenant, key))
    assert first.status_code == 201
    assert again.headers.get(REPLAYED) == "true"
    assert again.json() == first.json()
    assert total(client, tenant) == 1


def test_a_replay_of_a_merge_returns_the_stored_merge(client: TestClient, tenant: Tenant) -> None:
    email = f"merge-{uuid.uuid4().hex[:8]}@example.com"
    original = client.post(LEADS, json={"contact_email": email, "contact_name": "A"}, headers=tenant.headers)
    key, payload = new_key(), {"contact_email": email, "contact_name": "B"}
    merged = client.post(LEADS, json=payload, headers=with_key(tenant, key))
    assert merged.json()["lead"]["id"] == original.json()["lead"]["id"]
    client.post(LEADS, json={"contact_email": email, "contact_name": "C"}, headers=tenant.headers)
    replay = client.post(LEADS, json=payload, headers=with_key(tenant, key))
    assert replay.json() == merged.json()  # the response as it was, not the lead as it is now
    assert client.get(LEADS, headers=tenant.headers).json()["leads"][0]["contact_name"] == "C"


# --- conflicts and scope ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [(LEADS, named), (BULK, bulk_body)])
def test_the_same_key_with_another_body_is_409_and_writes_nothing(
    client: TestClient, tenant: Tenant, path: str, body: Callable[[], dict[str, Any]]
) -> None:
    key = new_key()
    assert client.post(path, json=body(), headers=with_key(tenant, key)).status_code in (200, 201)
    written = total(client, tenant)
    r = client.post(path, json=body(), headers=with_key(tenant, key))
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "api_error"
    assert r.json()["error"]["code"] == 409
    assert REPLAYED not in r.headers
    assert total(client, tenant) == written


def test_keys_are_scoped_per_customer(client: TestClient, db: Database) -> None:
    one, two = make_tenant(db), make_tenant(db)
    key, payload = new_key(), named()
    for tenant in (one, two):
        r = client.post(LEADS, json=payload, headers=with_key(tenant, key))
        assert r.status_code == 201
        assert REPLAYED not in r.headers
        assert r.json()["lead"]["customer_id"] == str(tenant.customer_id)
        assert total(client, tenant) == 1
    # and a different body under the same key at another customer is no conflict either
    three = make_tenant(db)
    assert client.post(LEADS, json=named(), headers=with_key(three, key)).status_code == 201


def test_keys_are_scoped_per_endpoint(client: TestClient, tenant: Tenant) -> None:
    key = new_key()
    single = client.post(LEADS, json=named(), headers=with_key(tenant, key))
    batch = client.post(BULK, json=bulk_body(2), headers=with_key(tenant, key))
    assert single.status_code == 201
    assert batch.status_code == 200
    assert REPLAYED not in batch.headers
    assert batch.json()["summary"]["created"] == 2
    assert total(client, tenant) == 3


def test_keys_are_shared_by_the_keys_of_one_customer(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    from tests.fixtures.factories import issue_token

    key, payload = new_key(), named()
    first = client.post(LEADS, json=payload, headers=with_key(tenant, key))
    other_key = {**issue_token(db, tenant, ["public_api:leads:write"]), "Idempotency-Key": key}
    again = client.post(LEADS, json=payload, headers=other_key)
    assert again.headers.get(REPLAYED) == "true"
    assert again.json() == first.json()


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_an_unusable_key_is_400(client: TestClient, tenant: Tenant, key: Any) -> None:
    r = client.post(LEADS, json=named(), headers=with_key(tenant, key))
    assert r.status_code == 400
    assert "Idempotency-Key" in r.json()["error"]["message"]
    assert total(client, tenant) == 0


def test_a_key_of_255_characters_is_fine(client: TestClient, tenant: Tenant) -> None:
    key, payload = "k" * 255, named()
    assert client.post(LEADS, json=payload, headers=with_key(tenant, key)).status_code == 201
    assert client.post(LEADS, json=payload, headers=with_key(tenant, key)).headers[REPLAYED] == "true"


# --- what is not cached -----------------------------------------------------------------------


def test_dry_runs_are_not_cached(client: TestClient, db: Database, tenant: Tenant) -> None:
    key, preview = new_key(), bulk_body(2, dry_run=True)
    for _ in range(2):
        r = client.post(BULK, json=preview, headers=with_key(tenant, key))
        assert r.status_code == 200
        assert r.json()["dry_run"] is True
        assert REPLAYED not in r.headers
    assert total(client, tenant) == 0
    assert records(db, tenant.customer_id) == []
    # The key is still free: the real import under it runs (a cached preview would make this 409).
    real = client.post(BULK, json={**preview, "dry_run": False}, headers=with_key(tenant, key))
    assert real.status_code == 200
    assert real.json()["summary"]["created"] == 2
    assert total(client, tenant) == 2


@pytest.mark.parametrize(
    "bad", [{"source_type": "form"}, {"contact_name": "X", "stage_slug": "no-such-stage"}], ids=str
)
def test_a_failed_request_releases_the_key(
    client: TestClient, db: Database, tenant: Tenant, bad: dict[str, Any]
) -> None:
    key = new_key()
    first = client.post(LEADS, json=bad, headers=with_key(tenant, key))
    assert first.status_code == 400
    assert records(db, tenant.customer_id) == []
    # the same key with a corrected body is no conflict: it runs
    fixed = client.post(LEADS, json=named(), headers=with_key(tenant, key))
    assert fixed.status_code == 201
    assert REPLAYED not in fixed.headers
    assert total(client, tenant) == 1


def test_a_crash_releases_the_key(
    client: TestClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, payload = new_key(), named()
    real_create = lead_service.create_lead

    def crash(*args: Any, **kwargs: Any) -> Any:
        real_create(*args, **kwargs)  # the lead is written...
        raise RuntimeError("the process died")  # ...and the transaction never commits

    monkeypatch.setattr(lead_service, "create_lead", crash)
    assert client.post(LEADS, json=payload, headers=with_key(tenant, key)).status_code == 500
    monkeypatch.setattr(lead_service, "create_lead", real_create)
    assert total(client, tenant) == 0
    retry = client.post(LEADS, json=payload, headers=with_key(tenant, key))
    assert retry.status_code == 201
    assert REPLAYED not in retry.headers
    assert total(client, tenant) == 1


# --- atomicity --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [(LEADS, named), (BULK, bulk_body)])
def test_the_response_is_stored_in_the_transaction_that_writes_the_leads(
    client: TestClient,
    db: Database,
    tenant: Tenant,
    path: str,
    body: Callable[[], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fail the statement that stores the response: the leads written before it must roll back."""

    def fail_on_store(*_: Any) -> None:
        raise RuntimeError("lost the database while storing the response")

    key, payload = new_key(), body()
    with monkeypatch.context() as patched:
        patched.setattr(idempotency, "store_response", fail_on_store)
        r = client.post(path, json=payload, headers=with_key(tenant, key))
    assert r.status_code == 500
    assert total(client, tenant) == 0, "leads committed without their stored response"
    # and the retry, with the same key, does the work exactly once
    retry = client.post(path, json=payload, headers=with_key(tenant, key))
    assert retry.status_code in (200, 201)
    assert REPLAYED not in retry.headers
    again = client.post(path, json=payload, headers=with_key(tenant, key))
    assert again.headers[REPLAYED] == "true"
    assert total(client, tenant) == (1 if path == LEADS else 2)


@pytest.mark.parametrize(("path", "body", "per_write"), [(LEADS, named, 1), (BULK, bulk_body, 2)])
def test_concurrent_requests_with_one_key_write_once(
    live_server: LiveServer, db: Database, path: str, body: Callable[[], dict[str, Any]], per_write: int
) -> None:
    tenant = make_tenant(db)
    key, payload = new_key(), body()
    start = threading.Barrier(8)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            start.wait()
            r = http.post(path, json=payload, headers=with_key(tenant, key))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {200, 201, 409}, [r.text for r in results]
    originals = [r for r in results if r.status_code in (200, 201) and REPLAYED not in r.headers]
    assert len(originals) == 1, statuses
    for r in results:
        if r.status_code == 409:
            assert r.json()["error"]["type"] == "api_error"
        else:
            assert r.json() == originals[0].json()
    with httpx.Client(base_url=live_server.url) as http:
        assert http.get(LEADS, headers=tenant.headers).json()["total"] == per_write


# --- expiry and purge -------------------------------------------------------------------------


def expire(db: Database, customer_id: uuid.UUID) -> None:
    with db.write_session() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.customer_id == customer_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def test_a_key_expires_after_its_ttl(client: TestClient, db: Database, tenant: Tenant) -> None:
    key, payload = new_key(), named()
    assert client.post(LEADS, json=payload, headers=with_key(tenant, key)).status_code == 201
    expire(db, tenant.customer_id)
    again = client.post(LEADS, json=payload, headers=with_key(tenant, key))
    assert again.status_code == 201
    assert REPLAYED not in again.headers
    assert total(client, tenant) == 2  # the expired key no longer protects: the work ran again
    # an expired key is free for any body, and is then protected anew
    expire(db, tenant.customer_id)
    other = named()
    assert client.post(LEADS, json=other, headers=with_key(tenant, key)).status_code == 201
    assert client.post(LEADS, json=other, headers=with_key(tenant, key)).headers[REPLAYED] == "true"


@pytest.mark.parametrize(("hours", "expected"), [(None, timedelta(hours=24)), (2, timedelta(hours=2))])
def test_the_ttl_is_24_hours_unless_configured(
    db_url: str, db: Database, hours: int | None, expected: timedelta
) -> None:
    overrides = {} if hours is None else {"idempotency_ttl_hours": hours}
    app = create_app(make_settings(db_url, webhook_worker_in_process=False, **overrides), db)
    tenant = make_tenant(db)
    with TestClient(app) as c:
        assert c.post(LEADS, json=named(), headers=with_key(tenant, new_key())).status_code == 201
    (record,) = records(db, tenant.customer_id)
    assert record.expires_at - record.created_at == expected


def test_purge_expired_deletes_only_expired_keys(client: TestClient, db: Database) -> None:
    stale, fresh = make_tenant(db), make_tenant(db)
    for tenant in (stale, fresh):
        assert client.post(LEADS, json=named(), headers=with_key(tenant, new_key())).status_code == 201
    expire(db, stale.customer_id)
    assert idempotency.purge_expired(db) >= 1
    assert records(db, stale.customer_id) == []
    assert len(records(db, fresh.customer_id)) == 1


def test_the_server_purges_expired_keys_by_itself(
    client: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale, fresh = make_tenant(db), make_tenant(db)
    assert client.post(LEADS, json=named(), headers=with_key(stale, new_key())).status_code == 201
    expire(db, stale.customer_id)
    monkeypatch.setattr(idempotency, "PURGE_INTERVAL", timedelta(0))  # due at once
    assert client.post(LEADS, json=named(), headers=with_key(fresh, new_key())).status_code == 201
    assert records(db, stale.customer_id) == []
    assert len(records(db, fresh.customer_id)) == 1


def claim(db: Database, tenant: Tenant, key: str, payload: dict[str, Any], age: timedelta) -> None:
    """A claim left by a request that is still running (or died) `age` ago."""
    created = utcnow() - age
    with db.write_session() as session:
        session.add(
            IdempotencyRecord(
                customer_id=tenant.customer_id,
                endpoint="createLead",
                key=key,
                request_hash=idempotency.request_fingerprint(payload),
                created_at=created,
                expires_at=created + timedelta(hours=24),
            )
        )


def test_a_request_in_progress_makes_the_same_key_409(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    key, payload = new_key(), named()
    claim(db, tenant, key, payload, age=timedelta(seconds=1))
    r = client.post(LEADS, json=payload, headers=with_key(tenant, key))
    assert r.status_code == 409
    assert "in progress" in r.json()["error"]["message"]
    assert total(client, tenant) == 0


def test_the_claim_of_a_request_that_died_is_taken_over(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    key, payload = new_key(), named()
    claim(db, tenant, key, payload, age=idempotency.CLAIM_LEASE + timedelta(seconds=5))
    r = client.post(LEADS, json=payload, headers=with_key(tenant, key))
    assert r.status_code == 201
    assert REPLAYED not in r.headers
    assert client.post(LEADS, json=payload, headers=with_key(tenant, key)).headers[REPLAYED] == "true"
    assert total(client, tenant) == 1
