"""End-to-end keys across a restart: the device-list changes a sync token from before it
missed, and the one-time key counts, come from the database (the in-memory views start
empty). Once on SQLite, once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.app import build_app
from tests.client_api.test_e2e_keys import device_keys, one_time_keys, shared_room, upload
from tests.client_api.test_sync import sync
from tests.helpers.harness import Harness, harness_services
from tests.helpers.room_api import User, api


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"presence": {"enabled": False}}


services = harness_services


async def test_changes_and_counts_from_before_a_restart(
        harness: Harness, client: TestClient, alice: User, bob: User,
        aiohttp_client: Callable[..., Any]) -> None:
    await shared_room(client, alice, bob)
    start = (await sync(client, bob))["next_batch"]
    keys, key = device_keys(alice)
    await upload(client, alice, {"device_keys": keys,
                                 "one_time_keys": one_time_keys(alice, key, ["a", "b", "c"])})

    client = await aiohttp_client(build_app(await harness.restart()))

    body = await sync(client, bob, since=start)
    assert body["device_lists"] == {"changed": [alice.user_id], "left": []}
    status, changes = await api(client, "GET", "/keys/changes", bob,
                                query={"from": start, "to": body["next_batch"]})
    assert status == 200 and changes == {"changed": [alice.user_id], "left": []}
    # Nothing new after the restart: nothing reported again.
    again = await sync(client, bob, since=body["next_batch"], timeout_ms=200)
    assert again["device_lists"] == {"changed": [], "left": []}
    assert (await sync(client, alice))["device_one_time_keys_count"]["signed_curve25519"] == 3
