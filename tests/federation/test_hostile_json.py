"""Hostile JSON from another server (issue 14), against a real ``ktchat`` process on SQLite
and on PostgreSQL: never a 500 and never a traceback, and the room is as it was.

- A key twice in one object: the whole body is ``400 M_NOT_JSON`` (canonical JSON has none,
  and a signature over one reading would vouch for another).
- A lone surrogate (``"\\ud800"``): canonical JSON cannot encode it, so no body holding one
  can carry a valid signature: ``400 M_BAD_JSON``.
- A PDU nested deeper than a client's body could make it (``MAX_PDU_NESTING``) or holding an
  integer beyond canonical JSON's range is refused on its own in the ``/send`` answer, the
  other PDUs are taken; an EDU nested too deep is dropped. A body nested deeper than
  ``MAX_FEDERATION_NESTING`` is ``400 M_NOT_JSON``.
- Bodies that carry no events hold integers to canonical JSON's range (``400 M_BAD_JSON``),
  and integer query parameters are checked (``400 M_INVALID_PARAM``).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from federation.inbound.pdus import MAX_PDU_NESTING
from homeserver.http.json import MAX_FEDERATION_NESTING
from tests.federation.conftest import FedServers
from tests.helpers.fake_peer import FakePeer, q
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
    root = tmp_path_factory.mktemp(f"hostile-{request.param}")
    servers = FedServers(root)
    peer = FakePeer(root / "fake")
    try:
        server = await servers.postgres("hs") if request.param == "postgres" else servers("hs")
        await peer.start()
        alice = await server.register("alice")
        room_id = await alice.create_room(preset="public_chat", name="hostile")
        mallory = peer.user_id("mallory")
        await peer.join(server, room_id, mallory)
        yield Env(server, alice, peer, room_id, mallory)
        log = server.log()
        assert "Traceback" not in log
        assert "Internal server error" not in log
    finally:
        await servers.close()
        await peer.close()


@contextmanager
def deep_recursion() -> Iterator[None]:
    """The fake peer builds and signs deep events with Python's recursive helpers."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def nested(levels: int) -> dict[str, Any]:
    """An object nesting objects ``levels`` deep (``{}`` is one level)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def snapshot(env: Env) -> tuple[dict[tuple[str, str], Any], list[str]]:
    state = {(e["type"], e["state_key"]): e["event_id"]
             for e in await env.alice.state(env.room_id)}
    timeline = [e["event_id"] for e in await env.alice.timeline(env.room_id, limit=200)]
    return state, timeline


async def send_raw(env: Env, text: str, path: str | None = None, method: str = "PUT", *,
                   sign: bool = True) -> tuple[int, Any]:
    """``text`` sent exactly (a new transaction by default), signed over what a lenient
    parser reads in it (the last of repeated keys), or unsigned: no valid signature can
    cover a lone surrogate, which canonical JSON cannot encode."""
    path = path or f"/_matrix/federation/v1/send/{uuid.uuid4().hex}"
    return await env.peer.request(env.server, method, path, json.loads(text) if sign else None,
                                  sign=sign, raw_body=text.encode())


def transaction_text(env: Env, pdus: list[Any]) -> str:
    return json.dumps({"origin": env.peer.server_name, "origin_server_ts": 1, "pdus": pdus,
                       "edus": []})


async def test_duplicate_keys_refuse_the_whole_body(env: Env) -> None:
    before = await snapshot(env)
    good = env.peer.message(env.room_id, "never seen")
    text = transaction_text(env, [good.pdu])
    origin = f'"origin": "{env.peer.server_name}"'
    duplicated = text.replace(origin, f'"origin": "other.example", {origin}', 1)
    assert duplicated != text
    status, body = await send_raw(env, duplicated)
    assert (status, body.get("errcode")) == (400, "M_NOT_JSON"), body
    # Inside a PDU's content too.
    pdu_text = json.dumps(good.pdu)
    inner = pdu_text.replace('"body": "never seen"', '"body": "x", "body": "never seen"', 1)
    assert inner != pdu_text
    status, body = await send_raw(env, transaction_text(env, []).replace('"pdus": []',
                                                                    f'"pdus": [{inner}]'))
    assert (status, body.get("errcode")) == (400, "M_NOT_JSON"), body
    # And in a body that carries no events.
    status, body = await send_raw(
        env, '{"earliest_events": [], "latest_events": [], "limit": 1, "limit": 2}',
        f"/_matrix/federation/v1/get_missing_events/{q(env.room_id)}", "POST")
    assert (status, body.get("errcode")) == (400, "M_NOT_JSON"), body
    assert await snapshot(env) == before


async def test_lone_surrogate_is_bad_json(env: Env) -> None:
    before = await snapshot(env)
    good = env.peer.message(env.room_id, "never seen either")
    pdu_text = json.dumps(good.pdu)
    for bad in ('"\\ud800"', '"a\\udfff"', '"\\ude00\\ud83d"'):
        broken = pdu_text.replace('"never seen either"', bad, 1)
        status, body = await send_raw(env, transaction_text(env, []).replace(
            '"pdus": []', f'"pdus": [{broken}]'), sign=False)
        assert (status, body.get("errcode")) == (400, "M_BAD_JSON"), (bad, body)
    status, body = await send_raw(
        env, '{"earliest_events": [], "latest_events": ["$\\ud800"], "limit": 1}',
        f"/_matrix/federation/v1/get_missing_events/{q(env.room_id)}", "POST", sign=False)
    assert (status, body.get("errcode")) == (400, "M_BAD_JSON"), body
    assert await snapshot(env) == before


@pytest.mark.parametrize("levels", [MAX_PDU_NESTING, 450])
async def test_a_pdu_nested_too_deep_is_refused_alone(env: Env, levels: int) -> None:
    before = await snapshot(env)
    good = env.peer.message(env.room_id, f"beside {levels}")
    with deep_recursion():
        # {"content": {"x": nested}}: nesting + 2 levels in all.
        deep = env.peer.build(env.room_id, "org.example.deep", {"x": nested(levels - 1)})
        status, answer = await env.peer.send_transaction(env.server, [deep.pdu, good.pdu])
    assert status == 200, answer
    assert "error" in answer["pdus"].get(deep.event_id, {"error": "left out"}), answer
    assert answer["pdus"].get(good.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(good)
    state, timeline = await snapshot(env)
    assert state == before[0]
    assert deep.event_id not in timeline and good.event_id in timeline


async def test_a_pdu_as_deep_as_a_client_can_make_one_is_taken(env: Env) -> None:
    """Content of 100 levels: the deepest a client's /send body may be."""
    with deep_recursion():
        event = env.peer.build(env.room_id, "org.example.deep", {"x": nested(99)})
        status, answer = await env.peer.send_transaction(env.server, [event.pdu])
    assert status == 200, answer
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)
    seen = await env.alice.event(env.room_id, event.event_id)
    assert seen["content"] == {"x": nested(99)}


