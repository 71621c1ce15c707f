"""Backfill between two KT-Chat servers: a user who joins a room that lives on another
server pages back through its history from before the join (``GET /backfill``), as far as
the room's history visibility lets them, down to the room's creation and no further."""

from __future__ import annotations

import uuid
from typing import Any

from tests.helpers.federation import FedPair, User


def _tag() -> str:
    return uuid.uuid4().hex[:8]


async def _all_pages(user: User, room_id: str, limit: int = 20) -> tuple[list[Any], int]:
    """Every event ``/messages`` gives going back from now, oldest first, and the number of
    pages it took (it ends when a page has no ``end``)."""
    events: list[Any] = []
    token: str | None = None
    pages = 0
    while True:
        page = await user.messages(room_id, "b", limit, token)
        pages += 1
        events += page["chunk"]
        token = page.get("end")
        if token is None or pages > 50:
            return list(reversed(events)), pages


async def _room_with_history(pair: FedPair, visibility: str, tag: str, count: int
                             ) -> tuple[str, list[str]]:
    alice = pair.alice
    room_id = await alice.create_room(preset="public_chat", name=f"history {tag}",
                                      initial_state=[{
                                          "type": "m.room.history_visibility",
                                          "state_key": "",
                                          "content": {"history_visibility": visibility}}])
    sent = [await alice.send_text(room_id, f"old {tag} {i}") for i in range(count)]
    return room_id, sent


async def test_joiner_pages_back_through_history_before_the_join(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    tag = _tag()
    room_id, sent = await _room_with_history(fed_pair, "shared", tag, 130)  # > 1 request
    assert await bob.join(room_id, via=[fed_pair.a.server_name]) == room_id
    after = await alice.send_text(room_id, f"new {tag}")
    await bob.wait_for_event(room_id, 30, body=f"new {tag}")

    since = bob.next_batch
    events, pages = await _all_pages(bob, room_id)
    ids = [e["event_id"] for e in events]
    # Every message before the join, in order, then the join, then what came after.
    assert [i for i in ids if i in set(sent)] == sent
    assert ids.index(sent[-1]) < ids.index(after)
    # Down to the room's creation: its state events take their places in the timeline.
    assert events[0]["type"] == "m.room.create", events[0]
    types = [e["type"] for e in events]
    assert "m.room.name" in types and "m.room.power_levels" in types
    assert len(ids) == len(set(ids))
    assert pages > 2
    # The same as alice sees on the room's own server.
    alice_events, _ = await _all_pages(alice, room_id)
    assert ids == [e["event_id"] for e in alice_events]

    # Backfilled history is not news: bob's next sync does not carry it.
    body = f"later {tag}"
    await alice.send_text(room_id, body)
    await bob.wait_for_event(room_id, 30, body=body)
    news = await bob.sync(since)
    timeline = news["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["content"].get("body") for e in timeline] == [body], timeline

    # Once at the creation, going back asks nobody again.
    log_size = fed_pair.a.log_size()
    again, _ = await _all_pages(bob, room_id)
    assert [e["event_id"] for e in again][:len(ids)] == ids
    assert "/backfill/" not in fed_pair.a.log_tail(since=log_size)


async def test_joined_only_history_stays_hidden(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    tag = _tag()
    room_id, sent = await _room_with_history(fed_pair, "joined", tag, 5)
    assert await bob.join(room_id, via=[fed_pair.a.server_name]) == room_id
    after = await alice.send_text(room_id, f"new {tag}")
    await bob.wait_for_event(room_id, 30, body=f"new {tag}")

    events, _ = await _all_pages(bob, room_id)
    ids = [e["event_id"] for e in events]
    assert not set(sent) & set(ids)
    bodies = [e.get("content", {}).get("body") for e in events]
    assert not any(b and b.startswith(f"old {tag}") for b in bodies), bodies
    assert after in ids


async def test_history_while_the_room_server_is_down(fed_pair: FedPair) -> None:
    """Paging back with nobody to backfill from answers with what is here, not an error."""
    bob = fed_pair.bob
    tag = _tag()
    room_id, sent = await _room_with_history(fed_pair, "shared", tag, 3)
    assert await bob.join(room_id, via=[fed_pair.a.server_name]) == room_id
    fed_pair.a.stop()
    events, _ = await _all_pages(bob, room_id)
    ids = [e["event_id"] for e in events]
    assert not set(sent) & set(ids)
    assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id
               for e in events), events
