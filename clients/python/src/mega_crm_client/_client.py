"""MegaClient and AsyncMegaClient: one surface, two I/O styles.

Every operation is described once as a `_Call` (method, path, query, body, headers) by the
resource classes' shared builders; the sync and async clients differ only in how they send it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from mega_crm_client import __version__
from mega_crm_client._exceptions import APIConnectionError, APITimeoutError, error_from_response
from mega_crm_client._retry import DEFAULT_MAX_RETRIES, RetryEvent, retry_delay, safe_to_retry
from mega_crm_client._sync_state import SyncPosition, SyncState, as_sync_state
from mega_crm_client._types import (
    BulkImportResult,
    DeliveryPage,
    Lead,
    LeadPage,
    OnDuplicate,
    Webhook,
    WebhookDelivery,
    WebhookWithSecret,
)

API_PREFIX = "/api/agents/crm"
BULK_CHUNK_SIZE = 500  # the API's most rows per bulk request
PAGE_LIMIT = 100  # the API's largest page
DEFAULT_TIMEOUT = 30.0

OnRetry = Callable[[RetryEvent], None]


@dataclass(frozen=True)
class BulkChunkDone:
    """Passed to bulk_import's `on_progress` after each chunk: its index (0-based), the rows
    done so far, and that chunk's response body (`summary`, `results`, …)."""

    index: int
    rows_done: int
    body: dict[str, Any]


@dataclass
class _Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None  # a body already encoded as JSON (instead of `json`)


def _query(filters: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters: None dropped, booleans as true/false, `stage_id` spelled `stageId`."""
    params: dict[str, Any] = {}
    for name, value in filters.items():
        if value is None:
            continue
        if name == "stage_id":
            name = "stageId"
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, datetime):  # RFC 3339; a naive datetime is taken as UTC
            value = _instant(value)
        elif hasattr(value, "isoformat"):  # a date: its midnight, UTC
            value = _instant(datetime(value.year, value.month, value.day))
        elif not isinstance(value, str | int | float):  # UUID, enums…
            value = str(value)
        params[name] = value
    return params


def _page(body: dict[str, Any]) -> LeadPage:
    return LeadPage(
        leads=body["leads"],
        total=body["total"],
        limit=body["limit"],
        offset=body["offset"],
        next_cursor=body.get("next_cursor"),
    )


def _chunks(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(rows)
    while chunk := [dict(row) for row in itertools.islice(iterator, size)]:
        yield chunk


def _bulk_call(chunk: list[dict[str, Any]], on_duplicate: OnDuplicate, dry_run: bool, key: str) -> _Call:
    body = {"leads": chunk, "on_duplicate": on_duplicate, "dry_run": dry_run}
    return _Call("POST", f"{API_PREFIX}/leads/bulk", json=body, headers={"Idempotency-Key": key})


def _chunk_key(prefix: str | None, index: int) -> str:
    return f"{prefix}-{index}" if prefix else str(uuid.uuid4())


def _sync_params(filters: Mapping[str, Any], cursor: str | None) -> dict[str, Any]:
    """The contract's incremental sync: updated_at ascending, from `cursor` (None: the start)."""
    return {"limit": PAGE_LIMIT, **filters, "sort_by": "updated_at", "sort_dir": "asc", "cursor": cursor}


class _Config:
    def __init__(
        self,
        base_url: str | None,
        token: str | None,
        customer_id: str | None,
        timeout: float,
        max_retries: int,
        on_retry: OnRetry | None,
    ) -> None:
        base_url = base_url or os.environ.get("MEGA_API_URL")
        token = token or os.environ.get("MEGA_TOKEN")
        customer_id = customer_id or os.environ.get("MEGA_CUSTOMER_ID")
        missing = [
            name
            for name, value in (("base_url/MEGA_API_URL", base_url), ("token/MEGA_TOKEN", token),
                                ("customer_id/MEGA_CUSTOMER_ID", customer_id))
            if not value
        ]  # fmt: skip
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: pass it or set the environment variable")
        assert base_url
        assert token
        assert customer_id
        self.base_url = base_url.rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {token}",
            "x-customer-id": str(customer_id),
            "User-Agent": f"mega-crm-client/{__version__}",
        }
        self.timeout = timeout
        self.max_retries = max_retries
        self.on_retry = on_retry

    def build(self, http: httpx.Client | httpx.AsyncClient, call: _Call) -> httpx.Request:
        params = _query(call.params)
        if call.content is not None:
            headers = {**call.headers, "Content-Type": "application/json"}
            return http.build_request(
                call.method, call.path, params=params, content=call.content, headers=headers
            )
        return http.build_request(call.method, call.path, params=params, json=call.json, headers=call.headers)

    def next_delay(
        self, request: httpx.Request, attempt: int, response: httpx.Response | None, error: Exception | None
    ) -> float | None:
        if attempt > self.max_retries or not safe_to_retry(request.method, request.headers):
            return None
        delay = retry_delay(attempt, response, error)
        if delay is not None and self.on_retry is not None:
            reason = str(response.status_code) if response is not None else type(error).__name__
            self.on_retry(RetryEvent(attempt, delay, reason, request.method, request.url.path))
        return delay


