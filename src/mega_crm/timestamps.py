"""The one text form of a time in every response: lead documents, the webhook and delivery-log
routes, and webhook payloads (their `delivered_at` and the lead's times).

`YYYY-MM-DDTHH:MM:SS.ffffffZ`: UTC, always six fraction digits. An RFC 3339 `date-time` (section
5.6: `time-secfrac = "." 1*DIGIT`, `Z` for UTC), the contract's format for every time it names;
fixed width, so the texts sort as the times do, and the same whichever database the value came
from. Parsing input times is validation.parse_rfc3339's job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # strftime; the SQL renderings of leads/documents.py match it


def format_time(value: datetime) -> str:
    """An aware datetime (any offset) as `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC. A naive one is read
    as local time by astimezone(): callers pass aware values (the database types return them)."""
    return _format(value)


@lru_cache(maxsize=1024)  # a write stamps its leads with one `now`, and a batch shares a few
def _format(value: datetime) -> str:
    return value.astimezone(UTC).strftime(FORMAT)


def format_time_or_none(value: datetime | None) -> str | None:
    """format_time(), None for None (a time the row does not have)."""
    return _format(value) if value is not None else None


# --- a time known only when the write commits (PostgreSQL's createLead) ----------------------

# PostgreSQL: `value` (a timestamptz expression) in FORMAT (the SQL rendering of leads/documents.py).
PG_FORMAT_SQL = """to_char({value} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

# createLead on PostgreSQL renders the times its write sets before it takes the customer's lock,
# which fixes them (customers.leads_clock_us): in JSON, each is this fragment, a raw U+0001 that
# orjson never writes by itself (it escapes control characters inside strings), replaced by the
# time's JSON string in the statement that stores the JSON (stamped_json_sql), and in the
# response once the write has committed (fill_stamps).
STAMP = orjson.Fragment(b"\x01")
STAMP_CHAR = "\x01"

# The customer's write clock as a timestamptz, `{customer}` an SQL expression of its id: what a
# write that took the customer's lock (leads.repository.begin_customer_write) stamps.
# (Whole seconds and microseconds apart: `interval * number` multiplies in floating point,
# exact only up to 2**53 microseconds, the year 2255.)
PG_CLOCK_SQL = (
    "(SELECT to_timestamp(leads_clock_us / 1000000) + leads_clock_us % 1000000 * INTERVAL '1 microsecond' "
    "FROM customers WHERE customers.id = {customer})"
)


def stamped_json_sql(json_sql: str, time_sql: str) -> str:
    """PostgreSQL: the JSON text `json_sql` with each STAMP replaced by the JSON string of the
    timestamptz `time_sql` (in FORMAT)."""
    return f"""replace({json_sql}, chr(1), '"' || {PG_FORMAT_SQL.format(value=time_sql)} || '"')"""


def fill_stamps(body: dict[str, Any], time: datetime) -> None:
    """Replace, in place, each member of `body` that is STAMP by `time` in FORMAT."""
    text = _format(time)
    for name, value in body.items():
        if value is STAMP:
            body[name] = text
