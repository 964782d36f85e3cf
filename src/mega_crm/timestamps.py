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
