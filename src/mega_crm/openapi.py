"""The served OpenAPI document, kept in the contract's shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mega_crm.leads.schemas import BulkImportRequest

REF = "#/components/schemas/{model}"


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
