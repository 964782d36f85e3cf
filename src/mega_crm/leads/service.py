"""Lead operations: validate, merge, write (one transaction), and list."""

from __future__ import annotations

import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mega_crm.auth.access import KeyCheck
from mega_crm.db import Pending, RawConnection, utcnow, write_conflict
from mega_crm.errors import ConflictError, InvalidRequestError
from mega_crm.events.outbox import record_lead_created, record_lead_updated, remember_subscriptions
from mega_crm.leads import repository as repo
from mega_crm.leads.cursor import CursorCodec, CursorPosition
from mega_crm.leads.dedup import LeadInput, MergeDefaults, MergePlan, RowOutcome, plan_merge
from mega_crm.leads.documents import lead_body, render_document
from mega_crm.leads.rows import CustomerConfig, load_config, parse_uuid, resolve_contact, resolve_row
from mega_crm.leads.schemas import BulkLeadRow, LeadCreateRequest, ListLeadsQuery
from mega_crm.leads.search import SearchTerms, parse_search, search_columns
from mega_crm.observability import metrics
from mega_crm.timestamps import fill_stamps
from mega_crm.validation import describe_errors

T = TypeVar("T")

LEAD_STATUSES = ("active", "won", "lost", "nurture", "archived")


# --- writes ---------------------------------------------------------------------------------


def _begin_lead_write(session: Session, customer_id: uuid.UUID) -> datetime:
    now = repo.begin_customer_write(session, customer_id, utcnow())
    if now is None:  # deleted between auth and now
        raise InvalidRequestError("Unknown customer.")
    return now


def _apply_plan(
    session: Session,
    customer_id: uuid.UUID,
    plan: MergePlan,
    before: dict[uuid.UUID, repo.Bucket],
    config: CustomerConfig,
    guard: repo.Guard | None = None,
) -> Pending | None:
    """Write the plan (each lead with its rendered document), and move the per-bucket counts by
    what it changed. `before`: the (status, stage, lead_line) of each existing lead as loaded,
    before the merge. `guard`: see repository.write_plan (-> the write's time, when given)."""
    _load_owners(session, customer_id, config, plan.inserts + plan.updates)
    stamp = guard.now if guard is not None else None
    for rec in plan.inserts + plan.updates:
        owner = config.owners.get(rec["owner_id"])
        rec["document"] = render_document(rec, config.stage(rec["stage_id"]), owner, stamp)
        search_columns(rec)
    counts: Counter[repo.Bucket] = Counter(repo.bucket_of(rec) for rec in plan.inserts)
    for rec in plan.updates:
        old, new = before[rec["id"]], repo.bucket_of(rec)
        if old != new:
            counts[old] -= 1
            counts[new] += 1
    try:
        return repo.write_plan(
            session, customer_id, plan.inserts, plan.updates, plan.changed_columns, counts, guard
        )
    except IntegrityError:
        # Only reachable if a writer bypassed the customer lock; the transaction is rolled back.
        raise ConflictError("A concurrent write touched the same lead; retry the request.") from None


def _load_owners(
    session: Session, customer_id: uuid.UUID, config: CustomerConfig, records: list[dict[str, Any]]
) -> None:
    """Adds to `config.owners` those the records name (a merged lead keeps an owner the batch
    did not mention)."""
    missing = {rec["owner_id"] for rec in records if rec["owner_id"]} - config.owner_ids
    if missing:
        config.owners.update(repo.owners_by_id(session, customer_id, missing))


class Provisional:
    """createLead on PostgreSQL, its reads before the customer's lock (see create_lead): the
    response's times are timestamps.STAMP until the write has committed (`settle`)."""

    def __init__(self) -> None:
        self._clock: Pending | None = None
        self._lead: dict[str, Any] | None = None

    def wrote(self, clock: Pending, lead: dict[str, Any]) -> None:
        """The write's time (repository.write_plan's answer) and the response's lead."""
        self._clock, self._lead = clock, lead

    def settle(self) -> None:
        """Once committed: the response's stamped times set to the write's (the last write, when
        the work ran more than once: an Idempotency-Key taken over)."""
        if self._clock is None or self._lead is None:
            return
        row = self._clock.first()
        assert row is not None  # the guarded write raised otherwise
        fill_stamps(self._lead, repo.clock_time(row[0]))


