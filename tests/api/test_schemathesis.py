"""Schemathesis against the server's own served OpenAPI, over real HTTP on loopback.

The engine the `schemathesis run` CLI uses, in its examples, coverage (boundary values and
schema-breaking values of each parameter and field, systematically) and fuzzing phases, with
positive and negative data, as a seeded tenant with a valid key (so requests get past
authentication to validation and the work behind it). Checks: no 5xx, every response fits the
published schema and status codes, and data that breaks the published schema is refused.

Bounded and reproducible: MEGA_SCHEMATHESIS_EXAMPLES examples per operation and phase (default
25), derandomised. Raise it to search further.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema
from schemathesis.specs.openapi.checks import negative_data_rejection

from mega_crm.webhooks import urls
from tests.conftest import LiveServer
from tests.fixtures.factories import Tenant

EXAMPLES = int(os.environ.get("MEGA_SCHEMATHESIS_EXAMPLES", "25"))
WEBHOOKS = "/api/agents/crm/lead-webhooks"
BULK = "/api/agents/crm/leads/bulk"


def _a_bad_row_failed_alone(case: Any, response: Any) -> bool:
    """The contract's bulkImportLeads answers 200 when rows break the row schema: "a bad row
    fails alone", reported in its result. So there a schema-breaking request is rejected when it
    is a 4xx, or a 200 in which some row failed."""
    if (case.operation.method.lower(), case.operation.path) != ("post", BULK) or response.status_code != 200:
        return False
    return bool(response.json()["summary"]["failed"] >= 1)


@schemathesis.check
def negative_data_rejected_or_bulk_rows_failed(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's negative_data_rejection, with the contract's per-row failures of bulk."""
    if _a_bad_row_failed_alone(case, response):
        return True
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "negative_data_rejected_or_bulk_rows_failed",
]


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated webhook URLs name arbitrary hosts: answer their DNS lookups with one public
    address instead of asking the machine's resolver (traffic stays on loopback; the shared test
    app runs no delivery worker, so nothing is ever sent to that address)."""
    monkeypatch.setattr(urls, "system_resolver", lambda _host, _port: ["93.184.215.14"])


def test_the_served_openapi_holds_under_generated_requests(
    live_server: LiveServer, client: Any, tenant: Tenant, no_dns: None
) -> None:
    # The tenant's own webhook as every `id`, so that requests get past "no such webhook".
    r = client.post(WEBHOOKS, json={"url": "https://93.184.215.14/schemathesis"}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    schema.config.update(
        base_url=live_server.url,
        headers={"Authorization": f"Bearer {tenant.token}"},
        parameters={"x-customer-id": str(tenant.customer_id), "id": r.json()["webhook"]["id"]},
        workers=1,
    )
    schema.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES, deterministic=True)  # type: ignore[list-item]
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    schema.config.checks.update(included_check_names=CHECKS)

    found: list[str] = []
    scenarios = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        info = check.failure_info
                        found.append(f"{event.recorder.label}: {info.failure.title}\n  {info.code_sample}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            found.append(f"{type(event).__name__}: {getattr(event, 'value', None) or event}")
        elif isinstance(event, events.EngineFinished):
            assert event.stop_reason == "completed", event.stop_reason
    assert scenarios >= 10 * 3, f"only {scenarios} scenarios ran"  # every operation, every phase
    assert not found, "\n".join(dict.fromkeys(found))
