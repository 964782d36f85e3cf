"""`search` on listLeads: one rule on SQLite and PostgreSQL (mega_crm/leads/search.py, README
"Pulling leads"), through the HTTP surface: folded text, phones parsed as the write path parses
them, partial numbers, and paging/totals with a search as without one."""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterator
from typing import Any

import phonenumbers
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mega_crm.app import create_app
from mega_crm.db import Database
from mega_crm.leads.normalize import ContactError, digits_of, normalize_phone
from mega_crm.leads.search import (
    MAX_PHONE_DIGITS,
    RAREST_TRIGRAMS,
    fold,
    packed,
    parse_search,
    rarest_trigrams,
    trigram_counts,
)
from tests.conftest import ContractClient, make_settings
from tests.fixtures.factories import Tenant, make_tenant
from tests.leads.api import LEADS, bulk, create, listing, unique_email

Lead = dict[str, Any]


def found(client: TestClient, tenant: Tenant, query: str, **params: Any) -> list[str]:
    """The ids a search finds, every page followed; checks `total` against them."""
    out: list[str] = []
    cursor = None
    while True:
        page = listing(
            client, tenant, search=query, limit=100, **params, **({"cursor": cursor} if cursor else {})
        )
        out += [x["id"] for x in page["leads"]]
        assert page["total"] >= len(out)
        cursor = page["next_cursor"]
        if cursor is None:
            assert page["total"] == len(out), query
            return out


@pytest.fixture
def in_region(db: Database) -> Iterator[Any]:
    """A client of an app whose MEGA_DEFAULT_PHONE_REGION is `region`."""
    clients: list[ContractClient] = []

    def make(region: str) -> ContractClient:
        app = create_app(make_settings(db.url, default_phone_region=region), db)
        clients.append(ContractClient(app, raise_server_exceptions=False))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


# --- the examples ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed", ["Émile", "émile", "ÉMILE", "emile", "EMILE", "mile Z", "e\u0301mile  zola", "zola"]
)
def test_accented_names_are_found_in_any_case_and_spelling(
    client: TestClient, tenant: Tenant, typed: str
) -> None:
    zola = create(client, tenant, {"contact_name": "Émile Zola"})
    create(client, tenant, {"contact_name": "Someone Else"})
    assert found(client, tenant, typed) == [zola["id"]]


def test_nfc_and_nfd_spellings_find_each_other(client: TestClient, tenant: Tenant) -> None:
    nfd = create(client, tenant, {"contact_name": "Zoe\u0308 Nu\u0301n\u0303ez"})
    nfc = create(client, tenant, {"contact_name": "Zoë Núñez-Prado"})
    both = sorted([nfd["id"], nfc["id"]])
    for typed in ("Núñez", "Nu\u0301n\u0303ez", "NUNEZ", "zoë", "zoe\u0308 nú", "ZOE"):
        assert sorted(found(client, tenant, typed)) == both, typed
    assert found(client, tenant, "núñez-p") == [nfc["id"]]


def test_digits_in_a_text_query_never_match_phones(client: TestClient, tenant: Tenant) -> None:
    pat = create(client, tenant, {"contact_name": "Pat", "contact_phone": "(206) 555-0199"})
    bob = create(client, tenant, {"contact_email": "bob555@example.com"})
    ends_1990 = create(client, tenant, {"contact_name": "Sam", "contact_phone": "(206) 555-1990"})
    john = create(client, tenant, {"contact_email": "john1990@example.com"})
    assert found(client, tenant, "bob555@example.com") == [bob["id"]]
    assert found(client, tenant, "john1990@example.com") == [john["id"]]
    assert found(client, tenant, "John 1990") == []
    assert found(client, tenant, "pat 0199") == []
    # digits alone are a partial number, and text as well
    assert sorted(found(client, tenant, "1990")) == sorted([ends_1990["id"], john["id"]])
    assert found(client, tenant, "0199") == [pat["id"]]


