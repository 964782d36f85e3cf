"""Pydantic validation errors as short, field-named messages for the 400 envelope."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
        parts.append(f"[{item}]" if isinstance(item, int) else str(item))
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
    elif len(errors) > 1 and all(k in _TYPE_NOUNS for k in kinds):  # the branches of a union
        nouns = list(dict.fromkeys(_TYPE_NOUNS[str(k)] for k in kinds))
        msg = "Input should be " + (", ".join(nouns[:-1]) + " or " + nouns[-1])
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
