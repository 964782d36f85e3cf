"""The delivery pump's policy (webhooks/pump_policy.py), with plain values: no database, no loop."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mega_crm.webhooks.pump_policy import (
    AGAIN,
    FINISH,
    MAX_FAILURE_BACKOFF_SECONDS,
    RECORD_HOLD_SECONDS,
    Action,
    PumpState,
    Step,
    after_failure,
    after_sync,
    claim_size,
    next_due_wait,
    next_step,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
IDLE = PumpState(
    concurrency=16,
    batch=4,
    in_flight=0,
    records=0,
    oldest_record_at=None,
    stopping=False,
    closing=False,
    now=NOW,
    poll=2.0,
)


def state(**changes: Any) -> PumpState:
    return replace(IDLE, **changes)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_an_idle_worker_claims_every_slot() -> None:
    assert next_step(IDLE) == Step(Action.SYNC, claim=16)


def test_free_slots_are_claimed_in_batches_while_attempts_are_in_flight() -> None:
    assert claim_size(state(in_flight=12)) == 4  # a batch's worth
    assert claim_size(state(in_flight=14)) == 0  # 2 free: they wait for more
    assert claim_size(state(in_flight=16)) == 0
    assert claim_size(state(concurrency=1, batch=1, in_flight=0)) == 1
    # With nothing in flight even one free slot is worth a transaction.
    assert claim_size(state(concurrency=3, batch=4)) == 3


def test_nothing_to_claim_or_record_waits_for_a_wake_up_stop_or_the_poll() -> None:
    assert next_step(state(in_flight=16)) == Step(Action.WAIT, seconds=2.0, on_wake=True, on_stop=True)


def test_outcomes_wait_briefly_for_the_next_claim_when_nearly_every_slot_is_busy() -> None:
    step = next_step(state(in_flight=15, records=1, oldest_record_at=ago(0.04)))
    assert step.action is Action.WAIT
    assert step.seconds == pytest.approx(RECORD_HOLD_SECONDS - 0.04)
    assert (step.on_wake, step.on_stop) == (True, True)


def test_outcomes_held_long_enough_are_recorded_alone() -> None:
    step = next_step(state(in_flight=15, records=3, oldest_record_at=ago(RECORD_HOLD_SECONDS)))
    assert step == Step(Action.SYNC, claim=0)


def test_outcomes_are_recorded_with_a_claim_when_slots_are_free() -> None:
    assert next_step(state(in_flight=4, records=2, oldest_record_at=NOW)) == Step(Action.SYNC, claim=12)


def test_outcomes_are_not_held_when_nothing_is_in_flight() -> None:
    # Every attempt has finished: no claim can come soon to share the transaction with.
    step = next_step(state(concurrency=16, batch=20, records=1, oldest_record_at=NOW))
    assert step == Step(Action.SYNC, claim=16)


def test_after_stop_it_only_records() -> None:
    stopping = state(stopping=True, in_flight=3)
    assert not stopping.claiming
    assert claim_size(stopping) == 0
    # Nothing to record: wait for a finished attempt (the stop signal no longer ends the wait).
    assert next_step(stopping) == Step(Action.WAIT, seconds=2.0, on_wake=True, on_stop=False)
    # Outcomes are recorded at once, never held for a claim that will not come.
    assert next_step(replace(stopping, records=2, oldest_record_at=NOW)) == Step(Action.SYNC, claim=0)


def test_closing_records_what_is_left_then_finishes() -> None:
    assert next_step(state(closing=True, records=1, oldest_record_at=NOW)) == Step(Action.SYNC, claim=0)
    assert next_step(state(closing=True)) == FINISH
    assert next_step(state(closing=True, stopping=True, in_flight=2)) == FINISH


def test_after_a_full_claim_or_with_outcomes_waiting_it_decides_again_at_once() -> None:
    assert after_sync(IDLE, wanted=16, claimed=16, records=0) == AGAIN  # more may be due
    assert after_sync(IDLE, wanted=16, claimed=3, records=1) == AGAIN  # outcomes arrived meanwhile
    assert after_sync(IDLE, wanted=0, claimed=0, records=2) == AGAIN


def test_after_claiming_nothing_it_sleeps_until_the_next_delivery_is_due() -> None:
    step = after_sync(IDLE, wanted=16, claimed=0, records=0)
    assert step == Step(Action.WAIT_NEXT_DUE, seconds=2.0, on_wake=True, on_stop=True)


def test_after_a_partial_claim_or_only_recording_it_waits_for_a_wake_up_or_the_poll() -> None:
    assert after_sync(IDLE, wanted=16, claimed=5, records=0) == Step(Action.WAIT, seconds=2.0, on_stop=True)
    stopping = state(stopping=True)
    assert after_sync(stopping, wanted=0, claimed=0, records=0) == Step(Action.WAIT, seconds=2.0)


def test_a_failing_database_is_retried_later_each_time_and_not_on_wake_ups() -> None:
    delays = [after_failure(IDLE, n).seconds for n in (1, 2, 3, 5, 50)]
    assert delays == [1.0, 2.0, 3.0, 5.0, MAX_FAILURE_BACKOFF_SECONDS]
    step = after_failure(IDLE, 1)
    assert (step.action, step.on_wake, step.on_stop) == (Action.WAIT, False, True)
    # Once stopping, only the delay ends the wait (the outcomes must still be recorded).
    assert after_failure(state(stopping=True), 2) == Step(Action.WAIT, seconds=2.0, on_wake=False)


def test_the_sleep_until_the_next_due_delivery_is_capped_by_the_poll() -> None:
    assert next_due_wait(None, NOW, 2.0) == 2.0
    assert next_due_wait(NOW + timedelta(seconds=0.5), NOW, 2.0) == pytest.approx(0.505)
    assert next_due_wait(NOW + timedelta(seconds=60), NOW, 2.0) == 2.0
    assert next_due_wait(ago(3), NOW, 2.0) == pytest.approx(0.005)  # overdue: at once
