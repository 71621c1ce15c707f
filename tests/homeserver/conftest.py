"""Fixtures of the homeserver tests: ``harness`` (restartable services, once on SQLite and
once on PostgreSQL) and ``hs`` (its services)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from homeserver.services.container import Services
from tests.helpers.harness import Harness


@pytest.fixture(params=["sqlite", "postgres"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(request.param, tmp_path)
    try:
        await h.setup()
        yield h
    finally:
        await h.teardown()


@pytest.fixture
def hs(harness: Harness) -> Services:
    assert harness.services is not None
    return harness.services