@pytest.mark.parametrize(
    "typed", ["06 12 34 56 78", "0612345678", "+33 6 12 34 56 78", "+33612345678", "06.12.34.56.78"]
)
def test_a_national_number_of_the_default_region_is_found(db: Database, in_region: Any, typed: str) -> None:
    paris = in_region("FR")
    tenant = make_tenant(db)
    lead = create(paris, tenant, {"contact_name": "Agnès", "contact_phone": "06 12 34 56 78"})
    create(paris, tenant, {"contact_name": "Other", "contact_phone": "06 12 34 56 79"})
    assert lead["contact_phone"] == "+33612345678"
    assert found(paris, tenant, typed) == [lead["id"]]


# --- text: other scripts' case folding, compatibility forms, short queries -----------------------


@pytest.mark.parametrize(
    ("stored", "typed"),
    [
        ("Οδυσσεύς Ελύτης", "ΟΔΥΣΣΕΥΣ"),  # Greek: final sigma, tonos
        ("ΟΔΥΣΣΕΥΣ ΕΛΥΤΗΣ", "οδυσσευς"),
        ("Οδυσσεύς Ελύτης", "ελυτης"),
        ("Фёдор Достоевский", "ФЕДОР"),  # Cyrillic: ё with its diaeresis gone
        ("ФЁДОР ДОСТОЕВСКИЙ", "достоевский"),
        ("Straße Müller", "STRASSE"),  # German ß folds to ss
        ("STRASSE MÜLLER", "straße"),
        ("Straße Müller", "ssE mu"),
        ("ＡＢＣ Ｃｏｒｐ", "abc corp"),  # full-width letters (NFKC)
        ("Eﬃe Stone", "effie"),  # a ligature
        ("İlker Çelik", "ilker celik"),  # Turkish dotted capital I
        ("Łukasz", "Łuk"),  # a letter that is not an accented one stays itself
        ("José\u00a0 Ortega", "jose ortega"),  # whitespace runs (no-break space too) as one space
    ],
)
def test_case_folding_of_other_scripts(client: TestClient, tenant: Tenant, stored: str, typed: str) -> None:
    lead = create(client, tenant, {"contact_name": stored})
    create(client, tenant, {"contact_name": "Unrelated Person"})
    assert found(client, tenant, typed) == [lead["id"]]


def test_emails_are_folded_like_names(client: TestClient, tenant: Tenant) -> None:
    lead = create(client, tenant, {"contact_email": "Jürgen.Groß@Example.COM"})
    for typed in ("jurgen.gross@", "JÜRGEN", "gross@example.com", "EXAMPLE.COM"):
        assert found(client, tenant, typed) == [lead["id"]], typed
    assert found(client, tenant, "jurgen.gross@example.co") == [lead["id"]]


@pytest.mark.parametrize(
    ("typed", "who"),
    [
        ("zo", ["zola", "zoe"]),
        ("Ö", ["zola", "zoe", "ana"]),
        ("a", ["zola", "ana", "strauss"]),
        ("ß", ["strauss"]),
    ],
)
def test_one_and_two_character_queries(
    client: TestClient, tenant: Tenant, typed: str, who: list[str]
) -> None:
    leads = {
        "zola": create(client, tenant, {"contact_name": "Zola"}),
        "zoe": create(client, tenant, {"contact_name": "Zoë"}),
        "ana": create(client, tenant, {"contact_email": "ana@x.io"}),
        "strauss": create(client, tenant, {"contact_name": "Strauss"}),
    }
    assert sorted(found(client, tenant, typed)) == sorted(leads[w]["id"] for w in who)


def test_quotes_and_query_syntax_are_plain_text(client: TestClient, tenant: Tenant) -> None:
    lead = create(client, tenant, {"contact_name": 'Say "Hi" OR NOT* name:x'})
    for typed in ('"hi"', 'say "', "or not*", "name:x", '"'):
        assert found(client, tenant, typed) == [lead["id"]], typed
    assert found(client, tenant, '"hi" and') == []


