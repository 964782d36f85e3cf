"""lead_digit_grams (migration 0009): every 4-digit run ("gram") of a lead's search_text and of
each digit form of its `search_phone`, once a lead, as (customer_id, gram, updated_at, lead_id).
Only the databases' triggers keep it (from leads.search_grams), so these tests write through the
real paths (createLead, bulkImportLeads, an outside writer's UPDATE + search.refresh_search,
DELETEs and the customer cascade) and compare the whole table with the same set computed in
Python from `leads` after every step; they also check `search=<four digits>`, which reads the
table, against a brute force over the leads, and the migration's backfill and downgrade. On
SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from alembic import command
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Uuid, bindparam, delete, inspect, select, text, update

from mega_crm.customers.models import Customer
from mega_crm.db import Database, UTCDateTime
from mega_crm.leads import repository
from mega_crm.leads.models import Lead, LeadDigitGram
from mega_crm.leads.normalize import digits_of
from mega_crm.leads.search import (
    MAX_TEXT_GRAMS,
    MORE_GRAMS,
    fold,
    refresh_search,
    search_phone,
    search_text,
)
from mega_crm.migrate import alembic_config, upgrade
from tests.fixtures.factories import Tenant, make_tenant
from tests.leads.api import bulk, create, listing

GramRow = tuple[uuid.UUID, str, datetime, uuid.UUID]  # (customer_id, gram, updated_at, lead_id)


# --- the invariant -------------------------------------------------------------------------------


def grams_of(
    customer_id: uuid.UUID, lead_id: uuid.UUID, updated_at: datetime, folded: str | None, phone: str | None
) -> set[GramRow]:
    """The rows lead_digit_grams must hold for one lead, computed in Python: each window of 4
    ASCII digits in its folded text (or MORE_GRAMS alone past MAX_TEXT_GRAMS windows), and in
    each form of its phone."""

    def windows(parts: list[str]) -> set[str]:
        return {
            part[i : i + 4]
            for part in parts
            for i in range(len(part) - 3)
            if all(c in "0123456789" for c in part[i : i + 4])
        }

    words = (folded or "").split()
    from_text = windows(words)
    runs = [run for word in words for run in re.findall("[0-9]{4,}", word)]
    if sum(len(run) - 3 for run in runs) > MAX_TEXT_GRAMS:
        from_text = {MORE_GRAMS}
    return {(customer_id, gram, updated_at, lead_id) for gram in from_text | windows((phone or "").split())}


def expected_grams(db: Database) -> set[GramRow]:
    """The whole table as it must be: the grams of every lead of every customer."""
    with db.read_session() as session:
        leads = session.execute(
            select(Lead.customer_id, Lead.id, Lead.updated_at, Lead.search_text, Lead.search_phone)
        ).all()
    return {row for c, i, u, t, p in leads for row in grams_of(c, i, u, t, p)}


def stored_grams(db: Database) -> list[GramRow]:
    """The whole table as it is (a list: a row twice would show)."""
    g = LeadDigitGram
    with db.read_session() as session:
        rows = session.execute(select(g.customer_id, g.gram, g.updated_at, g.lead_id)).all()
    return [(c, gram, u, i) for c, gram, u, i in rows]


def assert_grams_match(db: Database) -> None:
    """lead_digit_grams is exactly the Python-computed set: nothing missing, nothing extra."""
    stored, expected = stored_grams(db), expected_grams(db)
    assert len(stored) == len(set(stored)), "a row is stored twice"
    missing, extra = sorted(expected - set(stored), key=str), sorted(set(stored) - expected, key=str)
    assert not missing, f"missing {missing[:10]} ({len(missing)} rows), extra {extra[:10]}"
    assert not extra, f"extra {extra[:10]} ({len(extra)} rows)"


# --- writes outside the lead service (as an operator's would be) ---------------------------------


def outside_write(db: Database, customer_id: uuid.UUID, *statements: Any) -> None:
    """Run `statements` in one transaction, then do what every writer outside the service must
    (README): recompute the search columns, bump leads_version, rebuild the counts."""
    with db.write_session() as session:
        for statement in statements:
            session.execute(statement)
        refresh_search(session.connection(), customer_id)
        session.execute(
            update(Customer)
            .where(Customer.id == customer_id)
            .values(leads_version=Customer.leads_version + 1)
        )
        repository.recount(session, customer_id)


def set_phone(db: Database, customer_id: uuid.UUID, lead_id: uuid.UUID, e164: str | None) -> None:
    """Replace a lead's phone (no API operation replaces one: a merge only fills a missing phone)."""
    last10 = digits_of(e164)[-10:] if e164 else None
    values = {"contact_phone": e164, "phone_last10": last10, "document": None}
    outside_write(db, customer_id, update(Lead).where(Lead.id == lead_id).values(**values))