def _result(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise error_from_response(response)
    return response.json()


def _connection_error(exc: httpx.TransportError) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out: {exc}")
    return APIConnectionError(f"{type(exc).__name__}: {exc}")


class MegaClient:
    """A client of the MEGA Lead API.

    `base_url` (e.g. ``http://127.0.0.1:8000``), `token` (``mega_…``) and `customer_id` default to
    ``MEGA_API_URL``, ``MEGA_TOKEN`` and ``MEGA_CUSTOMER_ID``; ValueError when one is missing.
    `timeout` is seconds per attempt; `max_retries` how many times a safe request is retried
    (see `mega_crm_client._retry`); `on_retry` is told before each wait; `transport` replaces
    httpx's (e.g. ``httpx.ASGITransport(app)`` for the app in-process, or a MockTransport).
    Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        customer_id: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        on_retry: OnRetry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = _Config(base_url, token, customer_id, timeout, max_retries, on_retry)
        self._http = httpx.Client(
            base_url=self._config.base_url,
            headers=self._config.headers,
            timeout=timeout,
            transport=transport,
        )
        self.leads = Leads(self)
        self.webhooks = Webhooks(self)

    def _request(self, call: _Call) -> Any:
        request = self._config.build(self._http, call)
        for attempt in itertools.count(1):
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._config.next_delay(request, attempt, None, exc)
                if delay is None:
                    raise _connection_error(exc) from exc
            else:
                delay = self._config.next_delay(request, attempt, response, None)
                if delay is None:
                    return _result(response)
                response.close()
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MegaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMegaClient:
    """MegaClient's surface with `await`: the same arguments, methods and errors; `leads.iter`
    and `leads.sync` are async iterators. `transport` is an ``httpx.AsyncBaseTransport``."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        customer_id: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        on_retry: OnRetry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = _Config(base_url, token, customer_id, timeout, max_retries, on_retry)
        self._http = httpx.AsyncClient(
            base_url=self._config.base_url,
            headers=self._config.headers,
            timeout=timeout,
            transport=transport,
        )
        self.leads = AsyncLeads(self)
        self.webhooks = AsyncWebhooks(self)

    async def _request(self, call: _Call) -> Any:
        request = self._config.build(self._http, call)
        for attempt in itertools.count(1):
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._config.next_delay(request, attempt, None, exc)
                if delay is None:
                    raise _connection_error(exc) from exc
            else:
                delay = self._config.next_delay(request, attempt, response, None)
                if delay is None:
                    return _result(response)
                await response.aclose()
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMegaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --- leads ------------------------------------------------------------------------------------


class _LeadCalls:
    @staticmethod
    def list(filters: Mapping[str, Any]) -> _Call:
        return _Call("GET", f"{API_PREFIX}/leads", params=dict(filters))

    @staticmethod
    def create(fields: Mapping[str, Any], idempotency_key: str | None) -> _Call:
        key = idempotency_key or str(uuid.uuid4())
        return _Call("POST", f"{API_PREFIX}/leads", json=dict(fields), headers={"Idempotency-Key": key})


class Leads:
    """`client.leads`: listLeads, createLead, bulkImportLeads, and the loops around them."""

    def __init__(self, client: MegaClient) -> None:
        self._client = client

    def list(self, **filters: Any) -> LeadPage:
        """One page of listLeads. Filters are the query parameters: status, stage_id, search,
        created_since, updated_since (datetime or ISO-8601), sort_by, sort_dir, lead_line,
        include_custom_fields, cursor, limit (1–100), offset."""
        return _page(self._client._request(_LeadCalls.list(filters)))

    def iter(self, **filters: Any) -> Iterator[Lead]:
        """Every lead matching `filters`, page after page (100 a page unless `limit` says otherwise),
        following `next_cursor`."""
        params = {"limit": PAGE_LIMIT, **filters}
        while True:
            page = self.list(**params)
            yield from page.leads
            if page.next_cursor is None:
                return
            params["cursor"] = page.next_cursor

    def sync(self, state: str | os.PathLike[str] | SyncState, **filters: Any) -> Iterator[Lead]:
        """The leads created or updated since the last call with the same `state`, oldest change
        first (the contract's incremental sync: updated_at ascending, following the cursor).

        `state` is a JSON file path or a `SyncState`; it is saved after each page has been
        consumed, so stopping early (or crashing) repeats at most one page next time. Pass the same
        `filters` every time (e.g. include_custom_fields=True).
        """
        store = as_sync_state(state)
        position = SyncPosition(store.load())
        while True:
            page_cursor = position.cursor
            page = self.list(**_sync_params(filters, page_cursor))
            fresh, to_save = position.page_read(page_cursor, page.leads, page.next_cursor)
            yield from fresh
            store.save(to_save)
            if page.next_cursor is None:
                return

    def create(self, *, idempotency_key: str | None = None, **fields: Any) -> Lead:
        """createLead: the created lead, or the existing lead it was merged into. Fields are the
        contract's (contact_name, contact_phone, contact_email, source_platform, source_type,
        stage_slug, custom_fields). A random Idempotency-Key is sent when none is given, so the
        automatic retries never create a lead twice."""
        body = self._client._request(_LeadCalls.create(fields, idempotency_key))
        lead: Lead = body["lead"]
        return lead

    def bulk_import(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_duplicate: OnDuplicate = "update",
        dry_run: bool = False,
        on_progress: Callable[[BulkChunkDone], None] | None = None,
        idempotency_key_prefix: str | None = None,
        chunk_size: int = BULK_CHUNK_SIZE,
    ) -> BulkImportResult:
        """bulkImportLeads over any iterable of rows, in chunks of `chunk_size` (≤ 500), in order.

        Each chunk carries its own Idempotency-Key (`{prefix}-{index}` when a prefix is given, so a
        rerun of the same rows replays instead of writing again; random otherwise). Returns every
        row's result in input order and the summed summary. A chunk that fails as a whole raises
        (earlier chunks stay imported)."""
        result = BulkImportResult(dry_run=dry_run)
        done = 0
        for index, chunk in enumerate(_chunks(rows, chunk_size)):
            call = _bulk_call(chunk, on_duplicate, dry_run, _chunk_key(idempotency_key_prefix, index))
            body = self._client._request(call)
            result.add_chunk(body)
            done += len(chunk)
            if on_progress is not None:
                on_progress(BulkChunkDone(index, done, body))
        return result


class AsyncLeads:
    """`AsyncMegaClient.leads`: the methods of `Leads`, awaited."""

    def __init__(self, client: AsyncMegaClient) -> None:
        self._client = client

    async def list(self, **filters: Any) -> LeadPage:
        """See `Leads.list`."""
        return _page(await self._client._request(_LeadCalls.list(filters)))

    async def iter(self, **filters: Any) -> AsyncIterator[Lead]:
        """See `Leads.iter`."""
        params = {"limit": PAGE_LIMIT, **filters}
        while True:
            page = await self.list(**params)
            for lead in page.leads:
                yield lead
            if page.next_cursor is None:
                return
            params["cursor"] = page.next_cursor

    async def sync(self, state: str | os.PathLike[str] | SyncState, **filters: Any) -> AsyncIterator[Lead]:
        """See `Leads.sync`."""
        store = as_sync_state(state)
        position = SyncPosition(store.load())
        while True:
            page_cursor = position.cursor
            page = await self.list(**_sync_params(filters, page_cursor))
            fresh, to_save = position.page_read(page_cursor, page.leads, page.next_cursor)
            for lead in fresh:
                yield lead
            store.save(to_save)
            if page.next_cursor is None:
                return

    async def create(self, *, idempotency_key: str | None = None, **fields: Any) -> Lead:
        """See `Leads.create`."""
        body = await self._client._request(_LeadCalls.create(fields, idempotency_key))
        lead: Lead = body["lead"]
        return lead

    async def bulk_import(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_duplicate: OnDuplicate = "update",
        dry_run: bool = False,
        on_progress: Callable[[BulkChunkDone], None] | None = None,
        idempotency_key_prefix: str | None = None,
        chunk_size: int = BULK_CHUNK_SIZE,
    ) -> BulkImportResult:
        """See `Leads.bulk_import`."""
        result = BulkImportResult(dry_run=dry_run)
        done = 0
        for index, chunk in enumerate(_chunks(rows, chunk_size)):
            call = _bulk_call(chunk, on_duplicate, dry_run, _chunk_key(idempotency_key_prefix, index))
            body = await self._client._request(call)
            result.add_chunk(body)
            done += len(chunk)
            if on_progress is not None:
                on_progress(BulkChunkDone(index, done, body))
        return result


# --- webhooks ---------------------------------------------------------------------------------

_HOOKS = f"{API_PREFIX}/lead-webhooks"


class _WebhookCalls:
    @staticmethod
    def list() -> _Call:
        return _Call("GET", _HOOKS)

    @staticmethod
    def create(url: str, fields: Mapping[str, Any]) -> _Call:
        return _Call("POST", _HOOKS, json={"url": url, **fields})

    @staticmethod
    def get(webhook_id: str) -> _Call:
        return _Call("GET", f"{_HOOKS}/{webhook_id}")

    @staticmethod
    def update(webhook_id: str, fields: Mapping[str, Any]) -> _Call:
        return _Call("PATCH", f"{_HOOKS}/{webhook_id}", json=dict(fields))

    @staticmethod
    def delete(webhook_id: str) -> _Call:
        return _Call("DELETE", f"{_HOOKS}/{webhook_id}")

    @staticmethod
    def deliveries(webhook_id: str, limit: int | None, cursor: str | None) -> _Call:
        return _Call("GET", f"{_HOOKS}/{webhook_id}/deliveries", params={"limit": limit, "cursor": cursor})

    @staticmethod
    def redeliver(webhook_id: str, delivery_id: str) -> _Call:
        return _Call("POST", f"{_HOOKS}/{webhook_id}/deliveries/{delivery_id}/redeliver")

    @staticmethod
    def rotate(webhook_id: str, overlap_seconds: int) -> _Call:
        body: dict[str, Any] = {"rotate_secret": True}
        if overlap_seconds:  # 0 is the server's default; left out, the PATCH is the contract's own
            body["secret_overlap_seconds"] = overlap_seconds
        return _Call("PATCH", f"{_HOOKS}/{webhook_id}", json=body)

    @staticmethod
    def recover(webhook_id: str, since: datetime | str, until: datetime | str | None) -> _Call:
        body = {"since": _instant(since)}
        if until is not None:
            body["until"] = _instant(until)
        return _Call("POST", f"{_HOOKS}/{webhook_id}/recover", json=body)

    @staticmethod
    def send_test(webhook_id: str) -> _Call:
        return _Call("POST", f"{_HOOKS}/{webhook_id}/test")


def _instant(value: datetime | str) -> str:
    """An RFC 3339 date-time for the API: a string as given; a naive datetime is taken as UTC
    (the API refuses a date-time without an offset)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _with_secret(body: dict[str, Any]) -> WebhookWithSecret:
    return WebhookWithSecret(webhook=body["webhook"], secret=body.get("secret"))


def _deliveries(body: dict[str, Any]) -> DeliveryPage:
    return DeliveryPage(deliveries=body["deliveries"], next_cursor=body.get("next_cursor"))


class Webhooks:
    """`client.webhooks`: register and manage lead webhooks (scope public_api:webhooks:manage).

    For checking deliveries on the receiving side see `mega_crm_client.webhooks.verify_signature`.
    """

    def __init__(self, client: MegaClient) -> None:
        self._client = client

    def list(self) -> list[Webhook]:
        """Every registered webhook (never their secrets)."""
        hooks: list[Webhook] = self._client._request(_WebhookCalls.list())["webhooks"]
        return hooks

    def create(self, url: str, **fields: Any) -> WebhookWithSecret:
        """Register `url` (public HTTPS); fields: event_types (default ["lead.created"]; this
        server also has "lead.updated"), timeout_seconds (1–60), retry_attempts (0–10),
        description, is_active, signature_scheme ("mega", the default, or "standard-webhooks":
        attempts also carry the Standard Webhooks headers; an extension of this server).
        `.secret` is shown this once. Not retried automatically (POST without Idempotency-Key)."""
        return _with_secret(self._client._request(_WebhookCalls.create(url, fields)))

    def get(self, webhook_id: str) -> Webhook:
        hook: Webhook = self._client._request(_WebhookCalls.get(webhook_id))["webhook"]
        return hook

    def update(self, webhook_id: str, **fields: Any) -> WebhookWithSecret:
        """Change the fields given (url, event_types, timeout_seconds, retry_attempts, description,
        is_active, signature_scheme). `is_active=True` also re-enables a webhook the server
        disabled (`disabled_reason` "gone" or "failing"), clearing the reason and
        `consecutive_failures`; `is_active=False` cancels its pending deliveries. For a new secret
        use `rotate_secret`. Not retried automatically (PATCH)."""
        return _with_secret(self._client._request(_WebhookCalls.update(webhook_id, fields)))

    def rotate_secret(self, webhook_id: str, *, overlap_seconds: int = 0) -> WebhookWithSecret:
        """Mint a new signing secret (returned once in `.secret`); later attempts use it.

        `overlap_seconds` (0–86,400; this server's extension `secret_overlap_seconds`): for that
        long every attempt is signed with the new and the previous secret
        (`X-Mega-Signature: sha256=<new>,sha256=<previous>`; two `v1,` signatures in
        `webhook-signature`), so receivers holding either verify it while you deploy the new one.
        0: the new secret alone at once (the field is not sent). At most two secrets are live:
        rotating again drops the oldest. Out of range: InvalidRequestError. Not retried
        automatically (PATCH)."""
        return _with_secret(self._client._request(_WebhookCalls.rotate(webhook_id, overlap_seconds)))

    def delete(self, webhook_id: str) -> bool:
        """Delete the webhook and cancel its pending deliveries."""
        return bool(self._client._request(_WebhookCalls.delete(webhook_id))["deleted"])

    def deliveries(
        self, webhook_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> DeliveryPage:
        """One page of the webhook's delivery log, newest first."""
        return _deliveries(self._client._request(_WebhookCalls.deliveries(webhook_id, limit, cursor)))

    def redeliver(self, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        """Queue a fresh delivery (new id) of the same event. Not retried automatically."""
        delivery: WebhookDelivery = self._client._request(_WebhookCalls.redeliver(webhook_id, delivery_id))[
            "delivery"
        ]
        return delivery

    def recover(self, webhook_id: str, since: datetime | str, until: datetime | str | None = None) -> int:
        """Resend what failed in a window (this server's extension, POST …/{id}/recover, 202):
        queue a fresh delivery of every event whose delivery to this webhook ended `failed` or
        `cancelled` in [since, until) (by completion time; `until` default now), once per event,
        leaving out events that meanwhile have a pending or succeeded delivery to it (so
        recovering twice sends nothing new). Returns how many were queued.

        `since`/`until`: datetimes (naive ones are taken as UTC) or RFC 3339 strings. Errors:
        InvalidRequestError (bad window, or more than 10,000 to resend: narrow it),
        ConflictError (the webhook is inactive: re-enable it first), NotFoundError. Not retried
        automatically (a POST without Idempotency-Key): a repeat after a lost answer would queue
        nothing twice, but would answer 0, not the count of the first."""
        body = self._client._request(_WebhookCalls.recover(webhook_id, since, until))
        return int(body["count"])

    def send_test(self, webhook_id: str) -> WebhookDelivery:
        """Send a signed `webhook.test` event (a fixed example lead, id
        00000000-0000-4000-8000-000000000000) to this webhook now, whatever its event_types
        (this server's extension, POST …/{id}/test, 201). Returns the delivery as queued; it is
        retried and logged like any other. ConflictError when the webhook is inactive. Not
        retried automatically: a POST without Idempotency-Key, and a repeat sends a second
        test event."""
        delivery: WebhookDelivery = self._client._request(_WebhookCalls.send_test(webhook_id))["delivery"]
        return delivery


class AsyncWebhooks:
    """`AsyncMegaClient.webhooks`: the methods of `Webhooks`, awaited."""

    def __init__(self, client: AsyncMegaClient) -> None:
        self._client = client

    async def list(self) -> list[Webhook]:
        hooks: list[Webhook] = (await self._client._request(_WebhookCalls.list()))["webhooks"]
        return hooks

    async def create(self, url: str, **fields: Any) -> WebhookWithSecret:
        return _with_secret(await self._client._request(_WebhookCalls.create(url, fields)))

    async def get(self, webhook_id: str) -> Webhook:
        hook: Webhook = (await self._client._request(_WebhookCalls.get(webhook_id)))["webhook"]
        return hook

    async def update(self, webhook_id: str, **fields: Any) -> WebhookWithSecret:
        return _with_secret(await self._client._request(_WebhookCalls.update(webhook_id, fields)))

    async def rotate_secret(self, webhook_id: str, *, overlap_seconds: int = 0) -> WebhookWithSecret:
        """See `Webhooks.rotate_secret`."""
        return _with_secret(await self._client._request(_WebhookCalls.rotate(webhook_id, overlap_seconds)))

    async def delete(self, webhook_id: str) -> bool:
        return bool((await self._client._request(_WebhookCalls.delete(webhook_id)))["deleted"])

    async def deliveries(
        self, webhook_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> DeliveryPage:
        return _deliveries(await self._client._request(_WebhookCalls.deliveries(webhook_id, limit, cursor)))

    async def redeliver(self, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        body = await self._client._request(_WebhookCalls.redeliver(webhook_id, delivery_id))
        delivery: WebhookDelivery = body["delivery"]
        return delivery

    async def recover(
        self, webhook_id: str, since: datetime | str, until: datetime | str | None = None
    ) -> int:
        """See `Webhooks.recover` (not retried automatically)."""
        body = await self._client._request(_WebhookCalls.recover(webhook_id, since, until))
        return int(body["count"])

    async def send_test(self, webhook_id: str) -> WebhookDelivery:
        """See `Webhooks.send_test` (not retried automatically)."""
        delivery: WebhookDelivery = (await self._client._request(_WebhookCalls.send_test(webhook_id)))[
            "delivery"
        ]
        return delivery