def test_a_query_that_folds_to_nothing_filters_nothing(client: TestClient, tenant: Tenant) -> None:
    create(client, tenant, {"contact_name": "One"})
    create(client, tenant, {"contact_name": "Two"})
    assert listing(client, tenant, search="\u0301")["total"] == 2
    assert listing(client, tenant, search="   ")["total"] == 2


# --- phones: regions, partial numbers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "written", "typed"),
    [
        (
            "GB",
            "020 7946 0958",
            ["020 7946 0958", "02079460958", "+44 20 7946 0958", "7946 0958", "020 7946"],
        ),
        ("DE", "030 12345678", ["030 12345678", "030/1234 5678", "+49 30 12345678", "030 1234"]),
        ("JP", "03-1234-5678", ["03-1234-5678", "0312345678", "+81 3 1234 5678", "1234-5678"]),
        ("FR", "06 12 34 56 78", ["06 12 34", "0612", "56 78", "33 6 12"]),
        ("US", "(206) 555-0199", ["206-555-0199", "1 206 555 0199", "555 0199", "0199", "206.555"]),
        ("BR", "(11) 91234-5678", ["(11) 91234-5678", "11912345678", "+55 11 91234 5678", "91234"]),
    ],
)
def test_phones_in_national_formats_and_partial_numbers(
    db: Database, in_region: Any, region: str, written: str, typed: list[str]
) -> None:
    local = in_region(region)
    tenant = make_tenant(db)
    lead = create(local, tenant, {"contact_name": "Caller", "contact_phone": written})
    create(local, tenant, {"contact_name": "Someone", "contact_phone": "+1 415 555 2671"})
    for query in typed:
        assert found(local, tenant, query) == [lead["id"]], query


def test_a_whole_number_matches_that_number_only(client: TestClient, tenant: Tenant) -> None:
    lead = create(client, tenant, {"contact_phone": "+1 206 555 0100"})
    other = create(client, tenant, {"contact_phone": "+1 306 555 0100"})
    assert found(client, tenant, "(206) 555-0100") == [lead["id"]]
    assert sorted(found(client, tenant, "555-0100")) == sorted([lead["id"], other["id"]])


def test_fewer_than_four_digits_match_no_phone(client: TestClient, tenant: Tenant) -> None:
    create(client, tenant, {"contact_phone": "(206) 555-0199"})
    digits = create(client, tenant, {"contact_name": "Room 199"})
    assert found(client, tenant, "199") == [digits["id"]]
    assert found(client, tenant, "19") == [digits["id"]]


# --- totals, sorting, paging ---------------------------------------------------------------------


