"""The served OpenAPI document, kept in the contract's shape."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"
M = TypeVar("M", bound=BaseModel)
IDEMPOTENCY_KEY = "Idempotency-Key"
_CUSTOMER_ID_TEXT = "The customer this request acts on. Must match the customer your key is locked to."
_IDEMPOTENCY_TEXT = (
    "Client-generated unique key. Replaying the same key returns the original stored response instead "
    "of creating duplicates. Scoped per customer + endpoint; reuse with a different body returns 409."
)
# Header parameters every API operation takes (the key's customer), and the write operations'.
CUSTOMER_ID_PARAMETER = {
    "name": "x-customer-id",
    "in": "header",
    "required": True,
    "description": _CUSTOMER_ID_TEXT,
    "schema": {
        "type": "string",
        "format": "uuid",
        "title": "X-Customer-Id",
        "description": _CUSTOMER_ID_TEXT,
    },
}
IDEMPOTENCY_KEY_PARAMETER = {
    "name": IDEMPOTENCY_KEY,
    "in": "header",
    "required": False,
    "description": _IDEMPOTENCY_TEXT,
    "schema": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "title": IDEMPOTENCY_KEY,
        "description": _IDEMPOTENCY_TEXT,
    },
}
_REQUEST_MODELS: dict[str, type[BaseModel]] = {}


def query_parameters(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra` publishing `model` (parsed by api.pipeline, `Call.query`) as its query."""
    properties = model.model_json_schema(by_alias=True)["properties"]
    parameters = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        parameter = {
            "name": alias,
            "in": "query",
            "required": field.is_required(),
            "schema": _without_null(properties[alias]),
        }
        if field.description:
            parameter["description"] = field.description
        parameters.append(parameter)
    return {"parameters": parameters}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or has a value: `X | None` is published as X (a query string
    cannot say null, and generators would otherwise try)."""
    branches = schema.get("anyOf")
    if not branches or {"type": "null"} not in branches or len(branches) != 2:
        return schema
    [kept] = [b for b in branches if b != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept, **rest}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra` publishing `model` (parsed by api.pipeline, `Call.body`) as its JSON body."""
    _REQUEST_MODELS[model.__name__] = model
    return {"x-request-schema": model.__name__}


_COMPONENT_MODELS: list[type[BaseModel]] = []


def component(model: type[M]) -> type[M]:
    """Publish `model` among the component schemas although no route takes or returns it (the
    body the server POSTs to webhooks)."""
    _COMPONENT_MODELS.append(model)
    return model


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    full = model.model_json_schema(ref_template=REF)
    for name, definition in [*full.pop("$defs", {}).items(), (model.__name__, full)]:
        for prop in definition.get("properties", {}).values():
            if "default" in prop and prop["default"] is None:  # "optional", not "may be null"
                del prop["default"]
        schemas[name] = definition


IDEMPOTENT_OPERATIONS = {"createLead", "bulkImportLeads"}
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
HEADER_REFS = {
    "RateLimit-Limit": "RateLimitLimit",
    "RateLimit-Remaining": "RateLimitRemaining",
    "RateLimit-Reset": "RateLimitReset",
    "Retry-After": "RetryAfter",
    "Idempotent-Replayed": "IdempotentReplayed",
}
_INTEGER = {"type": "integer"}
HEADERS: dict[str, Any] = {
    "RateLimitLimit": {"description": "Request quota for the reported window.", "schema": _INTEGER},
    "RateLimitRemaining": {"description": "Requests remaining in the window.", "schema": _INTEGER},
    "RateLimitReset": {"description": "Seconds until the window refills.", "schema": _INTEGER},
    "RetryAfter": {"description": "Seconds to wait before retrying (on 429).", "schema": _INTEGER},
    "IdempotentReplayed": {
        "description": "`true` when this is the stored response of an earlier request with the same "
        "Idempotency-Key (nothing was written this time).",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def contract_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    doc["openapi"] = "3.1.0"
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "Admin-issued Personal Access Token, e.g. `Authorization: Bearer mega_<64 hex>`."
            " The key carries scopes (`public_api:leads:read`, `public_api:leads:write`, "
            "`public_api:webhooks:manage`) and is locked to one customer.",
        }
    }
    doc["security"] = [{"bearerAuth": []}]

    # Validation failures are 400 in the error envelope (never FastAPI's 422). Every answer to an
    # authenticated request carries the rate-limit headers; a 429 adds Retry-After; a replayed
    # write says so.
    components["headers"] = HEADERS
    for path, path_item in doc.get("paths", {}).items():
        for operation in path_item.values():
            if path.startswith("/api/"):
                parameters = operation.setdefault("parameters", [])
                parameters.append(CUSTOMER_ID_PARAMETER)
                if operation.get("operationId") in IDEMPOTENT_OPERATIONS:
                    parameters.append(IDEMPOTENCY_KEY_PARAMETER)
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                if status.startswith("2"):
                    names = [*RATE_LIMIT_HEADERS]
                    if operation.get("operationId") in IDEMPOTENT_OPERATIONS:
                        names.append("Idempotent-Replayed")
                elif status == "429":
                    names = [*RATE_LIMIT_HEADERS, "Retry-After"]
                else:
                    continue
                response["headers"] = {
                    name: {"$ref": f"#/components/headers/{HEADER_REFS[name]}"} for name in names
                }
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)

    # Request bodies are parsed in the route (api.pipeline, `Call.body`); publish the documented schema.
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            name = operation.pop("x-request-schema", None)
            if name is None:
                continue
            _add_schema(schemas, _REQUEST_MODELS[name])
            operation["requestBody"] = {
                "content": {"application/json": {"schema": {"$ref": REF.format(model=name)}}},
                "required": True,
            }
    for model in _COMPONENT_MODELS:
        _add_schema(schemas, model)
    app.openapi_schema = doc
    return doc
