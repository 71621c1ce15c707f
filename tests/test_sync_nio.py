"""/sync end to end with matrix-nio against a real ``ktchat run`` process: an invite seen by
the invitee's sync loop, the join, and messages delivered to event callbacks exactly once, with
both repeated ``client.sync`` calls and a bounded ``sync_forever``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nio
import pytest

from tests.helpers.nio_server import nio_pair, run_server

# Room for every message of a test in one batch: nio does not fill a limited timeline's gap.
SYNC_FILTER = {"room": {"timeline": {"limit": 100}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("nio-sync"))


@pytest.fixture
async def alice_bob(server: str) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    async for pair in nio_pair(server):
        yield pair


async def _sync(client: nio.AsyncClient, timeout_ms: int = 0) -> nio.SyncResponse:
    resp = await client.sync(timeout=timeout_ms, sync_filter=SYNC_FILTER, full_state=False)
    assert isinstance(resp, nio.SyncResponse), resp
    assert not any(info.timeline.limited for info in resp.rooms.join.values())
    return resp


async def _sync_until(client: nio.AsyncClient, done: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the sync loop never saw it"
        await _sync(client, 1000)


class Inbox:
    """Collects what nio's callbacks deliver."""

    def __init__(self, client: nio.AsyncClient) -> None:
        self.messages: list[tuple[str, str, str]] = []
        self.invites: list[tuple[str, str]] = []
        self.limited: list[str] = []
        client.add_event_callback(self._on_message, nio.RoomMessageText)
        client.add_event_callback(self._on_invite, nio.InviteMemberEvent)
        client.add_response_callback(self._on_sync, nio.SyncResponse)

    async def _on_sync(self, response: nio.SyncResponse) -> None:
        # Every batch must fit the filter's limit: a gap would lose messages silently.
        self.limited += [room_id for room_id, info in response.rooms.join.items()
                         if info.timeline.limited]

    async def _on_message(self, room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
        self.messages.append((room.room_id, event.event_id, event.body))

    async def _on_invite(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        self.invites.append((room.room_id, event.membership))

    def bodies(self, room_id: str) -> list[str]:
        return [body for r, _, body in self.messages if r == room_id]


async def _send(client: nio.AsyncClient, room_id: str, body: str) -> str:
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text",
                                                              "body": body})
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(sent.event_id)


async def test_invite_join_and_messages_with_sync_calls(
        alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    alice, bob = alice_bob
    inbox = Inbox(bob)
    await _sync(alice)
    await _sync(bob)

    created = await alice.room_create(name="Sync party", invite=["@bob:localhost"])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    await _sync_until(bob, lambda: room_id in bob.invited_rooms)
    assert (room_id, "invite") in inbox.invites
    assert bob.invited_rooms[room_id].name == "Sync party"

    joined = await bob.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    await _sync_until(bob, lambda: room_id in bob.rooms and room_id not in bob.invited_rooms)
    assert "@alice:localhost" in bob.rooms[room_id].users

    # A long poll in flight is woken by alice's message, well before its timeout.
    start = time.monotonic()
    polling = asyncio.create_task(_sync(bob, 20_000))
    await asyncio.sleep(0.2)
    first = await _send(alice, room_id, "hello bob")
    await asyncio.wait_for(polling, 10)
    assert time.monotonic() - start < 10
    assert [e for _, e, _ in inbox.messages] == [first]

    sent = [first] + [await _send(alice, room_id, f"message {i}") for i in range(10)]
    await _sync_until(bob, lambda: len(inbox.messages) >= len(sent))
    for _ in range(2):
        await _sync(bob, 200)
    assert [e for _, e, _ in inbox.messages] == sent
    assert inbox.bodies(room_id) == ["hello bob"] + [f"message {i}" for i in range(10)]
    assert room_id not in inbox.limited


async def test_sync_forever_delivers_each_message_once(
        alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    alice, bob = alice_bob
    await _sync(alice)
    await _sync(bob)
    created = await alice.room_create(name="Forever", invite=["@bob:localhost"])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id

    inbox = Inbox(bob)
    joined_once = asyncio.Event()

    async def accept(room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if room.room_id == room_id and event.state_key == bob.user_id and \
                event.membership == "invite" and not joined_once.is_set():
            joined_once.set()
            result = await bob.join(room.room_id)
            assert isinstance(result, nio.JoinResponse), result

    bob.add_event_callback(accept, nio.InviteMemberEvent)
    loop = asyncio.create_task(bob.sync_forever(timeout=1000, sync_filter=SYNC_FILTER,
                                                full_state=False))
    try:
        await asyncio.wait_for(joined_once.wait(), 10)
        deadline = time.monotonic() + 10
        while room_id not in bob.rooms:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # Alice sends while bob's loop runs; bob answers a few times too.
        sent = []
        for i in range(15):
            sent.append(await _send(alice, room_id, f"forever {i}"))
            if i % 5 == 4:
                sent.append(await _send(bob, room_id, f"bob {i}"))
        deadline = time.monotonic() + 15
        while len(inbox.messages) < len(sent):
            assert time.monotonic() < deadline, (inbox.messages, sent)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # another turn or two of the loop: nothing repeats
    finally:
        loop.cancel()
        try:
            await loop
        except asyncio.CancelledError:
            pass
    ids = [e for r, e, _ in inbox.messages if r == room_id]
    assert ids == sent
    assert len(inbox.messages) == len(sent)
    assert room_id not in inbox.limited
