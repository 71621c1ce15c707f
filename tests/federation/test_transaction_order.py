"""A transaction's to-device messages are delivered no later than its events.

A room key travels as an ``m.direct_to_device`` EDU, often in the same transaction as the
first message encrypted with it. If the message reached a sync before the key, a client that
decrypts each event once, as it arrives (matrix-nio), could never read it. Our server as a
real process, a fake peer (mallory) in alice's room sending one transaction with both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import FedServer, User

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[tuple[FedServer, User, FakePeer, str]]:
    root = tmp_path_factory.mktemp("txnorder")
    a = FedServer(root, "A")
    peer = FakePeer(root / "fake")
    await peer.start()
    a.start()
    try:
        alice = await a.register("alice")
        room = await alice.create_room(preset="public_chat")
        await peer.join(a, room, peer.user_id("mallory"))
        yield a, alice, peer, room
    finally:
        a.stop()
        await peer.close()


async def test_room_keys_come_no_later_than_the_message(
        env: tuple[FedServer, User, FakePeer, str]) -> None:
    a, alice, peer, room = env
    since = (await alice.sync())["next_batch"]
    for round_ in range(5):
        tag = uuid.uuid4().hex
        message = peer.message(room, f"encrypted {tag}")
        key = {"edu_type": "m.direct_to_device", "content": {
            "sender": peer.user_id("mallory"), "type": "m.room_key",
            "message_id": uuid.uuid4().hex,
            "messages": {alice.user_id: {alice.device_id: {"tag": tag}}}}}
        sending = asyncio.ensure_future(peer.send_transaction(a, [dict(message.pdu)], [key]))
        got_key = False
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            assert asyncio.get_running_loop().time() < deadline, f"round {round_}: nothing"
            body = await alice.sync(since, 5000)
            since = body["next_batch"]
            got_key |= any(e["content"].get("tag") == tag
                           for e in body.get("to_device", {}).get("events", []))
            timeline = body.get("rooms", {}).get("join", {}).get(room, {}) \
                .get("timeline", {}).get("events", [])
            if any(e["event_id"] == message.event_id for e in timeline):
                assert got_key, f"round {round_}: the message came before its key"
                break
        status, answer = await sending
        assert status == 200, answer
        peer.rooms[room].accept(message)
