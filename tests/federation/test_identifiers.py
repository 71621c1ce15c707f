"""Over-long identifiers from another server, against a real ``ktchat`` process on SQLite and
on PostgreSQL: the same limits as a client's (``core/types.py``).

A PDU whose ``type``, ``state_key``, ``sender``, ``room_id`` or any of its ``prev_events`` and
``auth_events`` is over 255 bytes (the spec's PDU size limits, which Synapse enforces on every
event) is refused on its own in the ``/send`` answer; the good PDU beside it is taken, and the
room is otherwise as it was. An ``m.direct_to_device`` EDU with an over-long type or
``message_id``, a read receipt with an over-long thread ID, and presence of a user whose ID is
not one (over 255 bytes, or not of the user ID grammar), are dropped. Never a 500.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests.federation.conftest import FedServers
from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import FedServer, User

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Env:
    server: FedServer
    alice: User
    peer: FakePeer
    room_id: str
    mallory: str


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp(f"ids-{request.param}")
    servers = FedServers(root)
    peer = FakePeer(root / "fake")
    try:
        server = await servers.postgres("hs") if request.param == "postgres" else servers("hs")
        await peer.start()
        alice = await server.register("alice")
        # Anyone may send state, so only the identifiers decide.
        room_id = await alice.create_room(preset="public_chat", name="ids",
                                          power_level_content_override={"state_default": 0})
        mallory = peer.user_id("mallory")
        await peer.join(server, room_id, mallory)
        yield Env(server, alice, peer, room_id, mallory)
        assert "Traceback" not in server.log()
    finally:
        await servers.close()
        await peer.close()


async def snapshot(env: Env) -> tuple[dict[tuple[str, str], Any], list[str]]:
    state = {(e["type"], e["state_key"]): e["event_id"]
             for e in await env.alice.state(env.room_id)}
    timeline = [e["event_id"] for e in await env.alice.timeline(env.room_id, limit=200)]
    return state, timeline


async def send_ok(env: Env, pdus: list[Any], edus: list[Any] | None = None) -> dict[str, Any]:
    status, answer = await env.peer.send_transaction(env.server, pdus, edus)
    assert status == 200, answer
    return answer  # type: ignore[no-any-return]


def _pad(n: int, prefix: str = "", suffix: str = "") -> str:
    return prefix + "a" * (n - len(prefix.encode()) - len(suffix.encode())) + suffix


@pytest.mark.parametrize("length", [256, 8000])
@pytest.mark.parametrize("where", ["type", "state_key", "wide_state_key", "sender",
                                   "prev_events", "auth_events"])
async def test_overlong_identifier_refuses_that_pdu(env: Env, where: str, length: int
                                                    ) -> None:
    before = await snapshot(env)
    good = env.peer.message(env.room_id, "the good one")
    if where == "type":
        bad = env.peer.build(env.room_id, _pad(length, "org."), {"a": 1})
    elif where == "state_key":
        bad = env.peer.build(env.room_id, "org.example.state", {"a": 1},
                             state_key=_pad(length))
    elif where == "wide_state_key":  # 255 characters or fewer, but more bytes
        bad = env.peer.build(env.room_id, "org.example.state", {"a": 1},
                             state_key="é" * (length // 2))
    elif where == "sender":
        bad = env.peer.message(env.room_id, "x",
                               sender=_pad(length, "@", ":" + env.peer.server_name))
    elif where == "prev_events":
        bad = env.peer.build(env.room_id, "m.room.message", {"body": "x"},
                             prev_events=[*env.peer.rooms[env.room_id].extremities,
                                          _pad(length, "$")])
    else:
        state = env.peer.rooms[env.room_id].state
        bad = env.peer.build(env.room_id, "m.room.message", {"body": "x"}, auth_events=[
            state[("m.room.power_levels", "")], state[("m.room.member", env.mallory)],
            _pad(length, "$")])
    answer = await send_ok(env, [bad.pdu, good.pdu])
    assert "error" in answer["pdus"].get(bad.event_id, {"error": "left out"}), answer
    assert answer["pdus"].get(good.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(good)
    state, timeline = await snapshot(env)
    assert state == before[0]
    assert bad.event_id not in timeline and good.event_id in timeline


async def test_overlong_room_id_is_refused(env: Env) -> None:
    before = await snapshot(env)
    pdu = dict(env.peer.message(env.room_id, "elsewhere").pdu)
    pdu["room_id"] = _pad(8000, "!", ":" + env.peer.server_name)
    await send_ok(env, [pdu])
    assert await snapshot(env) == before


async def test_identifiers_of_255_bytes_are_taken(env: Env) -> None:
    event = env.peer.build(env.room_id, _pad(255, "org."), {"a": 1}, state_key=_pad(255))
    answer = await send_ok(env, [event.pdu])
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)
    assert await env.alice.state_event(env.room_id, _pad(255, "org."), _pad(255)) == {"a": 1}


async def test_overlong_to_device_type_and_message_id_are_dropped(env: Env) -> None:
    first = await env.alice.sync()

    def to_device(event_type: str, message_id: str, n: int) -> dict[str, Any]:
        return {"edu_type": "m.direct_to_device", "content": {
            "sender": env.mallory, "type": event_type, "message_id": message_id,
            "messages": {env.alice.user_id: {"*": {"n": n}}}}}

    await send_ok(env, [], [to_device(_pad(256, "org."), "m1", 1),
                            to_device(_pad(8000, "org."), "m2", 2),
                            to_device("org.example", _pad(8000, "m"), 3),
                            to_device("org.example.last", "m4", 4)])
    got: list[dict[str, Any]] = []
    since = first["next_batch"]
    for _ in range(20):
        body = await env.alice.sync(since, 1000)
        since = body["next_batch"]
        got += body.get("to_device", {}).get("events", [])
        if any(e["type"] == "org.example.last" for e in got):
            break
    assert [e["content"]["n"] for e in got] == [4], got


async def test_overlong_receipt_thread_id_is_dropped(env: Env) -> None:
    """Receipts share a write: the bad one is dropped, the good one in the same EDU lands."""
    first, second = (env.peer.message(env.room_id, "read me"),
                     env.peer.message(env.room_id, "and me"))
    for message in (first, second):
        answer = await send_ok(env, [message.pdu])
        assert answer["pdus"].get(message.event_id) == {}, answer
        env.peer.rooms[env.room_id].accept(message)
    await env.alice.catch_up()
    await send_ok(env, [], [{"edu_type": "m.receipt", "content": {env.room_id: {"m.read": {
        env.mallory: {"event_ids": [first.event_id],
                      "data": {"ts": 1, "thread_id": _pad(8000, "$")}}}}}},
                            {"edu_type": "m.receipt", "content": {env.room_id: {"m.read": {
                                env.mallory: {"event_ids": [second.event_id],
                                              "data": {"ts": 2}}}}}}])

    def receipts(body: dict[str, Any]) -> dict[str, Any]:
        room = body.get("rooms", {}).get("join", {}).get(env.room_id, {})
        return {event_id: by_type for event in room.get("ephemeral", {}).get("events", [])
                if event["type"] == "m.receipt" for event_id, by_type in event["content"].items()}

    await env.alice.wait_for(lambda body: second.event_id in receipts(body),
                             what="mallory's receipt")
    assert not any(first.event_id in receipts(body) for body in env.alice.history)


async def _count(server: FedServer, sql: str) -> int:
    """``sql`` (a ``SELECT count(*)``) on the server's own database."""
    url = server.config["database"]["url"]
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split(":///", 1)[1]) as db:
            return int(db.execute(sql).fetchone()[0])
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_presence_of_an_overlong_or_malformed_user_id_is_dropped(env: Env) -> None:
    def push(user_id: str) -> dict[str, Any]:
        return {"user_id": user_id, "presence": "online", "last_active_ago": 1}

    peer = env.peer.server_name
    await send_ok(env, [], [{"edu_type": "m.presence", "content": {"push": [
        push(_pad(256, "@", ":" + peer)), push(_pad(8000, "@", ":" + peer)),
        push(f"@white space:{peer}"), push(env.mallory)]}}])
    for _ in range(100):  # the good one is written within a second (a batch of them)
        if await _count(env.server, "SELECT count(*) FROM presence WHERE user_id = "
                                    f"'{env.mallory}'"):
            break
        await asyncio.sleep(0.1)
    assert await _count(env.server, "SELECT count(*) FROM presence WHERE user_id = "
                                    f"'{env.mallory}'") == 1
    assert await _count(env.server, "SELECT count(*) FROM presence WHERE user_id LIKE "
                                    f"'%:{peer}' AND user_id <> '{env.mallory}'") == 0


@pytest.mark.parametrize("localpart", ["a" * 300, "white space", ""])
async def test_make_join_for_a_malformed_user_id_is_invalid_param(env: Env, localpart: str
                                                                  ) -> None:
    status, body = await env.peer.make_join(env.server, env.room_id,
                                            f"@{localpart}:{env.peer.server_name}")
    assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), body
