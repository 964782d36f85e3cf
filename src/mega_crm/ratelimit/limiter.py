"""Per-key rate limits with the `limits` library: in-process by default, Redis when configured.

Fixed windows, as the contract describes them: `RateLimit-Reset` is the time until the window
refills, and then the whole budget is back. (A sliding window refills gradually, so no such time
exists; at its "reset" a client found most of its budget still spent.) A window starts at its
first request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import limits
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from mega_crm.errors import RateLimitError
from mega_crm.failures import OutageLog
from mega_crm.observability.metrics import RATE_LIMIT_REFUSALS
from mega_crm.security import ConfigurationError

log = logging.getLogger("mega_crm")

DEFAULT_BUCKET = "default"
BULK_BUCKET = "bulk"


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


@lru_cache(maxsize=256)
def parse_limits(spec: str) -> tuple[limits.RateLimitItem, ...]:
    """ "60/minute;1000/hour" -> items; raises ValueError on a bad spec."""
    items = tuple(limits.parse_many(spec))
    if not items:
        raise ValueError(f"no rate limits in {spec!r}")
    return items


def check_server_limits(default: str, bulk: str) -> None:
    """Refuse to start with a MEGA_RATE_LIMIT_* that would make every request fail."""
    for env, spec in (("MEGA_RATE_LIMIT_DEFAULT", default), ("MEGA_RATE_LIMIT_BULK", bulk)):
        try:
            parse_limits(spec)
        except ValueError:
            message = f"{env}={spec!r} is not a rate limit (e.g. '60/minute;1000/hour')"
            raise ConfigurationError(message) from None


class CircuitBreaker:
    """Skips a failing dependency for a while instead of waiting on it in every request.

    closed: calls go through. After a failure: open, every call is skipped for `open_seconds`;
    then half-open: one call (the probe) goes through while the others are still skipped; its
    success closes the breaker, its failure opens it again. Thread-safe. `state` is for a
    metrics gauge (`STATES` gives its numeric value). Rule: Nygard, *Release It!*, "Circuit
    Breaker"."""

    STATES = {"closed": 0, "open": 1, "half_open": 2}

    def __init__(self, open_seconds: float, outage: OutageLog) -> None:
        self.open_seconds = open_seconds
        self.outage = outage
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "half_open" if self._probing or time.monotonic() >= self._open_until else "open"

    def allow(self) -> bool:
        """True when the call should be made (closed, or this call is the half-open probe)."""
        if self._open_until is None:  # the common case: no lock
            return True
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or time.monotonic() < self._open_until:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        if self._open_until is None:
            return
        with self._lock:
            self._open_until = None
            self._probing = False
        self.outage.up()

    def failed(self, detail: str) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self.open_seconds
            self._probing = False
        self.outage.down(detail)


class SweptMemoryStorage(MemoryStorage):
    """limits' MemoryStorage (the in-process counters), its expired counters dropped every
    SWEEP_SECONDS by the request that finds the last sweep that old, not by a timer thread.

    MemoryStorage starts a 10 ms threading.Timer whenever the last one has ended: about 100
    thread starts a second under load, each making the request that starts it wait until the
    new thread runs. A counter's expiry does not depend on the sweep (MemoryStorage.get drops
    an expired counter as it reads it); the sweep only bounds the memory of keys gone quiet.
    Overrides MemoryStorage's private (name-mangled) scheduling: tests/ratelimit checks that
    no thread is started per request, and that expired counters are still dropped."""

    SWEEP_SECONDS = 10.0

    def __init__(self) -> None:
        super().__init__(wrap_exceptions=True)
        self.timer.cancel()  # the one MemoryStorage starts
        self._swept_at = time.monotonic()
        self._sweeping = threading.Lock()

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._swept_at < self.SWEEP_SECONDS or not self._sweeping.acquire(blocking=False):
            return
        try:
            self._swept_at = now
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        finally:
            self._sweeping.release()