async def test_a_body_nested_too_deep_is_not_json(env: Env) -> None:
    before = await snapshot(env)
    for levels in (MAX_FEDERATION_NESTING + 1, 990, 5000):
        deep = '{"a":' * (levels - 3) + "{}" + "}" * (levels - 3)
        good = json.dumps(env.peer.message(env.room_id, "in a deep body").pdu)
        text = transaction_text(env, []).replace(
            '"pdus": []', f'"pdus": [{good}, {{"content": {deep}}}]')
        status, body = await send_raw(env, text, sign=False)
        assert (status, body.get("errcode")) == (400, "M_NOT_JSON"), (levels, body)
    assert await snapshot(env) == before


async def test_an_edu_nested_too_deep_is_dropped(env: Env) -> None:
    first = await env.alice.sync()
    with deep_recursion():
        edus = [{"edu_type": "m.direct_to_device", "content": {
            "sender": env.mallory, "type": "org.example.deep", "message_id": "deep1",
            "messages": {env.alice.user_id: {env.alice.device_id: nested(MAX_PDU_NESTING)}}}},
            {"edu_type": "m.direct_to_device", "content": {
                "sender": env.mallory, "type": "org.example.shallow", "message_id": "ok1",
                "messages": {env.alice.user_id: {env.alice.device_id: {"n": 1}}}}}]
        status, answer = await env.peer.send_transaction(env.server, [], edus)
    assert status == 200, answer
    body = await env.alice.sync(first["next_batch"])
    types = [e["type"] for e in body.get("to_device", {}).get("events", [])]
    assert types == ["org.example.shallow"], body.get("to_device")


async def test_integers_out_of_range(env: Env) -> None:
    before = await snapshot(env)
    # In a PDU: refused on its own (room versions 6 and later), the others taken.
    good = env.peer.message(env.room_id, "beside a big number")
    big = env.peer.message(env.room_id, "big")
    big.pdu["content"]["n"] = 2**60  # type: ignore[index]
    status, answer = await env.peer.send_transaction(env.server, [big.pdu, good.pdu])
    assert status == 200, answer
    assert answer["pdus"].get(good.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(good)
    # In a body that carries no events: the whole body.
    for limit in (2**53, 2**64):
        status, body = await env.peer.request(
            env.server, "POST", f"/_matrix/federation/v1/get_missing_events/{q(env.room_id)}",
            {"earliest_events": [], "latest_events": [good.event_id], "limit": limit})
        assert (status, body.get("errcode")) == (400, "M_BAD_JSON"), body
    state, timeline = await snapshot(env)
    assert state == before[0]
    assert good.event_id in timeline and len(timeline) == len(before[1]) + 1


async def test_integer_query_parameters_are_checked(env: Env) -> None:
    head = (await env.alice.timeline(env.room_id, limit=1))[0]["event_id"]
    for value in ("-1", str(2**53), str(2**64), "9" * 5000, "abc", "1.5", "\u00b2"):
        for path in (
                f"/_matrix/federation/v1/backfill/{q(env.room_id)}?v={q(head)}&limit={q(value)}",
                f"/_matrix/federation/v1/publicRooms?limit={q(value)}",
                f"/_matrix/key/v2/query/{env.peer.server_name}?minimum_valid_until_ts="
                f"{q(value)}"):
            status, body = await env.peer.request(env.server, "GET", path)
            assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), (path, body)
    status, body = await env.peer.request(
        env.server, "GET",
        f"/_matrix/federation/v1/backfill/{q(env.room_id)}?v={q(head)}&limit=1000000")
    assert status == 200, body
