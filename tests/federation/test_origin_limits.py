"""Per-server request limits: a few at once, a bounded queue, 429 beyond it."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import LimitExceeded
from federation.inbound.limits import OriginLimiter


async def test_a_few_at_once_the_rest_queue_then_refused() -> None:
    limiter = OriginLimiter(concurrent=2, queued=4)
    release = asyncio.Event()
    running: list[int] = []
    done: list[int] = []

    async def request(n: int, origin: str = "busy.example") -> None:
        async with limiter.slot(origin):
            running.append(n)
            await release.wait()
            done.append(n)

    tasks = [asyncio.create_task(request(n)) for n in range(4)]
    await asyncio.sleep(0.01)
    assert sorted(running) == [0, 1]  # two at once, two waiting
    with pytest.raises(LimitExceeded):
        async with limiter.slot("busy.example"):
            pass
    # Another server is not held up by the busy one.
    async with limiter.slot("quiet.example"):
        pass
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(done) == [0, 1, 2, 3]
    # Once idle, the server is forgotten (nothing grows per server ever seen).
    assert limiter._slots == {} and limiter._waiting == {}


async def test_a_failing_request_frees_its_slot() -> None:
    limiter = OriginLimiter(concurrent=1, queued=1)
    with pytest.raises(RuntimeError):
        async with limiter.slot("a.example"):
            raise RuntimeError("boom")
    async with limiter.slot("a.example"):
        pass
