"""Redacted content is erased from storage after ``redaction_retention_period`` (issue #6):
the stored JSON keeps only what the redaction algorithm keeps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from homeserver.config import ConfigError
from homeserver.services.container import Services
from storage.schema import events, redactions
from tests.client_api.test_room_history import redact
from tests.conftest import make_config
from tests.helpers.room_api import User, api, create_room, put_state, send_text

SECRET = "the secret plan"


async def stored(services: Services, event_id: str) -> tuple[str, bool]:
    """The event's stored JSON and whether its redaction is marked done."""
    async with services.db.engine.read() as conn:
        raw = (await conn.execute(select(events.c.json)
                                  .where(events.c.event_id == event_id))).scalar_one()
        done = (await conn.execute(select(redactions.c.censored)
                                   .where(redactions.c.redacts == event_id))).scalar()
    return str(raw), bool(done)


async def assert_redacted_everywhere(client: TestClient, user: User, room_id: str,
                                     event_id: str) -> None:
    status, body = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", user)
    assert status == 200 and body["content"] == {}, body
    assert "redacted_because" in body["unsigned"]
    status, page = await api(client, "GET", f"/rooms/{room_id}/messages", user,
                             query={"dir": "b", "limit": "50"})
    assert status == 200
    [found] = [e for e in page["chunk"] if e["event_id"] == event_id]
    assert found["content"] == {}
    assert SECRET not in str(page)


class TestErasedAtOnce:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return {"redaction_retention_period": 0}

    async def test_content_leaves_the_database_when_redacted(
            self, client: TestClient, services: Services, alice: User) -> None:
        room_id = await create_room(client, alice)
        event_id = await send_text(client, alice, room_id, SECRET)
        await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", alice)  # cached
        await redact(client, alice, room_id, event_id)
        for _ in range(100):
            raw, done = await stored(services, event_id)
            if done:
                break
            await asyncio.sleep(0.02)
        assert done and SECRET not in raw
        assert '"hashes"' in raw and '"signatures"' in raw  # what redaction keeps stays
        await assert_redacted_everywhere(client, alice, room_id, event_id)
        # The room still works.
        await send_text(client, alice, room_id, "after")

    async def test_erased_state_leaves_the_roomservers_cache(
            self, client: TestClient, services: Services, alice: User) -> None:
        """The roomserver caches the events it builds: what reads rooms through it (the
        public room directory, send_join's state, invite state, the outbound federation
        queue) must not go on showing content the censor erased from storage."""
        room_id = await create_room(client, alice, visibility="public", name="Garden",
                                    topic=SECRET)
        status, body = await api(client, "GET", "/publicRooms")
        assert status == 200 and body["chunk"][0]["topic"] == SECRET, body
        topic_id = (await services.roomserver.current_state(room_id) or {})[
            ("m.room.topic", "")]
        await redact(client, alice, room_id, topic_id)
        for _ in range(100):
            raw, done = await stored(services, topic_id)
            if done:
                break
            await asyncio.sleep(0.02)
        assert done and SECRET not in raw
        status, body = await api(client, "GET", "/publicRooms")
        assert status == 200, body
        assert SECRET not in str(body)
        [event] = (await services.roomserver.get_events([topic_id])).values()
        assert SECRET not in str(event.pdu)


async def test_redacted_state_is_hidden_by_the_roomserver_at_once(
        client: TestClient, services: Services, alice: User) -> None:
    """Within the retention period the stored JSON still holds the content, but what reads
    rooms through the roomserver (the public room directory here; send_join's state, invite
    state and federation retries too) sees the redacted form from the redaction on."""
    room_id = await create_room(client, alice, visibility="public", name="Garden",
                                topic=SECRET)
    status, body = await api(client, "GET", "/publicRooms")
    assert status == 200 and body["chunk"][0]["topic"] == SECRET, body
    topic_id = (await services.roomserver.current_state(room_id) or {})[
        ("m.room.topic", "")]
    await redact(client, alice, room_id, topic_id)
    raw, done = await stored(services, topic_id)
    assert SECRET in raw and not done  # kept for the period
    status, body = await api(client, "GET", "/publicRooms")
    assert status == 200, body
    assert SECRET not in str(body)
    [event] = (await services.roomserver.get_events([topic_id])).values()
    assert SECRET not in str(event.pdu)
    assert event.pdu["type"] == "m.room.topic" and event.pdu["content"] == {}


async def test_content_is_kept_for_the_period_then_erased(
        client: TestClient, services: Services, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await api(client, "POST", f"/rooms/{room_id}/join", bob, {})
    event_id = await send_text(client, bob, room_id, SECRET)
    topic_status, topic = await put_state(client, alice, room_id, "m.room.topic",
                                          {"topic": "secret topic"})
    assert topic_status == 200
    await redact(client, alice, room_id, event_id)  # a moderator redacts bob's message
    await redact(client, alice, room_id, topic["event_id"])
    await assert_redacted_everywhere(client, alice, room_id, event_id)
    now = services.clock.time_ms()
    assert services.config.redaction_retention_period == 7 * 86_400_000
    # Hidden, but still stored within the period.
    assert await services.censor.run(now_ms=now + 6 * 86_400_000) == 0
    raw, done = await stored(services, event_id)
    assert SECRET in raw and not done
    # Past it: erased, the room's state intact.
    assert await services.censor.run(now_ms=now + 8 * 86_400_000) == 2
    raw, done = await stored(services, event_id)
    assert done and SECRET not in raw
    raw, _ = await stored(services, topic["event_id"])
    assert "secret topic" not in raw
    assert await services.censor.run(now_ms=now + 9 * 86_400_000) == 0
    await assert_redacted_everywhere(client, bob, room_id, event_id)
    status, state = await api(client, "GET", f"/rooms/{room_id}/state", bob)
    assert status == 200 and {e["type"] for e in state} >= {"m.room.create", "m.room.member"}
    await send_text(client, bob, room_id, "still chatting")


class TestNeverErased:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return {"redaction_retention_period": None}

    async def test_null_keeps_content(self, client: TestClient, services: Services,
                                      alice: User) -> None:
        room_id = await create_room(client, alice)
        event_id = await send_text(client, alice, room_id, SECRET)
        await redact(client, alice, room_id, event_id)
        assert await services.censor.run(now_ms=services.clock.time_ms() + 10**12) == 0
        assert SECRET in (await stored(services, event_id))[0]


@pytest.mark.parametrize(("value", "expected"), [
    ("7d", 7 * 86_400_000), ("12h", 12 * 3_600_000), ("30s", 30_000), ("500ms", 500),
    ("1w", 604_800_000), (0, 0), (60000, 60000), (None, None)])
def test_retention_period_syntax(tmp_path: Path, value: Any, expected: int | None) -> None:
    config = make_config(tmp_path, redaction_retention_period=value)
    assert config.redaction_retention_period == expected


@pytest.mark.parametrize("value", ["soon", "7 days", -1, True, "5x", [1]])
def test_bad_retention_period_is_reported(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match="redaction_retention_period"):
        make_config(tmp_path, redaction_retention_period=value)
