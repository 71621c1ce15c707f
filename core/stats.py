"""Counting what the server does, at the cost of an addition.

Hot paths (every request, every event, every cache lookup) keep plain integers and these
histograms in the objects that do the work; nothing is locked (one event loop) and nothing is
labelled with unbounded values. Whoever exposes them (Prometheus, at scrape time) reads them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds: from a cache hit to a slow federation request.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
# Counts of things in a batch.
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


class Histogram:
    """Observations counted per bucket: ``counts[i]`` holds those ``<= bounds[i]`` and above
    the bound before; the last holds those above every bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations at or below it)``, ending with ``+Inf`` (the
        Prometheus form)."""
        out = []
        total = 0
        for bound, count in zip((*map(_bound_label, self.bounds), "+Inf"), self.counts,
                                strict=True):
            total += count
            out.append((bound, total))
        return out


def _bound_label(bound: float) -> str:
    return repr(float(bound))


class HitCounter:
    """Hits and misses of one cache."""

    __slots__ = ("hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
