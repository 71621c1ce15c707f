"""U+0000 from another server, against a real ``ktchat`` process on SQLite and on PostgreSQL
(whose text columns cannot hold it).

Canonical JSON allows ``\\u0000`` in event content, and events are stored as their canonical
JSON, where it stays escaped: such an event is taken and read back unchanged. Where the value
would be an identifier the server keeps in a column of its own (type, state key, room ID,
the IDs an event refers to) the PDU is refused on its own in the ``/send`` answer; an EDU
carrying it is dropped; a path segment or query parameter carrying it is ``400
M_INVALID_PARAM``; a body that carries no events is ``400 M_BAD_JSON``. Never a 500, and the
room is as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.federation.conftest import FedServers
from tests.helpers.fake_peer import FakePeer, q
from tests.helpers.federation import FedServer, User

pytestmark = pytest.mark.asyncio(loop_scope="module")

NUL = "\u0000"


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
    root = tmp_path_factory.mktemp(f"nul-{request.param}")
    servers = FedServers(root)
    peer = FakePeer(root / "fake")
    try:
        server = await servers.postgres("hs") if request.param == "postgres" else servers("hs")
        await peer.start()
        alice = await server.register("alice")
        room_id = await alice.create_room(preset="public_chat", name="nul")
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


async def test_nul_in_content_is_stored_losslessly(env: Env) -> None:
    body = f"before{NUL}after"
    event = env.peer.build(env.room_id, "m.room.message",
                           {"msgtype": "m.text", "body": body, f"org.example{NUL}key": NUL})
    answer = await send_ok(env, [event.pdu])
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)
    seen = await env.alice.event(env.room_id, event.event_id)
    assert seen["content"]["body"] == body
    assert seen["content"][f"org.example{NUL}key"] == NUL
    assert event.event_id in [e["event_id"] for e in await env.alice.timeline(env.room_id)]
    # A state event with it in its content: mallory's display name.
    renamed = env.peer.build(env.room_id, "m.room.member",
                             {"membership": "join", "displayname": f"mal{NUL}lory"},
                             state_key=env.mallory)
    answer = await send_ok(env, [renamed.pdu])
    assert answer["pdus"].get(renamed.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(renamed)
    member = await env.alice.state_event(env.room_id, "m.room.member", env.mallory)
    assert member == {"membership": "join", "displayname": f"mal{NUL}lory"}
    members = await env.alice.joined_members(env.room_id)
    assert members[env.mallory].get("display_name") == f"mal{NUL}lory", members
    # In `unsigned` (not signed, kept as sent) too.
    event = env.peer.message(env.room_id, "unsigned")
    event.pdu["unsigned"] = {f"org.example{NUL}": NUL}  # type: ignore[index]
    answer = await send_ok(env, [event.pdu])
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)


@pytest.mark.parametrize("where", ["state_key", "type", "prev_events", "auth_events",
                                   "membership", "signature"])
async def test_nul_in_an_identifier_refuses_that_pdu(env: Env, where: str) -> None:
    before = await snapshot(env)
    good = env.peer.message(env.room_id, "the good one")
    if where == "state_key":
        bad = env.peer.build(env.room_id, "org.example.state", {"a": 1},
                             state_key=f"key{NUL}")
    elif where == "type":
        bad = env.peer.build(env.room_id, f"org.example{NUL}", {"a": 1})
    elif where == "prev_events":
        bad = env.peer.build(env.room_id, "m.room.message", {"body": "x"},
                             prev_events=[f"$abc{NUL}"])
    elif where == "auth_events":
        state = env.peer.rooms[env.room_id].state
        bad = env.peer.build(env.room_id, "m.room.message", {"body": "x"}, auth_events=[
            state[("m.room.power_levels", "")], state[("m.room.member", env.mallory)],
            f"$abc{NUL}"])
    elif where == "membership":
        bad = env.peer.build(env.room_id, "m.room.member", {"membership": f"join{NUL}"},
                             state_key=env.mallory)
    else:
        bad = env.peer.message(env.room_id, "signed twice")
        signatures = bad.pdu["signatures"][env.peer.server_name]  # type: ignore[index]
        signatures[f"ed25519:other{NUL}"] = "AAAA"
    answer = await send_ok(env, [bad.pdu, good.pdu])
    assert "error" in answer["pdus"].get(bad.event_id, {"error": "left out"}), answer
    assert answer["pdus"].get(good.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(good)
    state, timeline = await snapshot(env)
    assert state == before[0]
    assert bad.event_id not in timeline and good.event_id in timeline


async def test_nul_room_id_and_edus_are_dropped(env: Env) -> None:
    before = await snapshot(env)
    pdu = dict(env.peer.message(env.room_id, "elsewhere").pdu)
    pdu["room_id"] = f"!room{NUL}:{env.peer.server_name}"
    edus = [
        {"edu_type": "m.typing", "content": {"room_id": f"!r{NUL}:x", "user_id": env.mallory,
                                             "typing": True}},
        {"edu_type": "m.receipt", "content": {f"!r{NUL}:x": {"m.read": {env.mallory: {
            "event_ids": [f"$e{NUL}"], "data": {"ts": 1}}}}}},
        {"edu_type": "m.presence", "content": {"push": [{
            "user_id": env.mallory, "presence": "online", "status_msg": f"hi{NUL}",
            "last_active_ago": 1}]}},
        {"edu_type": "m.direct_to_device", "content": {
            "sender": env.mallory, "type": "org.example", "message_id": "m1",
            "messages": {env.alice.user_id: {f"DEV{NUL}": {"a": NUL}}}}},
    ]
    answer = await send_ok(env, [pdu], edus)
    assert answer == {"pdus": {}}, answer
    assert await snapshot(env) == before


async def test_nul_in_paths_queries_and_other_bodies(env: Env) -> None:
    before = await snapshot(env)
    status, body = await env.peer.request(
        env.server, "PUT", f"/_matrix/federation/v1/send/txn{q(NUL)}",
        {"origin": env.peer.server_name, "origin_server_ts": 1, "pdus": [], "edus": []})
    assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), body
    status, body = await env.peer.request(
        env.server, "GET", f"/_matrix/federation/v1/event/{q('$abc' + NUL)}")
    assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), body
    status, body = await env.peer.request(
        env.server, "GET",
        f"/_matrix/federation/v1/backfill/{q(env.room_id)}?v={q('$x' + NUL)}&limit=10")
    assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), body
    status, body = await env.peer.request(
        env.server, "POST", f"/_matrix/federation/v1/get_missing_events/{q(env.room_id)}",
        {"earliest_events": [], "latest_events": [f"$x{NUL}"], "limit": 10})
    assert (status, body.get("errcode")) == (400, "M_BAD_JSON"), body
    status, body = await env.peer.request(
        env.server, "POST", "/_matrix/federation/v1/user/keys/query",
        {"device_keys": {env.alice.user_id: [f"D{NUL}"]}})
    assert (status, body.get("errcode")) == (400, "M_BAD_JSON"), body
    assert await snapshot(env) == before
