"""A version 2 database (no search index, no cleared history, no blocked rooms) is brought to
version 3: the index is built from the stored events, leaving out redacted ones."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import text, update

from homeserver.services.container import Services
from storage import migrations, schema
from tests.client_api import test_sync_fanout
from tests.client_api.test_room_history import redact
from tests.helpers.room_api import User, api, create_room, put_state, send_text

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL


async def search(client: TestClient, user: User, term: str) -> list[str]:
    body: dict[str, Any] = {"search_categories": {"room_events": {"search_term": term}}}
    status, found = await api(client, "POST", "/search", user, body)
    assert status == 200, found
    return [r["result"]["event_id"] for r in found["search_categories"]["room_events"]["results"]]


async def test_version_2_database_gets_its_index_built(client: TestClient, services: Services,
                                                       alice: User) -> None:
    room = await create_room(client, alice, name="Harbour plans")
    kept = await send_text(client, alice, room, "the lighthouse keeper's log")
    gone = await send_text(client, alice, room, "the lighthouse secret")
    await redact(client, alice, room, gone)
    _, body = await put_state(client, alice, room, "m.room.topic", {"topic": "lighthouse"})
    topic = body["event_id"]
    async with services.db.engine.write() as conn:
        for table in ("event_search", "history_cleared", "blocked_rooms"):
            await conn.execute(text(f"DROP TABLE {table}"))
        await conn.execute(update(schema.schema_version).values(version=2))
    assert await services.db.engine.migrate() == 2
    assert sorted(await search(client, alice, "lighthouse")) == sorted([kept, topic])
    assert len(await search(client, alice, "harbour")) == 1
    assert await services.db.engine.migrate() == migrations.LATEST  # nothing left to do
    # The index keeps working for new events.
    new = await send_text(client, alice, room, "a new lighthouse")
    assert new in await search(client, alice, "lighthouse")