class RateLimiter:
    def __init__(
        self, redis_url: str | None = None, *, timeout: float = 0.25, breaker_seconds: float = 10.0
    ) -> None:
        """`timeout` (seconds) bounds each Redis call (connect and answer); after a failed one the
        breaker skips Redis for `breaker_seconds` (requests are served without limits)."""
        if redis_url:
            self.storage = storage_from_string(
                redis_url, wrap_exceptions=True, socket_connect_timeout=timeout, socket_timeout=timeout
            )
        else:
            self.storage = SweptMemoryStorage()
        self._limiter = FixedWindowRateLimiter(self.storage)
        outage = OutageLog("rate-limit storage", "requests are not being limited")
        self.breaker = CircuitBreaker(breaker_seconds, outage)

    def hit(self, key_id: str, bucket: str, spec: str, counted: str | None = None) -> RateLimitState | None:
        """Count one request against every window of the bucket; 429 if any is exhausted.
        `counted`: a spec this request was already counted under (judged again after its key
        changed: auth.access); its windows are not counted twice, only reported, and those
        `spec` no longer has are given back (`refund`).

        A refused request is counted against no window, so a client held back by the minute
        window does not burn its hourly budget. The reported window is the most constraining
        one (fewest remaining, then longest wait). None when the counters cannot be reached
        (an error, no answer within the timeout, or the breaker open after one): a Redis outage
        lets requests through uncounted rather than failing or holding up all of them; it is
        logged when it starts and when it ends.
        """
        if not self.breaker.allow():
            return None
        try:
            state = self._hit(key_id, bucket, spec, counted)
            if counted:
                self._refund(key_id, bucket, counted, keep=spec)
        except StorageError as exc:
            self.breaker.failed(f"{type(exc.storage_error).__name__}: {str(exc.storage_error)[:200]}")
            return None
        except RateLimitError:
            self.breaker.succeeded()
            raise
        self.breaker.succeeded()
        return state

    def refund(self, key_id: str, bucket: str, spec: str) -> None:
        """Give back one request counted under `spec` (a request judged again found its key gone:
        it is answered 401, which is never counted). Storage errors are ignored (breaker)."""
        if not self.breaker.allow():
            return
        try:
            self._refund(key_id, bucket, spec, keep=None)
        except StorageError as exc:
            self.breaker.failed(f"{type(exc.storage_error).__name__}: {str(exc.storage_error)[:200]}")

    def _refund(self, key_id: str, bucket: str, spec: str, keep: str | None) -> None:
        kept = set(parse_limits(keep)) if keep else set()
        for item in parse_limits(spec):
            if item not in kept:
                self._limiter.hit(item, bucket, key_id, cost=-1)  # the window's count, one less

    def _hit(self, key_id: str, bucket: str, spec: str, counted: str | None) -> RateLimitState:
        items = parse_limits(spec)
        done = set(parse_limits(counted)) if counted else set()
        due = [item for item in items if item not in done]
        # A refused hit is not counted; testing first only matters with several windows.
        tested = len(due) > 1
        exhausted = next(
            (item for item in due if tested and not self._limiter.test(item, bucket, key_id)), None
        )
        if exhausted is None:
            # test-then-hit is not atomic: a request that loses the race for a window's last slot
            # is refused, and may have been counted in the windows before it (rare, harmless).
            exhausted = next((item for item in due if not self._limiter.hit(item, bucket, key_id)), None)
        if exhausted is not None:
            headers = self._state(exhausted, bucket, key_id).headers()
            headers["RateLimit-Remaining"] = "0"
            headers["Retry-After"] = str(max(1, int(headers["RateLimit-Reset"])))
            RATE_LIMIT_REFUSALS.labels(bucket).inc()
            raise RateLimitError("Rate limit exceeded; retry after the Retry-After seconds.", headers=headers)
        states = [self._state(item, bucket, key_id) for item in items]
        return min(states, key=lambda s: (s.remaining, -s.reset_seconds))

    def _state(self, item: limits.RateLimitItem, bucket: str, key_id: str) -> RateLimitState:
        stats = self._limiter.get_window_stats(item, bucket, key_id)
        reset = math.ceil(stats.reset_time - time.time())
        if reset <= 0:  # no window yet (nothing counted in it): a new one would last a full window
            reset = item.get_expiry()
        return RateLimitState(limit=item.amount, remaining=max(0, stats.remaining), reset_seconds=reset)

    def reset(self) -> None:
        self.storage.reset()
