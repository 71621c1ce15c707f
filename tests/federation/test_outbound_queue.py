"""The outbound queue against a peer that fails: retries back off (a dead server is not
hammered), a request from the peer retries at once, and what waited arrives in transactions
of at most 50 PDUs, in order, once each.

The peer is ``FakePeer`` (a server with its own key) made to answer ``/send`` with 500 while
it is "down"; our server runs with the harness's retry settings (first retry after 500 ms,
doubling up to 5 s).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.helpers.fake_peer import FakePeer, q
from tests.helpers.federation import FedServer, User

pytestmark = pytest.mark.asyncio(loop_scope="module")


class FlakyPeer(FakePeer):
    """A fake peer whose ``/send`` fails while ``down`` (and counts every attempt)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.down = False
        self.delay = 0.0  # seconds each answer to /send takes
        self.attempts: list[float] = []
        self.transactions: list[dict[str, Any]] = []

    async def _transaction(self, request: web.Request) -> web.Response:
        self.attempts.append(time.monotonic())
        await asyncio.sleep(self.delay)
        if self.down:
            return web.json_response({"errcode": "M_UNKNOWN", "error": "down"}, status=500)
        body = await request.json()
        self.transactions.append(body)
        return web.json_response({"pdus": {}})

    def presence(self, user_id: str) -> list[tuple[str, str | None]]:
        return [(p["presence"], p.get("status_msg")) for t in self.transactions
                for e in t["edus"] if e["edu_type"] == "m.presence"
                for p in e["content"]["push"] if p["user_id"] == user_id]

    def bodies(self, room_id: str) -> list[str]:
        return [p["content"].get("body") for t in self.transactions for p in t["pdus"]
                if p.get("room_id") == room_id and p.get("type") == "m.room.message"]


@dataclass
class Env:
    server: FedServer
    alice: User
    peer: FlakyPeer


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("outbound")
    server = FedServer(root, "hs")
    peer = FlakyPeer(root / "peer")
    await peer.start()
    server.start()
    try:
        yield Env(server, await server.register("alice"), peer)
    finally:
        server.stop()
        await peer.close()


async def _room_with_peer(env: Env) -> str:
    room_id = await env.alice.create_room(preset="public_chat")
    await env.peer.join(env.server, room_id, env.peer.user_id("p" + uuid.uuid4().hex[:6]))
    return room_id


