"""The error envelope everywhere, including the failures the framework raises itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from mega_crm.app import create_app
from mega_crm.db import Database
from tests.conftest import make_settings
from tests.fixtures.factories import Tenant, lead, make_tenant

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"


def envelope(r: Any, status: int, error_type: str) -> str:
    """Asserts the contract's envelope and returns its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message"}
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == status
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return str(body["error"]["message"])


def bad_request(r: Any) -> str:
    assert r.status_code != 422, "validation failures are 400, never 422"
    return envelope(r, 400, "invalid_request_error")


# --- malformed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [LEADS, BULK])
@pytest.mark.parametrize("raw", [b"{", b'{"contact_name": }', b"[1, 2", b"\xff\xfe\x00", b"nul"])
def test_malformed_json_is_400(client: TestClient, tenant: Tenant, path: Any, raw: bytes) -> None:
    r = client.post(path, content=raw, headers={**tenant.headers, "content-type": "application/json"})
    message = bad_request(r)
    assert "JSON" in message or "body" in message.lower()


@pytest.mark.parametrize("path", [LEADS, BULK])
@pytest.mark.parametrize("body", [[], ["a"], "text", 42, None])
def test_a_body_that_is_not_an_object_is_400(
    client: TestClient, tenant: Tenant, path: Any, body: Any
) -> None:
    r = client.post(path, json=body, headers=tenant.headers)
    assert "body" in bad_request(r).lower()


@pytest.mark.parametrize("path", [LEADS, BULK])
def test_a_missing_body_is_400(client: TestClient, tenant: Tenant, path: Any) -> None:
    assert "body" in bad_request(client.post(path, headers=tenant.headers)).lower()


def test_a_body_sent_as_text_is_400(client: TestClient, tenant: Tenant) -> None:
    r = client.post(
        LEADS, content=b'{"contact_name": "A"}', headers={**tenant.headers, "content-type": "text/plain"}
    )
    bad_request(r)


# --- wrong types and missing fields name the field --------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"contact_name": 5}, "contact_name"),
        ({"contact_name": "A", "contact_email": ["a@b.co"]}, "contact_email"),
        ({"contact_name": "A", "contact_phone": 2065550123}, "contact_phone"),
        ({"contact_name": "A", "source_platform": "myspace"}, "source_platform"),
        ({"contact_name": "A", "source_type": True}, "source_type"),
        ({"contact_name": "A", "stage_slug": {}}, "stage_slug"),
        ({"contact_name": "A", "custom_fields": "budget=1"}, "custom_fields"),
        ({"contact_name": "A", "custom_fields": {"budget": [1]}}, "custom_fields.budget"),
        ({"contact_name": "A", "unexpected": 1}, "unexpected"),
    ],
)
def test_create_with_a_wrong_type_is_400_naming_the_field(
    client: TestClient, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    message = bad_request(client.post(LEADS, json=body, headers=tenant.headers))
    assert message.startswith(f"{field}:"), message
    assert client.get(LEADS, headers=tenant.headers).json()["total"] == 0


def test_create_without_any_contact_field_is_400_naming_them(client: TestClient, tenant: Tenant) -> None:
    message = bad_request(client.post(LEADS, json={"source_type": "form"}, headers=tenant.headers))
    for field in ("contact_name", "contact_phone", "contact_email"):
        assert field in message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "leads"),
        ({"on_duplicate": "skip"}, "leads"),
        ({"leads": "all of them"}, "leads"),
        ({"leads": {"0": {}}}, "leads"),
        ({"leads": []}, "leads"),
        ({"leads": [{"contact_name": "A"}] * 501}, "leads"),
        ({"leads": [{"contact_name": "A"}], "dry_run": "maybe"}, "dry_run"),
        ({"leads": [{"contact_name": "A"}], "on_duplicate": "merge"}, "on_duplicate"),
        ({"leads": [{"contact_name": "A"}], "on_duplicate": 1}, "on_duplicate"),
        ({"leads": [{"contact_name": "A"}], "bogus": True}, "bogus"),
    ],
)
def test_bulk_with_a_bad_envelope_is_400_naming_the_field(
    client: TestClient, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    message = bad_request(client.post(BULK, json=body, headers=tenant.headers))
    assert message.startswith(f"{field}:"), message
    assert client.get(LEADS, headers=tenant.headers).json()["total"] == 0


def test_a_bad_bulk_row_is_reported_in_its_result_naming_the_field(
    client: TestClient, tenant: Tenant
) -> None:
    body = {"leads": [{"row_ref": "r1", "contact_name": 5}, lead(row_ref="r2")]}
    r = client.post(BULK, json=body, headers=tenant.headers)
    assert r.status_code == 200, r.text
    failed, created = r.json()["results"]
    assert failed["status"] == "failed"
    assert failed["errors"][0].startswith("contact_name:")
    assert created["status"] == "created"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "ten"}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"sort_by": "name"}, "sort_by"),
        ({"sort_dir": "up"}, "sort_dir"),
        ({"created_since": "yesterday"}, "created_since"),
        ({"updated_since": "2024-13-45"}, "updated_since"),
        ({"stageId": "not-a-uuid"}, "stageId"),
        ({"lead_line": "renter"}, "lead_line"),
        ({"include_custom_fields": "perhaps"}, "include_custom_fields"),
        ({"status": "bogus"}, "status"),
        ({"cursor": "forged"}, "cursor"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_parameter(
    client: TestClient, tenant: Tenant, params: dict[str, Any], field: str
) -> None:
    message = bad_request(client.get(LEADS, params=params, headers=tenant.headers))
    assert message.startswith(field), message


def test_several_bad_fields_are_all_named(client: TestClient, tenant: Tenant) -> None:
    message = bad_request(client.get(LEADS, params={"limit": 0, "sort_dir": "up"}, headers=tenant.headers))
    assert "limit" in message
    assert "sort_dir" in message


# --- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nope",
        "/api/agents/crm",
        "/api/agents/crm/lead",
        "/api/agents/crm/leads/x/y",
        "/api/agents/crm/leads/",  # a trailing slash is another route, not a redirect
        "/api/agents/crm/lead-webhooks/",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_unknown_routes_are_404_in_the_envelope(
    client: TestClient, tenant: Tenant, path: str, method: str
) -> None:
    for headers in ({}, tenant.headers):
        r = client.request(method, path, headers=headers)
        envelope(r, 404, "not_found_error")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", LEADS, {"GET", "POST"}),
        ("PUT", LEADS, {"GET", "POST"}),
        ("PATCH", LEADS, {"GET", "POST"}),
        ("GET", BULK, {"POST"}),
        ("DELETE", BULK, {"POST"}),
    ],
)
def test_a_wrong_method_is_405_in_the_envelope(
    client: TestClient, tenant: Tenant, method: str, path: str, allowed: set[str]
) -> None:
    r = client.request(method, path, headers=tenant.headers)
    message = envelope(r, 405, "invalid_request_error")
    assert message
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed


