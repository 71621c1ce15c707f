"""A local user's device-list changes reach other servers even when queueing their EDUs
failed (or the process died between the commit and the queue): each change stays
unannounced in the device-list stream until its EDUs are queued, and at start-up the ones
left over are announced. On SQLite and on PostgreSQL (the real stores; the federation queue
is the ``DeviceListEdus`` port, here a recorder that can be told to fail)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp.test_utils import TestClient
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.services.container import Services
from homeserver.services.device_list_announcer import DeviceListAnnouncer
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.local_keys import LocalKeys
from tests.client_api import test_sync_fanout
from tests.client_api.test_to_device import device
from tests.helpers.room_api import new_user

services = test_sync_fanout.services  # on SQLite and on PostgreSQL


class Queue:
    """The federation queue as the key service sees it: records, or fails while told to."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.queued: list[tuple[str, list[dict[str, Any]]]] = []

    async def device_list_changed(self, user_id: str,
                                  edus: Sequence[Mapping[str, Any]]) -> None:
        if self.failing:
            raise ConnectionError("the database went away")
        self.queued.append((user_id, [dict(e) for e in edus]))


def keys_service(services: Services, queue: Queue | None) -> E2EKeyService:
    local = LocalKeys(services.db.e2e_keys)
    return E2EKeyService(services.db.e2e_keys, services.db.sync, services.members,
                         services.notifier, services.clock, services.config.server_name,
                         local, DeviceListAnnouncer(services.db.e2e_keys, local, queue))


def device_keys(user_id: str, device_id: str) -> dict[str, Any]:
    key = generate_signing_key(device_id)
    return sign_json({"user_id": user_id, "device_id": device_id,
                      "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                      "keys": {f"ed25519:{device_id}":
                               encode_verify_key_base64(get_verify_key(key)),
                               f"curve25519:{device_id}": "c" * 43}}, user_id, key)


async def until(check: Any, seconds: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_changes_whose_edus_were_not_queued_are_announced_at_start_up(
        client: TestClient, services: Services) -> None:
    alice = await new_user(client, "alice")
    store = services.db.e2e_keys
    broken = Queue(failing=True)
    keys = keys_service(services, broken)
    keys_json = device_keys(alice.user_id, alice.device_id)
    # The upload succeeds for the client; the EDUs could not be queued.
    assert await keys.upload(alice.user_id, alice.device_id, {"device_keys": keys_json}) \
        == {"signed_curve25519": 0}
    left = await store.unannounced()
    assert [(u, d) for _, u, d in left] == [(alice.user_id, alice.device_id)]

    # The next start-up announces it, with the device's keys.
    queue = Queue()
    restarted = keys_service(services, queue)
    restarted.start()
    try:
        async def announced() -> bool:
            return not await store.unannounced()
        await until(announced)
    finally:
        await restarted.stop()
    assert len(queue.queued) == 1
    user_id, edus = queue.queued[0]
    assert user_id == alice.user_id
    [edu] = edus
    assert edu["edu_type"] == "m.device_list_update"
    assert edu["content"]["device_id"] == alice.device_id
    assert edu["content"]["stream_id"] == left[0][0]
    assert edu["content"]["keys"] == keys_json

    # Announced changes are not announced again; a change that went out at once is marked.
    again = Queue()
    third = keys_service(services, again)
    third.start()
    phone = await device(client, alice)
    await third.upload(phone.user_id, phone.device_id,
                       {"device_keys": device_keys(phone.user_id, phone.device_id)})
    await third.stop()
    assert [e["content"].get("prev_id") for _, es in again.queued for e in es] == \
        [[left[0][0]]]
    assert await store.unannounced() == []


async def test_a_device_deleted_before_the_announcement_is_announced_deleted(
        client: TestClient, services: Services) -> None:
    alice = await new_user(client, "alice")
    keys = keys_service(services, Queue(failing=True))
    await keys.upload(alice.user_id, alice.device_id,
                      {"device_keys": device_keys(alice.user_id, alice.device_id)})
    # As AuthService deletes a device: its rows (keys with them), then the key service hears.
    await services.db.devices.delete_devices(alice.user_id, [alice.device_id])
    await keys.devices_deleted(alice.user_id, [alice.device_id])
    queue = Queue()
    restarted = keys_service(services, queue)
    restarted.start()

    async def announced() -> bool:
        return not await services.db.e2e_keys.unannounced()
    await until(announced)
    await restarted.stop()
    contents = [e["content"] for _, es in queue.queued for e in es]
    assert [c.get("deleted") for c in contents] == [True, True]
    assert all("keys" not in c for c in contents)


async def test_without_federation_nothing_waits_to_be_announced(
        client: TestClient, services: Services) -> None:
    alice = await new_user(client, "alice")
    await services.keys.upload(alice.user_id, alice.device_id,
                               {"device_keys": device_keys(alice.user_id, alice.device_id)})
    assert await services.db.e2e_keys.unannounced() == []
