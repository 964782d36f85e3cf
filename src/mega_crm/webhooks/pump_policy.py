"""What the delivery worker's pump does next, as pure functions of its state.

The pump (webhooks/worker.py) is the one task that writes to the database: each transaction
records the attempts that have finished and claims due deliveries for the free slots. These
functions decide, from plain values, whether to finish, wait (how long, woken by what) or run a
transaction (claiming how many); the pump only performs what they return, so the policy is
unit-tested without a database, an event loop or a clock (tests/webhooks/test_pump_policy.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

# Under load, how long a finished attempt's outcome may wait to share a transaction with the
# next claim (its lease is held meanwhile, so nothing is lost if the worker dies).
RECORD_HOLD_SECONDS = 0.1
# After a failed transaction the next waits this many seconds per failure in a row, at most:
MAX_FAILURE_BACKOFF_SECONDS = 5.0


class Action(enum.Enum):
    """The kinds of step the pump takes."""

    FINISH = "finish"  # the worker is closing and every outcome is recorded: the pump ends
    SYNC = "sync"  # one transaction: record the pending outcomes, claim `Step.claim` deliveries
    WAIT = "wait"  # sleep up to `Step.seconds`, woken early as `Step.on_wake` / `on_stop` say
    WAIT_NEXT_DUE = "wait_next_due"  # as WAIT, but only until the next delivery is due (a read)
    AGAIN = "again"  # decide again at once


@dataclass(frozen=True)
class Step:
    """One decision. `claim`: for SYNC, how many due deliveries to claim (0: only record).
    `seconds`: for WAIT (and WAIT_NEXT_DUE, its upper bound). `on_wake`: a wake-up (an attempt
    finished, deliveries were added) ends the wait early; `on_stop`: so does the stop signal."""

    action: Action
    claim: int = 0
    seconds: float = 0.0
    on_wake: bool = True
    on_stop: bool = False


FINISH = Step(Action.FINISH)
AGAIN = Step(Action.AGAIN)


@dataclass(frozen=True)
class PumpState:
    """What the pump knows at the top of a round.

    concurrency: attempts in flight at once, at most (MEGA_WEBHOOK_WORKER_CONCURRENCY).
    batch: the fewest free slots worth a transaction of their own while attempts are in flight.
    in_flight: attempts running now. records: finished attempts not yet recorded, the oldest
    finished at `oldest_record_at` (None when there are none). stopping: the stop signal is set
    (no more claims); closing: the worker is shutting down (record what is left, then finish).
    now: the current time (UTC). poll: seconds between looks when nothing wakes the pump.
    """

    concurrency: int
    batch: int
    in_flight: int
    records: int
    oldest_record_at: datetime | None
    stopping: bool
    closing: bool
    now: datetime
    poll: float

    @property
    def claiming(self) -> bool:
        """Whether this round may claim deliveries (not once stop is signalled)."""
        return not self.stopping and not self.closing


def claim_size(state: PumpState) -> int:
    """How many deliveries to claim now: every free slot, but a few free slots wait for more
    while attempts are in flight (those free more soon) rather than cost a transaction each."""
    free = state.concurrency - state.in_flight if state.claiming else 0
    return free if free >= state.batch or (free > 0 and not state.in_flight) else 0


def next_step(state: PumpState) -> Step:
    """The round's first decision: FINISH, WAIT (hold the outcomes for the next claim, or idle
    until woken or `poll`), or SYNC (record the outcomes and claim `claim_size`)."""
    if state.closing and not state.records:
        return FINISH
    want = claim_size(state)
    if state.claiming and not want and state.records and state.in_flight:
        # Nearly every slot is busy: outcomes wait (briefly) for the next claim's transaction
        # instead of taking one of their own.
        assert state.oldest_record_at is not None
        age = (state.now - state.oldest_record_at).total_seconds()
        if age < RECORD_HOLD_SECONDS:
            return Step(Action.WAIT, seconds=RECORD_HOLD_SECONDS - age, on_stop=True)
    if not state.records and not want:
        return Step(Action.WAIT, seconds=state.poll, on_stop=state.claiming)
    return Step(Action.SYNC, claim=want)


def after_sync(state: PumpState, wanted: int, claimed: int, records: int) -> Step:
    """After a transaction that claimed `claimed` of `wanted`, with `records` outcomes arrived
    meanwhile: AGAIN when there may be more due already (all wanted were there) or outcomes
    wait; WAIT_NEXT_DUE when nothing was due (sleep until the next is, a retry just recorded
    perhaps); else WAIT for a wake-up or `poll`."""
    if (wanted and claimed == wanted) or records:
        return AGAIN
    if wanted and not claimed:
        return Step(Action.WAIT_NEXT_DUE, seconds=state.poll, on_stop=state.claiming)
    return Step(Action.WAIT, seconds=state.poll, on_stop=state.claiming)


def after_failure(state: PumpState, failures: int) -> Step:
    """After `failures` (>= 1) failed transactions in a row: the database is unwell, so wait a
    little longer each time (1 s per failure, at most 5 s), and not sooner when an attempt
    finishes: that would hammer it. Only the stop signal ends the wait early, while claiming."""
    delay = min(MAX_FAILURE_BACKOFF_SECONDS, float(failures))
    return Step(Action.WAIT, seconds=delay, on_wake=False, on_stop=state.claiming)


def next_due_wait(next_due: datetime | None, now: datetime, poll: float) -> float:
    """Seconds to sleep until the delivery due next at `next_due` is claimable (5 ms after, so
    it is), at most `poll`; `poll` when nothing is pending."""
    if next_due is None:
        return poll
    return min(poll, max(0.0, (next_due - now).total_seconds()) + 0.005)
