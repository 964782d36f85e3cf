"""PostgreSQL plans the hot statements once per connection, not at every execution.

psycopg prepares a statement run five times on a connection; PostgreSQL then compares the
prepared statement's generic plan with the custom plans of its first five runs. A bound
`LIMIT $n OFFSET $m` is costed at a tenth of the matches in the generic plan, and
`= ANY($array)` at ten elements, so both made it keep planning the statement again at every
execution (about 0.3 ms of its CPU for a page of 100 leads, 0.2 ms for createLead's dedup
read, measured with bench-sized data). A first page now writes its LIMIT out and has no OFFSET;
createLead's dedup read binds one email and one phone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from mega_crm.db import Database, RawConnection
from mega_crm.leads import pages, service
from mega_crm.leads import repository as repo
from mega_crm.leads.filters import filter_shape
from mega_crm.leads.schemas import ListLeadsQuery
from mega_crm.leads.service import build_filters
from tests.conftest import POSTGRES_URL
from tests.fixtures.factories import make_tenant

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="MEGA_TEST_POSTGRES_URL is not set")


@pytest.fixture
def one_connection() -> Iterator[Database]:
    """A Database whose pool holds one connection, so every statement meets the same session."""
    assert POSTGRES_URL
    database = Database(POSTGRES_URL, pool_size=1)
    try:
        yield database
    finally:
        database.dispose()


def _plans(raw: RawConnection, fragment: str) -> tuple[int, int]:
    """-> (generic, custom) plans so far of the connection's prepared statement containing `fragment`."""
    cursor = raw.execute(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
        (f"%{fragment}%",),
    )
    rows = cursor.fetchall()
    assert len(rows) == 1, f"one prepared statement with {fragment!r}, found {len(rows)}"
    return rows[0]


def test_the_dedup_read_of_a_create_is_planned_once(one_connection: Database) -> None:
    tenant = make_tenant(one_connection)
    for n in range(20):
        with one_connection.write_session() as session:
            email, phone = f"nobody{n}@example.com", f"20655500{n:02d}"
            assert repo.leads_matching(session, tenant.customer_id, {email}, {phone}) == []
    with one_connection.write_session() as session:
        generic, custom = _plans(RawConnection.of(session), "phone_last10 = CAST(")
    # psycopg prepares it at the sixth run; its first five prepared runs are custom plans
    # (PostgreSQL's sample to compare with), every one after that the generic plan.
    assert (custom, generic) == (5, 20 - 5 - 5), (generic, custom)


def test_the_dedup_read_of_one_contact_still_finds_each_kind_of_match(one_connection: Database) -> None:
    """The scalar statement keeps the array one's rule: a lead found by email once, a lead found
    by phone only when its email is another (or none), a missing email or phone matching nothing."""
    tenant = make_tenant(one_connection)
    with one_connection.write_session() as session:
        session.execute(
            text(
                "INSERT INTO leads (id, customer_id, contact_email, email_normalized, phone_last10, "
                "contact_phone, source_platform, source_type, status, interaction_count, custom_fields, "
                "created_at, updated_at) VALUES (:id, :c, :e, :e, :p, :p, 'other', 'form', 'active', 0, "
                "'{}', now(), now())"
            ),
            [
                {"id": uuid.uuid4(), "c": tenant.customer_id, "e": "both@example.com", "p": "2065550001"},
                {"id": uuid.uuid4(), "c": tenant.customer_id, "e": None, "p": "2065550002"},
                {"id": uuid.uuid4(), "c": tenant.customer_id, "e": "other@example.com", "p": "2065550003"},
            ],
        )
    cases: list[tuple[set[str], set[str], list[str | None]]] = [
        ({"both@example.com"}, {"2065550001"}, ["both@example.com"]),  # one lead, once
        (set(), {"2065550002"}, [None]),
        ({"new@example.com"}, {"2065550003"}, ["other@example.com"]),
        ({"other@example.com"}, set(), ["other@example.com"]),
        ({"both@example.com"}, {"2065550002"}, ["both@example.com", None]),
        ({"nobody@example.com"}, {"2065559999"}, []),
    ]
    for emails, phones, expected in cases:
        with one_connection.write_session() as session:
            found = repo.leads_matching(session, tenant.customer_id, emails, phones)
        assert sorted((rec["email_normalized"] or "") for rec in found) == sorted(e or "" for e in expected)


def test_a_first_page_writes_its_limit_and_its_generic_plan_reads_one_index_range(
    one_connection: Database,
) -> None:
    """The generic plan PostgreSQL may choose for a first page (forced here) reads the
    (customer, status, updated_at, id) range in order: no sort, no scan of the customer's leads."""
    tenant = make_tenant(one_connection)
    q = ListLeadsQuery.model_validate({"status": "active", "limit": "100"})
    f = build_filters(q, "US")
    with one_connection.raw_read() as reader:
        page = repo.page_of_leads(
            reader, tenant.customer_id, f, sort_by="updated_at", descending=False, limit=100, offset=0,
            after=None, with_custom_fields=False,
        )  # fmt: skip
        assert page.documents == b""
        assert page.total == 0
        prepared = "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s"
        statements = reader.execute(prepared, ("%string_agg(page.document%",)).fetchall()
    key = ("page", "postgresql", filter_shape(f), "updated_at", False, None, False, 101, False, False)
    sql = pages._STATEMENTS[key].compiled(one_connection.engine.dialect)[0]
    assert "LIMIT 101" in sql
    assert "OFFSET" not in sql
    assert statements == []  # run once: not prepared yet (psycopg prepares at the fifth run)
    # The plan depends on the table's statistics: give it a customer of 600 leads in five
    # statuses, analyzed (an empty table's two index ranges cost the same, and either came up).
    with one_connection.write_session() as session:
        rows = [{"contact_email": f"seed{n}@example.com"} for n in range(600)]
        service.bulk_import(
            session, tenant.customer_id, rows, on_duplicate="skip", dry_run=False, phone_region="US"
        )
        session.execute(
            text(
                "UPDATE leads SET status = (ARRAY['active', 'won', 'lost', 'nurture', 'archived'])"
                "[1 + abs(hashtext(id::text)) % 5] WHERE customer_id = :customer_id"
            ),
            {"customer_id": tenant.customer_id},
        )
    with one_connection.write_session() as session:
        session.execute(text("ANALYZE leads"))
    with one_connection.write_session() as session:
        raw = RawConnection.of(session)
        raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        raw.execute(f"PREPARE first_page AS {_numbered(sql)}")
        explained = raw.execute(f"EXPLAIN EXECUTE first_page('{tenant.customer_id}', 'active')")
        plan = "\n".join(r[0] for r in explained.fetchall())
        raw.execute("DEALLOCATE first_page")
    assert "ix_leads_customer_status_updated" in plan, plan
    assert "Sort" not in plan, plan
    assert "Seq Scan on leads" not in plan, plan


def _numbered(sql: str) -> str:
    """psycopg's named placeholders as PREPARE's $1, $2 (customer_id, status: the order of first use)."""
    names: list[str] = []
    while "%(" in sql:
        start = sql.index("%(")
        end = sql.index(")s", start)
        name = sql[start + 2 : end]
        if name not in names:
            names.append(name)
        sql = sql[:start] + f"${names.index(name) + 1}" + sql[end + 2 :]
    assert names == ["customer_id", "status"], names
    return sql
