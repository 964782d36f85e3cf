"""The served OpenAPI document, kept in the contract's shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mega_crm.leads.schemas import BulkImportRequest

REF = "#/components/schemas/{model}"
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
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
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

    # Routes that validate rows one by one accept a looser envelope than they document;
    # publish the documented request schema.
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            name = operation.pop("x-request-schema", None)
            if name is None:
                continue
            model = {"BulkImportRequest": BulkImportRequest}[name]
            full = model.model_json_schema(ref_template=REF)
            for def_name, definition in full.pop("$defs", {}).items():
                schemas[def_name] = definition
            schemas[name] = full
            operation["requestBody"]["content"]["application/json"]["schema"] = {
                "$ref": REF.format(model=name)
            }
    schemas.pop("BulkImportBody", None)
    app.openapi_schema = doc
    return doc
