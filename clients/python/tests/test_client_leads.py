"""MegaClient's lead methods and errors against the real server over loopback."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from conftest import Server, Tenant, make_tenant
from mega_crm_client import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    FileSyncState,
    InvalidRequestError,
    LeadPage,
    MegaClient,
    MemorySyncState,
    NotFoundError,
    RateLimitError,
)


def test_create_then_list_returns_typed_page(client: MegaClient) -> None:
    lead = client.leads.create(
        contact_name="Ada Lovelace",
        contact_email="ada@example.com",
        contact_phone="(206) 555-0123",
        custom_fields={"lead_line": "buyer", "budget": 650000},
    )
    assert lead["contact_phone"] == "+12065550123"
    page = client.leads.list(include_custom_fields=True, search="ada")
    assert isinstance(page, LeadPage)
    assert page.total == 1
    assert page.next_cursor is None
    assert page.leads[0]["id"] == lead["id"]
    assert page.leads[0]["custom_fields"]["budget"] == 650000


def test_create_with_same_key_replays_instead_of_writing_twice(client: MegaClient) -> None:
    key = f"form-{uuid.uuid4()}"
    first = client.leads.create(contact_name="Only name", idempotency_key=key)
    again = client.leads.create(contact_name="Only name", idempotency_key=key)
    assert again["id"] == first["id"]
    assert client.leads.list().total == 1
    with pytest.raises(ConflictError) as info:
        client.leads.create(contact_name="Another body", idempotency_key=key)
    assert info.value.status == 409
    assert not info.value.in_progress


class Recording(httpx.HTTPTransport):
    """The real transport, keeping each request sent (an injected transport, as users may)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


def test_create_generates_a_key_per_call(tenant: Tenant) -> None:
    transport = Recording()
    with tenant.client(transport=transport) as c:
        c.leads.create(contact_name="One")
        c.leads.create(contact_name="One")  # no dedup key: a second lead, a second key
        assert c.leads.list().total == 2
    keys = [r.headers.get("idempotency-key") for r in transport.requests if r.method == "POST"]
    assert len(keys) == 2
    assert all(keys)
    assert keys[0] != keys[1]


def test_iter_follows_the_cursor_across_pages(client: MegaClient) -> None:
    created = {client.leads.create(contact_email=f"p{i}@example.com")["id"] for i in range(7)}
    seen = [lead["id"] for lead in client.leads.iter(limit=3)]
    assert sorted(seen) == sorted(created)
    assert len(seen) == 7
    assert [lead["id"] for lead in client.leads.iter(limit=3, sort_dir="desc")] == seen[::-1]


def test_filters_are_passed_as_the_contract_names_them(client: MegaClient) -> None:
    client.leads.create(contact_email="b@example.com", custom_fields={"lead_line": "buyer"})
    seller = client.leads.create(contact_email="s@example.com", custom_fields={"lead_line": "seller"})
    stage_id = seller["current_stage"]["id"] if seller["current_stage"] else None
    assert [lead["id"] for lead in client.leads.iter(lead_line="seller")] == [seller["id"]]
    assert client.leads.list(stage_id=stage_id).total == 2
    assert (
        client.leads.list(status="active", include_custom_fields=False).leads[0].get("custom_fields") is None
    )


def test_date_filters_are_sent_as_rfc3339_whatever_python_value(client: MegaClient) -> None:
    """The API takes RFC 3339 date-times with an offset only: naive datetimes and dates are UTC."""
    lead = client.leads.create(contact_email="dated@example.com")
    for since in (
        datetime(2000, 1, 1),
        date(2000, 1, 1),
        datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        "2000-01-01T00:00:00Z",
    ):
        assert lead["id"] in [found["id"] for found in client.leads.list(updated_since=since).leads]
    assert client.leads.list(created_since=datetime(2999, 1, 1)).total == 0
    with pytest.raises(InvalidRequestError):  # text is sent as given: the server judges it
        client.leads.list(updated_since="2000-01-01")


@pytest.mark.parametrize("store", ["file", "memory"])
def test_sync_returns_what_changed_since_the_last_call(
    client: MegaClient, tmp_path: Path, store: str
) -> None:
    state = tmp_path / "sync.json" if store == "file" else MemorySyncState()
    a = client.leads.create(contact_email="a@example.com", contact_name="A")
    b = client.leads.create(contact_email="b@example.com")
    c = client.leads.create(contact_email="c@example.com")
    assert [lead["id"] for lead in client.leads.sync(state, limit=2)] == [a["id"], b["id"], c["id"]]
    assert list(client.leads.sync(state, limit=2)) == []
    client.leads.create(contact_email="a@example.com", contact_name="A renamed")  # merges into a
    d = client.leads.create(contact_email="d@example.com")
    changed = list(client.leads.sync(state, limit=2))
    assert [lead["id"] for lead in changed] == [a["id"], d["id"]]
    assert changed[0]["contact_name"] == "A renamed"
    assert list(client.leads.sync(state, limit=2)) == []
    if store == "file":
        assert FileSyncState(tmp_path / "sync.json").load() is not None


