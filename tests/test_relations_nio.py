"""Relations end to end with matrix-nio against a real ``ktchat run`` process: one client
replies in a thread, edits and reacts (plain ``room_send`` with the spec's content), the other
sees the bundled thread summary and edit in /sync and /messages, and the reaction in
/relations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import nio
import pytest

from tests.helpers.nio_server import nio_pair, run_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("nio-relations"))


@pytest.fixture
async def alice_bob(server: str) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    async for pair in nio_pair(server):
        yield pair


async def _send(client: nio.AsyncClient, room_id: str, content: dict[str, Any],
                event_type: str = "m.room.message") -> str:
    sent = await client.room_send(room_id, event_type, content)
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(sent.event_id)


def _relations(event: nio.Event) -> dict[str, Any]:
    return dict(event.source.get("unsigned", {}).get("m.relations", {}))


async def test_thread_edit_and_reaction_seen_by_the_other_client(
        server: str, alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    alice, bob = alice_bob
    created = await alice.room_create(name="Relations", invite=["@bob:localhost"])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    assert isinstance(await bob.join(room_id), nio.JoinResponse)

    root = await _send(alice, room_id, {"msgtype": "m.text", "body": "lunch?"})
    reply = await _send(bob, room_id, {
        "msgtype": "m.text", "body": "yes, at noon",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                         "m.in_reply_to": {"event_id": root}}})
    edit = await _send(bob, room_id, {
        "msgtype": "m.text", "body": "* yes, at one",
        "m.new_content": {"msgtype": "m.text", "body": "yes, at one"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": reply}})
    reaction = await _send(bob, room_id, {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": root, "key": "👍"}}, "m.reaction")

    synced = await alice.sync(timeout=0, full_state=True,
                              sync_filter={"room": {"timeline": {"limit": 50}}})
    assert isinstance(synced, nio.SyncResponse), synced
    timeline = {e.event_id: e for e in synced.rooms.join[room_id].timeline.events}
    thread = _relations(timeline[root])["m.thread"]
    assert thread["count"] == 1 and thread["current_user_participated"] is True
    assert thread["latest_event"]["event_id"] == reply
    assert thread["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit
    assert _relations(timeline[reply])["m.replace"]["event_id"] == edit

    page = await alice.room_messages(room_id, start="", limit=50)
    assert isinstance(page, nio.RoomMessagesResponse), page
    by_id = {e.event_id: e for e in page.chunk}
    assert _relations(by_id[root])["m.thread"]["latest_event"]["event_id"] == reply
    assert _relations(by_id[reply])["m.replace"]["content"]["m.new_content"]["body"] == \
        "yes, at one"

    async with aiohttp.ClientSession() as http:
        async with http.get(
                f"{server}/_matrix/client/v1/rooms/{room_id}/relations/{root}/m.annotation",
                headers={"Authorization": f"Bearer {alice.access_token}"}) as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.get(f"{server}/_matrix/client/v1/rooms/{room_id}/threads",
                            headers={"Authorization": f"Bearer {alice.access_token}"}) as resp:
            assert resp.status == 200
            listed = await resp.json()
    assert [e["event_id"] for e in body["chunk"]] == [reaction]
    assert [e["event_id"] for e in listed["chunk"]] == [root]
