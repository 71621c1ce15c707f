"""Other servers' users' device lists are cached while they share a room here, and kept
current by their server's EDUs.

Our server as a real process (on SQLite, then on PostgreSQL) and a fake peer whose user,
mallory, joins a room of alice's. The peer answers ``/user/devices`` (the list that is
cached) and ``/user/keys/query`` (a different answer, so the test sees which one alice gets).
The first query asks the peer and resyncs in the background; later ones are answered from
the cache, without asking. An update that follows on from the cached position applies (new
device, deleted device); an old one changes nothing; one after a gap resyncs; new
cross-signing keys replace the cached ones. Once mallory shares no room here (kicked), the
cache is dropped and queries ask the peer again; an EDU about a user who shares no room
caches nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import postgres_url
from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import FedServer, PostgresDatabase, User

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALGORITHM = "m.olm.v1.curve25519-aes-sha2"


@dataclass
class Env:
    a: FedServer
    alice: User
    peer: FakePeer
    mallory: str
    room: str


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("remotelists")
    database: PostgresDatabase | None = None
    if request.param == "postgres":
        url = postgres_url()
        assert url is not None
        database = PostgresDatabase(url)
        await database.create()
    a = FedServer(root, "A", database_url=database.url if database else None)
    peer = FakePeer(root / "fake")
    await peer.start()
    a.start()
    try:
        alice = await a.register("alice")
        room = await alice.create_room(preset="public_chat", name="with mallory")
        mallory = peer.user_id("mallory")
        await peer.join(a, room, mallory)
        yield Env(a, alice, peer, mallory, room)
    finally:
        a.stop()
        await peer.close()
        if database is not None:
            await database.drop()


def device(user_id: str, device_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "device_id": device_id, "algorithms": [ALGORITHM],
            "keys": {f"ed25519:{device_id}": uuid.uuid4().hex,
                     f"curve25519:{device_id}": uuid.uuid4().hex},
            "signatures": {user_id: {f"ed25519:{device_id}": uuid.uuid4().hex}}}


def master(user_id: str) -> dict[str, Any]:
    public = uuid.uuid4().hex
    return {"user_id": user_id, "usage": ["master"], "keys": {f"ed25519:{public}": public}}


def devices_answer(user_id: str, stream_id: int, *devices: dict[str, Any],
                   **cross: Any) -> dict[str, Any]:
    return {"user_id": user_id, "stream_id": stream_id,
            "devices": [{"device_id": d["device_id"], "keys": d} for d in devices], **cross}


def update(user_id: str, stream_id: int, prev_id: list[int], device_id: str,
           keys: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"user_id": user_id, "device_id": device_id,
                               "stream_id": stream_id, "prev_id": prev_id}
    if keys is None:
        content["deleted"] = True
    else:
        content["keys"] = keys
    return {"edu_type": "m.device_list_update", "content": content}


def asked(peer: FakePeer, what: str) -> int:
    """How many requests of this kind ("devices" or "query") our server made of the peer."""
    part = "/user/devices/" if what == "devices" else "/user/keys/query"
    return sum(1 for r in peer.requests if part in r.path)


async def query(alice: User, user_id: str) -> dict[str, Any]:
    body = await alice.request("POST", "/_matrix/client/v3/keys/query",
                               {"device_keys": {user_id: []}, "timeout": 5000})
    assert body["failures"] == {}, body
    return body


async def eventually(check: Callable[[], Any], what: str, seconds: float = 10) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def send(env: Env, *edus: dict[str, Any]) -> None:
    status, answer = await env.peer.send_transaction(env.a, [], list(edus))
    assert status == 200, answer


async def test_cache_follows_updates_and_is_dropped_when_no_room_is_shared(env: Env) -> None:
    peer, alice, mallory = env.peer, env.alice, env.mallory
    d1, d2, d3 = device(mallory, "D1"), device(mallory, "D2"), device(mallory, "D3")
    peer.user_devices[mallory] = devices_answer(mallory, 5, d1)
    peer.keys_query = {"device_keys": {mallory: {"Q1": device(mallory, "Q1")}}}

    # The first query asks the peer, and the list is fetched to be cached.
    first = await query(alice, mallory)
    assert list(first["device_keys"][mallory]) == ["Q1"]
    await eventually(lambda: _cached(env, {"D1": d1}), "the resync never filled the cache")
    queries = asked(peer, "query")

    # An update that follows on from the cached position: a new device.
    await send(env, update(mallory, 6, [5], "D2", d2))
    await eventually(lambda: _cached(env, {"D1": d1, "D2": d2}), "D2 never cached")
    # Deleted.
    await send(env, update(mallory, 7, [6], "D1"))
    await eventually(lambda: _cached(env, {"D2": d2}), "D1 never dropped")
    # An old one (already applied) changes nothing.
    await send(env, update(mallory, 6, [5], "D1", d1))
    await asyncio.sleep(0.3)
    assert await _cached(env, {"D2": d2})
    # A gap (8 was missed): the whole list is fetched again.
    resyncs = asked(peer, "devices")
    peer.user_devices[mallory] = devices_answer(mallory, 9, d2, d3)
    await send(env, update(mallory, 9, [8], "D3", d3))
    await eventually(lambda: _cached(env, {"D2": d2, "D3": d3}), "no resync after the gap")
    assert asked(peer, "devices") == resyncs + 1
    # New cross-signing keys replace the cached ones.
    key = master(mallory)
    await send(env, {"edu_type": "m.signing_key_update",
                     "content": {"user_id": mallory, "master_key": key}})
    await eventually(lambda: _master_is(env, key), "the master key never cached")
    # All of that without asking the peer's /user/keys/query again.
    assert asked(peer, "query") == queries

    # mallory shares no room here any more: the cache is dropped, queries ask the peer.
    await alice.kick(env.room, mallory)
    await eventually(lambda: _asks_the_peer(env), "the cache was kept after the kick")
    # An update about a user who shares no room here is neither applied nor resynced.
    resyncs = asked(peer, "devices")
    await send(env, update(mallory, 10, [9], "D4", device(mallory, "D4")))
    await asyncio.sleep(0.3)
    assert asked(peer, "devices") == resyncs


async def _cached(env: Env, devices: dict[str, Any], user_id: str | None = None) -> bool:
    """Whether alice's query answers exactly these devices of mallory (or ``user_id``)
    without asking the peer."""
    user_id = user_id or env.mallory
    before = asked(env.peer, "query")
    body = await query(env.alice, user_id)
    return asked(env.peer, "query") == before and \
        body["device_keys"].get(user_id) == devices


async def test_a_change_during_a_resync_is_not_lost(env: Env) -> None:
    """An update that comes while a resync is in flight (its answer may be from before the
    update) is followed by another resync."""
    peer = env.peer
    trudy = peer.user_id("trudy")
    await peer.join(env.a, env.room, trudy)
    t1, t2 = device(trudy, "T1"), device(trudy, "T2")
    peer.user_devices[trudy] = devices_answer(trudy, 1, t1)
    peer.devices_delay = 1.0
    try:
        resyncs = asked(peer, "devices")
        await send(env, update(trudy, 1, [], "T1", t1))  # nothing cached: a resync starts

        async def in_flight() -> bool:
            return asked(peer, "devices") > resyncs
        await eventually(in_flight, "no resync started")
        # While it waits (holding the list at 1), T2 comes.
        peer.user_devices[trudy] = devices_answer(trudy, 2, t1, t2)
        await send(env, update(trudy, 2, [1], "T2", t2))
    finally:
        peer.devices_delay = 0.0
    await eventually(lambda: _cached(env, {"T1": t1, "T2": t2}, trudy),
                     "the change during the resync was lost")


async def _master_is(env: Env, key: dict[str, Any]) -> bool:
    body = await query(env.alice, env.mallory)
    return body["master_keys"].get(env.mallory) == key


async def _asks_the_peer(env: Env) -> bool:
    before = asked(env.peer, "query")
    body = await query(env.alice, env.mallory)
    return asked(env.peer, "query") == before + 1 and \
        list(body["device_keys"][env.mallory]) == ["Q1"]
