"""The served OpenAPI document against the reference contract (paths, operations, parameters, bodies)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from mega_crm.app import create_app
from tests.conftest import make_settings
from tests.fixtures.contract import needs_reference, reference_available, reference_document

pytestmark = needs_reference
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# Properties this server adds to the contract's schemas (issue 13): optional in requests, extra in
# responses, which the reference's schemas allow (none forbids additional properties), so a
# contract client neither sends nor needs them. Listed so that an accidental addition still fails.
EXTENSION_PROPERTIES: dict[str, set[str]] = {
    "Webhook": {
        "disabled_reason",
        "disabled_at",
        "consecutive_failures",
        "last_success_at",
        "signature_scheme",
    },
    "WebhookCreateRequest": {"signature_scheme"},
    "WebhookUpdateRequest": {"secret_overlap_seconds", "signature_scheme"},
}


def contract_properties(doc: dict[str, Any], node: Any) -> set[str]:
    """The properties of a (possibly $ref'd) served schema, less this server's listed extensions,
    which must not be required."""
    name = node.get("$ref", "").rsplit("/", 1)[-1] if isinstance(node, dict) else ""
    schema = resolve(doc, node)
    extensions = EXTENSION_PROPERTIES.get(name, set())
    assert not extensions & set(schema.get("required", [])), f"{name}: an extension is required"
    return set(schema.get("properties", {})) - extensions


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def reference_operations() -> list[Any]:
    if not reference_available():
        return []
    doc = reference_document()
    return [
        pytest.param(path, method, id=op.get("operationId", f"{method} {path}"))
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'openapi.db'}"
    app: FastAPI = create_app(make_settings(url, webhook_worker_in_process=False))
    return app.openapi()


def served_operation(served: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    if path.startswith("/api/agents/crm/lead-webhooks") and not any(
        p.startswith("/api/agents/crm/lead-webhooks") for p in served["paths"]
    ):
        pytest.skip("the webhook routes are not built yet (their own issue)")
    assert path in served["paths"], f"{path} is missing from the served document"
    assert method in served["paths"][path], f"{method.upper()} {path} is missing from the served document"
    return served["paths"][path][method]


def parameters(doc: dict[str, Any], operation: dict[str, Any]) -> set[tuple[str, str, bool]]:
    found = set()
    for raw in operation.get("parameters", []):
        p = resolve(doc, raw)
        name = p["name"].lower() if p["in"] == "header" else p["name"]  # header names are case-insensitive
        found.add((name, p["in"], bool(p.get("required", False))))
    return found


def body_schema(doc: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    body = resolve(doc, operation.get("requestBody"))
    if body is None:
        return None
    return resolve(doc, body["content"]["application/json"]["schema"])


@pytest.mark.parametrize(("path", "method"), reference_operations())
def test_operation_id(served: dict[str, Any], path: str, method: str) -> None:
    expected = reference_document()["paths"][path][method]["operationId"]
    assert served_operation(served, path, method)["operationId"] == expected


@pytest.mark.parametrize(("path", "method"), reference_operations())
def test_parameters(served: dict[str, Any], path: str, method: str) -> None:
    ref = reference_document()
    mine = served_operation(served, path, method)
    assert parameters(served, mine) == parameters(ref, ref["paths"][path][method])


@pytest.mark.parametrize(("path", "method"), reference_operations())
def test_request_body(served: dict[str, Any], path: str, method: str) -> None:
    ref = reference_document()
    mine = served_operation(served, path, method)
    expected, actual = body_schema(ref, ref["paths"][path][method]), body_schema(served, mine)
    if expected is None:
        assert actual is None, "the reference has no request body here"
        return
    assert actual is not None
    served_node = resolve(served, mine["requestBody"])["content"]["application/json"]["schema"]
    assert contract_properties(served, served_node) == set(expected.get("properties", {}))
    assert set(actual.get("required", [])) == set(expected.get("required", []))
    ref_required = bool(resolve(ref, ref["paths"][path][method]["requestBody"]).get("required"))
    assert bool(resolve(served, mine["requestBody"]).get("required")) == ref_required


@pytest.mark.parametrize(("path", "method"), reference_operations())
def test_response_status_codes(served: dict[str, Any], path: str, method: str) -> None:
    """The reference's, plus 400 where it has none: every operation refuses an unknown or
    repeated query parameter."""
    expected = set(reference_document()["paths"][path][method]["responses"]) | {"400"}
    actual = set(served_operation(served, path, method)["responses"])
    assert actual == expected
    assert "422" not in actual


@pytest.mark.parametrize(("path", "method"), reference_operations())
def test_success_response_properties(served: dict[str, Any], path: str, method: str) -> None:
    ref = reference_document()
    responses = ref["paths"][path][method]["responses"]
    mine = served_operation(served, path, method)["responses"]
    for status, response in responses.items():
        expected = resolve(ref, response).get("content", {}).get("application/json", {}).get("schema")
        if expected is None or not status.startswith("2"):
            continue
        actual = resolve(served, mine[status]).get("content", {}).get("application/json", {}).get("schema")
        assert actual is not None, f"{status} has no JSON schema"
        assert contract_properties(served, actual) == set(resolve(ref, expected).get("properties", {}))


@pytest.mark.parametrize(("path", "method"), reference_operations())
def test_response_headers(served: dict[str, Any], path: str, method: str) -> None:
    ref = reference_document()
    mine = served_operation(served, path, method)["responses"]
    for status, response in ref["paths"][path][method]["responses"].items():
        expected = {name.lower() for name in resolve(ref, response).get("headers", {})}
        actual = {name.lower() for name in resolve(served, mine[status]).get("headers", {})}
        assert expected <= actual, f"{status}: {sorted(expected - actual)} not documented"
        for name, header in resolve(served, mine[status]).get("headers", {}).items():
            assert "schema" in resolve(served, header), name


def test_security_scheme(served: dict[str, Any]) -> None:
    ref = reference_document()
    assert served.get("security") == ref.get("security")
    assert set(served["components"]["securitySchemes"]) == set(ref["components"]["securitySchemes"])


def reference_components() -> list[str]:
    return sorted(reference_document()["components"]["schemas"]) if reference_available() else []


@pytest.mark.parametrize("name", reference_components())
def test_component_schema(served: dict[str, Any], name: str) -> None:
    """Every schema the contract names is served under that name, with the same properties, the
    same required ones and the same enums."""
    ref = reference_document()
    expected = ref["components"]["schemas"][name]
    assert name in served["components"]["schemas"], f"component {name} is missing"
    actual = served["components"]["schemas"][name]
    assert contract_properties(served, {"$ref": f"#/components/schemas/{name}"}) == set(
        expected.get("properties", {})
    )
    assert set(actual.get("required", [])) == set(expected.get("required", []))
    assert actual.get("enum") == expected.get("enum")
    for prop, schema in expected.get("properties", {}).items():
        if "$ref" in schema:  # a named schema is referred to by name (or it or null), not inlined
            served_prop = actual["properties"][prop]
            refs = [served_prop.get("$ref"), *(branch.get("$ref") for branch in served_prop.get("anyOf", []))]
            assert schema["$ref"] in refs, prop
