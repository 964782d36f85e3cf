"""How every API route runs: one call on a database thread per request.

A route is an `async def` that hands its work to `serve()`. The body is read, and the query
string parsed, on the event loop (a route may choose its lane from the parsed query: listLeads,
`leads.models.list_lane`); then a single call on one of the database's threads (`Database.run`)
does, in this order: authenticate the key (401), count the request against its rate limit (429),
check customer and scope (403), refuse a query string or a body that does not parse (400), and
the work itself. So an anonymous caller learns nothing about the input, and a request costs one
thread hop, not one per dependency. A route whose work confirms the key in its own statements
(`confirms_key`: listLeads in its page's, createLead in its write's first round trip) skips the
key's lookup when the key is cached (auth.access.KeyCheck); a key found changed there runs the
request again, the key looked up.

Query strings and bodies are parsed here, by the pydantic models the routes declare in their
OpenAPI (`openapi.query_parameters` / `openapi.request_body`), not by FastAPI's per-parameter
machinery, which cost more CPU than a page of leads. A query string is held to its model as a
body is: an unknown parameter (a typo such as `stage_id` for `stageId` would otherwise widen a
filter to every lead), a repeated one, or text no store can hold is a 400 naming the parameter;
a route without a query model takes no parameters at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote_to_bytes

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from mega_crm.api.state import AppState, app_state
from mega_crm.auth.access import KeyCheck, Principal, Reader, StaleKey, authorize, authorize_again
from mega_crm.db import Lane, RawConnection
from mega_crm.errors import ApiError, InvalidRequestError
from mega_crm.ratelimit.limiter import DEFAULT_BUCKET
from mega_crm.validation import describe_errors, text_refusal

M = TypeVar("M", bound=BaseModel)
Q = TypeVar("Q", bound=BaseModel)


class NoQuery(BaseModel):
    """The query string of a route that takes no parameters."""


_NO_QUERY = NoQuery()


@dataclass(frozen=True)
class Call:
    """One authenticated request, as the work of a route sees it."""

    request: Request
    state: AppState  # the app's shared objects: database, settings, codecs, caches
    principal: Principal  # the key's id, customer and scopes
    raw_body: bytes
    connect: Reader  # the connection the key was checked on, checked out on first use
    params: BaseModel  # the query string, parsed by the model the route declared
    key_check: KeyCheck | None = None  # a cached key the work confirms (serve's confirms_key)

    @property
    def reader(self) -> RawConnection:
        """The pooled connection of the request's reads (see Database.raw_read): the one its key
        was looked up on, or, for a key found cached, one checked out now."""
        return self.connect()

    @property
    def customer_id(self) -> uuid.UUID:
        """The customer the key is locked to (and the x-customer-id header named)."""
        return self.principal.customer_id

    def header(self, name: str) -> str | None:
        """The request's header `name` (case-insensitive), None when absent."""
        return self.request.headers.get(name)

    def query(self, model: type[M]) -> M:
        """The query string, as the `model` the route passed to `serve(query=...)`."""
        if not isinstance(self.params, model):
            raise TypeError(f"the route's query model is {type(self.params).__name__}, not {model.__name__}")
        return self.params

    def body(self, model: type[M]) -> M:
        """The JSON body as `model` (no Content-Type is taken as JSON; any other type than JSON is 400)."""
        media_type = self.request.headers.get("content-type", "").partition(";")[0].strip().lower()
        is_json = media_type == "application/json" or (
            media_type.startswith("application/") and media_type.endswith("+json")
        )
        if media_type and not is_json:
            raise InvalidRequestError("Request body must be JSON, sent with Content-Type: application/json.")
        if not self.raw_body.strip():
            raise InvalidRequestError("Request body is required.")
        try:
            return model.model_validate_json(self.raw_body)
        except ValidationError as exc:
            raise _invalid(exc) from None


_MAX_NAME_ECHO = 64  # an unknown parameter's name is quoted back up to this many characters


def parse_query(request: Request, model: type[M]) -> M:
    """The query string as `model`: every parameter known to it (by alias), given at most once,
    with text any store can hold. InvalidRequestError (400) naming each offending parameter."""
    query_string = request.scope.get("query_string", b"")
    if not query_string and model is NoQuery:  # every POST: nothing to parse or validate
        return _NO_QUERY  # type: ignore[return-value]
    if not _is_utf8(query_string):
        raise InvalidRequestError("The query string is not UTF-8 text (it has bytes that are not UTF-8).")
    problems: list[str] = []
    values: dict[str, str] = {}
    if query_string:  # none (every POST): nothing to parse
        params = request.query_params
        known = {field.alias or name for name, field in model.model_fields.items()}
        for name in dict.fromkeys(params.keys()):
            given = params.getlist(name)
            shown = name if len(name) <= _MAX_NAME_ECHO else name[:_MAX_NAME_ECHO] + "…"
            if name not in known:
                problems.append(f"{shown}: is not a known query parameter")
            elif len(given) > 1:
                problems.append(f"{name}: must be given once, not {len(given)} times")
            elif (reason := text_refusal(given[0])) is not None:
                problems.append(f"{name}: {reason}")
            else:
                values[name] = given[0]
    if problems:
        raise InvalidRequestError("; ".join(problems) + ".")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _is_utf8(query_string: bytes) -> bool:
    """Whether a raw query string's bytes, percent-escapes decoded, are UTF-8 (RFC 3986 §2.5).
    Starlette reads any other byte as U+FFFD, which a lead's text may hold (`%FF` found names
    with U+FFFD in them): such a query is refused instead."""
    if b"%" not in query_string and query_string.isascii():
        return True
    try:
        unquote_to_bytes(query_string).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _invalid(exc: ValidationError) -> InvalidRequestError:
    return InvalidRequestError("; ".join(describe_errors(exc.errors())) or "Invalid request.")


