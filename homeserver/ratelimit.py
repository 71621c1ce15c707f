"""Token-bucket rate limiting, keyed by anything hashable (an IP, a user ID)."""

from __future__ import annotations

from collections.abc import Hashable

from core.clock import Clock
from core.errors import LimitExceeded


class RateLimiter:
    """``burst_count`` actions at once, refilled at ``per_second``.

    State is a dict of key -> (tokens, last refill); full buckets are dropped, so memory is
    bounded by the keys active within one refill period.
    """

    def __init__(self, clock: Clock, per_second: float, burst_count: int, *, enabled: bool = True
                 ) -> None:
        self._clock = clock
        self._rate = per_second
        self._burst = float(burst_count)
        self._enabled = enabled
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._last_prune = 0.0

    def _level(self, key: Hashable, now: float) -> float:
        tokens, last = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - last) * self._rate)

    def check(self, key: Hashable, *, cost: float = 1.0, consume: bool = True) -> None:
        """Take ``cost`` from the key's bucket, or raise 429 ``LimitExceeded``.

        With ``consume=False`` it only tells whether the action would be allowed now.
        """
        if not self._enabled:
            return
        now = self._clock.monotonic()
        self._prune(now)
        tokens = self._level(key, now)
        if tokens < cost:
            retry_after_ms = int((cost - tokens) / self._rate * 1000) + 1
            raise LimitExceeded(retry_after_ms)
        if consume:
            self._buckets[key] = (tokens - cost, now)

    def record(self, key: Hashable, *, cost: float = 1.0) -> None:
        """Take ``cost`` even if that empties the bucket (e.g. after a failed login)."""
        if not self._enabled:
            return
        now = self._clock.monotonic()
        self._buckets[key] = (max(0.0, self._level(key, now) - cost), now)

    def _prune(self, now: float) -> None:
        full_after = self._burst / self._rate
        if now - self._last_prune < min(60.0, full_after):
            return
        self._last_prune = now
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
