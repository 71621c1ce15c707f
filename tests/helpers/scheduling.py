"""Which test files start first, and how long each took.

``make test`` hands whole files to two processes (``--dist loadfile``) in collection order, so
a slow file collected last keeps one process busy while the other idles. ``tests/slow_files.txt``
lists the slowest files, slowest first; they are collected first. Refresh it from a whole run:
``make test PYTEST_ARGS=...`` with ``KTCHAT_TEST_TIMINGS=FILE`` set writes each file's seconds
(setup, call and teardown of its tests) to FILE, slowest first.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

SLOW_FILES = Path(__file__).resolve().parent.parent / "slow_files.txt"


def slow_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: listed files first, in the list's order; the rest after, as
    collected. Every process collects the same order, as pytest-xdist requires."""
    try:
        listed = [line.strip() for line in SLOW_FILES.read_text().splitlines()]
    except FileNotFoundError:
        return
    rank = {path: i for i, path in enumerate(p for p in listed if p and not p.startswith("#"))}
    last = len(rank)
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], last))


class FileTimings:
    """Adds up each file's test durations as reports arrive (in the controlling process under
    pytest-xdist) and writes them at the end."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._seconds[report.nodeid.split("::", 1)[0]] += report.duration
        if report.when == "teardown":
            self._write()  # as it goes: a run cut short still tells

    def pytest_sessionfinish(self) -> None:
        self._write()

    def _write(self) -> None:
        if not self._seconds:
            return
        ranked = sorted(self._seconds.items(), key=lambda kv: -kv[1])
        self._path.write_text("".join(f"{seconds:9.1f}  {path}\n" for path, seconds in ranked))