def delete_lead(db: Database, customer_id: uuid.UUID, lead_id: uuid.UUID) -> None:
    """Delete a lead (no API or service operation deletes one)."""
    outside_write(db, customer_id, delete(Lead).where(Lead.id == lead_id))


def delete_customer(db: Database, customer_id: uuid.UUID) -> None:
    """Delete a customer (no admin operation does): its leads go by ON DELETE CASCADE."""
    with db.write_session() as session:
        session.execute(delete(Customer).where(Customer.id == customer_id))


def lead_ids(db: Database, customer_id: uuid.UUID) -> set[uuid.UUID]:
    with db.read_session() as session:
        return set(session.scalars(select(Lead.id).where(Lead.customer_id == customer_id)))


def updated_at(db: Database, lead_id: uuid.UUID) -> datetime:
    with db.read_session() as session:
        return session.execute(select(Lead.updated_at).where(Lead.id == lead_id)).scalar_one()


# --- 1. every write path keeps the table exact ---------------------------------------------------


def test_every_write_path_keeps_the_grams_exact(client: TestClient, db: Database, tenant: Tenant) -> None:
    """After each kind of write to `leads` (a created lead, a merge that only moves updated_at, a
    merge that fills a phone, a bulk import of new and merging rows, an outside writer's phone
    change or removal and its multi-row refresh, a lead moved to another customer, a deleted lead,
    a deleted customer's cascade), the whole table equals the Python-computed set."""
    assert_grams_match(db)
    us = create(client, tenant, {"contact_name": "Una", "contact_phone": "+1 206 555 0958"})
    assert_grams_match(db)
    # repeated runs (1212 twice) are one row; a phone with two forms (E.164, national) has both's
    create(client, tenant, {"contact_name": "Rep", "contact_phone": "+1 212 555 1212"})
    fr = create(client, tenant, {"contact_name": "Agnès", "contact_phone": "+33 6 12 34 56 78"})
    nophone = create(client, tenant, {"contact_email": "no.phone@example.com"})
    assert_grams_match(db)
    with db.read_session() as session:
        of_fr = LeadDigitGram.lead_id == uuid.UUID(fr["id"])
        fr_grams = set(session.scalars(select(LeadDigitGram.gram).where(of_fr)))
    assert {"3361", "0612"} <= fr_grams  # from each form

    # a merge that changes only the name (and so updated_at): every row moves to the new time
    before = updated_at(db, uuid.UUID(us["id"]))
    create(client, tenant, {"contact_name": "Una Renamed", "contact_phone": "+12065550958"})
    assert updated_at(db, uuid.UUID(us["id"])) > before
    assert_grams_match(db)

    # a merge (by email) that gives a lead without a phone its first phone
    merged = create(
        client, tenant, {"contact_email": "no.phone@example.com", "contact_phone": "+44 20 7946 0958"}
    )
    assert merged["id"] == nophone["id"]
    assert merged["contact_phone"] == "+442079460958"
    assert_grams_match(db)

    # bulk: new rows, a row merging by phone (rename), a row merging by email (fills a phone),
    # a lead created and merged within the same batch
    result = bulk(
        client,
        tenant,
        [
            {"contact_name": "Bulk New", "contact_phone": "+81 90 1234 5678"},
            {"contact_name": "Agnès Bulk", "contact_phone": "+33612345678", "contact_email": "a@example.com"},
            {"contact_email": "bulk.twice@example.com"},
            {"contact_email": "bulk.twice@example.com", "contact_phone": "+1 415 555 0958"},
            {"contact_name": "Nameless", "contact_email": "nameless@example.com"},
        ],
    )
    assert [r["status"] for r in result["results"]] == ["created", "updated", "created", "updated", "created"]
    assert_grams_match(db)

    # an outside writer replaces a phone, then removes one (refresh_search: one multi-row UPDATE
    # on PostgreSQL, most of its rows unchanged)
    set_phone(db, tenant.customer_id, uuid.UUID(us["id"]), "+12065557777")
    assert_grams_match(db)
    set_phone(db, tenant.customer_id, uuid.UUID(fr["id"]), None)
    assert_grams_match(db)
    set_phone(db, tenant.customer_id, uuid.UUID(fr["id"]), "+33958123456")  # 0958 only in 0958123456
    assert_grams_match(db)

    # a lead moved to another customer
    other = make_tenant(db)
    with db.write_session() as session:
        session.execute(
            update(Lead).where(Lead.id == uuid.UUID(us["id"])).values(customer_id=other.customer_id)
        )
    assert_grams_match(db)
    moved = {row for row in stored_grams(db) if row[3] == uuid.UUID(us["id"])}
    assert moved
    assert {row[0] for row in moved} == {other.customer_id}

    # a deleted lead, then a deleted customer's leads (ON DELETE CASCADE)
    delete_lead(db, tenant.customer_id, uuid.UUID(merged["id"]))
    assert_grams_match(db)
    assert lead_ids(db, tenant.customer_id)
    delete_customer(db, tenant.customer_id)
    delete_customer(db, other.customer_id)
    assert lead_ids(db, tenant.customer_id) == set()
    assert not [row for row in stored_grams(db) if row[0] in (tenant.customer_id, other.customer_id)]
    assert_grams_match(db)


