"""Hostile input on every route, on both databases: text no store can hold (NUL, lone
surrogates), lengths the indexes count in bytes, dates that are not RFC 3339, and query strings
with unknown or repeated parameters. Each is a 400 in the envelope naming the field, and changes
nothing; never a 500.
"""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Integer, String, Text, Uuid, func, select

from mega_crm.admin import service as admin
from mega_crm.auth.models import ApiKey
from mega_crm.customers.models import Customer, CustomFieldDefinition, Owner, Stage
from mega_crm.db import Base, Database, UTCDateTime
from mega_crm.webhooks.urls import MAX_URL_BYTES
from tests.cli.test_cli import READ, Cli
from tests.conftest import LiveServer
from tests.fixtures.factories import Tenant, lead

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"
WEBHOOKS = "/api/agents/crm/lead-webhooks"
PUBLIC = "https://93.184.215.14"  # a public IP literal: registration checks it without DNS
PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def bad_request(r: Any) -> str:
    """Asserts a 400 invalid_request_error in the contract's envelope; returns its message."""
    assert r.status_code == 400, r.text
    body = r.json()
    assert body == {
        "error": {"type": "invalid_request_error", "code": 400, "message": body["error"]["message"]}
    }
    return str(body["error"]["message"])


def webhook(client: TestClient, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    body = {"url": f"{PUBLIC}/hook-{uuid.uuid4().hex}", **fields}
    r = client.post(WEBHOOKS, json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return dict(r.json()["webhook"])


def state(client: TestClient, tenant: Tenant) -> tuple[Any, ...]:
    """Everything a refused request might have changed: the tenant's leads and webhooks."""
    leads = client.get(LEADS, params={"limit": 100, "include_custom_fields": "true"}, headers=tenant.headers)
    hooks = client.get(WEBHOOKS, headers=tenant.headers)
    assert leads.status_code == hooks.status_code == 200
    return leads.json()["total"], leads.json()["leads"], hooks.json()["webhooks"]


# --- 1. text no store can hold: NUL, and lone surrogates ---------------------------------------


@dataclass(frozen=True)
class Case:
    """One text field of one route: `send(client, tenant, hook_id, value)` puts `value` in it."""

    name: str
    field: str
    send: Callable[[TestClient, Tenant, str, str], Any]


def _post(path: str, make: Callable[[str], Any]) -> Callable[[TestClient, Tenant, str, str], Any]:
    return lambda c, t, _h, v: c.post(path, content=json.dumps(make(v)), headers=_json(t))


def _patch(make: Callable[[str], Any]) -> Callable[[TestClient, Tenant, str, str], Any]:
    return lambda c, t, h, v: c.patch(f"{WEBHOOKS}/{h}", content=json.dumps(make(v)), headers=_json(t))


def _get(path: str, name: str) -> Callable[[TestClient, Tenant, str, str], Any]:
    return lambda c, t, h, v: c.get(path.format(hook=h), params={name: v}, headers=t.headers)


def _json(tenant: Tenant) -> dict[str, str]:
    return {**tenant.headers, "content-type": "application/json"}


def _hook_url(value: str) -> str:
    return f"{PUBLIC}/{value}"


# json.dumps writes a lone surrogate as a \ud800 escape, exactly what a hostile client sends.
BODY_TEXT = [
    Case("createLead contact_name", "contact_name", _post(LEADS, lambda v: lead(contact_name=v))),
    Case("createLead contact_email", "contact_email", _post(LEADS, lambda v: lead(contact_email=v))),
    Case("createLead contact_phone", "contact_phone", _post(LEADS, lambda v: lead(contact_phone=v))),
    Case("createLead stage_slug", "stage_slug", _post(LEADS, lambda v: lead(stage_slug=v))),
    Case("createLead source_type", "source_type", _post(LEADS, lambda v: lead(source_type=v))),
    Case(
        "createLead custom_fields value",
        "custom_fields.budget",
        _post(LEADS, lambda v: lead(custom_fields={"budget": v})),
    ),
    Case("createLead custom_fields key", "custom_fields", _post(LEADS, lambda v: lead(custom_fields={v: 1}))),
    Case("bulk on_duplicate", "on_duplicate", _post(BULK, lambda v: {"leads": [lead()], "on_duplicate": v})),
    Case("createWebhook url", "url", _post(WEBHOOKS, lambda v: {"url": _hook_url(v)})),
    Case(
        "createWebhook description",
        "description",
        _post(WEBHOOKS, lambda v: {"url": f"{PUBLIC}/{uuid.uuid4().hex}", "description": v}),
    ),
    Case(
        "createWebhook event_types",
        "event_types[0]",
        _post(WEBHOOKS, lambda v: {"url": f"{PUBLIC}/{uuid.uuid4().hex}", "event_types": [v]}),
    ),
    Case("updateWebhook url", "url", _patch(lambda v: {"url": _hook_url(v)})),
    Case("updateWebhook description", "description", _patch(lambda v: {"description": v})),
    Case("updateWebhook event_types", "event_types[0]", _patch(lambda v: {"event_types": [v]})),
]
QUERY_TEXT = [
    Case(f"listLeads {name}", name, _get(LEADS, name))
    for name in ("search", "status", "stageId", "cursor", "created_since", "updated_since", "lead_line")
] + [Case("listWebhookDeliveries cursor", "cursor", _get(WEBHOOKS + "/{hook}/deliveries", "cursor"))]
ALL_TEXT = BODY_TEXT + QUERY_TEXT
UNSTORABLE = ["a\x00b", "\x00", "x\ud800", "\udfffy", "a\udc80b"]  # NUL; lone surrogates, both halves


@pytest.fixture
def hook_id(client: TestClient, tenant: Tenant) -> str:
    return str(webhook(client, tenant, description="before")["id"])


@pytest.mark.parametrize("case", ALL_TEXT, ids=lambda c: c.name)
def test_a_nul_in_any_text_field_is_400_naming_it_and_changes_nothing(
    client: TestClient, tenant: Tenant, hook_id: str, case: Case
) -> None:
    before = state(client, tenant)
    message = bad_request(case.send(client, tenant, hook_id, "a\x00b"))
    assert message.startswith(case.field), message
    assert state(client, tenant) == before


@pytest.mark.parametrize("case", BODY_TEXT, ids=lambda c: c.name)
def test_a_lone_surrogate_escape_in_a_body_is_400(
    client: TestClient, tenant: Tenant, hook_id: str, case: Case
) -> None:
    """A \\ud800 escape is valid JSON syntax but no text: no database or encoder can hold it."""
    before = state(client, tenant)
    bad_request(case.send(client, tenant, hook_id, "x\ud800y"))
    assert state(client, tenant) == before


@pytest.mark.parametrize("bad", UNSTORABLE, ids=repr)
def test_a_bulk_row_with_unstorable_text_fails_alone_naming_the_field(
    client: TestClient, tenant: Tenant, bad: str
) -> None:
    rows = [lead(contact_name=bad, row_ref="r1"), lead(row_ref="r2")]
    r = client.post(
        BULK, content=json.dumps({"leads": rows}), headers={**_json(tenant), "Idempotency-Key": "k"}
    )
    if "\x00" not in bad:  # a lone surrogate breaks the JSON text itself: the whole body is refused
        bad_request(r)
        return
    assert r.status_code == 200, r.text
    failed, created = r.json()["results"]
    assert failed["status"] == "failed", failed
    assert failed["errors"][0].startswith("contact_name"), failed
    assert created["status"] == "created"


def test_a_bulk_row_ref_with_a_nul_is_reported_and_the_response_is_stored(
    client: TestClient, tenant: Tenant
) -> None:
    """The row fails; its result (stored for the Idempotency-Key) holds no unstorable text."""
    body = json.dumps({"leads": [lead(row_ref="a\x00b")]})
    headers = {**_json(tenant), "Idempotency-Key": f"nul-{uuid.uuid4()}"}
    first = client.post(BULK, content=body, headers=headers)
    assert first.status_code == 200, first.text
    [row] = first.json()["results"]
    assert row["status"] == "failed", row
    assert row["errors"][0].startswith("row_ref"), row
    replay = client.post(BULK, content=body, headers=headers)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()


@pytest.mark.parametrize("key", ["a\x00b", "\x00"], ids=repr)
@pytest.mark.parametrize("path", [LEADS, BULK])
def test_a_nul_in_the_idempotency_key_is_400_naming_it(
    client: TestClient, tenant: Tenant, path: Any, key: str
) -> None:
    body = lead() if path == LEADS else {"leads": [lead()]}
    before = state(client, tenant)
    message = bad_request(client.post(path, json=body, headers={**tenant.headers, "Idempotency-Key": key}))
    assert message.startswith("Idempotency-Key"), message
    assert state(client, tenant) == before


@PROPERTY
@given(prefix=st.text(max_size=8), suffix=st.text(max_size=8))
def test_any_text_with_a_nul_is_400_naming_the_field_on_every_text_field(
    client: TestClient, tenant: Tenant, hook_id: str, prefix: str, suffix: str
) -> None:
    for case in ALL_TEXT:
        message = bad_request(case.send(client, tenant, hook_id, prefix + "\x00" + suffix))
        assert message.startswith(case.field), (case.name, message)


@PROPERTY
@given(
    prefix=st.text(max_size=8),
    surrogate=st.integers(min_value=0xD800, max_value=0xDFFF).map(chr),
    suffix=st.text(max_size=8),
)
def test_any_body_text_with_a_lone_surrogate_is_400_on_every_body_field(
    client: TestClient, tenant: Tenant, hook_id: str, prefix: str, surrogate: str, suffix: str
) -> None:
    """(A query string is bytes: a surrogate cannot be written in one; it arrives as U+FFFD.)"""
    value = prefix + surrogate + suffix
    for case in BODY_TEXT:
        bad_request(case.send(client, tenant, hook_id, value))


# --- 2. lengths in bytes where the index counts bytes ------------------------------------------

PG_BTREE_MAX = 2704  # bytes per index row on PostgreSQL (8 kB pages)
# Columns whose type has no length, with the bound the application holds them to (in bytes).
TEXT_BOUNDS = {("webhooks", "url"): MAX_URL_BYTES}


def _column_bytes(table: str, column: Any) -> int:
    kind = column.type
    if isinstance(kind, Uuid):
        return 16
    if isinstance(kind, Integer | UTCDateTime):
        return 8
    if isinstance(kind, String) and not isinstance(kind, Text) and kind.length:
        return 4 * kind.length  # VARCHAR(n) counts characters; UTF-8 takes up to 4 bytes each
    bound = TEXT_BOUNDS.get((table, column.name))
    assert bound is not None, f"{table}.{column.name} is indexed text with no stated byte bound"
    return bound


def test_every_indexed_text_column_fits_a_postgresql_btree_row() -> None:
    """Each index (and unique constraint) of the schema, at the largest values the application
    lets through, is under PostgreSQL's row limit; a new indexed text column must state its bound."""
    checked = 0
    for table in Base.metadata.tables.values():
        # A GIN index (search's trigrams) holds the value's trigrams, not the value: no row limit.
        btrees = [i for i in table.indexes if i.dialect_options["postgresql"]["using"] in (None, "btree")]
        keys = [list(index.columns) for index in btrees]
        keys += [list(c.columns) for c in table.constraints if hasattr(c, "columns") and len(c.columns)]
        for columns in keys:
            size = sum(_column_bytes(table.name, c) for c in columns) + 8 * len(columns)  # + alignment
            assert size < PG_BTREE_MAX, f"{table.name}({', '.join(c.name for c in columns)}): {size} bytes"
            checked += 1
    assert checked > 20


def cjk_url(chars: int) -> str:
    return f"{PUBLIC}/" + "漢" * chars


def test_a_webhook_url_of_2000_cjk_characters_is_400_on_create_and_update(
    client: TestClient, tenant: Tenant, hook_id: str
) -> None:
    """~6 KB of UTF-8 under the 2048-character cap: PostgreSQL's unique index refused it (500)."""
    url = cjk_url(2000)
    before = state(client, tenant)
    assert "url" in bad_request(client.post(WEBHOOKS, json={"url": url}, headers=tenant.headers))
    assert "url" in bad_request(
        client.patch(f"{WEBHOOKS}/{hook_id}", json={"url": url}, headers=tenant.headers)
    )
    assert state(client, tenant) == before


def test_the_longest_url_allowed_is_stored_and_one_byte_more_is_400(
    client: TestClient, tenant: Tenant, hook_id: str
) -> None:
    head = f"{PUBLIC}/{uuid.uuid4().hex}/"
    fill = MAX_URL_BYTES - len(head)
    longest = head + "漢" * (fill // 3) + "a" * (fill % 3)
    assert len(longest.encode()) == MAX_URL_BYTES
    created = client.post(WEBHOOKS, json={"url": longest}, headers=tenant.headers)
    assert created.status_code == 201, created.text
    assert created.json()["webhook"]["url"] == longest
    moved = client.patch(f"{WEBHOOKS}/{hook_id}", json={"url": longest[:-1] + "b"}, headers=tenant.headers)
    assert moved.status_code == 200, moved.text
    assert "url" in bad_request(client.post(WEBHOOKS, json={"url": longest + "a"}, headers=tenant.headers))


def test_the_longest_idempotency_key_in_two_byte_characters_is_stored(
    live_server: LiveServer, tenant: Tenant
) -> None:
    """Over real HTTP (the test client re-encodes header bytes): 255 bytes 0xE9, read as Latin-1
    "é", are 510 bytes of UTF-8 in the (customer, endpoint, key) index."""
    headers: dict[str, Any] = {**tenant.headers, "Idempotency-Key": b"\xe9" * 255}
    body = lead()
    with httpx.Client(base_url=live_server.url) as http:
        first = http.post(LEADS, json=body, headers=headers)
        assert first.status_code == 201, first.text
        replay = http.post(LEADS, json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"


def test_a_long_international_email_is_stored_or_refused_never_a_500(
    client: TestClient, tenant: Tenant
) -> None:
    local = "é" * 64
    email = f"{local}@{'ü' * 60}.{'ä' * 60}.example"
    r = client.post(LEADS, json=lead(contact_email=email), headers=tenant.headers)
    assert r.status_code in (201, 400), r.text


# --- 4. dates: RFC 3339 date-time only --------------------------------------------------------

NOT_RFC3339 = [
    "0.5",
    "1700000000",
    "-1",
    "2024-01-01",  # a date is not a date-time
    "2024-01-01T00:00:00",  # no offset
    "2024-01-01 00:00:00Z",  # a space is ISO 8601's, not RFC 3339's
    "2024-01-01T00:00Z",  # no seconds
    "20240101T000000Z",  # basic format
    "2024-W01-1T00:00:00Z",
    "2024-001T00:00:00Z",
    "2024-01-01T00:00:00+0100",
    "2024-01-01T24:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-01-01T00:00:00.Z",
    "",
    " 2024-01-01T00:00:00Z",
    "yesterday",
]


@pytest.mark.parametrize("name", ["created_since", "updated_since"])
@pytest.mark.parametrize("value", NOT_RFC3339)
def test_a_date_that_is_not_an_rfc3339_date_time_is_400(
    client: TestClient, tenant: Tenant, name: str, value: str
) -> None:
    message = bad_request(client.get(LEADS, params={name: value}, headers=tenant.headers))
    assert message.startswith(name), message


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-01T00:00:00Z",
        "2024-01-01t00:00:00z",
        "2024-01-01T00:00:00.123456789+05:30",
        "2016-12-31T23:59:60Z",
    ],
)
def test_rfc3339_date_times_are_accepted(client: TestClient, tenant: Tenant, value: str) -> None:
    for name in ("created_since", "updated_since"):
        assert client.get(LEADS, params={name: value}, headers=tenant.headers).status_code == 200


def _iso_offset_aware(value: str) -> bool:
    """An independent necessary condition: Python's ISO 8601 reader takes it, with an offset."""
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


@PROPERTY
@given(
    value=st.one_of(
        st.text(alphabet=string.digits + "-:.TZtz+ eE", max_size=30),
        st.floats(allow_nan=False).map(str),
        st.integers().map(str),
        st.datetimes().map(datetime.isoformat),  # no offset
        st.dates().map(str),
    )
)
def test_any_string_iso_8601_cannot_read_as_an_aware_instant_is_400(
    client: TestClient, tenant: Tenant, value: str
) -> None:
    if _iso_offset_aware(value):
        return
    assert "created_since" in bad_request(
        client.get(LEADS, params={"created_since": value}, headers=tenant.headers)
    )


@PROPERTY
@given(
    when=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    offset_minutes=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_any_rfc3339_date_time_is_accepted(
    client: TestClient, tenant: Tenant, when: datetime, offset_minutes: int
) -> None:
    value = when.replace(tzinfo=timezone(timedelta(minutes=offset_minutes))).isoformat()
    assert client.get(LEADS, params={"updated_since": value}, headers=tenant.headers).status_code == 200


# --- 5. query strings: unknown and repeated parameters ---------------------------------------


@dataclass(frozen=True)
class Route:
    operation: str
    method: str
    path: str  # {hook} and {delivery} are filled in
    body: Any = None


ROUTES = [
    Route("listLeads", "GET", LEADS),
    Route("createLead", "POST", LEADS, body=lead),
    Route("bulkImportLeads", "POST", BULK, body=lambda: {"leads": [lead()]}),
    Route("listWebhooks", "GET", WEBHOOKS),
    Route("createWebhook", "POST", WEBHOOKS, body=lambda: {"url": f"{PUBLIC}/{uuid.uuid4().hex}"}),
    Route("getWebhook", "GET", WEBHOOKS + "/{hook}"),
    Route("updateWebhook", "PATCH", WEBHOOKS + "/{hook}", body=lambda: {"description": "changed"}),
    Route("deleteWebhook", "DELETE", WEBHOOKS + "/{hook}"),
    Route("listWebhookDeliveries", "GET", WEBHOOKS + "/{hook}/deliveries"),
    Route("redeliverWebhookDelivery", "POST", WEBHOOKS + "/{hook}/deliveries/{delivery}/redeliver"),
    Route(
        "recoverWebhookDeliveries",
        "POST",
        WEBHOOKS + "/{hook}/recover",
        body=lambda: {"since": "2026-01-01T00:00:00Z"},
    ),
    Route("sendWebhookTestEvent", "POST", WEBHOOKS + "/{hook}/test"),
]


def call(client: TestClient, tenant: Tenant, route: Route, hook: str, query: Any) -> Any:
    path = route.path.format(hook=hook, delivery=uuid.uuid4())
    body = route.body() if route.body else None
    return client.request(route.method, path, params=query, json=body, headers=tenant.headers)


def test_every_api_operation_is_in_the_route_table(app: FastAPI) -> None:
    served = {op["operationId"] for item in app.openapi()["paths"].values() for op in item.values()}
    assert served == {route.operation for route in ROUTES}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.operation)
def test_an_unknown_query_parameter_is_400_naming_it_on_every_route(
    client: TestClient, tenant: Tenant, hook_id: str, route: Route
) -> None:
    before = state(client, tenant)
    message = bad_request(call(client, tenant, route, hook_id, {"stage_id": str(uuid.uuid4())}))
    assert message.startswith("stage_id"), message
    assert state(client, tenant) == before


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r.operation in ("listLeads", "listWebhookDeliveries")]
)
def test_a_repeated_query_parameter_is_400_naming_it(
    client: TestClient, tenant: Tenant, hook_id: str, route: Route
) -> None:
    message = bad_request(call(client, tenant, route, hook_id, [("limit", "5"), ("limit", "6")]))
    assert message.startswith("limit"), message


