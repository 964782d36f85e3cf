"""What every input must be before it is stored, and validation errors as short, field-named
messages for the 400 envelope.

One seam for text: `text_refusal` says why a string cannot be stored (the `Text` type of the
request schemas, the query string in api.pipeline, the operator commands in admin.service all
use it). One parser for dates: `parse_rfc3339`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, StrictStr

# Code points no store can hold: PostgreSQL text refuses NUL (SQLite would keep it, so the two
# databases would disagree), and a lone surrogate (U+D800-U+DFFF; argv and file names smuggle
# them in as surrogate escapes) has no UTF-8 form at all, so neither database, nor the JSON
# encoder, can write it.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_refusal(value: str) -> str | None:
    """Why `value` cannot be stored ("must not contain NUL characters", ...), or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters"
    return "must not contain unpaired surrogates (U+D800-U+DFFF)"


def storable(value: str) -> str:
    """`value` unchanged; ValueError (with `text_refusal`'s reason) when no store can hold it."""
    reason = text_refusal(value)
    if reason is not None:
        raise ValueError(reason)
    return value


def utf8_length(value: str) -> int:
    """Bytes of `value` in UTF-8: what PostgreSQL's index row limit (2704 bytes) counts."""
    return len(value.encode("utf-8", "surrogatepass"))


# A request string any store can hold. A validator only, so published schemas stay the contract's.
Text = Annotated[StrictStr, AfterValidator(storable)]


# RFC 3339 section 5.6 `date-time` (what OpenAPI's `format: date-time` means): a full date, "T",
# a full time with seconds and an offset ("Z" or +hh:mm). Letters are case-insensitive (5.6,
# note). Dates alone, missing offsets, week dates, ordinals and numbers (Unix times) are not it.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 date-time string -> an aware datetime in UTC. ValueError for anything else,
    including instants outside years 1-9999 once in UTC. A leap second (:60) is read as the
    last microsecond of its minute; fractions beyond microseconds are truncated."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("must be an RFC 3339 date-time, e.g. 2024-05-01T12:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, zulu, sign, off_h, off_m = match.group(7, 8, 9, 10, 11)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    if second == 60:
        second, micro = 59, 999_999
    try:
        offset = timedelta(0)
        if zulu is None:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError
            offset = int(sign + "1") * timedelta(hours=int(off_h), minutes=int(off_m))
        local = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("must be an RFC 3339 date-time of a real instant in years 1-9999 (UTC)") from None


def rfc3339_or_none(value: object) -> object:
    """A pydantic before-validator: None as it is, anything else through `parse_rfc3339`."""
    return None if value is None else parse_rfc3339(value)


# An RFC 3339 date-time in a query or a body (numbers, dates alone and missing offsets are refused).
Rfc3339 = Annotated[datetime, BeforeValidator(rfc3339_or_none)]


# Pydantic inserts the tag of each union branch into an error's location; they are not fields.
_BRANCH_MARKERS = ("[", "-")
_BRANCH_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "is-instance", "json-or-python"}
_WHOLE_BODY_TYPES = {"model_attributes_type", "model_type", "dict_type"}
# What a value of each type is called, to merge the branches of a union into one message.
_TYPE_NOUNS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "dict_type": "an object",
    "list_type": "an array",
    "none_required": "null",
}


_MAX_KEY_ECHO = 64  # as for unknown query parameters (mega_crm.api.pipeline)


def _field_path(loc: Sequence[Any]) -> str:
    parts: list[str] = []
    after_dict = False
    for item in loc:
        if item in ("body", "query", "header", "path") and not parts:
            continue
        is_tag = isinstance(item, str) and (item in _BRANCH_TAGS or any(m in item for m in _BRANCH_MARKERS))
        if is_tag and not after_dict:  # the key after a dict's tag is a user's key, whatever it looks like
            after_dict = item.startswith("dict[")
            continue
        after_dict = False
        name = str(item)  # a client's key, quoted back: a 1 MB key is not a 1 MB error message
        name = name if len(name) <= _MAX_KEY_ECHO else name[:_MAX_KEY_ECHO] + "…"
        parts.append(f"[{item}]" if isinstance(item, int) else name)
    return ".".join(parts).replace(".[", "[")


def _one_message(path: str, errors: list[dict[str, Any]]) -> str:
    kinds = [e.get("type") for e in errors]
    if not path:
        if "json_invalid" in kinds:
            return "Request body is not valid JSON."
        if "missing" in kinds:
            return "Request body is required."
        if _WHOLE_BODY_TYPES & set(kinds):
            return "Request body must be a JSON object."
    first = errors[0]
    if first.get("type") == "extra_forbidden":
        msg = "is not a known field"
    elif first.get("type") == "missing":
        msg = "is required"
    elif first.get("type") == "too_long" and isinstance(first.get("input"), str):
        # pydantic says "Value should have at most N items after validation" of a text checked
        # by an AfterValidator (Text) before its length.
        msg = f"must be at most {first.get('ctx', {}).get('max_length')} characters"
    elif len(errors) > 1 and all(k in _TYPE_NOUNS for k in kinds):  # the branches of a union
        nouns = list(dict.fromkeys(_TYPE_NOUNS[str(k)] for k in kinds))
        msg = "Input should be " + (", ".join(nouns[:-1]) + " or " + nouns[-1])
    elif first.get("type") == "value_error" and first.get("ctx", {}).get("error"):
        msg = str(first["ctx"]["error"])  # our validators' reasons, without pydantic's "Value error, "
    else:
        msg = first.get("msg", "is invalid")
    return f"{path}: {msg}" if path else msg


def describe_errors(errors: Sequence[Any]) -> list[str]:
    """One message per field, e.g. "contact_name: Input should be a string"."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        path = "" if err.get("type") == "json_invalid" else _field_path(err.get("loc", ()))
        by_path.setdefault(path, []).append(err)
    # An optional field's "should be None" branch only adds noise beside the real error, wherever
    # that error sits (the field itself or inside it).
    for path, errs in list(by_path.items()):
        others = [e for e in errs if e.get("type") != "none_required"]
        nested = any(p != path and p.startswith((f"{path}.", f"{path}[")) for p in by_path)
        if others:
            by_path[path] = others
        elif nested:
            del by_path[path]
    return [_one_message(path, errs) for path, errs in by_path.items()]