@pytest.mark.parametrize("sort_by", ["created_at", "updated_at", "last_interaction_at"])
@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_totals_sorting_and_cursor_paging_with_search(
    client: TestClient, db: Database, sort_by: str, sort_dir: str
) -> None:
    tenant = make_tenant(db)
    rows = [{"contact_name": f"Ünïque Pager {n}", "contact_email": unique_email("pg")} for n in range(7)]
    rows += [{"contact_name": f"Other {n}"} for n in range(4)]
    bulk(client, tenant, rows[:5])
    for row in rows[5:]:
        create(client, tenant, row)  # some with an interaction, some without
    everything = listing(client, tenant, sort_by=sort_by, sort_dir=sort_dir, limit=100)["leads"]
    expected = [x["id"] for x in everything if "unique pager" in fold(x["contact_name"] or "")]
    assert len(expected) == 7
    pages, cursor, seen = 0, None, []
    while True:
        params = {"search": "UNIQUE PAGER", "sort_by": sort_by, "sort_dir": sort_dir, "limit": 3}
        page = listing(client, tenant, **params, **({"cursor": cursor} if cursor else {}))
        assert page["total"] == 7
        seen += [x["id"] for x in page["leads"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3
    # offset paging too
    second = listing(
        client, tenant, search="unique pager", sort_by=sort_by, sort_dir=sort_dir, limit=3, offset=3
    )
    assert [x["id"] for x in second["leads"]] == expected[3:6]


def test_search_with_other_filters_and_other_customers(
    client: TestClient, db: Database, tenant: Tenant
) -> None:
    mine = create(client, tenant, {"contact_name": "Shared Name", "contact_phone": "(206) 555-0142"})
    other = make_tenant(db)
    create(client, other, {"contact_name": "Shared Name", "contact_phone": "(206) 555-0142"})
    for typed in ("shared name", "(206) 555-0142", "0142", "sh"):
        assert found(client, tenant, typed) == [mine["id"]], typed
    assert found(client, tenant, "shared", status="won") == []
    assert found(client, tenant, "shared", status="active") == [mine["id"]]


# --- every write keeps the index current -------------------------------------------------------


def test_merges_and_bulk_imports_keep_the_index_current(client: TestClient, tenant: Tenant) -> None:
    email = unique_email("merge")
    lead = create(client, tenant, {"contact_name": "Ödön Old", "contact_email": email})
    assert found(client, tenant, "odon old") == [lead["id"]]
    # a single create that merges renames and adds a phone
    create(
        client,
        tenant,
        {"contact_name": "Nadia New", "contact_email": email, "contact_phone": "(206) 555-0177"},
    )
    assert found(client, tenant, "odon old") == []
    assert found(client, tenant, "nadia new") == [lead["id"]]
    assert found(client, tenant, "206-555-0177") == [lead["id"]]
    assert found(client, tenant, "5550177") == [lead["id"]]
    # a bulk merge renames again; new rows are found at once
    result = bulk(
        client,
        tenant,
        [{"contact_email": email, "contact_name": "Bulk Renamed"}, {"contact_name": "Brand Néw"}],
    )
    assert [r["status"] for r in result["results"]] == ["updated", "created"]
    assert found(client, tenant, "nadia") == []
    assert found(client, tenant, "bulk renamed") == [lead["id"]]
    assert found(client, tenant, "brand new") == [result["results"][1]["lead_id"]]
    # a dry run changes nothing
    bulk(client, tenant, [{"contact_name": "Dry Runner"}], dry_run=True)
    assert found(client, tenant, "dry runner") == []


# --- property: the index finds what the rule says, nothing else -----------------------------------

# Letters that fold in interesting ways (accents, ß, final sigma, ligatures, full-width, Cyrillic),
# digits, separators.
_ALPHABET = "abcxyzAÉéeçÇßẞΣσςΑάЁёжЖﬁＡＢ0123456789 .-_%'\"\u0301\u0308\u00a0"
_names = st.text(alphabet=_ALPHABET, min_size=1, max_size=16)
_locals = st.text(alphabet=string.ascii_letters + string.digits + "._+-", min_size=1, max_size=10).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
)
_domains = st.sampled_from(["example.com", "ex-ample.io", "xn--bcher-kva.example", "mail.test"])
_phones = st.sampled_from(
    ["+12065550199", "+12065551990", "+14155552671", "+33612345678", "+442079460958", "+819012345678", None]
)
_lead = st.fixed_dictionaries(
    {
        "contact_name": st.one_of(st.none(), _names),
        "contact_email": st.one_of(st.none(), st.builds(lambda a, b: f"{a}@{b}", _locals, _domains)),
        "contact_phone": _phones,
    }
).filter(lambda row: any(row.values()))


def _national_digits(e164: str) -> str:
    number = phonenumbers.parse(e164, None)
    return digits_of(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))