def test_sync_stopped_early_repeats_at_most_the_unfinished_page(client: MegaClient) -> None:
    state = MemorySyncState()
    ids = [client.leads.create(contact_email=f"s{i}@example.com")["id"] for i in range(5)]
    walk = client.leads.sync(state, limit=2)
    assert [next(walk)["id"], next(walk)["id"]] == ids[:2]
    walk.close()  # stopped before the first page was recorded as consumed
    assert [lead["id"] for lead in client.leads.sync(state, limit=2)] == ids


def test_bulk_import_chunks_rows_with_a_key_each(tenant: Tenant) -> None:
    transport = Recording()
    progress: list[int] = []
    rows = ({"row_ref": f"r{i}", "contact_email": f"bulk{i}@example.com"} for i in range(1203))
    with tenant.client(transport=transport) as c:
        result = c.leads.bulk_import(rows, on_progress=lambda p: progress.append(p.rows_done))
        assert c.leads.list().total == 1203
    sent = [
        (r.headers["idempotency-key"], len(json.loads(r.content)["leads"]))
        for r in transport.requests
        if r.url.path.endswith("/bulk")
    ]
    assert [n for _, n in sent] == [500, 500, 203]
    assert len({key for key, _ in sent}) == 3
    assert progress == [500, 1000, 1203]
    assert result.summary == {"total": 1203, "created": 1203, "updated": 0, "skipped": 0, "failed": 0}
    assert [r["row_ref"] for r in result.results] == [f"r{i}" for i in range(1203)]


def test_bulk_import_dry_run_and_skip(client: MegaClient) -> None:
    client.leads.create(contact_email="dup@example.com", contact_name="Before")
    rows = [
        {"contact_email": "DUP@example.com", "contact_name": "After"},
        {"contact_phone": "12"},
        {"contact_email": "new@example.com", "custom_fields": {"nope": 1}},
    ]
    preview = client.leads.bulk_import(rows, dry_run=True)
    assert preview.dry_run
    assert [r["status"] for r in preview.results] == ["updated", "failed", "created"]
    assert preview.results[1]["errors"]
    assert preview.unknown_custom_fields == ["nope"]
    assert client.leads.list().total == 1
    skipped = client.leads.bulk_import(rows, on_duplicate="skip")
    assert [r["status"] for r in skipped.results] == ["skipped", "failed", "created"]
    assert client.leads.list(search="dup@example.com").leads[0]["contact_name"] == "Before"


def test_errors_mirror_the_envelope(server: Server, tenant: Tenant) -> None:
    with MegaClient(tenant.url, "mega_" + "0" * 64, tenant.customer_id) as bad:
        with pytest.raises(AuthenticationError) as auth:
            bad.leads.list()
    assert (auth.value.status, auth.value.type) == (401, "authentication_error")
    reader = make_tenant(server, scopes=["public_api:leads:read"])
    with reader.client() as c, pytest.raises(AuthorizationError) as forbidden:
        c.leads.create(contact_name="x")
    assert forbidden.value.type == "authorization_error"
    with tenant.client() as c:
        with pytest.raises(InvalidRequestError) as invalid:
            c.leads.list(limit=1000)
        assert "limit" in invalid.value.message
        with pytest.raises(InvalidRequestError):
            c.leads.create(contact_name="x", not_a_field=1)
        with pytest.raises(NotFoundError):
            c.webhooks.get(str(uuid.uuid4()))


def test_rate_limit_error_carries_retry_after(server: Server) -> None:
    limited = make_tenant(server, limits=("2/minute", "2/minute"))
    with limited.client(max_retries=0) as c:
        c.leads.list()
        c.leads.list()
        with pytest.raises(RateLimitError) as info:
            c.leads.list()
    assert info.value.status == 429
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= 60


def test_settings_come_from_the_environment(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in tenant.env.items():
        monkeypatch.setenv(name, value)
    with MegaClient() as c:
        assert c.leads.list().total == 0
    monkeypatch.delenv("MEGA_TOKEN")
    with pytest.raises(ValueError, match="MEGA_TOKEN"):
        MegaClient()
