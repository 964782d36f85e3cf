"""What `search` matches, and the searchable forms of a lead that the search index holds.

The rule (README, "Pulling leads"), the same on SQLite and PostgreSQL:

* Text: the query, folded by `fold()`, is a part of the lead's name or email folded the same way.
* Phone: a query made only of digits and phone punctuation that the write path reads as a phone
  number (`normalize_phone`, `MEGA_DEFAULT_PHONE_REGION` for national formats) matches the leads
  with that number (its last 10 digits, the de-duplication key). One with at least
  PARTIAL_PHONE_DIGITS digits that is not a whole number of WHOLE_NUMBER_DIGITS or more matches
  the phones whose digits contain them (the digits of the stored E.164 form, or of the number in
  its own country's national format): in countries whose numbers vary in length (DE, GB, JP…) a
  fragment such as `030 1234` is already a possible whole number.
* A query with letters is text only: its digits never match phones.

Every lead write stores `search_text` (folded name and email) and `search_phone` (the phone's
digit forms), computed here; the databases index them with trigrams (migrations 0005 and 0008:
PostgreSQL's index holds search_text packed(), see there). A query serves itself from the index
when it has a word trigram (word_trigrams()); any other scans the customer's leads.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import phonenumbers
from sqlalchemy import Connection, Uuid, bindparam, text

from mega_crm.leads.normalize import ContactError, digits_of, normalize_phone

# Trigram indexes serve queries of at least this many characters (after folding) that hold a
# word trigram (word_trigrams()); others scan the customer's leads.
INDEXED_CHARS = 3
PARTIAL_PHONE_DIGITS = 4
# A whole number typed with this many digits or more matches that number only; a shorter one is
# often a fragment in countries whose numbers vary in length (`030 1234` in DE), and matches as a
# part of phones too.
WHOLE_NUMBER_DIGITS = 10
# No stored phone form has more digits (E.164 allows 15; a national format adds a trunk prefix):
# a query with more is a part of none, and is not looked up (an FTS5 phrase of 60,000 digits'
# trigrams took seconds).
MAX_PHONE_DIGITS = 20
# Between the folded name and email in `search_text`: whitespace to str.split(), so a folded query
# never holds it and no match can span the two.
SEPARATOR = "\x1f"
_PHONE_LIKE = re.compile(r"[\d\s().+\-/]+")
_DIGIT = re.compile(r"\d")


def fold(value: str) -> str:
    """The searchable form of a text: NFKC (compatibility forms as their plain letters), full
    Unicode case folding (str.casefold: ß -> ss, final sigma -> sigma), combining marks removed
    (é -> e, NFC and NFD spellings alike), whitespace runs as one space, trimmed.
    Idempotent: fold(fold(x)) == fold(x)."""
    if value.isascii():  # nearly every name and email: nothing but the case and spaces to fold
        return " ".join(value.lower().split())
    # Decomposed first so that accents come apart from their letters, folded, decomposed again
    # (folding can make new decomposable characters, İ -> i + dot), marks dropped, recomposed.
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", value).casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(unicodedata.normalize("NFKC", bare).split())


def search_text(name: str | None, email: str | None) -> str:
    """`leads.search_text`: the folded name and email, SEPARATOR between them."""
    return f"{fold(name) if name else ''}{SEPARATOR}{fold(email) if email else ''}"


@lru_cache(maxsize=65_536)
def search_phone(e164: str | None) -> str | None:
    """`leads.search_phone`: the digits of the stored E.164 number, then, when they are not
    already a part of them, the digits of its national format (a trunk prefix: 06 12 34 56 78
    for +33612345678)."""
    if not e164:
        return None
    digits = digits_of(e164)
    if e164.startswith("+1"):  # NANP: the national format is the last 10 digits
        return digits
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return digits
    national = digits_of(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    return digits if national in digits else f"{digits} {national}"


_DIGIT_RUN = re.compile(f"[0-9]{{{PARTIAL_PHONE_DIGITS},}}")
# At most this many of a lead's grams come from its name and email: a text with more runs of 4
# digits, repeats counted (a name of many digits; 500 names of 100,000 digits would be 5M rows),
# is marked by MORE_GRAMS instead, and a search of 4 digits reads those leads' text (pages.py).
# Phones have at most 61 grams.
MAX_TEXT_GRAMS = 32
MORE_GRAMS = "more"


def search_grams(text: str | None, phone: str | None) -> str | None:
    """`leads.search_grams`: each run of PARTIAL_PHONE_DIGITS ASCII digits in a lead's
    search_text (`bob0958@…`; MORE_GRAMS instead past MAX_TEXT_GRAMS runs) and in each of its
    search_phone forms, once, sorted, as a JSON array; None without one. The table
    lead_digit_grams holds them, each beside the lead's customer and updated_at (kept by
    triggers, migration 0009): a query of 4 digits (`0958`) matches the leads under its gram,
    by text or phone, already in updated_at order."""
    width = PARTIAL_PHONE_DIGITS
    runs = _DIGIT_RUN.findall(text) if text else []
    if sum(len(run) - width + 1 for run in runs) > MAX_TEXT_GRAMS:  # counted before made
        found = {MORE_GRAMS}
    else:
        found = {run[i : i + width] for run in runs for i in range(len(run) - width + 1)}
    for form in phone.split() if phone else ():
        found.update(form[i : i + width] for i in range(len(form) - width + 1))
    return "[" + ",".join(f'"{gram}"' for gram in sorted(found)) + "]" if found else None


def search_columns(record: dict[str, Any]) -> None:
    """Set `search_text` / `search_phone` / `search_grams` of a lead record (column -> value)
    from its contact fields: every lead write calls this before writing the record."""
    record["search_text"] = search_text(record.get("contact_name"), record.get("contact_email"))
    record["search_phone"] = search_phone(record.get("contact_phone"))
    record["search_grams"] = search_grams(record["search_text"], record["search_phone"])


# How many leads' search_text the trigram frequencies are estimated from (once per process).
SAMPLE_LEADS = 20_000
# How many of a query's trigrams the index is asked for (all of them when fewer).
RAREST_TRIGRAMS = 3
# Separators PostgreSQL's trigram index takes out of the text it holds (migration 0008's
# translate(search_text, PACKED_OUT, '')): see packed().
PACKED_OUT = " .,'-@_+/()"
_PACK = str.maketrans("", "", PACKED_OUT)


def packed(folded: str) -> str:
    """A folded text without PACKED_OUT's separators: what PostgreSQL's trigram index holds.
    pg_trgm makes trigrams of each word apart, so `richard anderson` would give it only the
    common trigrams of two common names; packed, it has `rda` and `dan`, which few leads have.
    (A query that is a part of a text is a part of it packed: the index loses no match.)"""
    return folded.translate(_PACK)


def _trigrams(value: str) -> set[str]:
    return {value[i : i + 3] for i in range(len(value) - 2)}


def word_trigrams(folded: str) -> list[str]:
    """The trigrams of packed(folded) made of three letters or digits: the only ones pg_trgm
    indexes (`!!!` and `a.b` have none). A query without one scans (SearchTerms)."""
    return sorted(g for g in _trigrams(packed(folded)) if g.isalnum())


def trigram_counts(texts: list[str]) -> Counter[str]:
    """In how many of `texts` each trigram occurs: the estimate rarest_trigrams() picks by."""
    counts: Counter[str] = Counter()
    for value in texts:
        counts.update(_trigrams(value))
    return counts


def rarest_trigrams(folded: str, counts: Counter[str], *, words: bool = False) -> list[str]:
    """The RAREST_TRIGRAMS trigrams of a folded, indexed query that are rarest in `counts`
    (trigram_counts of a sample of leads), for the index to intersect; the whole query is then
    checked on the leads they find. SQLite (FTS5's trigram tokenizer): any trigram of the
    query. PostgreSQL (`words`): word_trigrams(), counted over packed texts, those of ASCII
    letters and digits first (a database whose LC_CTYPE is C indexes no other letters).

    Why: both indexes read each asked trigram's list of leads through, so a few rare trigrams
    cost less than many common ones and leave fewer leads to check. At 1M leads, SQLite, `vid
    gonzalez-hi`: its window `vid go` 1.0 ms and 610 candidates, its three rarest trigrams
    0.4 ms and 49; PostgreSQL, `chard anderson-whi`: its whole packed text 11 ms, its three
    rarest packed trigrams (`rda`, `nwh`, `dan`) 0.9 ms and 16 candidates, the exact matches."""
    if words:
        grams = word_trigrams(folded)
        return sorted(grams, key=lambda g: (not g.isascii(), counts[g], g))[:RAREST_TRIGRAMS]
    return sorted(_trigrams(folded), key=lambda g: (counts[g], g))[:RAREST_TRIGRAMS]


@dataclass(frozen=True)
class SearchTerms:
    """A `search` query, read by the rule in the module docstring. Each field None when unused.
    text: the folded query when the trigram indexes serve it (INDEXED_CHARS characters or more,
    word_trigrams() among them); scan_text: the folded query otherwise (1-2 characters, `!!!`,
    `a.b`: a scan of the customer's leads); phone_key: the last 10 digits of a whole phone
    number; phone_digits: the query's digits, to match as a part of phones."""

    text: str | None = None
    scan_text: str | None = None
    phone_key: str | None = None
    phone_digits: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.text or self.scan_text or self.phone_key or self.phone_digits)


def parse_search(query: str, region: str) -> SearchTerms:
    """-> the SearchTerms of a `search` query; `region`: MEGA_DEFAULT_PHONE_REGION. A query that
    folds to nothing (blank, or only combining marks) has no terms: it filters nothing."""
    folded = fold(query)
    text = folded if len(folded) >= INDEXED_CHARS and word_trigrams(folded) else None
    scan_text = folded if folded and text is None else None
    phone_key = phone_digits = None
    typed = unicodedata.normalize("NFKC", query).strip()  # full-width digits as digits
    if _PHONE_LIKE.fullmatch(typed) and _DIGIT.search(typed):
        try:
            phone_key = normalize_phone(typed, region)[1]
        except ContactError:
            pass
        digits = "".join(str(unicodedata.decimal(c)) for c in _DIGIT.findall(typed))
        partial = PARTIAL_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS
        if partial and not (phone_key and len(digits) >= WHOLE_NUMBER_DIGITS):
            phone_digits = digits
    return SearchTerms(text, scan_text, phone_key, phone_digits)


_REFRESH_BATCH = 5_000


def refresh_search(connection: Connection, customer_id: uuid.UUID | None = None) -> int:
    """Recompute `search_text` / `search_phone` / `search_grams` of the leads (of one customer,
    or all) from their contact fields, in batches of _REFRESH_BATCH: for writers that bypass the
    lead service. The indexes follow by trigger. -> leads rewritten."""
    is_sqlite = connection.dialect.name == "sqlite"
    where = "WHERE customer_id = :customer_id AND id > :after" if customer_id else "WHERE id > :after"
    select_batch = text(
        f"SELECT id, contact_name, contact_email, contact_phone FROM leads {where} ORDER BY id LIMIT :n"
    )
    if customer_id is not None:
        select_batch = select_batch.bindparams(bindparam("customer_id", type_=Uuid))
    if is_sqlite:
        update = text(
            "UPDATE leads SET search_text = :t, search_phone = :p, search_grams = :g WHERE id = :id"
        )
    else:  # one statement per batch
        update = text(
            "UPDATE leads SET search_text = b.t, search_phone = b.p, search_grams = b.g "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:ts AS text[]), CAST(:ps AS text[]), "
            "CAST(:gs AS text[])) AS b(id, t, p, g) WHERE leads.id = b.id"
        )
    after: Any = "" if is_sqlite else uuid.UUID(int=0)
    done = 0
    while True:
        params: dict[str, Any] = {"after": after, "n": _REFRESH_BATCH}
        if customer_id is not None:
            params["customer_id"] = customer_id
        rows = connection.execute(select_batch, params).all()
        if not rows:
            return done
        values = []
        for row in rows:
            record = {"contact_name": row[1], "contact_email": row[2], "contact_phone": row[3]}
            search_columns(record)
            values.append({"id": row[0], "t": record["search_text"], "p": record["search_phone"],
                           "g": record["search_grams"]})  # fmt: skip
        if is_sqlite:
            connection.execute(update, values)
        else:
            connection.execute(update, {f"{k}s": [v[k] for v in values] for k in ("id", "t", "p", "g")})
        done += len(rows)
        after = rows[-1][0]
