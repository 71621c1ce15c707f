"""Relations over real HTTP, on SQLite and PostgreSQL: ``/relations`` (paging both ways,
filters, recursion, visibility, errors) and the aggregations bundled with events (edits,
references) in /event, /messages, /context, /sync, search and /relations itself; redactions
taking relations out; relations across rooms ignored; the index of stored events (the
migration)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from storage import relations_index
from storage.schema import event_relations
from tests.client_api.test_sync import sync
from tests.conftest import bearer
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
from tests.helpers.spec import assert_matches_spec

V1 = "/_matrix/client/v1"


services = harness_services


# -- helpers ----------------------------------------------------------------------------------


async def v1(client: TestClient, user: User | None, path: str, **query: Any
             ) -> tuple[int, Any]:
    """GET ``/_matrix/client/v1{path}``; a 200 is checked against the spec."""
    quoted = "/".join(quote(s, safe="") for s in path.split("/"))
    resp = await client.get(V1 + quoted, params={k: str(v) for k, v in query.items()},
                            headers=bearer(user.token) if user else None)
    body = await resp.json()
    if resp.status == 200:
        assert_matches_spec("client-server", "GET", path, 200, body)
    return resp.status, body


async def relations(client: TestClient, user: User, room_id: str, event_id: str,
                    *filters: str, **query: Any) -> dict[str, Any]:
    path = "/".join([f"/rooms/{room_id}/relations/{event_id}", *filters])
    status, body = await v1(client, user, path, **query)
    assert status == 200, body
    return dict(body)


async def send(client: TestClient, user: User, room_id: str, content: dict[str, Any],
               event_type: str = "m.room.message") -> str:
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/{event_type}/{txn()}",
                             user, content)
    assert status == 200, body
    return str(body["event_id"])


def relates(rel_type: str, parent: str, body: str = "x") -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body,
            "m.relates_to": {"rel_type": rel_type, "event_id": parent}}


async def react(client: TestClient, user: User, room_id: str, parent: str, key: str) -> str:
    return await send(client, user, room_id, {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": parent, "key": key}}, "m.reaction")


async def edit(client: TestClient, user: User, room_id: str, parent: str, body: str) -> str:
    return await send(client, user, room_id, {
        "msgtype": "m.text", "body": f"* {body}",
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": parent}})


async def get_event(client: TestClient, user: User, room_id: str, event_id: str
                    ) -> dict[str, Any]:
    status, body = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", user)
    assert status == 200, body
    return dict(body)


def bundle(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event.get("unsigned", {}).get("m.relations", {}))


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]


async def page_all(client: TestClient, user: User, room_id: str, event_id: str,
                   direction: str, limit: int, *filters: str) -> list[str]:
    out: list[str] = []
    token: str | None = None
    for _ in range(100):
        query: dict[str, Any] = {"dir": direction, "limit": limit}
        if token is not None:
            query["from"] = token
        body = await relations(client, user, room_id, event_id, *filters, **query)
        assert len(body["chunk"]) <= limit
        if token is not None:
            assert body["prev_batch"] == token
        out += ids(body["chunk"])
        token = body.get("next_batch")
        if token is None:
            return out
    raise AssertionError("paging never ended")


# -- /relations -------------------------------------------------------------------------------


async def test_relations_page_both_ways_with_filters(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    root = await send_text(client, alice, room, "root")
    children = []
    for i in range(7):
        if i % 3 == 0:
            children.append(await react(client, alice, room, root, f"k{i}"))
        else:
            children.append(await send(client, alice, room, relates("m.thread", root, f"r{i}")))
    await send_text(client, alice, room, "unrelated")
    assert await page_all(client, alice, room, root, "b", 3) == children[::-1]
    assert await page_all(client, alice, room, root, "f", 2) == children
    assert await page_all(client, alice, room, root, "b", 10) == children[::-1]
    threads = [c for i, c in enumerate(children) if i % 3]
    assert await page_all(client, alice, room, root, "f", 2, "m.thread") == threads
    assert await page_all(client, alice, room, root, "f", 2, "m.annotation",
                          "m.reaction") == [children[0], children[3], children[6]]
    assert await page_all(client, alice, room, root, "f", 2, "m.annotation",
                          "m.room.message") == []
    # `to` bounds a page: from the newest down to the first page's end.
    first = await relations(client, alice, room, root, limit=3)
    assert "prev_batch" not in first and "recursion_depth" not in first
    rest = await relations(client, alice, room, root, to=first["next_batch"], limit=10)
    assert ids(rest["chunk"]) == children[::-1][:3]
    # A /sync token works as `from`.
    since = (await sync(client, alice))["next_batch"]
    newer = await send(client, alice, room, relates("m.thread", root, "new"))
    body = await relations(client, alice, room, root, **{"from": since, "limit": 10})
    assert ids(body["chunk"]) == children[::-1]
    body = await relations(client, alice, room, root, **{"from": since, "dir": "f"})
    assert ids(body["chunk"]) == [newer]
    # Each child carries its own bundle (none here), and the parent's is bundled.
    assert all("m.relations" not in e["unsigned"] for e in body["chunk"])


async def test_recursion(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    root = await send_text(client, alice, room, "root")
    reply = await send(client, alice, room, relates("m.thread", root, "reply"))
    reaction = await react(client, alice, room, reply, "👍")
    edit_id = await edit(client, alice, room, reply, "better reply")
    deep = [reaction]
    parent = reaction
    for i in range(6):  # a chain of references: the walk stops at Synapse's depth
        parent = await send(client, alice, room, relates("m.reference", parent, f"ref{i}"))
        deep.append(parent)
    direct = await relations(client, alice, room, root, limit=50)
    assert ids(direct["chunk"]) == [reply]
    off = await relations(client, alice, room, root, limit=50, recurse="false")
    assert ids(off["chunk"]) == [reply] and off["recursion_depth"] == 1
    walked = await relations(client, alice, room, root, limit=50, recurse="true")
    assert walked["recursion_depth"] == 3
    # Levels 0 (the reply) to 4: the reply, its reaction and edit, then three references.
    assert ids(walked["chunk"]) == [deep[3], deep[2], deep[1], edit_id, reaction, reply]
    only = await relations(client, alice, room, root, "m.annotation", limit=50,
                           recurse="true")
    assert ids(only["chunk"]) == [reaction]
    assert await page_all_recursive(client, alice, room, root) == ids(walked["chunk"])


async def page_all_recursive(client: TestClient, alice: User, room: str, root: str
                             ) -> list[str]:
    out: list[str] = []
    token: str | None = None
    while True:
        query: dict[str, Any] = {"limit": 2, "recurse": "true"}
        if token:
            query["from"] = token
        body = await relations(client, alice, room, root, **query)
        out += ids(body["chunk"])
        token = body.get("next_batch")
        if token is None:
            return out


async def test_relations_errors(client: TestClient, alice: User, bob: User) -> None:
    room = await create_room(client, alice)
    root = await send_text(client, alice, room, "root")
    other = await create_room(client, alice)
    elsewhere = await send_text(client, alice, other, "elsewhere")
    for path, who in ((f"/rooms/{room}/relations/$unknown", alice),
                      (f"/rooms/{room}/relations/{elsewhere}", alice),
                      (f"/rooms/{room}/relations/{root}", bob),  # not in the room
                      (f"/rooms/!nowhere:localhost/relations/{root}", alice)):
        status, body = await v1(client, who, path)
        assert_error(status, body, 404, "M_NOT_FOUND")
    for query in ({"dir": "x"}, {"limit": "-1"}, {"limit": "ten"}, {"recurse": "yes"},
                  {"from": "garbage"}, {"to": "t1"}, {"limit": "0"}):
        status, body = await v1(client, alice, f"/rooms/{room}/relations/{root}", **query)
        assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await v1(client, alice, f"/rooms/not-a-room/relations/{root}")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await v1(client, alice, f"/rooms/{room}/relations/not-an-event")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await v1(client, None, f"/rooms/{room}/relations/{root}")
    assert_error(status, body, 401, "M_MISSING_TOKEN")
    # A huge limit is capped, not refused.
    assert (await relations(client, alice, room, root, limit=10**9))["chunk"] == []


async def test_history_visibility(client: TestClient, alice: User, bob: User) -> None:
    room = await create_room(client, alice, preset="public_chat")
    status, body = await put_state(client, alice, room, "m.room.history_visibility",
                                   {"history_visibility": "joined"})
    assert status == 200, body
    root = await send_text(client, alice, room, "before bob")
    early = await react(client, alice, room, root, "early")
    await join(client, bob, room)
    late_root = await send_text(client, alice, room, "after bob")
    late = await react(client, alice, room, root, "late")
    late_edit = await edit(client, alice, room, late_root, "edited after")
    # Bob cannot see the root: 404, as for an unknown event.
    status, body = await v1(client, bob, f"/rooms/{room}/relations/{root}")
    assert_error(status, body, 404, "M_NOT_FOUND")
    # Alice sees both reactions.
    assert ids((await relations(client, alice, room, root))["chunk"]) == [late, early]
    body = await relations(client, bob, room, late_root)
    assert ids(body["chunk"]) == [late_edit]
    assert bundle(await get_event(client, bob, room, late_root))["m.replace"][
        "event_id"] == late_edit


async def test_left_user_sees_no_later_edit(client: TestClient, alice: User, bob: User
                                            ) -> None:
    room = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room)
    root = await send_text(client, alice, room, "hello")
    first = await edit(client, alice, room, root, "hello 1")
    status, body = await api(client, "POST", f"/rooms/{room}/leave", bob, {})
    assert status == 200, body
    await edit(client, alice, room, root, "hello 2")
    await send(client, alice, room, relates("m.reference", root))
    seen = bundle(await get_event(client, bob, room, root))
    # The newest edit came after bob left: he is not shown it (nor the reference).
    assert "m.replace" not in seen and "m.reference" not in seen
    assert bundle(await get_event(client, alice, room, root))["m.replace"][
        "event_id"] != first
    body = await relations(client, bob, room, root, limit=10)
    assert ids(body["chunk"]) == [first]


# -- bundled aggregations ---------------------------------------------------------------------


async def test_edits_bundled_everywhere(client: TestClient, alice: User, bob: User) -> None:
    room = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room)
    original = await send_text(client, alice, room, "helo")
    await edit(client, alice, room, original, "hell")
    latest = await edit(client, alice, room, original, "hello")
    await edit(client, bob, room, original, "bob may not edit it")  # ignored
    await send(client, alice, room, {"body": "a notice", "msgtype": "m.notice",
                                     "m.relates_to": {"rel_type": "m.replace",
                                                      "event_id": original}},
               "m.other.type")  # another type: ignored
    event = await get_event(client, bob, room, original)
    assert event["content"]["body"] == "helo"  # the original content is left as it is
    replace = bundle(event)["m.replace"]
    assert replace["event_id"] == latest
    assert replace["content"]["m.new_content"]["body"] == "hello"
    assert replace["sender"] == alice.user_id
    status, page = await messages(client, bob, room, limit=10)
    assert status == 200, page
    found = {e["event_id"]: e for e in page["chunk"]}
    assert bundle(found[original])["m.replace"]["event_id"] == latest
    # An edit takes no aggregations itself.
    assert "m.relations" not in found[latest]["unsigned"]
    status, context = await api(client, "GET", f"/rooms/{room}/context/{original}", bob,
                                query={"limit": "2"})
    assert status == 200, context
    assert bundle(context["event"])["m.replace"]["event_id"] == latest
    body = await sync(client, bob, sync_filter={"room": {"timeline": {"limit": 20}}})
    timeline = {e["event_id"]: e for e in body["rooms"]["join"][room]["timeline"]["events"]}
    assert bundle(timeline[original])["m.replace"]["event_id"] == latest
    status, found_search = await api(client, "POST", "/search", bob, {
        "search_categories": {"room_events": {"search_term": "helo"}}})
    assert status == 200, found_search
    results = found_search["search_categories"]["room_events"]["results"]
    hit = next(r["result"] for r in results if r["result"]["event_id"] == original)
    assert bundle(hit)["m.replace"]["event_id"] == latest


async def test_edit_of_a_state_event_or_without_new_content(client: TestClient,
                                                           alice: User) -> None:
    room = await create_room(client, alice)
    status, body = await put_state(client, alice, room, "m.room.topic", {"topic": "t"})
    assert status == 200, body
    topic = body["event_id"]
    original = await send_text(client, alice, room, "text")
    await send(client, alice, room, {"msgtype": "m.text", "body": "no new content",
                                     "m.relates_to": {"rel_type": "m.replace",
                                                      "event_id": original}})
    assert "m.replace" not in bundle(await get_event(client, alice, room, original))
    await edit(client, alice, room, topic, "nope")
    assert bundle(await get_event(client, alice, room, topic)) == {}


async def test_references_and_redaction(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    root = await send_text(client, alice, room, "root")
    refs = [await send(client, alice, room, relates("m.reference", root, str(i)))
            for i in range(3)]
    latest_edit = await edit(client, alice, room, root, "root!")
    event = await get_event(client, alice, room, root)
    assert bundle(event)["m.reference"] == {"chunk": [{"event_id": r} for r in refs]}
    # Redacting a relation takes it out of the aggregations and of /relations.
    for target in (refs[1], latest_edit):
        status, body = await api(client, "PUT", f"/rooms/{room}/redact/{target}/{txn()}",
                                 alice, {})
        assert status == 200, body
    event = await get_event(client, alice, room, root)
    assert bundle(event) == {"m.reference": {"chunk": [{"event_id": refs[0]},
                                                       {"event_id": refs[2]}]}}
    body = await relations(client, alice, room, root, limit=10)
    assert ids(body["chunk"]) == [refs[2], refs[0]]
    # A redacted original shows no edit.
    await edit(client, alice, room, root, "again")
    status, body = await api(client, "PUT", f"/rooms/{room}/redact/{root}/{txn()}", alice, {})
    assert status == 200, body
    assert "m.replace" not in bundle(await get_event(client, alice, room, root))


async def test_relation_from_another_room_is_ignored(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    other = await create_room(client, alice)
    root = await send_text(client, alice, room, "root")
    await send(client, alice, other, relates("m.reference", root))
    await edit(client, alice, other, root, "hijack")
    await send(client, alice, other, relates("m.thread", root))
    assert bundle(await get_event(client, alice, room, root)) == {}
    assert (await relations(client, alice, room, root, recurse="true"))["chunk"] == []


async def test_stored_events_are_indexed(services: Services, client: TestClient,
                                         alice: User) -> None:
    """The migration's indexing of what was stored before the index: the same rows."""
    room = await create_room(client, alice)
    root = await send_text(client, alice, room, "root")
    reply = await send(client, alice, room, relates("m.thread", root))
    reaction = await react(client, alice, room, reply, "x")  # in the thread too
    gone = await send(client, alice, room, relates("m.reference", root))
    status, body = await api(client, "PUT", f"/rooms/{room}/redact/{gone}/{txn()}", alice, {})
    assert status == 200, body
    engine = services.db.engine

    def rows() -> Any:
        async def read() -> list[tuple[Any, ...]]:
            async with engine.read() as conn:
                return [tuple(r) for r in await conn.execute(
                    event_relations.select().order_by(event_relations.c.event_id))]
        return read()

    before = await rows()
    assert {(r[0], r[2], r[9]) for r in before} == {(reply, "m.thread", root),
                                                    (reaction, "m.annotation", root)}
    await engine.run_write(lambda conn: conn.execute(event_relations.delete()))
    await engine.run_write(relations_index.index_stored)
    assert await rows() == before
