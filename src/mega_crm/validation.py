"""Pydantic validation errors as short, field-named messages for the 400 envelope."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Pydantic inserts the tag of each union branch into an error's location; they are not fields.
_BRANCH_MARKERS = ("[", "-")
_BRANCH_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "is-instance", "json-or-python"}


def _field_path(loc: Sequence[Any]) -> str:
    parts: list[str] = []
    for item in loc:
        if item in ("body", "query", "header", "path") and not parts:
            continue
        if isinstance(item, str) and (item in _BRANCH_TAGS or any(m in item for m in _BRANCH_MARKERS)):
            continue
        parts.append(f"[{item}]" if isinstance(item, int) else str(item))
    return ".".join(parts).replace(".[", "[")


def describe_errors(errors: Sequence[Any]) -> list[str]:
    """One message per field (the first error of each), e.g. "contact_name: Input should be a string"."""
    seen: dict[str, str] = {}
    for err in errors:
        path = _field_path(err.get("loc", ()))
        msg = err.get("msg", "is invalid")
        if err.get("type") == "extra_forbidden":
            msg = "is not a known field"
        elif err.get("type") == "missing":
            msg = "is required"
        elif err.get("type") == "json_invalid":
            path, msg = "", "Request body is not valid JSON."
        seen.setdefault(path, f"{path}: {msg}" if path else msg)
    return list(seen.values())