def create_lead_retrying(attempt: Callable[[Provisional | None], T], is_sqlite: bool) -> T:
    """`attempt` runs createLead's transaction (create_lead, given its `provisional`) and, once
    committed, settles the provisional response (unless it answered with a stored one).
    PostgreSQL: first with its reads before the customer's lock; when another write changed,
    in between, the leads it matched (db.write_conflict: rolled back), once more with the lock
    first. SQLite: with the lock first."""
    if is_sqlite:
        return attempt(None)
    try:
        return attempt(Provisional())
    except Exception as exc:
        if not write_conflict(exc):
            raise
    metrics.LEAD_WRITE_RETRIES.inc()
    return attempt(None)


def create_lead(
    session: Session,
    customer_id: uuid.UUID,
    request: LeadCreateRequest,
    phone_region: str,
    outcomes: list[str] | None = None,
    key_check: KeyCheck | None = None,
    provisional: Provisional | None = None,
) -> tuple[int, dict[str, Any]]:
    """createLead inside the caller's write transaction -> (201, {"lead": …}).
    `outcomes`: gets "created" or "merged" appended (for metrics, once the caller has committed).
    `key_check`: a cached key for the first statement to confirm (auth.access.KeyCheck; StaleKey
    if it changed); a refusal raised before that statement is read leaves it unconfirmed.

    Its reads are sent together, then read (one round trip in a pipelined transaction): the
    customer's pipeline, fields and webhooks to notify (repository.begin_lead_write_later), and
    the dedup candidates; its writes then go out with the commit. The customer's write lock
    (which orders its lead writes and their times) is held from its first statement to COMMIT:

    * without `provisional` (SQLite; PostgreSQL's second try): taken by the first read, the
      candidates read after it, so that they include every lead committed before it;
    * with `provisional` (PostgreSQL): taken by the first write, which checks that the candidates
      are still those read (repository.Guard) and stamps the lead with the lock's time: the lock
      is held for one round trip's statements, not for this work too (with eight concurrent
      creates for one customer, that wait was most of a create's time). The response's times
      are then timestamps.STAMP until `provisional.settle()`; a check that fails raises
      SQLSTATE 40001 as the transaction commits (create_lead_retrying)."""
    contact = resolve_contact(request, phone_region)
    lead_input = contact[0]
    email, phone = lead_input.email_normalized, lead_input.phone_last10
    locked = provisional is None
    if locked:
        begin = repo.begin_lead_write_later(session, customer_id, utcnow(), key_check)
        matching = repo.leads_matching_later(
            session, customer_id, {email} if email else set(), {phone} if phone else set()
        )
        start = begin()
    else:
        reads = repo.lead_write_reads_later(session, customer_id, utcnow(), key_check, email, phone)()
        start, matching = reads[0], lambda: reads[1]
    if start is None:  # deleted between auth and now
        raise InvalidRequestError("Unknown customer.")
    now = start.now
    if start.webhooks is not None:
        remember_subscriptions(session, customer_id, start.webhooks)
    config = CustomerConfig(start.stages, start.field_slugs)
    resolved, errors, _ignored = resolve_row(request, config, phone_region, contact)
    if resolved is None:
        raise InvalidRequestError(" ".join(errors))
    existing = matching()
    defaults = MergeDefaults(
        customer_id=customer_id,
        now=now,
        default_stage_id=config.default_stage_id,
        source_platform="direct",
        source_type="manual",
        counts_as_interaction=True,
    )
    before = {rec["id"]: repo.bucket_of(rec) for rec in existing}
    # The matched lead as it was, for lead.updated (the merge changes the records in place).
    originals = {
        rec["id"]: {**rec, "custom_fields": dict(rec.get("custom_fields") or {})} for rec in existing
    }
    guard = None if locked else repo.Guard(now, email, phone, list(originals.values()))
    plan = plan_merge([(resolved, RowOutcome(row_ref=None, status="failed"))], existing, defaults)
    clock = _apply_plan(session, customer_id, plan, before, config, guard)
    outcome = plan.outcomes[0]
    assert outcome.lead_id is not None
    rec = plan.leads[outcome.lead_id]
    stamp = None if locked else now
    body = lead_body(rec, config.stage(rec["stage_id"]), config.owners.get(rec["owner_id"]), stamp=stamp)
    if outcome.status == "created":
        record_lead_created(session, customer_id, body)
    elif outcome.lead_id in plan.changed_columns:
        was = originals[outcome.lead_id]
        record_lead_updated(session, customer_id, body, lead_body(was, config.stage(was["stage_id"]), None))
    if provisional is not None and clock is not None:
        provisional.wrote(clock, body)
    if outcomes is not None:
        outcomes.append("created" if outcome.status == "created" else "merged")
    return 201, {"lead": body}


