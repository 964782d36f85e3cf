"""AsyncMegaClient against the app in-process (httpx.ASGITransport) and over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from conftest import Server, Tenant
from mega_crm_client import (
    AsyncMegaClient,
    ConflictError,
    InvalidRequestError,
    MemorySyncState,
    NotFoundError,
)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture(params=["asgi", "loopback"])
def make_async(
    request: pytest.FixtureRequest, server: Server, tenant: Tenant
) -> Callable[[], AsyncMegaClient]:
    def make() -> AsyncMegaClient:
        if request.param == "asgi":
            transport = httpx.ASGITransport(app=server.asgi_app)
            return AsyncMegaClient("http://mega.test", tenant.token, tenant.customer_id, transport=transport)
        return AsyncMegaClient(tenant.url, tenant.token, tenant.customer_id)

    return make


def test_async_leads_surface(make_async: Callable[[], AsyncMegaClient]) -> None:
    async def scenario() -> None:
        async with make_async() as c:
            created = [await c.leads.create(contact_email=f"a{i}@example.com") for i in range(5)]
            page = await c.leads.list(limit=2)
            assert page.total == 5
            assert page.next_cursor
            assert [lead["id"] async for lead in c.leads.iter(limit=2)] == [x["id"] for x in created]
            state = MemorySyncState()
            assert len([lead async for lead in c.leads.sync(state, limit=2)]) == 5
            assert [lead async for lead in c.leads.sync(state)] == []
            merged = await c.leads.create(contact_email="A0@example.com", contact_name="Renamed")
            assert merged["id"] == created[0]["id"]
            assert [lead["id"] async for lead in c.leads.sync(state)] == [created[0]["id"]]
            rows = [{"contact_email": f"b{i}@example.com"} for i in range(600)]
            result = await c.leads.bulk_import(rows, chunk_size=250)
            assert result.summary["created"] == 600
            assert len(result.results) == 600
            assert (await c.leads.list()).total == 605
            with pytest.raises(InvalidRequestError):
                await c.leads.list(sort_by="nope")

    run(scenario())


def test_async_webhooks_surface(make_async: Callable[[], AsyncMegaClient]) -> None:
    async def scenario() -> None:
        async with make_async() as c:
            created = await c.webhooks.create("http://127.0.0.1:9/hook", description="async")
            assert created.secret
            assert created.secret.startswith("mega_whsec_")
            hook_id = created.webhook["id"]
            assert [h["id"] for h in await c.webhooks.list()] == [hook_id]
            assert (await c.webhooks.get(hook_id))["description"] == "async"
            updated = await c.webhooks.update(hook_id, is_active=False)
            assert updated.secret is None
            assert updated.webhook["is_active"] is False
            rotated = await c.webhooks.rotate_secret(hook_id)
            assert rotated.secret
            assert rotated.secret != created.secret
            assert (await c.webhooks.deliveries(hook_id)).deliveries == []
            with pytest.raises(ConflictError):  # inactive
                await c.webhooks.send_test(hook_id)
            with pytest.raises(ConflictError):
                await c.webhooks.recover(hook_id, "2026-01-01T00:00:00Z")
            enabled = await c.webhooks.update(hook_id, is_active=True, signature_scheme="standard-webhooks")
            assert enabled.webhook["signature_scheme"] == "standard-webhooks"
            overlapped = await c.webhooks.rotate_secret(hook_id, overlap_seconds=30)
            assert overlapped.secret not in (None, rotated.secret)
            test = await c.webhooks.send_test(hook_id)
            assert test["event"] == "webhook.test"
            assert [d["id"] for d in (await c.webhooks.deliveries(hook_id)).deliveries] == [test["id"]]
            # A window before the test event (its delivery to port 9 fails soon after).
            assert await c.webhooks.recover(hook_id, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z") == 0
            assert await c.webhooks.delete(hook_id) is True
            with pytest.raises(NotFoundError):
                await c.webhooks.get(hook_id)

    run(scenario())