# --- unexpected failures ----------------------------------------------------------------------

SECRET_DETAIL = "SELECT password FROM api_keys -- /srv/app/secret.py line 42"


@pytest.fixture
def exploding_client(db_url: str, db: Database) -> Iterator[TestClient]:
    """A separate app instance with routes that fail the way bugs and outages do."""
    app = create_app(make_settings(db_url, webhook_worker_in_process=False), db)

    @app.get("/boom/runtime")
    def runtime() -> None:
        raise RuntimeError(SECRET_DETAIL)

    @app.get("/boom/sql")
    def sql() -> None:
        raise OperationalError(SECRET_DETAIL, {"token": "mega_secret"}, Exception("connection refused"))

    @app.post("/boom/async")
    async def async_route() -> None:
        raise KeyError(SECRET_DETAIL)

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/boom/runtime"), ("GET", "/boom/sql"), ("POST", "/boom/async")]
)
def test_an_unexpected_exception_is_500_api_error_without_internals(
    exploding_client: TestClient, method: str, path: str
) -> None:
    r = exploding_client.request(method, path)
    # A database's OperationalError (connection refused, locked, disk full) is the database being
    # unavailable, not a bug: 503 (tests/test_failures.py).
    envelope(r, 503 if path == "/boom/sql" else 500, "api_error")
    for leak in ("SELECT", "password", "secret", "Traceback", "line 42", "mega_secret", "Error"):
        assert leak not in r.text
    assert "traceback" not in r.text.lower()


@pytest.mark.parametrize(("failure", "status"), [(RuntimeError, 500), (OperationalError, 503)])
def test_a_failing_lead_route_is_api_error_without_internals(
    client: TestClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch, failure: type[Exception], status: int
) -> None:
    from mega_crm.leads import service

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        if failure is RuntimeError:
            raise RuntimeError("SELECT * FROM leads WHERE customer_id = ? (disk I/O error)")
        raise OperationalError("SELECT * FROM leads WHERE customer_id = ?", {}, Exception("disk I/O error"))

    monkeypatch.setattr(service, "list_leads", broken)
    monkeypatch.setattr(service, "create_lead", broken)
    for r in (
        client.get(LEADS, headers=tenant.headers),
        client.post(LEADS, json=lead(), headers=tenant.headers),
    ):
        envelope(r, status, "api_error")
        assert "SELECT" not in r.text
        assert "disk" not in r.text


# --- rate limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [LEADS, BULK])
def test_over_the_limit_is_429_rate_limit_error(client: TestClient, db: Database, path: Any) -> None:
    tenant = make_tenant(db, limits=("1/day", "1/day"))
    body = {"leads": [lead()]} if path == BULK else lead()
    assert client.post(path, json=body, headers=tenant.headers).status_code in (200, 201)
    r = client.post(path, json=body, headers=tenant.headers)
    envelope(r, 429, "rate_limit_error")
    assert int(r.headers["retry-after"]) >= 1


def test_a_body_over_the_size_limit_is_413_in_the_envelope(db: Database, db_url: str) -> None:
    small = create_app(make_settings(db_url, max_body_bytes=1000), db)
    tenant = make_tenant(db)
    big = {"contact_name": "x" * 2000}
    with TestClient(small) as c:
        declared = c.post("/api/agents/crm/leads", json=big, headers=tenant.headers)
        assert declared.status_code == 413
        assert declared.json()["error"]["type"] == "invalid_request_error"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
            yield b'{"contact_name": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}'

        streamed = c.post(
            "/api/agents/crm/leads",
            content=chunks(),
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert streamed.status_code in (400, 413)
        assert "error" in streamed.json()
        ok = c.post("/api/agents/crm/leads", json={"contact_name": "small"}, headers=tenant.headers)
        assert ok.status_code == 201