def bulk_import(
    session: Session,
    customer_id: uuid.UUID,
    raw_rows: list[Any],
    *,
    on_duplicate: str,
    dry_run: bool,
    phone_region: str,
) -> tuple[int, dict[str, Any]]:
    """bulkImportLeads inside the caller's write transaction (rolled back by the caller on dry_run).

    Set-based: a fixed number of statements whatever the row count. In phases: parse the rows,
    check them against the customer's configuration, match them to existing leads and plan the
    merge, write the plan (unless `dry_run`), and summarise the outcome of each row.
    """
    now = _begin_lead_write(session, customer_id)
    parsed = _parse_rows(raw_rows)
    owner_ids = {u for row, _ in parsed if row and row.owner_id and (u := parse_uuid(row.owner_id))}
    config = load_config(session, customer_id, owner_ids)
    resolved, unknown = _resolve_rows(parsed, config, phone_region)
    plan, before = _plan_import(session, customer_id, resolved, config, now, on_duplicate)
    if not dry_run:
        _apply_plan(session, customer_id, plan, before, config)
    return 200, _import_report(plan, unknown, dry_run)


ParsedRow = tuple[BulkLeadRow | None, RowOutcome]  # None: the row failed, its outcome says why
ResolvedRow = tuple[LeadInput | None, RowOutcome]


def _parse_rows(raw_rows: list[Any]) -> list[ParsedRow]:
    """Phase 1: each raw JSON row read as a BulkLeadRow (its shape and types), with the outcome
    it will report (`row_ref` echoed when it is a string; failed, with errors, until planned)."""
    parsed: list[ParsedRow] = []
    for raw in raw_rows:
        if not isinstance(raw, dict):
            parsed.append(
                (None, RowOutcome(row_ref=None, status="failed", errors=["A lead must be a JSON object."]))
            )
            continue
        row_ref = raw.get("row_ref")
        outcome = RowOutcome(row_ref=row_ref if isinstance(row_ref, str) else None, status="failed")
        try:
            parsed.append((BulkLeadRow.model_validate(raw), outcome))
        except ValidationError as exc:
            outcome.errors = describe_errors(exc.errors())
            parsed.append((None, outcome))
    return parsed


def _resolve_rows(
    parsed: list[ParsedRow], config: CustomerConfig, phone_region: str
) -> tuple[list[ResolvedRow], dict[str, None]]:
    """Phase 2: the parsed rows checked against the customer's configuration (resolve_row) ->
    (each row's merge input, or None with its outcome's errors set; the custom-field slugs
    ignored by any row, in first-seen order)."""
    resolved: list[ResolvedRow] = []
    unknown: dict[str, None] = {}
    for row, outcome in parsed:
        if row is None:
            resolved.append((None, outcome))
            continue
        lead_input, errors, ignored = resolve_row(row, config, phone_region)
        outcome.ignored_custom_fields = ignored
        unknown.update(dict.fromkeys(ignored))
        if lead_input is None:
            outcome.errors = errors
        resolved.append((lead_input, outcome))
    return resolved, unknown


def _plan_import(
    session: Session,
    customer_id: uuid.UUID,
    resolved: list[ResolvedRow],
    config: CustomerConfig,
    now: datetime,
    on_duplicate: str,
) -> tuple[MergePlan, dict[uuid.UUID, repo.Bucket]]:
    """Phase 3: the existing leads the rows match (by email or phone) and the merge plan
    (leads/dedup.py's rule) -> (the plan, each matched lead's count bucket before the merge)."""
    emails = {i.email_normalized for i, _ in resolved if i and i.email_normalized}
    phones = {i.phone_last10 for i, _ in resolved if i and i.phone_last10}
    existing = repo.leads_matching(session, customer_id, emails, phones)
    defaults = MergeDefaults(
        customer_id=customer_id,
        now=now,
        default_stage_id=config.default_stage_id,
        source_platform="direct",
        source_type="import",
        counts_as_interaction=False,
    )
    before = {rec["id"]: repo.bucket_of(rec) for rec in existing}
    return plan_merge(resolved, existing, defaults, on_duplicate=on_duplicate), before


def _import_report(plan: MergePlan, unknown: dict[str, None], dry_run: bool) -> dict[str, Any]:
    """Phase 5: the response body: a summary by status and one result per row, in row order."""
    results = []
    summary = {"total": len(plan.outcomes), "created": 0, "updated": 0, "skipped": 0, "failed": 0}
    # A dry run creates nothing, so a row resolved to a would-be-new lead (created, or merged into
    # a lead an earlier row of the batch would create) has no id to show.
    unborn = {rec["id"] for rec in plan.inserts} if dry_run else set()
    for outcome in plan.outcomes:
        summary[outcome.status] += 1
        lead_id = None if outcome.lead_id in unborn else outcome.lead_id
        results.append(
            {
                "row_ref": outcome.row_ref,
                "status": outcome.status,
                "lead_id": str(lead_id) if lead_id else None,
                "matched_by": outcome.matched_by,
                "errors": outcome.errors if outcome.status == "failed" else None,
                "ignored_custom_fields": outcome.ignored_custom_fields,
            }
        )
    return {
        "dry_run": dry_run,
        "summary": summary,
        "results": results,
        "unknown_custom_fields": list(unknown),
    }


