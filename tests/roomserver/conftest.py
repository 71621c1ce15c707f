"""Fixtures of the homeserver tests: ``hs``, the services of the shared ``harness``
(restartable, once on SQLite and once on PostgreSQL)."""

from __future__ import annotations

import pytest

from homeserver.services.container import Services
from tests.helpers.harness import Harness


@pytest.fixture
def hs(harness: Harness) -> Services:
    assert harness.services is not None
    return harness.services
