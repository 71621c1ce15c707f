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
