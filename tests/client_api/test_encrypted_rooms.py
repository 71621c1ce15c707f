"""Encrypted rooms (``m.room.encryption``) count like any other in /sync: summaries with
heroes, and unread counts of ``m.room.encrypted`` messages, on SQLite and PostgreSQL."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.client_api.test_sync import joined, sync
from tests.helpers.harness import harness_services
from tests.helpers.room_api import User, api, create_room, join, txn

ENCRYPTION = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
CIPHERTEXT = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAc...",
              "sender_key": "sender+key", "device_id": "DEVICE", "session_id": "session"}


services = harness_services




async def test_encrypted_room_summary_heroes_and_unread(client: TestClient, alice: User,
                                                        bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat",
                                initial_state=[ENCRYPTION])
    await join(client, bob, room_id)
    first = await sync(client, alice)
    summary = joined(first, room_id)["summary"]
    assert summary["m.heroes"] == [bob.user_id]
    assert summary["m.joined_member_count"] == 2
    for _ in range(2):
        status, body = await api(client, "PUT",
                                 f"/rooms/{room_id}/send/m.room.encrypted/{txn()}", bob,
                                 CIPHERTEXT)
        assert status == 200, body
    second = await sync(client, alice, since=first["next_batch"])
    room = joined(second, room_id)
    assert [e["type"] for e in room["timeline"]["events"]] == ["m.room.encrypted"] * 2
    assert room["unread_notifications"]["notification_count"] == 2
    initial = await sync(client, alice)
    assert joined(initial, room_id)["unread_notifications"]["notification_count"] == 2
    assert joined(initial, room_id)["summary"]["m.heroes"] == [bob.user_id]
