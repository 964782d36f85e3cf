"""Schema pieces shared by the lead and webhook shapes: below both packages, so that neither
imports the other (tests/test_import_cycles.py)."""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
)
from pydantic.json_schema import WithJsonSchema
from typing_extensions import TypeAliasType

from mega_crm.validation import Text


# Values every store and the JSON encoder can hold: text any store can hold (validation.Text), JSON
# has no NaN/Infinity, and the response encoder (like most JSON readers) stops at 64-bit integers.
# Validators only, so the published schema stays the contract's.
def _not_an_int(value: object) -> object:
    if isinstance(value, int):  # an integer too large for the int branch: refuse, don't round
        raise ValueError("must fit in a signed 64-bit integer")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _int64(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise ValueError("must fit in a signed 64-bit integer")
    return value


CustomFieldValue = (
    Text
    | Annotated[StrictInt, AfterValidator(_int64)]
    | Annotated[StrictFloat, BeforeValidator(_not_an_int), AfterValidator(_finite)]
    | StrictBool
    | None
)
CustomFieldMap = TypeAliasType(
    "CustomFieldMap",
    Annotated[
        dict[Text, CustomFieldValue],
        WithJsonSchema(
            {
                "type": "object",
                "description": "Map of custom-field slug to a scalar value "
                "(string | number | boolean | null).",
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            }
        ),
    ],
)


def _fields_optional_in_schema(schema: dict[str, Any]) -> None:
    schema.pop("required", None)


# For response shapes whose fields the contract publishes as optional; the server always sends them.
FIELDS_OPTIONAL_IN_SCHEMA = ConfigDict(json_schema_extra=_fields_optional_in_schema)


# Models published among the OpenAPI component schemas although no route takes or returns them
# (api.openapi adds them): here, below the packages that declare them.
COMPONENT_MODELS: list[type[BaseModel]] = []
M = TypeVar("M", bound=BaseModel)


def component(model: type[M]) -> type[M]:
    """Publish `model` among the component schemas although no route takes or returns it (the
    body the server POSTs to webhooks)."""
    COMPONENT_MODELS.append(model)
    return model
