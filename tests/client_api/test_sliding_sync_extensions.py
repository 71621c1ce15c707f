"""The extensions of simplified sliding sync as Synapse serves them: ``to_device`` (with
``since``/``next_batch`` acknowledgement), ``e2ee``, ``account_data`` (global and per
room), ``receipts`` and ``typing``, each scoped by ``lists``/``rooms``. SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.client_api import test_sync_fanout
from tests.client_api.test_e2e_keys import device_keys, one_time_keys, upload
from tests.client_api.test_rooms import User, api, create_room, join, send_text, txn
from tests.client_api.test_sliding_sync import one_list, ss
from tests.client_api.test_sync import invite, put_account_data

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL


def with_ext(name: str, end: int = 19, **config: Any) -> dict[str, Any]:
    return {**one_list(end=end), "extensions": {name: {"enabled": True, **config}}}


async def send_to_device(client: TestClient, sender: User, target: User, n: int) -> None:
    status, data = await api(client, "PUT", f"/sendToDevice/org.example.ping/{txn()}", sender,
                             {"messages": {target.user_id: {target.device_id: {"n": n}}}})
    assert status == 200, data


async def test_to_device_acknowledged_with_since(client: TestClient, alice: User,
                                                bob: User) -> None:
    await send_to_device(client, bob, alice, 1)
    await send_to_device(client, bob, alice, 2)
    body = await ss(client, alice, with_ext("to_device"))
    ext = body["extensions"]["to_device"]
    assert [e["content"]["n"] for e in ext["events"]] == [1, 2]
    assert ext["events"][0]["sender"] == bob.user_id
    assert isinstance(ext["next_batch"], str)
    # Not acknowledged yet: a repeat without since gets them again.
    again = await ss(client, alice, with_ext("to_device"))
    assert len(again["extensions"]["to_device"]["events"]) == 2
    # With since = next_batch they are gone; a new one comes alone.
    await send_to_device(client, bob, alice, 3)
    body = await ss(client, alice, with_ext("to_device", since=ext["next_batch"]),
                    pos=again["pos"])
    ext = body["extensions"]["to_device"]
    assert [e["content"]["n"] for e in ext["events"]] == [3]
    body = await ss(client, alice, with_ext("to_device", since=ext["next_batch"]),
                    pos=body["pos"])
    assert body["extensions"]["to_device"]["events"] == []
    # A limit: the rest come next time.
    for n in range(4, 8):
        await send_to_device(client, bob, alice, n)
    since = body["extensions"]["to_device"]["next_batch"]
    got: list[int] = []
    for _ in range(3):
        body = await ss(client, alice, with_ext("to_device", since=since, limit=2))
        ext = body["extensions"]["to_device"]
        assert len(ext["events"]) <= 2
        got += [e["content"]["n"] for e in ext["events"]]
        since = ext["next_batch"]
    assert got == [4, 5, 6, 7]


async def test_to_device_wakes_a_long_poll(client: TestClient, alice: User,
                                           bob: User) -> None:
    first = await ss(client, alice, with_ext("to_device"))
    since = first["extensions"]["to_device"]["next_batch"]

    async def later() -> None:
        await asyncio.sleep(0.2)
        await send_to_device(client, bob, alice, 9)

    task = asyncio.create_task(later())
    body = await ss(client, alice, with_ext("to_device", since=since), pos=first["pos"],
                    timeout_ms=10_000)
    await task
    assert [e["content"]["n"] for e in body["extensions"]["to_device"]["events"]] == [9]


async def test_e2ee(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, name="keys")
    await invite(client, alice, room_id, bob)
    await join(client, bob, room_id)
    keys, key = device_keys(alice)
    await upload(client, alice, {"device_keys": keys,
                                 "one_time_keys": one_time_keys(alice, key, ["a", "b"]),
                                 "fallback_keys": one_time_keys(alice, key, ["f"],
                                                                fallback=True)})
    body = await ss(client, alice, with_ext("e2ee"))
    ext = body["extensions"]["e2ee"]
    assert ext["device_one_time_keys_count"]["signed_curve25519"] == 2
    assert ext["device_unused_fallback_key_types"] == ["signed_curve25519"]
    assert "device_lists" not in ext  # initial: no changes to report
    bob_keys, _ = device_keys(bob)
    await upload(client, bob, {"device_keys": bob_keys})
    body = await ss(client, alice, with_ext("e2ee"), pos=body["pos"])
    assert bob.user_id in body["extensions"]["e2ee"]["device_lists"]["changed"]
    # Key counts alone are not news: a long poll waits.
    body = await ss(client, alice, with_ext("e2ee"), pos=body["pos"], timeout_ms=200)
    assert body["extensions"]["e2ee"]["device_lists"] == {"changed": [], "left": []}


async def test_account_data_global_and_rooms(client: TestClient, alice: User) -> None:
    first_room = await create_room(client, alice, name="one")
    second_room = await create_room(client, alice, name="two")
    await put_account_data(client, alice, "org.example.g", {"g": 1})
    await put_account_data(client, alice, "org.example.r", {"r": 1}, room_id=first_room)
    await put_account_data(client, alice, "org.example.r", {"r": 2}, room_id=second_room)
    body = await ss(client, alice, with_ext("account_data"))
    ext = body["extensions"]["account_data"]
    assert {"type": "org.example.g", "content": {"g": 1}} in ext["global"]
    # A new connection gets the push rules too (as Synapse sends them).
    rules = [e for e in ext["global"] if e["type"] == "m.push_rules"]
    assert rules and rules[0]["content"]["global"]["override"]
    assert ext["rooms"][first_room] == [{"type": "org.example.r", "content": {"r": 1}}]
    assert ext["rooms"][second_room] == [{"type": "org.example.r", "content": {"r": 2}}]
    # Incremental: only what changed.
    await put_account_data(client, alice, "org.example.r", {"r": 3}, room_id=first_room)
    body = await ss(client, alice, with_ext("account_data"), pos=body["pos"])
    ext = body["extensions"]["account_data"]
    assert ext["global"] == []
    assert ext["rooms"] == {first_room: [{"type": "org.example.r", "content": {"r": 3}}]}
    # Scoped to no lists and no rooms: global only.
    body = await ss(client, alice, with_ext("account_data", lists=[], rooms=[]))
    assert body["extensions"]["account_data"]["rooms"] == {}
    assert body["extensions"]["account_data"]["global"]


async def test_receipts_scoped(client: TestClient, alice: User, bob: User) -> None:
    rooms = []
    for name in ("a", "b"):
        room_id = await create_room(client, alice, name=name)
        await invite(client, alice, room_id, bob)
        await join(client, bob, room_id)
        rooms.append(room_id)
    event_ids = [await send_text(client, alice, r, "read me") for r in rooms]
    for room_id, event_id in zip(rooms, event_ids, strict=True):
        status, data = await api(client, "POST",
                                 f"/rooms/{room_id}/receipt/m.read/{event_id}", bob, {})
        assert status == 200, data
    # The list's window holds the newest room only (rooms[1]).
    body = await ss(client, alice, with_ext("receipts", end=0))
    receipts = body["extensions"]["receipts"]["rooms"]
    assert list(receipts) == [rooms[1]]
    assert receipts[rooms[1]]["type"] == "m.receipt"
    assert bob.user_id in receipts[rooms[1]]["content"][event_ids[1]]["m.read"]
    # Incremental: a new receipt comes once.
    newer = await send_text(client, alice, rooms[1], "again")
    body = await ss(client, alice, with_ext("receipts", end=0), pos=body["pos"])
    status, _ = await api(client, "POST", f"/rooms/{rooms[1]}/receipt/m.read/{newer}", bob,
                          {})
    assert status == 200
    body = await ss(client, alice, with_ext("receipts", end=0), pos=body["pos"])
    assert list(body["extensions"]["receipts"]["rooms"][rooms[1]]["content"]) == [newer]
    body = await ss(client, alice, with_ext("receipts", end=0), pos=body["pos"])
    assert body["extensions"]["receipts"]["rooms"] == {}
    # lists: [] and rooms: [] scope nothing.
    body = await ss(client, alice, with_ext("receipts", lists=[], rooms=[]))
    assert body["extensions"]["receipts"]["rooms"] == {}


async def test_typing(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, name="typing")
    await invite(client, alice, room_id, bob)
    await join(client, bob, room_id)
    first = await ss(client, alice, with_ext("typing"))
    assert first["extensions"]["typing"]["rooms"] == {}

    async def later() -> None:
        await asyncio.sleep(0.2)
        status, _ = await api(client, "PUT", f"/rooms/{room_id}/typing/{bob.user_id}", bob,
                              {"typing": True, "timeout": 30_000})
        assert status == 200

    task = asyncio.create_task(later())
    body = await ss(client, alice, with_ext("typing"), pos=first["pos"], timeout_ms=10_000)
    await task
    assert body["extensions"]["typing"]["rooms"] == {
        room_id: {"type": "m.typing", "content": {"user_ids": [bob.user_id]}}}
    # A room outside the extension's scope is left out.
    body = await ss(client, alice, with_ext("typing", lists=["other"], rooms=[]))
    assert body["extensions"]["typing"]["rooms"] == {}
    body = await ss(client, alice, with_ext("typing", lists=[], rooms=[room_id]))
    assert list(body["extensions"]["typing"]["rooms"]) == [room_id]
