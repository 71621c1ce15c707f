"""A third device added mid-conversation receives the room key for new messages.

alice and bob (matrix-nio, encryption on) talk in an encrypted room, both ways; then bob logs
in a second nio device. alice's next syncs carry bob in ``device_lists.changed``, her client
asks /keys/query again and finds the new device; her next message is shared with it (a
one-time key claimed, the Megolm session sent over to-device), so bob's new device decrypts
it, and so does his old one. The new device holds no key for what was said before it
existed: the first message stays a Megolm event it cannot decrypt.

The same across two servers is tests/federation/test_e2e_nio_third_device_federation.py,
which runs ``third_device_joins`` below with a ``receive_message`` of its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nio
import pytest

from tests.helpers.nio_server import run_server
from tests.test_e2e_nio import encrypted_client, receive, turn

Receive = Callable[[nio.AsyncClient, str, str], Awaitable[None]]
"""Syncs ``client`` until ``body`` arrives decrypted in the room (``tests.test_e2e_nio.receive``
with its defaults, unless a caller brings its own)."""

if not nio.crypto.ENCRYPTION_ENABLED:  # pragma: no cover
    pytest.skip("matrix-nio was installed without its e2e extra", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("nio-third-device"))


async def _send(client: nio.AsyncClient, room_id: str, body: str) -> str:
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                  ignore_unverified_devices=True)
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(sent.event_id)


async def _knows_devices(client: nio.AsyncClient, others: list[nio.AsyncClient],
                         turns: int = 20) -> None:
    """Syncs (and queries keys) until ``client`` knows every device of ``others``."""
    for _ in range(turns):
        if all(o.device_id in client.device_store[o.user_id] for o in others):
            return
        await turn(client, 500)
    missing = [(o.user_id, o.device_id) for o in others
               if o.device_id not in client.device_store[o.user_id]]
    raise AssertionError(f"{client.user_id} never learned of {missing}")


async def encrypted_chat(alice: nio.AsyncClient, bob: nio.AsyncClient,
                         receive_message: Receive = receive) -> str:
    """alice invites bob to a new encrypted room, bob accepts, each decrypts a message of the
    other's; returns the room ID."""
    await turn(alice)
    await turn(bob)
    created = await alice.room_create(
        preset=nio.RoomPreset.private_chat, invite=[bob.user_id],
        initial_state=[{"type": "m.room.encryption", "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    for _ in range(20):
        if room_id in bob.invited_rooms:
            break
        await turn(bob, 500)
    joined = await bob.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    for _ in range(20):
        await turn(alice, 500)
        await turn(bob, 500)
        if bob.device_id in alice.device_store[bob.user_id] and \
                alice.device_id in bob.device_store[alice.user_id]:
            break
    await _knows_devices(alice, [bob])
    await _knows_devices(bob, [alice])
    await _send(alice, room_id, "before: hello bob")
    await receive_message(bob, room_id, "before: hello bob")
    await _send(bob, room_id, "before: hello alice")
    await receive_message(alice, room_id, "before: hello alice")
    return str(room_id)


async def third_device_joins(alice: nio.AsyncClient, bob: nio.AsyncClient,
                             new_bob_device: Callable[[], Awaitable[nio.AsyncClient]],
                             receive_message: Receive = receive) -> None:
    """The scenario: a conversation, then bob's new device, then alice's next message."""
    room_id = await encrypted_chat(alice, bob, receive_message)
    old_id = await _send(alice, room_id, "said before the new device")
    await receive_message(bob, room_id, "said before the new device")
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
        await _knows_devices(bob2, [alice])

        new_id = await _send(alice, room_id, "after: hello both of bob's devices")
        await receive_message(bob2, room_id, "after: hello both of bob's devices")
        await receive_message(bob, room_id, "after: hello both of bob's devices")

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
