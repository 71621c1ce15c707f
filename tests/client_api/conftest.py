"""Fixtures of the client API tests: users registered over HTTP."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers.room_api import User, new_user


@pytest.fixture
async def alice(client: TestClient) -> User:
    return await new_user(client, "alice")


@pytest.fixture
async def bob(client: TestClient) -> User:
    return await new_user(client, "bob")


# -- createRoom ---------------------------------------------------------------------------------


@pytest.fixture
async def carol(client: TestClient) -> User:
    return await new_user(client, "carol")
