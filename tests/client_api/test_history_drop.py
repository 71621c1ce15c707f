"""When nobody on this server can see a stretch of a room's history any more (everyone who
was in it cleared past it, or forgot the room), its content is dropped from storage: the
stored messages keep only what the redaction algorithm keeps and leave the search index."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from homeserver.services.container import Services
from storage.schema import events
from tests.client_api import test_sync_fanout
from tests.client_api.test_friends import befriend
from tests.client_api.test_history_clear import clear
from tests.helpers.room_api import User, api, create_room, join, put_state, send_text

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL


async def stored_bodies(services: Services, room_id: str) -> dict[str, str | None]:
    """Event ID -> the stored body of every m.room.message in the room."""
    async with services.db.engine.read() as conn:
        rows = await conn.execute(select(events.c.event_id, events.c.json).where(
            events.c.room_id == room_id, events.c.type == "m.room.message"))
        return {r.event_id: json.loads(r.json)["content"].get("body") for r in rows}


async def found(client: TestClient, user: User, term: str) -> int:
    status, body = await api(client, "POST", "/search", user, {
        "search_categories": {"room_events": {"search_term": term}}})
    assert status == 200, body
    return len(body["search_categories"]["room_events"]["results"])


async def test_dropped_once_both_friends_cleared(client: TestClient, services: Services,
                                                 alice: User, bob: User) -> None:
    room = await befriend(client, alice, bob)
    first = await send_text(client, alice, room, "aardvark one")
    middle = await send_text(client, bob, room, "aardvark two")
    last = await send_text(client, alice, room, "aardvark three")
    await clear(client, alice, room)
    # Bob still sees everything, so nothing is dropped.
    assert set((await stored_bodies(services, room)).values()) == {
        "aardvark one", "aardvark two", "aardvark three"}
    assert await found(client, bob, "aardvark") == 3
    await clear(client, bob, room, middle)
    bodies = await stored_bodies(services, room)
    # Up to Bob's point (the older of the two) the text is gone from the database.
    assert bodies[first] is None and bodies[middle] is None
    assert bodies[last] == "aardvark three"
    assert await found(client, bob, "aardvark") == 1
    # The room works on: its state is intact, new messages are kept.
    status, state = await api(client, "GET", f"/rooms/{room}/state", bob)
    assert status == 200 and any(e["type"] == "m.room.create" for e in state)
    newer = await send_text(client, bob, room, "aardvark four")
    await clear(client, bob, room)
    bodies = await stored_bodies(services, room)
    assert bodies[last] is None and bodies[newer] == "aardvark four"  # alice has not cleared it


async def test_a_forgotten_room_counts_as_unseen(client: TestClient, services: Services,
                                                 alice: User, bob: User) -> None:
    room = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room)
    kept = await send_text(client, alice, room, "pangolin")
    status, _ = await api(client, "POST", f"/rooms/{room}/leave", bob, {})
    assert status == 200
    status, _ = await api(client, "POST", f"/rooms/{room}/forget", bob, {})
    assert status == 200
    assert (await stored_bodies(services, room))[kept] == "pangolin"  # alice sees it
    await clear(client, alice, room)
    assert (await stored_bodies(services, room))[kept] is None
    # Everyone here forgot it: all of it goes.
    later = await send_text(client, alice, room, "pangolin again")
    assert (await api(client, "POST", f"/rooms/{room}/leave", alice, {}))[0] == 200
    assert (await api(client, "POST", f"/rooms/{room}/forget", alice, {}))[0] == 200
    assert (await stored_bodies(services, room))[later] is None


async def test_never_dropped_while_someone_may_still_see_it(
        client: TestClient, services: Services, alice: User, bob: User, carol: User) -> None:
    # A world-readable room: anyone may read it.
    public = await create_room(client, alice, preset="public_chat")
    await put_state(client, alice, public, "m.room.history_visibility",
                    {"history_visibility": "world_readable"})
    kept = await send_text(client, alice, public, "okapi")
    await clear(client, alice, public)
    assert (await stored_bodies(services, public))[kept] == "okapi"
    # A pending invite: the invitee may join and read the history.
    private = await create_room(client, alice)
    waiting = await send_text(client, alice, private, "okapi")
    status, _ = await api(client, "POST", f"/rooms/{private}/invite", alice,
                          {"user_id": carol.user_id})
    assert status == 200
    await clear(client, alice, private)
    assert (await stored_bodies(services, private))[waiting] == "okapi"
