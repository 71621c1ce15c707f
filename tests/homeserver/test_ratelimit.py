"""The token-bucket rate limiter, driven by a fake clock."""

from __future__ import annotations

import pytest

from core.errors import LimitExceeded
from homeserver.ratelimit import RateLimiter


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def time_ms(self) -> int:
        return int(self.now * 1000)

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def allowed(limiter: RateLimiter, key: object = "k", **kwargs: object) -> bool:
    try:
        limiter.check(key, **kwargs)  # type: ignore[arg-type]
    except LimitExceeded:
        return False
    return True


def retry_after(limiter: RateLimiter, key: object = "k", **kwargs: object) -> int:
    with pytest.raises(LimitExceeded) as excinfo:
        limiter.check(key, **kwargs)  # type: ignore[arg-type]
    return int(excinfo.value.extra["retry_after_ms"])


def test_burst_then_limited(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=3)
    assert [allowed(limiter) for _ in range(3)] == [True, True, True]
    assert allowed(limiter) is False
    assert allowed(limiter) is False


def test_limit_exceeded_is_a_429(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=0.5, burst_count=1)
    limiter.check("k")
    with pytest.raises(LimitExceeded) as excinfo:
        limiter.check("k")
    error = excinfo.value
    assert error.status == 429
    body = error.to_json()
    assert body["errcode"] == "M_LIMIT_EXCEEDED"
    assert body["retry_after_ms"] == 2001
    assert error.headers["Retry-After"] == "3"


def test_refill(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=2.0, burst_count=2)
    assert allowed(limiter) and allowed(limiter)
    assert not allowed(limiter)
    clock.advance(0.25)  # half a token
    assert not allowed(limiter)
    clock.advance(0.25)
    assert allowed(limiter)
    assert not allowed(limiter)
    clock.advance(0.5)
    assert allowed(limiter)


def test_refill_caps_at_burst(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=3)
    limiter.check("k")
    clock.advance(3600)
    assert [allowed(limiter) for _ in range(4)] == [True, True, True, False]


def test_retry_after_ms(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=1)
    limiter.check("k")
    assert retry_after(limiter) == 1001
    clock.advance(0.4)
    assert retry_after(limiter) == 601
    # Waiting as long as told is enough.
    clock.advance(0.601)
    assert allowed(limiter)


def test_retry_after_with_slow_refill(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=0.17, burst_count=5)
    for _ in range(5):
        limiter.check("k")
    wait_ms = retry_after(limiter)
    assert wait_ms == pytest.approx(1000 / 0.17, abs=2)
    clock.advance((wait_ms - 5) / 1000)
    assert not allowed(limiter)
    clock.advance(5 / 1000)
    assert allowed(limiter)


def test_keys_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=1)
    assert allowed(limiter, "1.2.3.4")
    assert not allowed(limiter, "1.2.3.4")
    assert allowed(limiter, "5.6.7.8")
    assert allowed(limiter, ("user", "@a:x"))
    assert not allowed(limiter, ("user", "@a:x"))


def test_cost(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=5)
    limiter.check("k", cost=3)
    assert not allowed(limiter, cost=3)
    assert allowed(limiter, cost=2)
    assert not allowed(limiter)


def test_consume_false_only_looks(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=2)
    for _ in range(10):
        limiter.check("k", consume=False)
    assert allowed(limiter) and allowed(limiter)
    assert not allowed(limiter, consume=False)
    assert retry_after(limiter, consume=False) == 1001


def test_record_takes_tokens_without_raising(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=3)
    limiter.record("k")
    limiter.record("k")
    assert allowed(limiter, consume=False)
    limiter.record("k")
    assert not allowed(limiter, consume=False)
    # Recording past empty never raises and never goes below empty.
    for _ in range(10):
        limiter.record("k")
    clock.advance(1.0)
    assert allowed(limiter, consume=False)


def test_failed_login_pattern(clock: FakeClock) -> None:
    """check(consume=False) before, record() after each failure (as AccountService does)."""
    limiter = RateLimiter(clock, per_second=0.5, burst_count=3)
    for _ in range(3):
        limiter.check("@a:x", consume=False)
        limiter.record("@a:x")
    with pytest.raises(LimitExceeded):
        limiter.check("@a:x", consume=False)
    clock.advance(2.0)
    limiter.check("@a:x", consume=False)


def test_disabled(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=0.001, burst_count=1, enabled=False)
    for _ in range(100):
        limiter.check("k")
        limiter.record("k", cost=10)
    limiter.check("k", cost=1000)


def test_idle_buckets_are_pruned_without_changing_answers(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=1.0, burst_count=2)
    for i in range(1000):
        limiter.check(f"ip{i}")
    limiter.check("busy")
    limiter.check("busy")
    clock.advance(3.0)  # every bucket has refilled
    limiter.check("busy")
    assert len(limiter._buckets) <= 2
    # A pruned key starts with a full bucket, as it would have had anyway.
    assert allowed(limiter, "ip1") and allowed(limiter, "ip1")
    assert not allowed(limiter, "ip1")
    assert allowed(limiter, "busy")
    assert not allowed(limiter, "busy")


def test_pruning_keeps_partly_drained_buckets(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, per_second=0.1, burst_count=2)  # full 20 s after empty
    limiter.check("other")  # the first check prunes (nothing yet)
    clock.advance(10.0)
    limiter.check("k")
    limiter.check("k")
    clock.advance(10.0)  # a prune is due; "k" has 1 token back, not 2
    limiter.check("other")
    assert allowed(limiter)
    assert not allowed(limiter)
    assert retry_after(limiter) == 10001
