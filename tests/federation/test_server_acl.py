"""A server the room's ACL denies takes no part: its events, typing and requests for the
room are refused, while the room goes on for everyone else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("acl")
    server = FedServer(root, "hs")
    peer = FakePeer(root / "peer")
    await peer.start()
    server.start()
    try:
        alice = await server.register("alice")
        room_id = await alice.create_room(preset="public_chat")
        mallory = peer.user_id("mallory")
        await peer.join(server, room_id, mallory)
        # Deny the peer's host (ports are not part of ACLs; our own server is never judged).
        await alice.send_state(room_id, "m.room.server_acl",
                               {"allow": ["*"], "deny": ["127.0.0.1"]})
        yield Env(server, alice, peer, room_id, mallory)
    finally:
        server.stop()
        await peer.close()


async def test_its_events_are_refused(env: Env) -> None:
    event = env.peer.message(env.room_id, "after the ACL")
    status, answer = await env.peer.send_transaction(env.server, [dict(event.pdu)])
    assert status == 200, answer
    assert "banned" in answer["pdus"][event.event_id]["error"]
    bodies = [e["content"].get("body") for e in await env.alice.timeline(env.room_id)]
    assert "after the ACL" not in bodies


async def test_its_requests_for_the_room_are_refused(env: Env) -> None:
    for uri in (f"/_matrix/federation/v1/state_ids/{q(env.room_id)}?event_id=x",
                f"/_matrix/federation/v1/make_join/{q(env.room_id)}/"
                f"{q(env.peer.user_id('eve'))}?ver=12"):
        status, body = await env.peer.request(env.server, "GET", uri)
        assert status == 403, (uri, body)
        assert body["errcode"] == "M_FORBIDDEN"


async def test_its_typing_is_ignored(env: Env) -> None:
    status, _ = await env.peer.send_transaction(env.server, [], [{
        "edu_type": "m.typing",
        "content": {"room_id": env.room_id, "user_id": env.mallory, "typing": True}}])
    assert status == 200
    body = await env.alice.sync(timeout=0)
    ephemeral = body["rooms"]["join"][env.room_id].get("ephemeral", {}).get("events", [])
    assert not [e for e in ephemeral if e["type"] == "m.typing"
                and env.mallory in e["content"]["user_ids"]]
