"""A third device added mid-conversation receives the room key for new messages.

alice and bob (matrix-nio, encryption on) talk in an encrypted room, both ways; then bob logs
in a second nio device. alice's next syncs carry bob in ``device_lists.changed``, her client
asks /keys/query again and finds the new device; her next message is shared with it (a
one-time key claimed, the Megolm session sent over to-device), so bob's new device decrypts
it, and so does his old one. The new device holds no key for what was said before it
existed: the first message stays a Megolm event it cannot decrypt.

The same across two servers is tests/federation/test_e2e_nio_third_device_federation.py,
which runs ``third_device_joins`` below."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nio
import pytest

from tests.helpers.nio_server import run_server
from tests.test_e2e_nio import (
    encrypted_chat,
    encrypted_client,
    knows_devices,
    receive,
    send_text,
    turn,
)

if not nio.crypto.ENCRYPTION_ENABLED:  # pragma: no cover
    pytest.skip("matrix-nio was installed without its e2e extra", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("nio-third-device"))


async def third_device_joins(alice: nio.AsyncClient, bob: nio.AsyncClient,
                             new_bob_device: Callable[[], Awaitable[nio.AsyncClient]]) -> None:
    """The scenario: a conversation, then bob's new device, then alice's next message."""
    room_id = await encrypted_chat(alice, bob)
    old_id = await send_text(alice, room_id, "said before the new device")
    await receive(bob, room_id, "said before the new device")
    # alice's sync position from before the new device exists.
    await turn(alice)

    bob2 = await new_bob_device()
    try:
        assert bob2.device_id != bob.device_id
        await turn(bob2)  # uploads its identity and one-time keys
        assert bob2.olm is not None and not bob2.should_upload_keys

        # alice's server tells her bob's devices changed; her client asks for them again.
        changed_seen = False
        for _ in range(20):
            resp = await turn(alice, 500)
            changed_seen = changed_seen or bob.user_id in resp.device_list.changed
            if changed_seen and bob2.device_id in alice.device_store[bob.user_id]:
                break
        assert changed_seen, f"{bob.user_id} never in alice's device_lists.changed"
        assert bob2.device_id in alice.device_store[bob.user_id], (
            f"/keys/query for {bob.user_id} never returned {bob2.device_id}: "
            f"{sorted(alice.device_store[bob.user_id])}")
        assert bob.device_id in alice.device_store[bob.user_id]
        # bob's new device needs alice's device to accept a room key from it.
        await knows_devices(bob2, [alice])

        new_id = await send_text(alice, room_id, "after: hello both of bob's devices")
        await receive(bob2, room_id, "after: hello both of bob's devices")
        await receive(bob, room_id, "after: hello both of bob's devices")

        # What was said before the new device existed stays undecryptable there (its room
        # key was never shared with it), while the old device still reads it.
        assert isinstance(await _event(bob2, room_id, new_id), nio.RoomMessageText)
        earlier = await _event(bob2, room_id, old_id)
        assert isinstance(earlier, nio.MegolmEvent), earlier
        with pytest.raises(nio.EncryptionError):
            bob2.decrypt_event(earlier)
        older = await _event(bob, room_id, old_id)
        assert isinstance(older, nio.RoomMessageText), older
        assert older.body == "said before the new device"
    finally:
        await bob2.close()


async def _event(client: nio.AsyncClient, room_id: str, event_id: str) -> nio.Event:
    """The event as the client sees it (nio decrypts it if it can)."""
    got = await client.room_get_event(room_id, event_id)
    assert isinstance(got, nio.RoomGetEventResponse), got
    return got.event


async def test_third_device_added_mid_conversation_gets_the_new_room_key(
        server: str, tmp_path: Path) -> None:
    for name in ("alice", "bob", "bob2"):
        (tmp_path / name).mkdir()
    alice = await encrypted_client(server, "alice", tmp_path / "alice")
    bob = await encrypted_client(server, "bob", tmp_path / "bob")
    try:
        await third_device_joins(
            alice, bob, lambda: encrypted_client(server, "bob", tmp_path / "bob2"))
    finally:
        await alice.close()
        await bob.close()
