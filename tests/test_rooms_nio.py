"""Rooms end to end with matrix-nio against a real ``ktchat run`` process: create, invite,
join, send, page back through 500 messages both ways, redact, leave, forget; and a DM with
``is_direct`` and ``m.direct``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import nio
import pytest

from tests.helpers.nio_server import nio_pair, run_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("nio-rooms"))


@pytest.fixture
async def alice_bob(server: str) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    async for pair in nio_pair(server):
        yield pair


async def _all_messages(client: nio.AsyncClient, room_id: str, direction: nio.MessageDirection
                        ) -> list[str]:
    bodies: list[str] = []
    token = None
    for _ in range(100):
        resp = await client.room_messages(room_id, start=token, direction=direction, limit=37)
        assert isinstance(resp, nio.RoomMessagesResponse), resp
        bodies += [e.body for e in resp.chunk if isinstance(e, nio.RoomMessageText)]
        if not resp.end:
            break
        token = resp.end
    return bodies


async def test_room_lifecycle(alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    alice, bob = alice_bob
    created = await alice.room_create(name="Lifecycle", topic="testing",
                                      invite=["@bob:localhost"])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    joined = await bob.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined

    for i in range(500):
        sent = await (alice if i % 2 else bob).room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": f"message {i}"})
        assert isinstance(sent, nio.RoomSendResponse), sent

    backwards = await _all_messages(bob, room_id, nio.MessageDirection.back)
    assert backwards == [f"message {i}" for i in reversed(range(500))]
    first_page = await bob.room_messages(room_id, limit=1)
    assert isinstance(first_page, nio.RoomMessagesResponse)
    forwards = await _all_messages(bob, room_id, nio.MessageDirection.front)
    assert forwards == [f"message {i}" for i in range(500)]

    last = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text",
                                                             "body": "regret"})
    assert isinstance(last, nio.RoomSendResponse)
    redacted = await alice.room_redact(room_id, last.event_id, reason="oops")
    assert isinstance(redacted, nio.RoomRedactResponse), redacted
    page = await bob.room_messages(room_id, limit=5)
    assert isinstance(page, nio.RoomMessagesResponse)
    bodies = [getattr(e, "body", None) for e in page.chunk]
    assert "regret" not in bodies
    assert any(isinstance(e, nio.RedactedEvent) for e in page.chunk)

    left = await bob.room_leave(room_id)
    assert isinstance(left, nio.RoomLeaveResponse), left
    after_leave = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text",
                                                                  "body": "ghost"})
    assert isinstance(after_leave, nio.RoomSendError)
    assert after_leave.status_code == "M_FORBIDDEN"
    forgot = await bob.room_forget(room_id)
    assert isinstance(forgot, nio.RoomForgetResponse), forgot


async def test_direct_message(server: str,
                              alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    alice, bob = alice_bob
    created = await alice.room_create(is_direct=True, invite=["@bob:localhost"],
                                      preset=nio.RoomPreset.trusted_private_chat)
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    # Bob is only invited: he sees the invite, with is_direct, in his sync's invite state.
    synced = await bob.sync(timeout=0)
    assert isinstance(synced, nio.SyncResponse), synced
    invite_events = synced.rooms.invite[room_id].invite_state
    own = [e for e in invite_events if getattr(e, "state_key", None) == "@bob:localhost"]
    assert own and own[-1].content.get("is_direct") is True
    async with aiohttp.ClientSession() as session:
        url = f"{server}/_matrix/client/v3/user/@alice:localhost/account_data/m.direct"
        headers = {"Authorization": f"Bearer {alice.access_token}"}
        async with session.put(url, json={"@bob:localhost": [room_id]}, headers=headers) as r:
            assert r.status == 200
        async with session.get(url, headers=headers) as r:
            assert await r.json() == {"@bob:localhost": [room_id]}
    joined = await bob.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    member = await alice.room_get_state_event(room_id, "m.room.member", "@bob:localhost")
    assert isinstance(member, nio.RoomGetStateEventResponse), member
    assert member.content["membership"] == "join"
    sent = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
    assert isinstance(sent, nio.RoomSendResponse), sent


async def test_devices_listing(alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    """matrix-nio validates /devices strictly (every key, null when unknown), as
    matrix-commander --devices does: an unnamed device must not break it."""
    alice, _ = alice_bob
    listed = await alice.devices()
    assert isinstance(listed, nio.DevicesResponse), listed
    assert alice.device_id in {d.id for d in listed.devices}


async def test_room_messages_from_sync_token(
        alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    """``room_messages(start=next_batch)``: the last messages before a sync, as
    matrix-commander --tail asks for them."""
    alice, _ = alice_bob
    created = await alice.room_create(name="Tail")
    assert isinstance(created, nio.RoomCreateResponse), created
    for i in range(5):
        sent = await alice.room_send(created.room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": f"tail {i}"})
        assert isinstance(sent, nio.RoomSendResponse), sent
    synced = await alice.sync(timeout=0)
    assert isinstance(synced, nio.SyncResponse), synced
    page = await alice.room_messages(created.room_id, start=synced.next_batch, limit=3)
    assert isinstance(page, nio.RoomMessagesResponse), page
    assert [e.body for e in page.chunk] == ["tail 4", "tail 3", "tail 2"]
    later = await alice.room_messages(created.room_id, start=synced.next_batch, limit=10,
                                      direction=nio.MessageDirection.front)
    assert isinstance(later, nio.RoomMessagesResponse), later
    assert later.chunk == []