def brute_force(leads: list[Lead], query: str) -> set[str]:
    """The README's rule, over the leads as the API returns them."""
    folded = fold(query)
    if not folded:
        return {x["id"] for x in leads}
    typed = unicodedata.normalize("NFKC", query).strip()
    phone_like = bool(typed) and all(c.isdecimal() or c in " ().+-/" or c.isspace() for c in typed)
    phone_like = phone_like and any(c.isdecimal() for c in typed)
    key = digits = None
    if phone_like:
        try:
            key = normalize_phone(typed, "US")[1]
        except ContactError:
            pass
        digits = "".join(str(unicodedata.decimal(c)) for c in typed if c.isdecimal())
        digits = digits if len(digits) >= 4 and not (key and len(digits) >= 10) else None
    out = set()
    for x in leads:
        texts = [fold(x[name]) for name in ("contact_name", "contact_email") if x[name]]
        phone = x["contact_phone"]
        if any(folded in t for t in texts):
            out.add(x["id"])
        elif phone and key and digits_of(phone)[-10:] == key:
            out.add(x["id"])
        elif phone and digits and (digits in digits_of(phone) or digits in _national_digits(phone)):
            out.add(x["id"])
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_lead, min_size=1, max_size=8), data=st.data())
def test_search_equals_the_rule_over_generated_leads(
    client: TestClient, db: Database, rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    tenant = make_tenant(db)
    result = bulk(client, tenant, [{k: v for k, v in row.items() if v is not None} for row in rows])
    stored = {x["id"]: x for x in listing(client, tenant, limit=100)["leads"]}
    # in the rows' order (the draws below must not depend on the random ids)
    leads = [stored[i] for i in dict.fromkeys(r["lead_id"] for r in result["results"] if r["lead_id"])]
    assert len(leads) == len(stored)
    for x in leads:
        # every part of 3+ characters of its folded name or email finds it
        for name in ("contact_name", "contact_email"):
            folded = fold(x[name] or "")
            if len(folded) >= 3:
                start = data.draw(st.integers(0, len(folded) - 3))
                end = data.draw(st.integers(start + 3, len(folded)))
                part = folded[start:end]
                if fold(part):
                    assert x["id"] in found(client, tenant, part), (part, x)
    queries = [
        data.draw(_names),
        data.draw(st.text(alphabet="0123456789 -()+", min_size=1, max_size=14)),
        data.draw(
            st.sampled_from(
                ["2065550199", "(206) 555-1990", "5550", "0612", "06 12 34 56 78", "4420", "ß", "σ"]
            )
        ),
    ]
    for x in data.draw(st.permutations(leads))[:2]:  # parts of stored values, as typed (unfolded)
        for value in (x["contact_name"], x["contact_email"], x["contact_phone"]):
            if value:
                start = data.draw(st.integers(0, len(value) - 1))
                queries.append(value[start : start + data.draw(st.integers(1, 12))])
    for query in queries:
        if "\x00" in query:
            continue
        assert set(found(client, tenant, query)) == brute_force(leads, query), query


def test_fold_is_idempotent_and_ascii_fast_path_agrees() -> None:
    @given(st.text())
    @settings(max_examples=500)
    def check(value: str) -> None:
        folded = fold(value)
        assert fold(folded) == folded
        assert "\x1f" not in folded
        if value.isascii():
            slow = unicodedata.normalize("NFKC", value.casefold())
            assert folded == " ".join(slow.split())

    check()


def test_postgresql_is_asked_for_the_rarest_trigrams_across_words() -> None:
    # Packed (separators out), `richard anderson` has trigrams across its words that its
    # common names alone lack: those are asked for.
    sample = ["richard anderson", "richard smith", "mary anderson", "anderson white", "richard jones"]
    counts = trigram_counts([packed(t) for t in sample])
    grams = rarest_trigrams("chard anderson-whi", counts, words=True)
    assert len(grams) == RAREST_TRIGRAMS
    for gram in grams:  # each spans two words (`rda`, `dan`, `onw`, `nwh`): none of the names'
        assert not any(gram in word for word in ("chard", "anderson", "whi"))

    @given(st.text(min_size=3, max_size=30), st.lists(st.text(max_size=20), max_size=20))
    def check(query: str, sample: list[str]) -> None:
        folded = fold(query)
        grams = rarest_trigrams(folded, trigram_counts([packed(t) for t in sample]), words=True)
        assert len(grams) <= RAREST_TRIGRAMS
        for gram in grams:  # what pg_trgm indexes, and in the packed query: no match is lost
            assert len(gram) == 3
            assert gram.isalnum()
            assert gram in packed(folded)

    check()


# --- hostile inputs (hostile helper: each broke the rule on a real server) ----------------------


@pytest.mark.parametrize("typed", ["55/01", "(55)01", "20/65/55", "+1 (20) 65"])
def test_a_partial_number_written_with_slashes_or_brackets_matches_phones(
    client: TestClient, tenant: Tenant, typed: str
) -> None:
    """README: a query of digits and phone punctuation (`+ ( ) . - /`, spaces) with at least 4
    digits matches the phones whose digits contain its digits. When `/` or brackets leave no
    three letters or digits in a row, the query is a text scan and its digits are dropped:
    the phone is not found (total 0)."""
    lead = create(client, tenant, {"contact_name": "Caller", "contact_phone": "(206) 555-0199"})
    create(client, tenant, {"contact_name": "Someone", "contact_phone": "(415) 777-2671"})
    assert found(client, tenant, typed) == [lead["id"]], typed


def test_a_french_number_written_with_slashes_is_found(db: Database, in_region: Any) -> None:
    """README: with FR, a query the write path reads as a phone number matches the leads with
    that number. `06/12/34/56/78` is read as +33612345678 (the write path accepts it), but
    has no three digits in a row between its slashes: it scans the text and finds nothing."""
    paris = in_region("FR")
    tenant = make_tenant(db)
    lead = create(paris, tenant, {"contact_name": "Agnès", "contact_phone": "06/12/34/56/78"})
    assert lead["contact_phone"] == "+33612345678"
    for typed in ("06/12/34/56/78", "06/12/34"):
        assert found(paris, tenant, typed) == [lead["id"]], typed


def test_a_query_with_more_digits_than_any_phone_is_no_phone_lookup(
    client: TestClient, tenant: Tenant
) -> None:
    """`1` x 60,000 (a request line uvicorn accepts) was looked up as a part of phones: on
    SQLite an FTS5 phrase of 59,998 trigrams, seconds per request, and two such requests held
    the slow lane so that other customers' searches were 503s. No stored phone form has more
    than MAX_PHONE_DIGITS digits, so such a query is a part of none: it is text only."""
    create(client, tenant, {"contact_phone": "+1 206 555 1111"})
    for digits in (MAX_PHONE_DIGITS + 1, 60_000):
        terms = parse_search("1" * digits, "US")
        assert terms.phone_digits is None
        assert terms.phone_key is None
        r = client.get(LEADS, params={"search": "1" * digits, "limit": 1}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.json()["total"] == 0
    assert parse_search("1" * MAX_PHONE_DIGITS, "US").phone_digits == "1" * MAX_PHONE_DIGITS


def test_query_bytes_that_are_not_utf8_are_refused(client: TestClient, tenant: Tenant) -> None:
    """Starlette read them as U+FFFD, and `search=%FF` found a lead named with U+FFFD (mojibake
    from an import, which the write path accepts). Now a 400, on every parameter and route; a
    U+FFFD typed as UTF-8 (%EF%BF%BD) is text like any other."""
    create(client, tenant, {"contact_name": "Jos\ufffd Mojibake"})
    for raw in ("search=%FF", "search=%C3", "search=Jos%FF", "status=%C3%28", "search=%ED%A0%80"):
        r = client.get(f"{LEADS}?{raw}", headers=tenant.headers)
        assert r.status_code == 400, (raw, r.text)
        assert r.json()["error"]["message"].startswith("The query string is not UTF-8"), r.text
    r = client.get(f"{LEADS}?search=Jos%EF%BF%BD", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1
