"""A generated CSV with the shapes real exports have, and what importing it must give.

BOM + `;` delimiter + CRLF (Excel in Europe), quoted values spanning lines, phones in mixed formats,
blank and empty-valued lines, the same contact repeated (other letter case, other phone format),
name-only rows, invalid rows, non-ASCII names, and columns the server does not know.
Deterministic for a seed. Used by the tests and by bench/import_bench.py.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

HEADER = ["Full Name", "E-mail", "Mobile", "Budget", "Notes", "Favourite Colour", "Lead Line"]
UNKNOWN_COLUMNS = ["Notes", "Favourite Colour"]  # no such custom field for the test customers
FIRST = ["Ada", "José", "Grace", "Zoë", "Linus", "Ørjan", "Mary", "Ken", "Ada-Lou", "Søren"]
LAST = ["Lovelace", "Müller", "Hopper", "O'Neil", "Torvalds", "Åberg", "Jackson", "Thompson"]


def phone_digits(k: int) -> str:
    return f"206{2000000 + k:07d}"


def formatted(digits: str, style: int) -> str:
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return [
        f"({a}) {b}-{c}", f"{a}.{b}.{c}", f"+1 {a}-{b}-{c}", digits, f"+1{digits}", f"{a} {b} {c}",
        f"1-{a}-{b}-{c}",
    ][style % 7]  # fmt: skip


@dataclass
class Expected:
    records: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    walk_ins: int = 0  # name-only rows: only idempotency keeps them from being created twice
    lines: list[int] = field(default_factory=list)  # the line each record starts on
    emails: set[str] = field(default_factory=set)


def generate(path: Path, rows: int, *, seed: int = 1, messy: bool = True) -> Expected:
    """Write `rows` records to `path`; `messy=False` gives plain comma-separated UTF-8 with fresh
    contacts only (the benchmark's baseline shape)."""
    rng = random.Random(seed)
    expected = Expected()
    contacts: list[tuple[str | None, str | None]] = []  # (email, phone digits) of created contacts
    line = 2  # the header is line 1
    delimiter = ";" if messy else ","
    with path.open("w", encoding="utf-8-sig" if messy else "utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\r\n" if messy else "\n")
        writer.writerow(HEADER)
        for _ in range(rows):
            if messy and rng.random() < 0.02:
                f.write("\r\n" if rng.random() < 0.5 else delimiter * (len(HEADER) - 1) + "\r\n")
                line += 1
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            notes = ""
            kind = rng.random() if messy else 1.0
            if kind < 0.10 and contacts:  # the same contact again: merges
                email, digits = rng.choice(contacts)
                row_email = email.upper() if email and rng.random() < 0.5 else (email or "")
                row_phone = formatted(digits, rng.randrange(7)) if digits else ""
                if email and digits and rng.random() < 0.5:
                    row_phone = ""  # matched by email alone
                expected.updated += 1
            elif kind < 0.13:  # name only: nothing to match on, always a new lead
                row_email = row_phone = ""
                name = f"Walk-in {expected.records}"
                expected.created += 1
                expected.walk_ins += 1
            elif kind < 0.14:  # invalid: the row fails, the others go on
                row_email, row_phone = ("not-an-email", "") if rng.random() < 0.5 else ("", "12")
                expected.failed += 1
            else:
                k = len(contacts)
                email = f"c{k}.{seed}@example.com"
                digits = phone_digits(k + seed * 100_000)
                if messy and k % 7 == 0:
                    digits = None  # email only
                elif messy and k % 11 == 0:
                    email = None  # phone only
                contacts.append((email, digits))
                if email:
                    expected.emails.add(email)
                row_email = email or ""
                row_phone = formatted(digits, rng.randrange(7)) if digits else ""
                expected.created += 1
            if messy and rng.random() < 0.05:
                notes = 'Called twice;\r\nprefers e-mail, "urgent"'
            budget = str(rng.randrange(100, 900) * 1000) if rng.random() < 0.5 else ""
            lead_line = rng.choice(["buyer", "seller", ""])
            writer.writerow(
                [name, row_email, row_phone, budget, notes, rng.choice(["red", "", "blue"]), lead_line]
            )
            expected.lines.append(line)
            expected.records += 1
            line += 1 + notes.count("\n")
    return expected
