"""End-to-end encryption with real clients: two matrix-nio clients with encryption on (its
``e2e`` extra) upload their keys to a real ``ktchat run`` process, find each other's devices
(/keys/query, device lists in /sync), claim one-time keys, share Megolm sessions over
to-device messages, and each decrypts the other's messages in an encrypted room."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nio
import pytest

from tests.helpers.nio_server import PASSWORD, run_server

if not nio.crypto.ENCRYPTION_ENABLED:  # pragma: no cover
    pytest.skip("matrix-nio was installed without its e2e extra", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("nio-e2e"))


async def encrypted_client(base: str, user: str, store: Path) -> nio.AsyncClient:
    """A logged-in client with encryption on; ``store`` (an existing directory) holds its
    keys."""
    client = nio.AsyncClient(base, f"@{user}:localhost", store_path=str(store),
                             config=nio.AsyncClientConfig(encryption_enabled=True,
                                                          store_sync_tokens=False))
    login = await client.login(PASSWORD, device_name=f"{user}'s nio")
    assert isinstance(login, nio.LoginResponse), login
    assert client.olm is not None
    return client


async def turn(client: nio.AsyncClient, timeout_ms: int = 0) -> nio.SyncResponse:
    """One sync, then what an encrypting client does after one: upload, query, claim."""
    resp = await client.sync(timeout=timeout_ms, full_state=False)
    assert isinstance(resp, nio.SyncResponse), resp
    if client.should_upload_keys:
        assert isinstance(await client.keys_upload(), nio.KeysUploadResponse)
    if client.should_query_keys:
        assert isinstance(await client.keys_query(), nio.KeysQueryResponse)
    return resp


@pytest.fixture
async def pair(server: str, tmp_path: Path
               ) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    for name in ("alice", "bob"):
        (tmp_path / name).mkdir()
    alice = await encrypted_client(server, "alice", tmp_path / "alice")
    bob = await encrypted_client(server, "bob", tmp_path / "bob")
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


async def receive(client: nio.AsyncClient, room_id: str, body: str, seconds: float = 15
                  ) -> None:
    """Sync until ``body`` arrives decrypted in the room (a Megolm event nio could not
    decrypt stays a ``MegolmEvent``)."""
    deadline = time.monotonic() + seconds
    undecrypted = 0
    while time.monotonic() < deadline:
        resp = await turn(client, 1000)
        room = resp.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, nio.RoomMessageText) and event.body == body:
                assert event.decrypted, "the message was not encrypted"
                return
            if isinstance(event, nio.MegolmEvent):
                undecrypted += 1
    raise AssertionError(f"{client.user_id} never decrypted {body!r} "
                         f"({undecrypted} undecryptable events)")


async def send_text(client: nio.AsyncClient, room_id: str, body: str) -> str:
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                  ignore_unverified_devices=True)
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(sent.event_id)


async def knows_devices(client: nio.AsyncClient, others: list[nio.AsyncClient],
                        turns: int = 20) -> None:
    """Syncs (and queries keys) until ``client`` knows every device of ``others``."""
    for _ in range(turns):
        if all(o.device_id in client.device_store[o.user_id] for o in others):
            return
        await turn(client, 500)
    missing = [(o.user_id, o.device_id) for o in others
               if o.device_id not in client.device_store[o.user_id]]
    raise AssertionError(f"{client.user_id} never learned of {missing}")


async def encrypted_chat(alice: nio.AsyncClient, bob: nio.AsyncClient, seconds: float = 30
                         ) -> str:
    """As users start a direct chat: alice invites bob to a new encrypted room, bob accepts
    (on his own server), each finds the other's device and decrypts a message of the
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
    await knows_devices(alice, [bob])
    await knows_devices(bob, [alice])
    await send_text(alice, room_id, "hello bob, secretly")
    await receive(bob, room_id, "hello bob, secretly", seconds)
    await send_text(bob, room_id, "hello alice, secretly")
    await receive(alice, room_id, "hello alice, secretly", seconds)
    return str(room_id)


async def test_two_nio_clients_exchange_encrypted_messages(
        pair: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    await encrypted_chat(*pair)
