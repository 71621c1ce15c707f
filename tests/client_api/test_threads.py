"""Threads over real HTTP, on SQLite and PostgreSQL: the ``m.thread`` aggregation (latest
event as the reader sees it, with its edit; count; participation) in /event, /messages and
/sync; ``/threads`` (latest activity first, ``include=participated``, paging, errors);
threaded read receipts."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.client_api.test_relations import (
    bundle,
    edit,
    get_event,
    ids,
    relates,
    relations,
    send,
    v1,
)
from tests.client_api.test_sync import sync
from tests.helpers.harness import harness_services
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    join,
    messages,
    put_state,
    send_text,
    txn,
)

services = harness_services


async def reply(client: TestClient, user: User, room: str, root: str, text: str) -> str:
    return await send(client, user, room, relates("m.thread", root, text))


async def threads(client: TestClient, user: User, room: str, **query: Any) -> dict[str, Any]:
    status, body = await v1(client, user, f"/rooms/{room}/threads", **query)
    assert status == 200, body
    return dict(body)


async def test_thread_summary_everywhere(client: TestClient, alice: User, bob: User,
                                         carol: User) -> None:
    room = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room)
    await join(client, carol, room)
    root = await send_text(client, alice, room, "root")
    first = await reply(client, bob, room, root, "one")
    last = await reply(client, bob, room, root, "two")
    last_edit = await edit(client, bob, room, last, "two, edited")
    for user, participated in ((alice, True), (bob, True), (carol, False)):
        summary = bundle(await get_event(client, user, room, root))["m.thread"]
        assert summary["count"] == 2
        assert summary["current_user_participated"] is participated
        latest = summary["latest_event"]
        assert latest["event_id"] == last and latest["content"]["body"] == "two"
        assert bundle(latest)["m.replace"]["event_id"] == last_edit
    # The sender's own latest event carries its transaction ID, as everywhere.
    own = bundle(await get_event(client, bob, room, root))["m.thread"]["latest_event"]
    assert "transaction_id" in own["unsigned"]
    status, page = await messages(client, carol, room, limit=20)
    assert status == 200, page
    found = {e["event_id"]: e for e in page["chunk"]}
    assert bundle(found[root])["m.thread"]["count"] == 2
    assert "m.thread" not in bundle(found[last])  # a reply is no root
    body = await sync(client, carol, sync_filter={"room": {"timeline": {"limit": 20}}})
    timeline = {e["event_id"]: e for e in body["rooms"]["join"][room]["timeline"]["events"]}
    assert bundle(timeline[root])["m.thread"]["latest_event"]["event_id"] == last
    # A new reply is counted at once (the cached summary is replaced).
    newest = await reply(client, carol, room, root, "three")
    summary = bundle(await get_event(client, carol, room, root))["m.thread"]
    assert (summary["count"], summary["latest_event"]["event_id"],
            summary["current_user_participated"]) == (3, newest, True)
    # Redacting the latest reply falls back to the one before.
    status, answer = await api(client, "PUT", f"/rooms/{room}/redact/{newest}/{txn()}",
                               carol, {})
    assert status == 200, answer
    summary = bundle(await get_event(client, carol, room, root))["m.thread"]
    assert (summary["count"], summary["latest_event"]["event_id"]) == (2, last)
    # /relations of the thread lists its replies, each serialized with its own bundle.
    body = await relations(client, carol, room, root, "m.thread", limit=10)
    assert ids(body["chunk"]) == [last, first]
    assert bundle(body["chunk"][0])["m.replace"]["event_id"] == last_edit


async def test_threads_list(client: TestClient, alice: User, bob: User, carol: User) -> None:
    room = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room)
    await join(client, carol, room)
    roots = [await send_text(client, alice, room, "a"), await send_text(client, bob, room, "b"),
             await send_text(client, carol, room, "c")]
    await reply(client, alice, room, roots[0], "a1")
    await reply(client, carol, room, roots[1], "b1")
    await reply(client, carol, room, roots[2], "c1")
    await reply(client, bob, room, roots[0], "a2")  # thread a is the latest active now
    await send_text(client, alice, room, "no thread")
    body = await threads(client, alice, room)
    assert ids(body["chunk"]) == [roots[0], roots[2], roots[1]]
    assert "next_batch" not in body
    assert all("m.thread" in bundle(e) for e in body["chunk"])
    assert bundle(body["chunk"][0])["m.thread"]["count"] == 2
    # Participated: started or replied in.
    assert ids((await threads(client, bob, room, include="participated"))["chunk"]) == [
        roots[0], roots[1]]
    assert ids((await threads(client, carol, room, include="participated"))["chunk"]) == [
        roots[2], roots[1]]
    assert ids((await threads(client, alice, room, include="all"))["chunk"]) == ids(
        body["chunk"])
    # Paging one at a time.
    seen: list[str] = []
    token = None
    for _ in range(5):
        query: dict[str, Any] = {"limit": 1}
        if token:
            query["from"] = token
        page = await threads(client, alice, room, **query)
        seen += ids(page["chunk"])
        token = page.get("next_batch")
        if token is None:
            break
    assert seen == [roots[0], roots[2], roots[1]]


async def test_threads_respect_visibility(client: TestClient, alice: User, bob: User
                                          ) -> None:
    room = await create_room(client, alice, preset="public_chat")
    status, body = await put_state(client, alice, room, "m.room.history_visibility",
                                   {"history_visibility": "joined"})
    assert status == 200, body
    hidden_root = await send_text(client, alice, room, "before bob")
    await reply(client, alice, room, hidden_root, "hidden reply")
    await join(client, bob, room)
    seen_root = await send_text(client, alice, room, "after bob")
    await reply(client, alice, room, seen_root, "seen reply")
    await reply(client, alice, room, hidden_root, "a later reply bob may see")
    assert ids((await threads(client, bob, room))["chunk"]) == [seen_root]
    assert ids((await threads(client, alice, room))["chunk"]) == [hidden_root, seen_root]


async def test_threads_errors(client: TestClient, alice: User, bob: User) -> None:
    room = await create_room(client, alice)
    status, body = await v1(client, bob, f"/rooms/{room}/threads")
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await v1(client, alice, "/rooms/!nowhere:localhost/threads")
    assert_error(status, body, 403, "M_FORBIDDEN")
    for query in ({"include": "some"}, {"limit": "0"}, {"limit": "x"}, {"from": "t1-2"},
                  {"from": "r99999999999999999999999"}):
        status, body = await v1(client, alice, f"/rooms/{room}/threads", **query)
        assert_error(status, body, 400, "M_INVALID_PARAM")
    assert (await threads(client, alice, room, limit=10**9))["chunk"] == []


async def test_threaded_read_receipt(client: TestClient, alice: User, bob: User) -> None:
    room = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room)
    root = await send_text(client, alice, room, "root")
    in_thread = await reply(client, alice, room, root, "reply")
    status, body = await api(client, "POST", f"/rooms/{room}/receipt/m.read/{in_thread}", bob,
                             {"thread_id": root})
    assert status == 200, body
    body = await sync(client, alice)
    receipts = [e for e in body["rooms"]["join"][room]["ephemeral"]["events"]
                if e["type"] == "m.receipt"]
    read = receipts[0]["content"][in_thread]["m.read"][bob.user_id]
    assert read["thread_id"] == root