async def _until(check: Any, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_failing_peer_is_retried_with_backoff_then_gets_everything(env: Env) -> None:
    room_id = await _room_with_peer(env)
    env.peer.down = True
    env.peer.attempts.clear()
    tag = uuid.uuid4().hex[:6]
    for n in range(3):
        await env.alice.send_text(room_id, f"{tag} {n}")
    await asyncio.sleep(7)
    attempts = list(env.peer.attempts)
    # 500 ms, then 1 s, 2 s, 4 s between tries: a handful in 7 s, not one per message or
    # a busy loop.
    assert 2 <= len(attempts) <= 6, attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(later >= earlier * 1.5 for earlier, later in itertools.pairwise(gaps)), gaps

    env.peer.down = False
    await _until(lambda: len([b for b in env.peer.bodies(room_id) if b.startswith(tag)]) == 3)
    assert [b for b in env.peer.bodies(room_id) if b.startswith(tag)] == \
        [f"{tag} {n}" for n in range(3)]


async def test_a_request_from_the_peer_retries_at_once(env: Env) -> None:
    room_id = await _room_with_peer(env)
    env.peer.down = True
    tag = uuid.uuid4().hex[:6]
    await env.alice.send_text(room_id, f"{tag} waiting")
    await asyncio.sleep(5)  # backing off by now (the next try is seconds away)
    env.peer.down = False
    sent = time.monotonic()
    status, _ = await env.peer.request(
        env.server, "GET",
        f"/_matrix/federation/v1/query/profile?user_id={q(env.alice.user_id)}")
    assert status == 200
    await _until(lambda: f"{tag} waiting" in env.peer.bodies(room_id), within=10)
    assert time.monotonic() - sent < 2.5


async def test_a_backlog_goes_in_transactions_of_at_most_50_pdus(env: Env) -> None:
    room_id = await _room_with_peer(env)
    env.peer.down = True
    tag = uuid.uuid4().hex[:6]
    for n in range(120):
        await env.alice.send_text(room_id, f"{tag} {n:03}")
    env.peer.transactions.clear()
    env.peer.down = False
    await env.peer.request(env.server, "GET",
                           f"/_matrix/federation/v1/query/profile?user_id={q(env.alice.user_id)}")
    await _until(lambda: len([b for b in env.peer.bodies(room_id) if b.startswith(tag)]) == 120)
    assert all(len(t["pdus"]) <= 50 and len(t["edus"]) <= 100 for t in env.peer.transactions)
    got = [b for b in env.peer.bodies(room_id) if b.startswith(tag)]
    assert got == [f"{tag} {n:03}" for n in range(120)]  # in order, each once
    assert len([t for t in env.peer.transactions if t["pdus"]]) >= 3  # 120 / 50


async def test_an_update_made_while_a_transaction_is_in_flight_is_sent_after_it(
        env: Env) -> None:
    """Presence rides in memory, newest update per user: one that replaces the update
    being sent must still go out once that transaction is answered."""
    await _room_with_peer(env)
    tag = uuid.uuid4().hex[:6]
    env.peer.delay = 1.0
    try:
        await env.alice.set_presence("online", f"first {tag}")
        await _until(lambda: len(env.peer.attempts) > 0 and env.peer.attempts[-1] > 0)
        await asyncio.sleep(0.3)  # the first transaction is being answered (slowly)
        await env.alice.set_presence("unavailable", f"second {tag}")
        await _until(lambda: ("unavailable", f"second {tag}")
                     in env.peer.presence(env.alice.user_id), within=15)
    finally:
        env.peer.delay = 0.0


# -- read receipts: one EDU per room for a burst of readers, stored together on receipt ---------

def _receipt_edus(peer: FlakyPeer, room_id: str) -> list[dict[str, Any]]:
    return [e["content"][room_id] for t in peer.transactions for e in t["edus"]
            if e["edu_type"] == "m.receipt" and room_id in e["content"]]


async def test_a_burst_of_readers_goes_out_as_few_receipt_edus(env: Env) -> None:
    room_id = await _room_with_peer(env)
    readers = [await env.server.register(f"reader{uuid.uuid4().hex[:6]}") for _ in range(6)]
    for reader in readers:
        await reader.join(room_id)
    event_id = await env.alice.send_text(room_id, "read me")
    await asyncio.gather(*(r.receipt(room_id, event_id) for r in readers))

    def readers_seen() -> set[str]:
        return {u for edu in _receipt_edus(env.peer, room_id)
                for u, r in edu.get("m.read", {}).items() if r["event_ids"] == [event_id]}

    await _until(lambda: readers_seen() == {r.user_id for r in readers})
    # Readers who read at once share EDUs (one per room per write), not one EDU each.
    edus = [e for e in _receipt_edus(env.peer, room_id)
            if any(r["event_ids"] == [event_id] for r in e.get("m.read", {}).values())]
    assert len(edus) < len(readers)
    for edu in edus:
        for receipt in edu["m.read"].values():
            assert isinstance(receipt["data"]["ts"], int)


async def test_a_transaction_of_receipts_is_stored_together_and_checked_each(
        env: Env) -> None:
    room_id = await _room_with_peer(env)
    event_id = await env.alice.send_text(room_id, "read by the peer's users")
    members = [env.peer.user_id(f"m{uuid.uuid4().hex[:6]}") for _ in range(5)]
    for member in members:
        await env.peer.join(env.server, room_id, member)
    outsider = env.peer.user_id("outsider")
    since = (await env.alice.sync())["next_batch"]

    def receipt(user_id: str, target: str) -> dict[str, Any]:
        return {"edu_type": "m.receipt", "content": {room_id: {"m.read": {user_id: {
            "event_ids": [target], "data": {"ts": 1_700_000_000_000}}}}}}

    edus = [receipt(m, event_id) for m in members]
    edus += [receipt(outsider, event_id),  # not in the room
             receipt(members[0].replace("@m", "@x"), "$unknown:nowhere"),  # no such event
             receipt("@someone:elsewhere.example", event_id)]  # not the peer's user
    status, _ = await env.peer.send_transaction(env.server, [], edus)
    assert status == 200
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while set(seen) != set(members) and time.monotonic() < deadline:
        body = await env.alice.sync(since, timeout=2000)
        since = body["next_batch"]
        room = body["rooms"]["join"].get(room_id) or {}
        for event in room.get("ephemeral", {}).get("events", []):
            if event["type"] == "m.receipt":
                seen.update(event["content"].get(event_id, {}).get("m.read", {}))
    assert set(seen) == set(members)


async def test_receipts_for_a_peer_that_is_down_wait_for_it_across_a_restart(
        env: Env) -> None:
    """Receipts go out from memory while the peer answers; when a transaction holding them
    fails they are queued durably, so they reach the peer once it is back, even after our
    server was killed meanwhile."""
    room_id = await _room_with_peer(env)
    reader = await env.server.register(f"reader{uuid.uuid4().hex[:6]}")
    await reader.join(room_id)
    first = await env.alice.send_text(room_id, "read while up")
    await reader.receipt(room_id, first)
    await _until(lambda: any(reader.user_id in edu.get("m.read", {})
                             for edu in _receipt_edus(env.peer, room_id)))

    second = await env.alice.send_text(room_id, "read while down")
    await _until(lambda: "read while down" in env.peer.bodies(room_id))
    env.peer.down = True
    env.peer.attempts.clear()
    await reader.receipt(room_id, second)
    await _until(lambda: len(env.peer.attempts) >= 1)  # the receipt's transaction failed
    await asyncio.sleep(0.5)
    env.server.kill()  # no shutdown: only what the failure queued durably survives
    env.server.start()
    env.peer.down = False

    def read_second() -> bool:
        return any(edu.get("m.read", {}).get(reader.user_id, {}).get("event_ids") == [second]
                   for edu in _receipt_edus(env.peer, room_id))

    await _until(read_second, within=30)