async def serve(
    request: Request,
    scope: str,
    work: Callable[[Call], Response],
    *,
    lane: Lane | Callable[[Q], Lane] = "read",
    bucket: str = DEFAULT_BUCKET,
    query: type[Q] | None = None,
    confirms_key: bool = False,
) -> Response:
    """Run `work` for a caller holding `scope`, counted against the key's `bucket`, on a thread
    of `lane`: "write" for writes, "slow" for work that may take long (a read that may not be
    served by an index range, a DNS lookup), "read" for the rest (see mega_crm.db); or a function
    of the parsed `query` that chooses one (a query that does not parse is refused in the read
    lane). `query`: the model of the route's query string (`Call.query`); by default the route
    takes none. `confirms_key`: the work passes `Call.key_check`, when set, to a statement that
    confirms it (see auth.access.KeyCheck). Raises DatabaseTimeout (503) after
    MEGA_DB_TIMEOUT_SECONDS without an answer."""
    raw = await request.body() if request.method in ("POST", "PUT", "PATCH") else b""
    state = app_state(request.app)
    params: BaseModel | InvalidRequestError
    try:
        params = parse_query(request, query or NoQuery)
    except InvalidRequestError as exc:
        params = exc  # raised after the key check (_authorized)
    chosen: Lane
    if isinstance(lane, str):
        chosen = lane
    else:
        chosen = lane(params) if query is not None and isinstance(params, query) else "read"
    deadline = state.settings.db_timeout_seconds  # then 503 (DatabaseTimeout)
    return await state.db.run(
        chosen, _authorized, request, state, scope, bucket, raw, work, params, confirms_key, deadline=deadline
    )


def _authorized(
    request: Request,
    state: AppState,
    scope: str,
    bucket: str,
    raw: bytes,
    work: Callable[[Call], Response],
    params: BaseModel | InvalidRequestError,
    confirms_key: bool,
) -> Response:
    db = state.db
    group = db.group_session()
    if group is not None:  # in a group commit: check the key inside its transaction, once per key
        grouped = RawConnection.of(group)
        principal, _ = authorize(request, scope, bucket, lambda: grouped, state.settings, state.limiter)
        return work(_call(request, state, principal, raw, lambda: grouped, params, None))
    keys = state.keys if confirms_key else None
    settings, limiter = state.settings, state.limiter
    with ExitStack() as stack:
        opened: list[RawConnection] = []

        def reader() -> RawConnection:
            # Checked out on first use: a request whose key is cached may need none (createLead
            # confirms it in its write), and an unused checkout would hide a dead connection
            # from the recovery that drops the pool at the first one met (Database.run).
            if not opened:
                opened.append(stack.enter_context(db.raw_read()))
            return opened[0]

        principal, check = authorize(request, scope, bucket, reader, settings, limiter, keys)
        if check is None:
            return work(_call(request, state, principal, raw, reader, params, None))
        assert keys is not None
        try:
            response = work(_call(request, state, principal, raw, reader, params, check))
        except (StaleKey, ApiError):
            if check.confirmed:  # the key stood: so does the answer
                raise
            # Found changed, or refused before its statement ran (a query string that does not
            # parse, a bad cursor): judged again on the key looked up, as without the cache.
            principal = authorize_again(request, scope, bucket, reader, settings, limiter, keys, check)
            return work(_call(request, state, principal, raw, reader, params, None))
        except BaseException:
            keys.evict(check.token_hash)  # nothing cached outlives a failure it may have caused
            raise
        if not check.confirmed:  # a route that said it confirms, and did not
            keys.evict(check.token_hash)
            raise RuntimeError("the work did not confirm the cached key")
        return response


def _call(
    request: Request,
    state: AppState,
    principal: Principal,
    raw: bytes,
    reader: Reader,
    params: BaseModel | InvalidRequestError,
    check: KeyCheck | None,
) -> Call:
    """The authorized request as its work sees it; InvalidRequestError (400) for a query string
    that did not parse (refused only now, after the key check)."""
    if isinstance(params, InvalidRequestError):
        raise params
    return Call(request, state, principal, raw, reader, params, check)
