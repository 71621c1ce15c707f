"""matrix-js-sdk's ``SlidingSync`` (37.5, ``lib/sliding-sync.js``: it posts to
``/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`` with ``pos`` and ``timeout``
as query parameters, no ``conn_id``, room subscriptions sent once) syncs a room list and a
timeline in Node (``tests/js/sliding_sync.mjs``): the list's rooms with their names, then a
subscription to one room with 20 events, then live messages sent while it long-polls, each
once and in order. Against Synapse and KT-Chat (``tests/helpers/sliding_sync_servers.py``;
ours skipped until it advertises simplified sliding sync); skipped without Node 20."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.sliding_sync_client import Peer
from tests.helpers.sliding_sync_servers import PASSWORD, SERVERS, Target, start_target
from tests.test_e2e_js import JS_DIR, node_or_skip

# A Synapse start and a few hundred requests on a loaded two-core machine.
pytestmark = pytest.mark.timeout(300)

JS_TIMEOUT_SECONDS = 90


@pytest.fixture(scope="module")
def node() -> str:
    return node_or_skip()


@pytest.fixture(scope="module", params=SERVERS)
def target(node: str, request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from start_target(request.param, tmp_path_factory)


async def _line(proc: asyncio.subprocess.Process, err: bytearray) -> dict[str, Any]:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), JS_TIMEOUT_SECONDS)
    except TimeoutError:
        raise AssertionError(f"no answer from node\n{err.decode()[-6000:]}") from None
    if not line:
        await proc.wait()
        raise AssertionError(f"node exited with {proc.returncode}\n{err.decode()[-4000:]}")
    answer: dict[str, Any] = json.loads(line)
    assert "error" not in answer, f"{answer['error']}\n{err.decode()[-4000:]}"
    return answer


async def test_js_sdk_sliding_sync_room_list_and_timeline(node: str, target: Target) -> None:
    names = [await target.account(p) for p in ("alice", "bob")]
    alice, bob = [await Peer.login(target.base, n, PASSWORD) for n in names]
    try:
        rooms = []
        for i in range(3):
            room_id = await bob.create_room(name=f"js room {i}", invite=[alice.user_id])
            await alice.join(room_id)
            rooms.append(room_id)
        opened = rooms[0]
        before = [f"before {i}" for i in range(25)]
        for body in before:
            await bob.send_text(opened, body)
        for i, room_id in enumerate(rooms[1:]):
            await bob.send_text(room_id, f"other {i}")

        proc = await asyncio.create_subprocess_exec(
            node, str(JS_DIR / "sliding_sync.mjs"), target.base, names[0], PASSWORD, opened,
            "12", str(JS_TIMEOUT_SECONDS), cwd=JS_DIR, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        err = bytearray()

        async def drain() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(65536):
                err.extend(chunk)

        draining = asyncio.create_task(drain())
        try:
            ready = (await _line(proc, err))["ready"]
            assert ready["count"] == 3
            assert {r["room_id"]: r["name"] for r in ready["rooms"]} == {
                room_id: f"js room {i}" for i, room_id in enumerate(rooms)}
            # The list's timeline_limit 1, then the subscription's 20.
            assert ready["opened"][-20:] == before[5:]

            sent = []
            for i in range(12):
                sent.append(await bob.send_text(opened, f"live {i}"))
                if i % 4 == 3:
                    await asyncio.sleep(0.3)  # some arrive alone, some together
            done = (await _line(proc, err))["done"]
            assert done["live"] == [f"live {i}" for i in range(12)]
            assert all(done["event_counts"].get(e) == 1 for e in sent)
            assert set(done["event_counts"].values()) == {1}
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await draining
    finally:
        await alice.close()
        await bob.close()
