"""matrix-js-sdk (tests/js/media_relations.mjs, in Node) uses media and relations on our
server as a chat app does: uploads a picture and sends it as m.image, downloads it through the
authenticated media API, reacts to it, edits a message and replies in a thread; then reads the
picture's relations and the bundled thread summary and edit. A matrix-nio client in the room
sees the counts move: the picture, the message and the thread reply notify; the reaction and
the edit do not (the spec's default rules). Skipped without Node 20 (CI installs it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import nio
import pytest

from tests.helpers.nio_server import PASSWORD, nio_pair, run_server
from tests.test_e2e_js import JS_DIR, node_or_skip


@pytest.fixture(scope="module")
def node() -> str:
    return node_or_skip()


@pytest.fixture(scope="module")
def server(node: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("js-media"))


@pytest.fixture
async def alice_bob(server: str) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    async for pair in nio_pair(server):
        yield pair


async def test_js_sdk_pictures_reactions_edits_and_threads(
        node: str, server: str, alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]) -> None:
    alice, bob = alice_bob
    created = await alice.room_create(name="js-sdk", invite=[bob.user_id])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    assert isinstance(await bob.join(room_id), nio.JoinResponse)
    before = await alice.sync(timeout=0, full_state=True)
    assert isinstance(before, nio.SyncResponse), before

    proc = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / "media_relations.mjs"), server, "bob", PASSWORD, room_id, "60",
        cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, f"{out.decode()}\n{err.decode()[-3000:]}"
    seen = json.loads(out.decode().strip().splitlines()[-1])

    assert seen["mxc"].startswith("mxc://localhost/")
    assert seen["download"] == {"status": 200, "type": "image/png", "same": True}
    assert {(r["type"], r["id"]) for r in seen["relations"]} >= {("m.room.message",
                                                                  seen["reply"])}
    assert "m.reaction" in {r["type"] for r in seen["relations"]}
    thread = seen["root_relations"]["m.thread"]
    assert thread["count"] == 1
    assert thread["latest_event"]["event_id"] == seen["reply"]
    assert seen["edited_relations"]["m.replace"]["event_id"] == seen["edit"]

    after = await alice.sync(timeout=0, since=before.next_batch)
    assert isinstance(after, nio.SyncResponse), after
    assert after.rooms.join[room_id].unread_notifications.notification_count == 3
