"""Per-key rate limits with the `limits` library: in-process by default, Redis when configured."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import limits
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from mega_crm.errors import RateLimitError

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


class RateLimiter:
    def __init__(self, redis_url: str | None = None) -> None:
        uri = redis_url if redis_url else "memory://"
        self.storage = storage_from_string(uri)
        self._limiter = SlidingWindowCounterRateLimiter(self.storage)

    def hit(self, key_id: str, bucket: str, spec: str) -> RateLimitState:
        """Count one request against every window of the bucket; 429 if any is exhausted.

        The reported window is the most constraining one (fewest remaining, then longest wait).
        """
        now = time.time()
        states: list[RateLimitState] = []
        exceeded: RateLimitState | None = None
        for item in parse_limits(spec):
            allowed = self._limiter.hit(item, bucket, key_id)
            stats = self._limiter.get_window_stats(item, bucket, key_id)
            state = RateLimitState(
                limit=item.amount,
                remaining=max(0, stats.remaining),
                reset_seconds=max(0, math.ceil(stats.reset_time - now)),
            )
            states.append(state)
            if not allowed and exceeded is None:
                exceeded = state
        if exceeded is not None:
            headers = exceeded.headers()
            headers["Retry-After"] = str(max(1, exceeded.reset_seconds))
            raise RateLimitError("Rate limit exceeded; retry after the Retry-After seconds.", headers=headers)
        return min(states, key=lambda s: (s.remaining, -s.reset_seconds))

    def reset(self) -> None:
        self.storage.reset()