# --- 2. property: any sequence of writes ---------------------------------------------------------

# A small pool, so that rows merge, phones are filled, replaced and shared between forms
# (…0958 in four numbers, 1212 twice in one, a French and a Japanese number's national forms).
_PHONES = [
    "+12065550958",
    "+12065550959",
    "+12125551212",
    "+442079460958",
    "+33612345678",
    "+33958123456",
    "+819012345678",
]
_EMAILS = ["ann@example.com", "bob@example.com", "cy@example.com"]
_row = st.fixed_dictionaries(
    {
        "contact_name": st.sampled_from([None, "Ann", "Bob 0958"]),
        "contact_email": st.sampled_from([None, *_EMAILS]),
        "contact_phone": st.sampled_from([None, *_PHONES]),
    }
).filter(lambda row: any(row.values()))
_write = st.one_of(
    st.tuples(st.just("create"), _row),
    st.tuples(st.just("bulk"), st.lists(_row, min_size=1, max_size=5)),
    st.tuples(st.just("set_phone"), st.integers(0, 15), st.sampled_from([None, *_PHONES])),
    st.tuples(st.just("delete"), st.integers(0, 15)),
)


def _body(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if v is not None}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(_write, min_size=1, max_size=8))
def test_any_sequence_of_writes_keeps_the_grams_exact(
    client: TestClient, db: Database, writes: list[tuple[Any, ...]]
) -> None:
    """Creates, merges (by email or phone, which may fill a phone and always move updated_at),
    bulk imports, outside phone changes and deletes, in any order: after each, the whole table
    equals the Python-computed set."""
    tenant = make_tenant(db)
    ids: list[uuid.UUID] = []  # the tenant's leads in the order they were made (deterministic picks)
    for write in writes:
        if write[0] == "create":
            ids.append(uuid.UUID(create(client, tenant, _body(write[1]))["id"]))
        elif write[0] == "bulk":
            result = bulk(client, tenant, [_body(row) for row in write[1]])
            ids += [uuid.UUID(r["lead_id"]) for r in result["results"]]
        else:
            existing = lead_ids(db, tenant.customer_id)
            alive = [i for i in dict.fromkeys(ids) if i in existing]
            if not alive:
                continue
            lead_id = alive[write[1] % len(alive)]
            if write[0] == "delete":
                delete_lead(db, tenant.customer_id, lead_id)
            else:
                with db.read_session() as session:
                    others = (Lead.customer_id == tenant.customer_id, Lead.id != lead_id)
                    taken = set(session.scalars(select(Lead.phone_last10).where(*others)))
                phone = write[2] if write[2] is None or write[2][-10:] not in taken else None
                set_phone(db, tenant.customer_id, lead_id, phone)
        assert_grams_match(db)


# --- 3. search=<four digits> from the HTTP surface -----------------------------------------------


def _national_digits(e164: str) -> str:
    number = phonenumbers.parse(e164, None)
    return digits_of(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))


def matches(lead: dict[str, Any], query: str) -> bool:
    """The README's rule for a query of four digits (maybe spaced), brute force: its digits are
    a part of the phone's digits (E.164 or national format), or the folded query of the folded
    name or email."""
    phone, digits = lead["contact_phone"], digits_of(query)
    if phone and (digits in digits_of(phone) or digits in _national_digits(phone)):
        return True
    return any(fold(query) in fold(lead[name]) for name in ("contact_name", "contact_email") if lead[name])