@pytest.mark.parametrize(
    "value",
    ["\u00b2", "\u0663", "1" * 5000, "9" * 19, "-0", " 1"],
    ids=["superscript-2", "arabic-3", "5000-digits", "19-digits", "minus-0", "space-1"],
)
@pytest.mark.parametrize("name", ["offset", "limit"])
def test_a_number_parameter_that_is_not_ascii_digits_or_is_huge_is_answered_not_a_500(
    client: TestClient, tenant: Tenant, name: str, value: Any
) -> None:
    # offset=\u00b2 and offset=<5,000 digits> were 500s: the lane choice read the raw value first.
    r = client.get(LEADS, params={name: value}, headers=tenant.headers)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert bad_request(r).startswith(name)


@PROPERTY
@given(value=st.text(max_size=30) | st.text(string.digits + "\u00b2\u00b3\u0663 -+", max_size=30))
def test_any_offset_or_limit_text_is_200_or_400(client: TestClient, tenant: Tenant, value: str) -> None:
    for name in ("offset", "limit"):
        r = client.get(LEADS, params={name: value}, headers=tenant.headers)
        assert r.status_code in (200, 400), (name, value, r.text)


def test_a_misspelt_filter_does_not_list_every_lead(client: TestClient, tenant: Tenant) -> None:
    """The report: `stage_id` (for `stageId`) was ignored, and the whole list came back."""
    client.post(LEADS, json=lead(), headers=tenant.headers)
    r = client.get(LEADS, params={"stage_id": str(uuid.uuid4())}, headers=tenant.headers)
    assert "stage_id" in bad_request(r)


