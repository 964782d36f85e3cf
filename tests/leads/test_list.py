"""listLeads: filters, sorts, limit/offset, total, include_custom_fields and the keyset cursor."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.leads.service import MAX_OFFSET
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import Tenant, make_tenant
from tests.leads.api import (
    LEADS,
    bulk,
    by_id,
    create,
    error,
    every_lead,
    listing,
    set_status,
    ts,
    unique_email,
    unique_phone,
)

Lead = dict[str, Any]


def ids(leads: list[Lead]) -> list[str]:
    return [x["id"] for x in leads]


def expected_order(leads: list[Lead], sort_by: str, sort_dir: str) -> list[str]:
    """The contract's order: by the sort column, ties broken by id; a null last_interaction_at
    sorts after every timestamp ascending (so before them descending)."""
    dated = [x for x in leads if x[sort_by] is not None]
    undated = [x for x in leads if x[sort_by] is None]
    asc = sorted(dated, key=lambda x: (ts(x[sort_by]), x["id"])) + sorted(undated, key=lambda x: x["id"])
    return ids(asc if sort_dir == "asc" else asc[::-1])


def mixed_dataset(client: TestClient, tenant: Tenant) -> None:
    """Leads whose created_at, updated_at and last_interaction_at orders all differ, with ties
    (a bulk batch shares one timestamp) and null last_interaction_at (bulk rows are inert)."""
    batch = bulk(
        client, tenant, [{"contact_email": unique_email(), "contact_name": f"B{i}"} for i in range(4)]
    )
    first_bulk = batch["results"][0]["lead_id"]
    a = create(client, tenant, {"contact_email": unique_email("a"), "contact_name": "A"})
    create(client, tenant, {"contact_email": unique_email("b"), "contact_name": "B"})
    # a single-create merge into a bulk lead: new updated_at and last_interaction_at
    first_email = by_id(client, tenant, first_bulk)["contact_email"]
    create(client, tenant, {"contact_email": first_email, "contact_name": "B0 again"})
    # a bulk merge into A: new updated_at, same last_interaction_at
    bulk(client, tenant, [{"contact_email": a["contact_email"], "contact_name": "A again"}])


@pytest.fixture(scope="module")
def mixed(client: TestClient, db: Database) -> Tenant:
    """A tenant holding `mixed_dataset` plus a second bulk batch (11 leads), shared read-only by
    the sort and traversal tests."""
    tenant = make_tenant(db)
    mixed_dataset(client, tenant)
    bulk(client, tenant, [{"contact_name": f"more {i}"} for i in range(5)])
    return tenant


@pytest.fixture(scope="module")
def reader(client: TestClient, db: Database) -> Iterator[TestClient]:
    """A client whose server cannot lean on an index for its order. On PostgreSQL index scans are
    disabled, so every page is a sequential scan plus a sort, and rows that tie on the sort column
    come in heap order unless the query itself breaks ties by id. (SQLite cannot be told so.)"""
    if db.is_sqlite:
        yield client
        return
    own = Database(db.url)

    @event.listens_for(own.engine, "connect")
    def no_index_scans(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
                cursor.execute(f"SET {setting} = off")
        dbapi_connection.commit()

    yield ContractClient(create_app(make_settings(db.url), own))
    own.dispose()


def traverse(
    client: TestClient,
    tenant: Tenant,
    params: dict[str, Any],
    between: Callable[[int, list[Lead]], None] | None = None,
    max_pages: int = 100,
) -> list[list[Lead]]:
    """Follow next_cursor to the end; `between(page_number, seen)` runs after each page."""
    pages: list[list[Lead]] = []
    seen: list[Lead] = []
    cursor = None
    for number in range(max_pages):
        page = listing(client, tenant, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(page["leads"])
        seen += page["leads"]
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert page["leads"], "a page with a next_cursor must not be empty"
        if between:
            between(number, seen)
    raise AssertionError("cursor paging did not end")


# --- sorting --------------------------------------------------------------------------------


def test_default_sort_is_updated_at_ascending(client: TestClient, mixed: Tenant) -> None:
    page = listing(client, mixed, limit=100)
    assert ids(page["leads"]) == expected_order(page["leads"], "updated_at", "asc")
    # and that really differs from created_at order, so the sort column is not a coincidence
    assert ids(page["leads"]) != expected_order(page["leads"], "created_at", "asc")


@pytest.mark.parametrize("sort_by", ["created_at", "updated_at", "last_interaction_at"])
@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_sort_and_tie_break_by_id(reader: TestClient, mixed: Tenant, sort_by: str, sort_dir: str) -> None:
    leads = listing(reader, mixed, limit=100, sort_by=sort_by, sort_dir=sort_dir)["leads"]
    assert len(leads) == 11
    values = [x[sort_by] for x in leads]
    assert len(set(values)) < len(values), "the dataset must contain ties"
    assert ids(leads) == expected_order(leads, sort_by, sort_dir)


def test_the_three_sorts_are_different_orders(client: TestClient, mixed: Tenant) -> None:
    orders = {
        s: ids(listing(client, mixed, limit=100, sort_by=s)["leads"])
        for s in ("created_at", "updated_at", "last_interaction_at")
    }
    assert len({tuple(o) for o in orders.values()}) == 3


def test_last_interaction_nulls_sort_last_ascending_first_descending(
    client: TestClient, mixed: Tenant
) -> None:
    asc = listing(client, mixed, limit=100, sort_by="last_interaction_at")["leads"]
    desc = listing(client, mixed, limit=100, sort_by="last_interaction_at", sort_dir="desc")["leads"]
    assert [x["last_interaction_at"] is None for x in asc] == [False] * 3 + [True] * 8
    assert ids(desc) == ids(asc)[::-1]


@pytest.mark.parametrize("params", [{"sort_by": "score"}, {"sort_dir": "up"}, {"sort_by": ""}])
def test_unknown_sort_is_400(client: TestClient, tenant: Tenant, params: dict[str, str]) -> None:
    message = error(client.get(LEADS, params=params, headers=tenant.headers), 400)
    assert next(iter(params)) in message


# --- filters --------------------------------------------------------------------------------


def test_status_filter(client: TestClient, db: Database, tenant: Tenant) -> None:
    won = create(client, tenant, {"contact_name": "Winner"})
    lost = create(client, tenant, {"contact_name": "Loser"})
    active = create(client, tenant, {"contact_name": "Still going"})
    set_status(db, tenant.customer_id, won["id"], "won")
    set_status(db, tenant.customer_id, lost["id"], "lost")
    for status, expected in [("won", [won]), ("lost", [lost]), ("active", [active]), ("nurture", [])]:
        page = listing(client, tenant, status=status)
        assert ids(page["leads"]) == ids(expected)
        assert page["total"] == len(expected)
        assert all(x["status"] == status for x in page["leads"])


def test_unknown_status_is_400(client: TestClient, tenant: Tenant) -> None:
    assert "status" in error(client.get(LEADS, params={"status": "open"}, headers=tenant.headers), 400)


def test_stage_filter(client: TestClient, tenant: Tenant) -> None:
    default = create(client, tenant, {"contact_name": "In new"})
    contacted = create(client, tenant, {"contact_name": "In contacted", "stage_slug": "contacted"})
    assert default["current_stage"]["slug"] == "new"
    page = listing(client, tenant, stageId=contacted["current_stage"]["id"])
    assert ids(page["leads"]) == [contacted["id"]]
    assert page["total"] == 1
    assert ids(listing(client, tenant, stageId=default["current_stage"]["id"])["leads"]) == [default["id"]]


def test_stage_filter_with_another_customers_stage_matches_nothing(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    create(client, tenant, {"contact_name": "Mine"})
    other = make_tenant(db)
    their_stage = create(client, other, {"contact_name": "Theirs"})["current_stage"]["id"]
    page = listing(client, tenant, stageId=their_stage)
    assert page["leads"] == []
    assert page["total"] == 0


def test_malformed_stage_id_is_400(client: TestClient, tenant: Tenant) -> None:
    assert "stageId" in error(client.get(LEADS, params={"stageId": "new"}, headers=tenant.headers), 400)


def make_search_dataset(client: TestClient, tenant: Tenant) -> dict[str, Lead]:
    return {
        "alice": create(
            client,
            tenant,
            {
                "contact_name": "Alice Smith",
                "contact_email": unique_email("alice"),
                "contact_phone": "206-555-0123",
            },
        ),
        "bob": create(
            client,
            tenant,
            {
                "contact_name": "Bob Jones",
                "contact_email": "bob.jones@acme-corp.io",
                "contact_phone": unique_phone(),
            },
        ),
        "carol": create(client, tenant, {"contact_name": "Carol 50% off_sale"}),
    }


@pytest.fixture(scope="module")
def searchable(client: TestClient, db: Database) -> tuple[Tenant, dict[str, Lead]]:
    """Shared read-only by the search tests."""
    tenant = make_tenant(db)
    return tenant, make_search_dataset(client, tenant)


@pytest.mark.parametrize(
    "typed",
    [
        "(206) 555-0123",
        "206.555.0123",
        "+12065550123",
        "2065550123",
        "206-555-0123",
        "+1 (206) 555 0123",
        "1-206-555-0123",
        "555-0123",  # part of a number
    ],
)
def test_search_matches_a_phone_typed_in_any_format(
    client: TestClient, searchable: tuple[Tenant, dict[str, Lead]], typed: str
) -> None:
    tenant, search_dataset = searchable
    page = listing(client, tenant, search=typed)
    assert ids(page["leads"]) == [search_dataset["alice"]["id"]]
    assert page["total"] == 1


@pytest.mark.parametrize(
    ("typed", "who"),
    [
        ("alice", ["alice"]),
        ("ALICE SM", ["alice"]),  # case-insensitive, substring of the name
        ("jones", ["bob"]),
        ("@ACME-corp.io", ["bob"]),  # email, case-insensitive
        ("bob.jones@acme-corp.io", ["bob"]),
        ("BOB.JONES@acme-corp.i", ["bob"]),  # an address is free text too: part of one matches
        ("ob.jones@acme-corp.io", ["bob"]),
        ("50%", ["carol"]),  # LIKE wildcards are literal text
        ("off_sale", ["carol"]),
        ("%", ["carol"]),
        ("_", ["carol"]),
        ("(206) 555-0124", []),  # a different number
        ("nobody", []),
    ],
)
def test_search_over_name_email_phone(
    client: TestClient, searchable: tuple[Tenant, dict[str, Lead]], typed: str, who: list[str]
) -> None:
    tenant, search_dataset = searchable
    page = listing(client, tenant, search=typed)
    assert sorted(ids(page["leads"])) == sorted(search_dataset[w]["id"] for w in who)
    assert page["total"] == len(who)


def test_search_combines_with_other_filters(client: TestClient, db: Database, tenant: Tenant) -> None:
    search_dataset = make_search_dataset(client, tenant)
    set_status(db, tenant.customer_id, search_dataset["alice"]["id"], "won")
    assert listing(client, tenant, search="alice", status="active")["total"] == 0
    assert listing(client, tenant, search="alice", status="won")["total"] == 1


def test_created_since_is_at_or_after(client: TestClient, tenant: Tenant) -> None:
    first, second, third = (create(client, tenant, {"contact_name": n}) for n in ("one", "two", "three"))
    since = ts(second["created_at"])
    assert since is not None
    for spelled in (
        second["created_at"],  # exactly the second lead's timestamp: included
        since.astimezone(timezone(timedelta(hours=2))).isoformat(),  # another offset, same instant
        since.astimezone(UTC).isoformat().replace("+00:00", "z").replace("T", "t"),  # RFC 3339: any case
    ):
        page = listing(client, tenant, created_since=spelled)
        assert ids(page["leads"]) == [second["id"], third["id"]], spelled
        assert page["total"] == 2
    just_after = (since + timedelta(microseconds=1)).isoformat()
    assert ids(listing(client, tenant, created_since=just_after)["leads"]) == [third["id"]]
    assert first["id"] in ids(listing(client, tenant, created_since=first["created_at"])["leads"])


def test_updated_since_is_at_or_after(client: TestClient, tenant: Tenant) -> None:
    first = create(client, tenant, {"contact_email": unique_email(), "contact_name": "one"})
    second = create(client, tenant, {"contact_name": "two"})
    merged = create(client, tenant, {"contact_email": first["contact_email"], "contact_name": "one again"})
    assert merged["id"] == first["id"]
    assert ts(merged["updated_at"]) > ts(second["updated_at"])  # type: ignore[operator]
    page = listing(client, tenant, updated_since=merged["updated_at"])
    assert ids(page["leads"]) == [first["id"]]
    assert page["total"] == 1
    # created_since still sees the merged lead as the older one
    assert ids(listing(client, tenant, created_since=second["created_at"])["leads"]) == [second["id"]]
    assert listing(client, tenant, updated_since=second["updated_at"])["total"] == 2


@pytest.mark.parametrize("name", ["created_since", "updated_since"])
@pytest.mark.parametrize(
    "value", ["yesterday", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-13-01T00:00:00Z"]
)
def test_malformed_since_is_400(client: TestClient, tenant: Tenant, name: str, value: str) -> None:
    """Including instants that do not exist in UTC (never a 500)."""
    assert name in error(client.get(LEADS, params={name: value}, headers=tenant.headers), 400)


def test_search_with_a_nul_character_is_400(client: TestClient, tenant: Tenant) -> None:
    assert "search" in error(client.get(LEADS, params={"search": "a\x00b"}, headers=tenant.headers), 400)


def test_lead_line_filter(client: TestClient, tenant: Tenant) -> None:
    buyer = create(client, tenant, {"contact_name": "Buyer", "custom_fields": {"lead_line": "buyer"}})
    seller = bulk(client, tenant, [{"contact_name": "Seller", "lead_line": "seller"}])["results"][0][
        "lead_id"
    ]
    create(client, tenant, {"contact_name": "Neither"})
    assert ids(listing(client, tenant, lead_line="buyer")["leads"]) == [buyer["id"]]
    assert ids(listing(client, tenant, lead_line="seller")["leads"]) == [seller]
    assert listing(client, tenant)["total"] == 3
    assert "lead_line" in error(
        client.get(LEADS, params={"lead_line": "renter"}, headers=tenant.headers), 400
    )


def test_list_never_shows_another_customers_leads(client: TestClient, db: Database, tenant: Tenant) -> None:
    mine = create(client, tenant, {"contact_name": "Mine", "contact_phone": "(206) 555-0177"})
    other = make_tenant(db)
    create(client, other, {"contact_name": "Theirs", "contact_phone": "(206) 555-0177"})
    assert ids(listing(client, tenant)["leads"]) == [mine["id"]]
    assert ids(listing(client, tenant, search="206 555 0177")["leads"]) == [mine["id"]]


# --- limit, offset, total, include_custom_fields --------------------------------------------


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5"])
def test_limit_out_of_range_is_400(client: TestClient, tenant: Tenant, limit: str) -> None:
    assert "limit" in error(client.get(LEADS, params={"limit": limit}, headers=tenant.headers), 400)


def test_limit_bounds_and_default(client: TestClient, tenant: Tenant) -> None:
    bulk(client, tenant, [{"contact_name": f"L{i}"} for i in range(101)])
    default = listing(client, tenant)
    assert len(default["leads"]) == 20
    assert default["limit"] == 20
    assert default["total"] == 101
    one = listing(client, tenant, limit=1)
    assert len(one["leads"]) == 1
    assert one["limit"] == 1
    hundred = listing(client, tenant, limit=100)
    assert len(hundred["leads"]) == 100
    assert hundred["limit"] == 100
    assert hundred["next_cursor"]


def test_offset_paging(client: TestClient, tenant: Tenant) -> None:
    bulk(client, tenant, [{"contact_name": f"O{i}"} for i in range(5)])
    everything = ids(listing(client, tenant, limit=100)["leads"])
    page = listing(client, tenant, limit=2, offset=2)
    assert ids(page["leads"]) == everything[2:4]
    assert page["offset"] == 2
    assert page["total"] == 5
    tail = listing(client, tenant, limit=2, offset=4)
    assert ids(tail["leads"]) == everything[4:]
    assert tail["next_cursor"] is None
    beyond = listing(client, tenant, offset=50)
    assert beyond["leads"] == []
    assert beyond["total"] == 5


def test_an_offset_beyond_any_database_integer_is_just_past_the_end(
    client: TestClient, tenant: Tenant
) -> None:
    bulk(client, tenant, [{"contact_name": "only"}])
    page = listing(client, tenant, offset=10**19)
    assert page["leads"] == []
    assert page["total"] == 1
    assert page["next_cursor"] is None
    # past even an unsigned 64-bit integer, which the JSON encoder could not echo (it was a 500)
    page = listing(client, tenant, offset=33582180805117452288)
    assert page["leads"] == []
    assert page["offset"] == MAX_OFFSET


def test_negative_offset_is_400(client: TestClient, tenant: Tenant) -> None:
    assert "offset" in error(client.get(LEADS, params={"offset": -1}, headers=tenant.headers), 400)


def test_cursor_and_offset_together_is_400(client: TestClient, tenant: Tenant) -> None:
    bulk(client, tenant, [{"contact_name": f"C{i}"} for i in range(3)])
    cursor = listing(client, tenant, limit=1)["next_cursor"]
    response = client.get(LEADS, params={"cursor": cursor, "offset": 1}, headers=tenant.headers)
    assert "offset" in error(response, 400)


def test_total_counts_all_matches_ignoring_cursor_and_offset(client: TestClient, tenant: Tenant) -> None:
    bulk(
        client,
        tenant,
        [{"contact_name": f"T{i}", **({"lead_line": "buyer"} if i % 2 else {})} for i in range(7)],
    )
    pages = traverse(client, tenant, {"limit": 2})
    assert len(pages) == 4
    cursor = listing(client, tenant, limit=2)["next_cursor"]
    assert listing(client, tenant, limit=2, cursor=cursor)["total"] == 7
    assert listing(client, tenant, limit=2, offset=6)["total"] == 7
    assert listing(client, tenant, limit=2, offset=6, lead_line="buyer")["total"] == 3


def test_total_follows_writes(client: TestClient, tenant: Tenant) -> None:
    first = create(client, tenant, {"contact_email": unique_email()})
    assert listing(client, tenant)["total"] == 1
    create(client, tenant, {"contact_name": "second"})
    assert listing(client, tenant)["total"] == 2
    create(client, tenant, {"contact_email": first["contact_email"].upper()})  # a merge
    assert listing(client, tenant)["total"] == 2
    bulk(client, tenant, [{"contact_name": "third"}])
    assert listing(client, tenant)["total"] == 3


def test_custom_fields_only_when_asked(client: TestClient, tenant: Tenant) -> None:
    create(
        client,
        tenant,
        {
            "contact_name": "Custom",
            "custom_fields": {"budget": 650000, "neighborhood": "Ballard", "lead_line": "buyer"},
        },
    )
    create(client, tenant, {"contact_name": "Plain"})
    for params in ({}, {"include_custom_fields": "false"}):
        assert all("custom_fields" not in x for x in listing(client, tenant, **params)["leads"])
    with_fields = listing(client, tenant, include_custom_fields="true")["leads"]
    assert [x["custom_fields"] for x in with_fields] == [
        {"budget": 650000, "neighborhood": "Ballard", "lead_line": "buyer"},
        {},
    ]
    assert "include_custom_fields" in error(
        client.get(LEADS, params={"include_custom_fields": "maybe"}, headers=tenant.headers), 400
    )


# --- the cursor -----------------------------------------------------------------------------


@pytest.mark.parametrize("sort_by", ["created_at", "updated_at", "last_interaction_at"])
@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_cursor_traversal_visits_every_lead_once(
    reader: TestClient, mixed: Tenant, sort_by: str, sort_dir: str
) -> None:
    client, tenant = reader, mixed
    params = {"sort_by": sort_by, "sort_dir": sort_dir}
    everything = ids(listing(client, tenant, limit=100, **params)["leads"])
    pages = traverse(client, tenant, {"limit": 2, **params})
    assert [x["id"] for page in pages for x in page] == everything
    assert len(everything) == 11
    assert len(pages) == 6
    assert all(len(p) == 2 for p in pages[:-1])
    assert len(pages[-1]) == 1


@pytest.mark.parametrize("sort_by", ["created_at", "updated_at", "last_interaction_at"])
@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_offset_pages_follow_the_same_order(
    reader: TestClient, mixed: Tenant, sort_by: str, sort_dir: str
) -> None:
    """Offsets too, across the boundary between leads with and without a last interaction."""
    params = {"sort_by": sort_by, "sort_dir": sort_dir}
    everything = ids(listing(reader, mixed, limit=100, **params)["leads"])
    paged: list[str] = []
    for offset in range(0, 12, 3):
        paged += ids(listing(reader, mixed, limit=3, offset=offset, **params)["leads"])
    assert paged == everything


def test_next_cursor_is_null_on_the_last_page(client: TestClient, tenant: Tenant) -> None:
    assert listing(client, tenant)["next_cursor"] is None  # no leads at all
    bulk(client, tenant, [{"contact_name": f"N{i}"} for i in range(4)])
    first = listing(client, tenant, limit=2)
    assert first["next_cursor"]
    last = listing(client, tenant, limit=2, cursor=first["next_cursor"])
    assert len(last["leads"]) == 2
    assert last["next_cursor"] is None
    assert listing(client, tenant, limit=4)["next_cursor"] is None
    assert listing(client, tenant, limit=3)["next_cursor"]


def _write_between_pages(client: TestClient, tenant: Tenant, pages_with_writes: int) -> Callable[..., None]:
    def between(number: int, seen: list[Lead]) -> None:
        if number >= pages_with_writes:
            return
        create(client, tenant, {"contact_email": unique_email("during"), "contact_name": f"during {number}"})
        bulk(client, tenant, [{"contact_name": f"bulk during {number}.{i}"} for i in range(2)])
        # merge into a lead already seen and into one not seen yet
        seen_ids = {x["id"] for x in seen}
        unseen = [x for x in every_lead(client, tenant) if x["id"] not in seen_ids and x["contact_email"]]
        for target in [seen[0], *unseen[:1]]:
            assert target["contact_email"]
            create(
                client,
                tenant,
                {"contact_email": target["contact_email"], "contact_name": f"touched {number}"},
            )

    return between


def _seed_for_sync(client: TestClient, tenant: Tenant) -> None:
    bulk(
        client,
        tenant,
        [{"contact_email": unique_email("seed"), "contact_name": f"seed {i}"} for i in range(6)],
    )
    for i in range(3):
        create(client, tenant, {"contact_email": unique_email("single"), "contact_name": f"single {i}"})


@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_created_at_traversal_while_leads_are_written(
    client: TestClient, tenant: Tenant, sort_dir: str
) -> None:
    _seed_for_sync(client, tenant)
    before = {x["id"] for x in every_lead(client, tenant)}
    pages = traverse(
        client,
        tenant,
        {"limit": 2, "sort_by": "created_at", "sort_dir": sort_dir},
        _write_between_pages(client, tenant, 3),
    )
    visited = Counter(x["id"] for page in pages for x in page)
    after = {x["id"] for x in every_lead(client, tenant)}
    assert len(after) > len(before)
    assert all(n == 1 for n in visited.values()), "a lead was visited twice"
    if sort_dir == "asc":
        assert set(visited) == after  # leads created meanwhile come after the cursor: all seen
    else:
        assert set(visited) == before  # leads created meanwhile sort before the cursor


def test_updated_at_sync_while_leads_are_written(client: TestClient, tenant: Tenant) -> None:
    """Incremental sync: every lead's latest version is seen, no version is seen twice, and a lead
    not written during the traversal is seen exactly once."""
    _seed_for_sync(client, tenant)
    pages = traverse(client, tenant, {"limit": 2}, _write_between_pages(client, tenant, 3))
    versions = [(x["id"], x["updated_at"]) for page in pages for x in page]
    assert len(versions) == len(set(versions)), "the same version of a lead was visited twice"
    final = every_lead(client, tenant)
    assert {(x["id"], x["updated_at"]) for x in final} <= set(versions), "a lead's latest version was missed"
    untouched = [x["id"] for x in final if x["created_at"] == x["updated_at"]]
    counts = Counter(i for i, _ in versions)
    assert untouched
    assert all(counts[i] == 1 for i in untouched)
    assert any(n > 1 for n in counts.values()), "the writes should have moved some leads"


def test_resume_sync_later_from_a_saved_cursor(client: TestClient, tenant: Tenant) -> None:
    bulk(client, tenant, [{"contact_email": unique_email(), "contact_name": f"R{i}"} for i in range(3)])
    page = listing(client, tenant, limit=100)
    assert page["next_cursor"] is None
    # the last page has no cursor; a client resumes with updated_since instead
    last_seen = page["leads"][-1]["updated_at"]
    changed = create(
        client, tenant, {"contact_email": page["leads"][0]["contact_email"], "contact_name": "new name"}
    )
    fresh = create(client, tenant, {"contact_name": "brand new"})
    later = listing(client, tenant, updated_since=last_seen, limit=100)["leads"]
    assert ids(later)[-2:] == [changed["id"], fresh["id"]]


@pytest.mark.parametrize(
    "replay",
    [
        {"sort_by": "created_at"},
        {"sort_dir": "desc"},
        {"sort_by": "updated_at", "sort_dir": "desc"},
        {"sort_by": "last_interaction_at"},
    ],
)
def test_cursor_with_another_sort_is_400(client: TestClient, tenant: Tenant, replay: dict[str, str]) -> None:
    bulk(client, tenant, [{"contact_name": f"S{i}"} for i in range(3)])
    cursor = listing(client, tenant, limit=1, sort_by="updated_at", sort_dir="asc")["next_cursor"]
    response = client.get(LEADS, params={"cursor": cursor, **replay}, headers=tenant.headers)
    assert "sort" in error(response, 400)
    # the default sort is updated_at asc, so the same cursor without sort parameters is fine
    assert listing(client, tenant, limit=1, cursor=cursor)["leads"]


def _tampered(cursor: str) -> list[str]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    payload, mac = raw[:-16], raw[-16:]
    data = json.loads(payload)
    forged = []
    for key, value in [("i", "0" * 32), ("s", "created_at"), ("v", "2000-01-01T00:00:00+00:00")]:
        changed = json.dumps({**data, key: value}, separators=(",", ":")).encode()
        forged.append(base64.urlsafe_b64encode(changed + mac).rstrip(b"=").decode())
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    return [*forged, flipped, cursor[:-2], cursor + "AA", "not-a-cursor", "%%%", "é" * 10, "A" * 5000, "e30"]


def test_tampered_cursor_is_400_never_500(client: TestClient, tenant: Tenant) -> None:
    bulk(client, tenant, [{"contact_name": f"X{i}"} for i in range(3)])
    cursor = listing(client, tenant, limit=1)["next_cursor"]
    for bad in _tampered(cursor):
        message = error(client.get(LEADS, params={"cursor": bad}, headers=tenant.headers), 400)
        assert "cursor" in message


def test_another_customers_cursor_is_400_and_never_their_rows(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    bulk(client, tenant, [{"contact_name": f"mine {i}"} for i in range(3)])
    other = make_tenant(db)
    bulk(client, other, [{"contact_name": f"theirs {i}"} for i in range(3)])
    their_cursor = listing(client, other, limit=1)["next_cursor"]
    response = client.get(LEADS, params={"cursor": their_cursor, "limit": 1}, headers=tenant.headers)
    assert "cursor" in error(response, 400)
    assert "leads" not in response.json()
    # and the cursor still works for its owner
    assert listing(client, other, limit=1, cursor=their_cursor)["leads"][0]["contact_name"].startswith(
        "theirs"
    )


def test_cursor_from_a_server_with_another_secret_is_400(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    bulk(client, tenant, [{"contact_name": f"K{i}"} for i in range(3)])
    other_app = create_app(make_settings(db.url, secret_key="another-secret-0123456789abcdef"), db)
    foreign = listing(ContractClient(other_app), tenant, limit=1)["next_cursor"]
    assert "cursor" in error(client.get(LEADS, params={"cursor": foreign}, headers=tenant.headers), 400)