def in_order(leads: list[dict[str, Any]], sort_by: str, descending: bool) -> list[str]:
    """Lead ids in listLeads' order: (sort value, id), id as the database orders UUIDs."""
    ordered = sorted(leads, key=lambda x: (datetime.fromisoformat(x[sort_by]), uuid.UUID(x["id"])))
    return [x["id"] for x in (ordered[::-1] if descending else ordered)]


def paged(client: TestClient, tenant: Tenant, query: str, expected_total: int, **params: Any) -> list[str]:
    """Every page of a search (cursor paging, 2 a page); each page's `total` checked."""
    out: list[str] = []
    cursor = None
    while True:
        more: dict[str, str] = {"cursor": cursor} if cursor else {}
        page = listing(client, tenant, search=query, limit=2, **params, **more)
        assert page["total"] == expected_total, (query, params, page["total"])
        out += [x["id"] for x in page["leads"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


SORTS = [{}, {"sort_dir": "desc"}, {"sort_by": "created_at"}, {"sort_by": "created_at", "sort_dir": "desc"}]


def test_last_four_digits_find_exactly_the_brute_force_matches(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    """`search=<a lead's last four digits>` finds exactly the leads whose phone digits (either
    form) or folded name or email hold them, with the right total, in the requested order
    (default updated_at asc, then desc, created_at both ways), every match once across cursor
    pages of 2; `09 58` as well (the phones' 0958 and that text); before and after merges move
    some of them in the default order; another customer's leads with the same numbers never
    appear."""
    other = make_tenant(db)
    rows = [
        {"contact_name": "A", "contact_phone": "+1 206 555 0958"},
        {"contact_name": "B", "contact_phone": "+1 415 555 0958"},
        {"contact_name": "C", "contact_phone": "+44 20 7946 0958"},
        {"contact_name": "D", "contact_phone": "+33 9 58 12 34 56"},  # 0958 in 0958123456 only
        {"contact_name": "Room 0958", "contact_phone": "+1 206 555 0959"},  # its name
        {"contact_email": "x0958@example.com"},  # its email
        {"contact_name": "Both 0958", "contact_phone": "+1 312 555 0958"},  # name and phone
        {"contact_name": "E", "contact_phone": "+1 206 555 0959"},
        {"contact_name": "F", "contact_phone": "+1 212 555 1212"},
        {"contact_name": "G", "contact_phone": "+81 90 1234 5678"},
        {"contact_name": "09 58"},  # found by `09 58` (text), not by `0958`
        # more digit runs than lead_digit_grams keeps of a text (MORE_GRAMS): its text is read
        {"contact_name": "Serial " + "".join(f"{n:04d}" for n in range(0, 4000, 37)) + " 0958"},
        {
            "contact_name": "Ref " + "-".join(f"{n:04d}" for n in range(1, 4000, 41)),
            "contact_phone": "+1 646 555 0958",
        },  # and its phone
    ]
    for row in rows[:4]:
        create(client, tenant, row)
    bulk(client, tenant, rows[4:])  # some leads with one updated_at (ties: id order)
    for row in rows:
        create(client, other, row)

    def check() -> None:
        leads = listing(client, tenant, limit=100)["leads"]
        assert len(leads) == 12  # the two +1 206 555 0959 rows are one lead
        last_fours = {digits_of(x["contact_phone"])[-4:] for x in leads if x["contact_phone"]}
        queries = last_fours | {"5812", "0958", "09 58", "0074", "0083"}  # 5812: in both forms of D's phone
        for query in sorted(queries):
            wanted = [x for x in leads if matches(x, query)]
            assert wanted, query
            for params in SORTS:
                sort_by = params.get("sort_by", "updated_at")
                expected = in_order(wanted, sort_by, params.get("sort_dir") == "desc")
                assert paged(client, tenant, query, len(expected), **params) == expected, (query, params)
        assert_grams_match(db)

    check()
    assert len([x for x in listing(client, tenant, limit=100)["leads"] if matches(x, "0958")]) == 8
    with db.read_session() as session:  # the two long texts are marked, not spelled out
        marked = session.scalars(select(LeadDigitGram.lead_id).where(LeadDigitGram.gram == MORE_GRAMS))
        assert len(set(marked)) == 4  # in both customers
    # merges move A and Room 0958 to the end of the default order
    create(client, tenant, {"contact_name": "A again", "contact_phone": "+12065550958"})
    bulk(client, tenant, [{"contact_name": "Room 0958 again", "contact_phone": "+12065550959"}])
    check()


# --- 4. the migration: backfill, downgrade, upgrade again ----------------------------------------


_INSERT_LEAD = text(
    "INSERT INTO leads (id, customer_id, contact_name, contact_phone, phone_last10, source_platform, "
    "source_type, status, custom_fields, interaction_count, created_at, updated_at, search_text, "
    "search_phone) VALUES (:id, :customer_id, :name, :phone, :last10, 'direct', 'manual', 'active', "
    "'{}', 0, :at, :at, :search_text, :search_phone)"
).bindparams(
    bindparam("id", type_=Uuid), bindparam("customer_id", type_=Uuid), bindparam("at", type_=UTCDateTime())
)


def _triggers(db: Database) -> set[str]:
    """The lead_digit_grams triggers that exist."""
    query = (
        "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        if db.is_sqlite
        else "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    )
    with db.engine.connect() as connection:
        return {name for (name,) in connection.execute(text(query)) if name.startswith("lead_digit_grams")}


def test_migration_0009_backfills_and_downgrades(empty_database: str) -> None:
    """Leads written at 0008 (phones with one or two forms, a repeated gram, none, two customers,
    several updated_at) have exactly the Python-computed grams once 0009 has run, and triggers
    keep them after. Downgrading to 0008 removes the table and its triggers (leads stay writable),
    and upgrading to 0009 again backfills the same set."""
    upgrade(empty_database, "0008")
    db = Database(empty_database)
    try:
        tenants = [make_tenant(db), make_tenant(db)]
        phones = ["+12065550958", "+12125551212", "+33612345678", "+442079460958", "+819012345678", None]
        with db.write_session() as session:
            for n, phone in enumerate(phones * 2):
                session.execute(
                    _INSERT_LEAD,
                    {
                        "id": uuid.uuid4(),
                        "customer_id": tenants[n // len(phones)].customer_id,
                        "name": f"Old {n} room 2{n:03d}",
                        "phone": phone,
                        "last10": digits_of(phone)[-10:] if phone else None,
                        "at": datetime(2026, 1, 1 + n % 3, 12, 0, n, tzinfo=UTC),
                        "search_text": search_text(f"Old {n} room 2{n:03d}", None),
                        "search_phone": search_phone(phone),
                    },
                )
        db.dispose()

        upgrade(empty_database, "0009")
        db = Database(empty_database)
        assert len(stored_grams(db)) > 50
        assert_grams_match(db)
        assert len(_triggers(db)) == 3
        first = min(lead_ids(db, tenants[0].customer_id))
        set_phone(db, tenants[0].customer_id, first, "+14155550100")
        assert_grams_match(db)
        db.dispose()

        command.downgrade(alembic_config(empty_database), "0008")
        db = Database(empty_database)
        assert not inspect(db.engine).has_table("lead_digit_grams")
        assert _triggers(db) == set()
        second = tenants[1].customer_id
        with db.write_session() as session:  # at 0008 (no search_grams): a plain delete
            session.execute(delete(Lead).where(Lead.customer_id == second))
        with db.write_session() as session:
            session.execute(
                _INSERT_LEAD,
                {
                    "id": uuid.uuid4(),
                    "customer_id": tenants[1].customer_id,
                    "name": "Written at 0008",
                    "phone": "+12065559999",
                    "last10": "2065559999",
                    "at": datetime(2026, 2, 1, tzinfo=UTC),
                    "search_text": search_text("Written at 0008", None),
                    "search_phone": search_phone("+12065559999"),
                },
            )
        if db.is_sqlite:  # FTS5 checks its rebuilt index (search_text and search_phone again)
            with db.engine.begin() as connection:
                connection.execute(text("INSERT INTO leads_search(leads_search) VALUES ('integrity-check')"))
        db.dispose()

        upgrade(empty_database, "0009")
        db = Database(empty_database)
        with db.read_session() as session:
            with_grams = set(session.scalars(select(Lead.id).where(Lead.search_grams.is_not(None))))
        assert {row[3] for row in stored_grams(db)} == with_grams
        assert_grams_match(db)
        assert len(_triggers(db)) == 3
        if db.is_sqlite:
            with db.engine.begin() as connection:
                connection.execute(text("INSERT INTO leads_search(leads_search) VALUES ('integrity-check')"))
    finally:
        db.dispose()