def test_status_given_twice_is_400(client: TestClient, tenant: Tenant) -> None:
    r = client.get(LEADS, params=[("status", "won"), ("status", "active")], headers=tenant.headers)
    assert bad_request(r).startswith("status")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (LEADS, {"contact_name": "x", "k" * 100_000: 1}),
        (BULK, {"leads": [lead()], "k" * 100_000: 1}),
        (WEBHOOKS, {"url": f"{PUBLIC}/long-key", "k" * 100_000: 1}),
    ],
    ids=["createLead", "bulkImportLeads", "createWebhook"],
)
def test_an_unknown_body_field_with_a_huge_name_is_named_shortly(
    client: TestClient, tenant: Tenant, path: str, body: dict[str, Any]
) -> None:
    # The whole 100,000-character name was quoted back (a 1 MB name made a 1 MB error message).
    message = bad_request(client.post(path, json=body, headers=tenant.headers))
    assert message.startswith("k" * 64 + "…: is not a known field"), message[:200]
    assert len(message) < 200


def test_a_bulk_rows_unknown_field_with_a_huge_name_is_named_shortly(
    client: TestClient, tenant: Tenant
) -> None:
    r = client.post(BULK, json={"leads": [{**lead(), "k" * 100_000: 1}]}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    [row] = r.json()["results"]
    assert row["status"] == "failed"
    assert max(len(e) for e in row["errors"]) < 200, row["errors"][0][:200]


def test_every_unknown_parameter_is_named(client: TestClient, tenant: Tenant) -> None:
    message = bad_request(client.get(LEADS, params={"stage_id": "1", "sortBy": "x"}, headers=tenant.headers))
    assert "stage_id" in message
    assert "sortBy" in message


KNOWN_LIST_PARAMETERS = {
    "status", "stageId", "search", "created_since", "updated_since", "sort_by", "sort_dir",
    "lead_line", "include_custom_fields", "cursor", "limit", "offset",
}  # fmt: skip


@PROPERTY
@given(
    name=st.text(min_size=1, max_size=20).filter(lambda n: n not in KNOWN_LIST_PARAMETERS), value=st.text()
)
def test_any_unknown_parameter_name_is_400_naming_it(
    client: TestClient, tenant: Tenant, name: str, value: str
) -> None:
    message = bad_request(client.get(LEADS, params={name: value}, headers=tenant.headers))
    assert "is not a known query parameter" in message, message


@PROPERTY
@given(route=st.sampled_from(ROUTES), name=st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
def test_on_every_route_any_parameter_it_does_not_take_is_400(
    client: TestClient, tenant: Tenant, hook_id: str, route: Route, name: str
) -> None:
    takes = {"listLeads": KNOWN_LIST_PARAMETERS, "listWebhookDeliveries": {"limit", "cursor"}}
    if name in takes.get(route.operation, set()):
        return
    message = bad_request(call(client, tenant, route, hook_id, {name: "1"}))
    assert message.startswith(name), message


def test_the_served_query_parameters_are_what_the_routes_take(app: FastAPI) -> None:
    """The table above is the served document's (so a new parameter is both served and taken)."""
    doc = app.openapi()
    for route in ROUTES:
        [operation] = [
            op
            for item in doc["paths"].values()
            for op in item.values()
            if op["operationId"] == route.operation
        ]
        published = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        expected = {"listLeads": KNOWN_LIST_PARAMETERS, "listWebhookDeliveries": {"limit", "cursor"}}
        assert published == expected.get(route.operation, set()), route.operation
        assert "400" in operation["responses"], route.operation


def test_nothing_is_changed_by_a_refused_write(
    client: TestClient, db: Database, tenant: Tenant, hook_id: str
) -> None:
    """A write refused for its query string is refused before any work: no lead, no webhook."""
    before = state(client, tenant)
    for route in ROUTES:
        if route.method != "GET":
            call(client, tenant, route, hook_id, {"dry_run": "1"})
    assert state(client, tenant) == before


# --- 1. the operator commands -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda db, c, v: admin.create_customer(db, v), "customer name"),
        (lambda db, c, v: admin.issue_key(db, c, [READ], name=v), "key name"),
        (lambda db, c, v: admin.add_stage(db, c, v, "Stage", None), "stage slug"),
        (lambda db, c, v: admin.add_stage(db, c, f"s-{uuid.uuid4().hex}", v, None), "stage name"),
        (lambda db, c, v: admin.add_stage(db, c, f"s-{uuid.uuid4().hex}", "Stage", v), "stage color"),
        (lambda db, c, v: admin.add_owner(db, c, v, None), "owner name"),
        (lambda db, c, v: admin.add_owner(db, c, "Owner", v), "owner role"),
        (lambda db, c, v: admin.add_field(db, c, v, None), "field slug"),
        (lambda db, c, v: admin.add_field(db, c, f"f_{uuid.uuid4().hex}", v), "field label"),
        (lambda db, c, v: admin.set_limits(db, c, v, None), "default limit"),
        (lambda db, c, v: admin.set_limits(db, c, None, v), "bulk limit"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
@pytest.mark.parametrize("value", ["a\x00b", "a\udcffb", "x" * 1000], ids=["nul", "surrogate", "too-long"])
def test_operator_text_is_refused_naming_it_and_nothing_is_written(
    db: Database, tenant: Tenant, call: Callable[[Database, uuid.UUID, str], object], what: str, value: Any
) -> None:
    """Every text an operator command stores: the same rule as the API's, and the length of its
    column (PostgreSQL refuses a longer VARCHAR; SQLite would keep it)."""
    before = _operator_rows(db)
    with pytest.raises(admin.AdminError) as refused:
        call(db, tenant.customer_id, value)
    assert str(refused.value).startswith(what), refused.value
    assert _operator_rows(db) == before


def _operator_rows(db: Database) -> tuple[int, ...]:
    with db.read_session() as session:
        counts = tuple(
            session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Customer, ApiKey, Stage, Owner, CustomFieldDefinition)
        )
        limits = tuple(session.execute(select(Customer.rate_limit_default, Customer.rate_limit_bulk)).all())
    return (*counts, hash(limits))


@pytest.fixture
def operator_cli(db_url: str, tmp_path: Path) -> Cli:
    """The `mega-crm` command on this test session's database (SQLite file or PostgreSQL)."""
    cli = Cli(tmp_path / "unused.db")
    cli.env["MEGA_DATABASE_URL"] = db_url
    return cli


def test_operator_commands_refuse_unstorable_or_overlong_text_in_one_line(
    operator_cli: Cli, tenant: Tenant
) -> None:
    """argv that is not UTF-8 reaches Python as lone surrogates (surrogate escapes)."""
    cid = str(tenant.customer_id)
    bad = b"caf\xe9"  # Latin-1, not UTF-8
    long = "x" * 201
    cases: list[tuple[str, list[Any]]] = [
        ("customer name", ["admin", "customers", "create", "--name", bad]),
        ("customer name", ["admin", "customers", "create", "--name", long]),
        ("key name", ["admin", "keys", "issue", "--customer", cid, "--scope", READ, "--name", bad]),
        ("stage slug", ["admin", "stages", "add", "--customer", cid, "--slug", bad, "--name", "N"]),
        ("stage name", ["admin", "stages", "add", "--customer", cid, "--slug", "s", "--name", long]),
        ("owner role", ["admin", "owners", "add", "--customer", cid, "--name", "N", "--role", long]),
        ("field label", ["admin", "fields", "add", "--customer", cid, "--slug", "f", "--label", bad]),
        ("default limit", ["admin", "limits", "set", "--customer", cid, "--default", bad]),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: operator_cli.run(*case[1]), cases))
    for (what, argv), done in zip(cases, results, strict=True):
        context = f"{argv} -> {done.returncode} {done.stderr!r}"
        assert done.returncode == 2, context
        assert done.stdout == "", context
        assert done.stderr.count("\n") == 1, context
        assert "Traceback" not in done.stderr, context
        assert done.stderr.startswith(f"error: {what}"), context


# --- found by schemathesis ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["url", "event_types", "timeout_seconds", "retry_attempts", "is_active", "rotate_secret"]
)
def test_null_for_a_webhook_field_that_cannot_be_null_is_400_on_update(
    client: TestClient, tenant: Tenant, hook_id: str, field: str
) -> None:
    """The published schema has no null for these; it was read as "unchanged" (a hidden mistake).
    `description: null` still clears the description."""
    before = state(client, tenant)
    r = client.patch(f"{WEBHOOKS}/{hook_id}", json={field: None, "description": "x"}, headers=tenant.headers)
    assert bad_request(r).startswith(field)
    assert state(client, tenant) == before
    cleared = client.patch(f"{WEBHOOKS}/{hook_id}", json={"description": None}, headers=tenant.headers)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["webhook"]["description"] is None


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_too_long_description_is_described_as_text(
    client: TestClient, tenant: Tenant, hook_id: str, method: str
) -> None:
    # It said "Value should have at most 500 items after validation, not 501".
    path, body = (
        (WEBHOOKS, {"url": f"{PUBLIC}/long-description"})
        if method == "POST"
        else (f"{WEBHOOKS}/{hook_id}", {})
    )
    r = client.request(method, path, json={**body, "description": "x" * 501}, headers=tenant.headers)
    assert bad_request(r) == "description: must be at most 500 characters"