# --- listing --------------------------------------------------------------------------------


class TotalsCache:
    """`total` per (customer, filters), valid while the customer's leads_version is unchanged:
    paging through a large result set counts it once, not once per page."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[tuple[Any, ...], tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, key: tuple[Any, ...]) -> tuple[int, int] | None:
        """-> (the leads_version it was counted at, the total), or None."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            return hit

    def put(self, key: tuple[Any, ...], version: int, total: int) -> None:
        with self._lock:
            self._entries[key] = (version, total)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


def build_filters(q: ListLeadsQuery, phone_region: str) -> repo.LeadFilters:
    """The filters of a listLeads query; `search` read by leads/search.py's rule, its phone
    numbers in `phone_region` (MEGA_DEFAULT_PHONE_REGION), as the write path reads them."""
    if q.status is not None and q.status not in LEAD_STATUSES:
        raise InvalidRequestError(f"status must be one of {', '.join(LEAD_STATUSES)}.")
    terms = parse_search(q.search, phone_region) if q.search else SearchTerms()
    return repo.LeadFilters(
        status=q.status,
        stage_id=q.stage_id,
        search_text=terms.text,
        search_scan=terms.scan_text,
        search_phone_key=terms.phone_key,
        search_phone_digits=terms.phone_digits,
        created_since=q.created_since,  # aware, in UTC (validation.parse_rfc3339)
        updated_since=q.updated_since,
        lead_line=q.lead_line,
    )


# No customer has this many leads; a larger offset (which the databases' 64-bit OFFSET could
# not even hold, nor orjson echo back past 2**64) is simply past the end, and is echoed as this.
MAX_OFFSET = 2**62


def list_leads(
    reader: RawConnection,
    customer_id: uuid.UUID,
    q: ListLeadsQuery,
    codec: CursorCodec,
    totals: TotalsCache,
    phone_region: str,
    key_check: KeyCheck | None = None,
) -> bytes:
    """listLeads' response body, JSON: the page is the leads' stored documents joined together.
    `phone_region`: MEGA_DEFAULT_PHONE_REGION, for phone numbers in `search`. `key_check`: a
    cached key, confirmed by the page's statement (raises auth.access.StaleKey if it changed)."""
    filters = build_filters(q, phone_region)
    after: CursorPosition | None = None
    if q.cursor:
        if q.offset:
            raise InvalidRequestError("Use either cursor or offset, not both.")
        after = codec.decode(q.cursor, customer_id, q.sort_by, q.sort_dir)
    offset = min(q.offset, MAX_OFFSET)

    def page(count: bool = False) -> repo.Page:
        return repo.page_of_leads(
            reader,
            customer_id,
            filters,
            sort_by=q.sort_by,
            descending=q.sort_dir == "desc",
            limit=q.limit,
            offset=offset,
            after=after,
            with_custom_fields=q.include_custom_fields,
            key_check=key_check,
            count=count,
        )

    if repo.countable(filters) or repo.searched(filters):  # the page's statement reads the total too
        found = page()
        assert found.total is not None
        total = found.total
    else:  # date filters: counted once per filter until the customer's next write
        cache_key = (customer_id, filters)
        cached = totals.get(cache_key)
        # The page's statement reads the customer's leads_version, and counts when no total
        # is cached for it: page and total always come from one snapshot.
        found = page(count=cached is None)
        if cached is not None and cached[0] != found.version:
            found = page(count=True)
        if found.total is None:
            assert cached is not None
            total = cached[1]
        else:
            total = found.total
            if found.version is not None:
                totals.put(cache_key, found.version, total)
    next_cursor = None
    if found.next_after is not None:
        next_cursor = codec.encode(customer_id, q.sort_by, q.sort_dir, found.next_after)
    tail = orjson.dumps({"total": total, "limit": q.limit, "offset": offset, "next_cursor": next_cursor})
    # One copy of the page into the body (see Page.json_items): `+` copied it three times.
    return b"".join((b'{"leads":[', found.json_items(q.limit), b"],", memoryview(tail)[1:]))
