"""Server-side search (POST /search, category room_events) over real HTTP, on SQLite and
PostgreSQL: what is found (body, name, topic, the `keys`), ordering and paging, counts and
highlights, event context, state and groupings, filters, the multilingual tokens and query
syntax, who may find what (never-joined rooms, history visibility, leaving, forgetting,
cleared history, redactions), and the errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from homeserver.services.container import Services
from storage.schema import events
from storage.search_index import index_and_key
from tests.client_api.test_room_history import redact
from tests.client_api.test_sync_fanout import services  # noqa: F401
from tests.conftest import bearer
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    join,
    put_state,
    room_state,
    send_text,
    txn,
)

# -- helpers ------------------------------------------------------------------------------------


def search_body(term: Any, **criteria: Any) -> dict[str, Any]:
    return {"search_categories": {"room_events": {"search_term": term, **criteria}}}


async def search_raw(client: TestClient, user: User | None, body: Any,
                     next_batch: str | None = None) -> tuple[int, Any]:
    return await api(client, "POST", "/search", user, body,
                     query={"next_batch": next_batch} if next_batch is not None else None)


async def search(client: TestClient, user: User, term: str, next_batch: str | None = None,
                 **criteria: Any) -> dict[str, Any]:
    """The room_events answer of a successful search."""
    status, res = await search_raw(client, user, search_body(term, **criteria), next_batch)
    assert status == 200, res
    return dict(res["search_categories"]["room_events"])


def result_ids(res: dict[str, Any]) -> list[str]:
    return [r["result"]["event_id"] for r in res["results"]]


def result_bodies(res: dict[str, Any]) -> list[str]:
    return [r["result"]["content"].get("body") for r in res["results"]]


async def bodies(client: TestClient, user: User, term: str, **criteria: Any) -> set[str]:
    """The bodies of every match (one page of up to 100)."""
    criteria.setdefault("filter", {"limit": 100})
    res = await search(client, user, term, **criteria)
    assert "next_batch" not in res, res
    return set(result_bodies(res))


async def page_all(client: TestClient, user: User, term: str, limit: int, **criteria: Any
                   ) -> list[dict[str, Any]]:
    """Every result, following next_batch until it is left out."""
    out: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(50):
        res = await search(client, user, term, token, filter={"limit": limit}, **criteria)
        assert len(res["results"]) <= limit, res
        out += res["results"]
        if "next_batch" not in res:
            return out
        token = res["next_batch"]
    raise AssertionError("search pagination never ended")


def wide(text: str) -> str:
    """The fullwidth forms of ASCII letters."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


async def send(client: TestClient, user: User, room_id: str, event_type: str,
               content: dict[str, Any]) -> str:
    status, data = await api(client, "PUT", f"/rooms/{room_id}/send/{event_type}/{txn()}",
                             user, content)
    assert status == 200, data
    return str(data["event_id"])


async def public_room(client: TestClient, creator: User, *joiners: User, **body: Any) -> str:
    room_id = await create_room(client, creator, preset="public_chat", **body)
    for user in joiners:
        await join(client, user, room_id)
    return room_id


async def set_visibility(client: TestClient, user: User, room_id: str, value: str) -> None:
    status, data = await put_state(client, user, room_id, "m.room.history_visibility",
                                   {"history_visibility": value})
    assert status == 200, data


async def leave(client: TestClient, user: User, room_id: str) -> None:
    status, data = await api(client, "POST", f"/rooms/{room_id}/leave", user, {})
    assert status == 200, data


async def clear_history(client: TestClient, user: User, room_id: str,
                        up_to: str | None = None) -> None:
    resp = await client.post(
        f"/_matrix/client/unstable/org.ktchat.history/rooms/{quote(room_id, safe='')}/clear",
        json={"up_to_event_id": up_to} if up_to else {}, headers=bearer(user.token))
    assert resp.status == 200, await resp.text()


async def in_index(services: Services, event_id: str) -> bool:  # noqa: F811
    """Whether the event has a row in the full-text index table."""
    engine = services.db.engine
    index, key = index_and_key(engine.is_sqlite)
    async with engine.read() as conn:
        nid = (await conn.execute(select(events.c.nid)
                                  .where(events.c.event_id == event_id))).scalar_one()
        count = (await conn.execute(select(func.count()).select_from(index)
                                    .where(key == nid))).scalar_one()
    return bool(count)


# -- what is found ------------------------------------------------------------------------------


async def test_finds_body_name_and_topic_and_keys_restrict(
        client: TestClient, alice: User, bob: User) -> None:
    room = await create_room(client, alice, name="Zebra planning", topic="quarterly giraffe talk")
    state = await room_state(client, alice, room)
    name_id = state[("m.room.name", "")]["event_id"]
    topic_id = state[("m.room.topic", "")]["event_id"]
    msg_id = await send_text(client, alice, room, "a zebra crossing, no giraffe here")
    await send_text(client, alice, room, "nothing to see")

    res = await search(client, alice, "zebra", filter={"limit": 100})
    assert set(result_ids(res)) == {name_id, msg_id}, res
    res = await search(client, alice, "giraffe", filter={"limit": 100})
    assert set(result_ids(res)) == {topic_id, msg_id}, res
    for r in res["results"]:
        assert r["result"]["room_id"] == room
        assert isinstance(r["rank"], (int, float))

    # keys restrict which field (and so which event type) is searched.
    assert result_ids(await search(client, alice, "zebra", keys=["content.name"])) == [name_id]
    assert result_ids(await search(client, alice, "zebra", keys=["content.body"])) == [msg_id]
    assert result_ids(await search(client, alice, "zebra", keys=["content.topic"])) == []
    assert result_ids(await search(client, alice, "giraffe", keys=["content.topic"])) == [
        topic_id]
    assert set(result_ids(await search(client, alice, "giraffe",
                                       keys=["content.topic", "content.body"]))) == {
        topic_id, msg_id}
    assert result_ids(await search(client, alice, "giraffe", keys=[])) == []

    # A later name replaces nothing in the index: the old name event is still a match (as
    # in Synapse), and the new one is found by its own words.
    status, data = await put_state(client, alice, room, "m.room.name", {"name": "Okapi den"})
    assert status == 200, data
    assert result_ids(await search(client, alice, "okapi")) == [data["event_id"]]
    assert result_ids(await search(client, alice, "zebra", keys=["content.name"])) == [name_id]
    # Bob is in no room: he finds nothing.
    assert result_ids(await search(client, bob, "zebra")) == []
    await _only_indexed_types_and_fields(client, alice)


async def _only_indexed_types_and_fields(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    original = await send_text(client, alice, room, "needle original wording")
    # Non-message events with a body are not matched by content.body.
    await send(client, alice, room, "org.example.note", {"body": "needle custom"})
    await send(client, alice, room, "m.sticker", {"body": "needle sticker", "url": "mxc://x/y",
                                                   "info": {}})
    status, data = await put_state(client, alice, room, "m.room.topic",
                                   {"topic": "plain topic", "body": "needle topicbody"})
    assert status == 200, data
    status, data = await put_state(client, alice, room, "org.example.state",
                                   {"name": "needle statename", "topic": "needle statetopic"})
    assert status == 200, data
    # A message whose body is not a string is stored, and simply not indexed.
    await send(client, alice, room, "m.room.message", {"msgtype": "m.text", "body": 12345})
    # An edit is an m.room.message: it is found by its own body ("* ..."), not by
    # m.new_content only.
    edit = await send(client, alice, room, "m.room.message", {
        "msgtype": "m.text", "body": "* needle corrected",
        "m.new_content": {"msgtype": "m.text", "body": "needle corrected newcontentonly"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original}})
    await send(client, alice, room, "m.reaction", {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "needle"}})

    res = await search(client, alice, "needle", filter={"limit": 100})
    assert set(result_ids(res)) == {original, edit}, res
    for term in ("custom", "sticker", "topicbody", "statename", "statetopic", "12345",
                 "newcontentonly"):
        assert result_ids(await search(client, alice, term)) == [], term
    assert result_ids(await search(client, alice, "corrected")) == [edit]


# -- order and pages ----------------------------------------------------------------------------


async def test_order_by_rank_and_recent(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    strong = await send_text(client, alice, room, "kiwi kiwi kiwi")
    weak = await send_text(client, alice, room,
                           "I once ate a kiwi at a long market stall among many other fruits")
    medium = await send_text(client, alice, room, "kiwi and kiwi, then some melon")
    await send_text(client, alice, room, "no fruit of that kind here")

    res = await search(client, alice, "kiwi")  # rank is the default
    assert result_ids(res) == [strong, medium, weak], res
    ranks = [r["rank"] for r in res["results"]]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1], ranks
    assert result_ids(await search(client, alice, "kiwi", order_by="rank")) == [
        strong, medium, weak]
    # recent: newest first, whatever the rank.
    assert result_ids(await search(client, alice, "kiwi", order_by="recent")) == [
        medium, weak, strong]
    await _count_and_highlights(client, alice)


async def test_pagination_returns_every_match_once(client: TestClient, alice: User,
                                                    bob: User) -> None:
    room = await create_room(client, alice)
    other = await create_room(client, alice)
    sent = []
    for n in range(25):
        sent.append(await send_text(client, alice, room if n % 3 else other,
                                    f"pager item {n}" + " filler" * (n % 4)))
        if n % 5 == 0:
            await send_text(client, alice, room, f"unrelated {n}")

    for order in ("rank", "recent"):
        tokens: list[str] = []
        seen: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(10):
            res = await search(client, alice, "pager", token, order_by=order,
                               filter={"limit": 10})
            assert res["count"] == 25, res
            seen += res["results"]
            if "next_batch" not in res:
                break
            token = res["next_batch"]
            assert token.startswith(f"{order}_"), token
            tokens.append(token)
        assert len(tokens) == 2, (order, tokens)  # pages of 10, 10, 5
        ids = [r["result"]["event_id"] for r in seen]
        assert len(ids) == 25 and set(ids) == set(sent), order
        if order == "recent":
            assert ids == sent[::-1]
        else:
            ranks = [r["rank"] for r in seen]
            assert ranks == sorted(ranks, reverse=True), ranks
    # Other page sizes give the same matches.
    for order in ("rank", "recent"):
        for limit in (7, 25):
            got = [r["result"]["event_id"] for r in
                   await page_all(client, alice, "pager", limit, order_by=order)]
            assert sorted(got) == sorted(sent), (order, limit)

    # A token of the other order, or one that is not ours: 400 M_INVALID_PARAM.
    for token, order in (("nonsense", "rank"), ("rank_", "rank"), ("rank_abc", "rank"),
                         ("rank_-3", "rank"), ("recent_12", "rank"), ("rank_10", "recent"),
                         ("recent_", "recent"), ("recent_1x", "recent")):
        status, res = await search_raw(client, alice, search_body("pager", order_by=order),
                                       token)
        assert_error(status, res, 400, "M_INVALID_PARAM")
    # A token past the end: an empty last page.
    res = await search(client, alice, "pager", "rank_1000")
    assert res["results"] == [] and "next_batch" not in res
    res = await search(client, alice, "pager", "recent_0", order_by="recent")
    assert res["results"] == [] and "next_batch" not in res
    assert (await search(client, bob, "pager"))["results"] == []


async def test_pagination_past_many_invisible_matches(client: TestClient, alice: User,
                                                      bob: User) -> None:
    """More matches the user may not see (here: after they left) than one index fetch
    holds, newer (and ranked level with) the visible ones: the visible ones must still all be
    found. (The second fetch of a page used to apply both the offset and the stream bound, so
    it skipped past them.)"""
    room = await public_room(client, bob, alice)
    visible = [await send_text(client, bob, room, f"needle seen {n}") for n in range(5)]
    await leave(client, alice, room)
    for n in range(26):
        await send_text(client, bob, room, f"needle gone {n}")

    for order in ("rank", "recent"):
        res = await search(client, alice, "needle", order_by=order)
        assert sorted(result_ids(res)) == sorted(visible), (order, res)
        for limit in (1, 3):
            got = [r["result"]["event_id"] for r in
                   await page_all(client, alice, "needle", limit, order_by=order)]
            assert sorted(got) == sorted(visible), (order, limit)
    assert len((await search(client, bob, "needle", filter={"limit": 100}))["results"]) == 31


async def _count_and_highlights(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    await send_text(client, alice, room, "Hello Wörld and all the worlds")
    await send_text(client, alice, room, "world peace")
    await send_text(client, alice, room, "WORLD cup")
    await send_text(client, alice, room, "我们明天在北京开会")
    await send_text(client, alice, room, "the quick brown fox")

    res = await search(client, alice, "world", filter={"limit": 1})
    assert res["count"] == 3, res
    assert len(res["results"]) == 1 and "next_batch" in res
    res = await search(client, alice, "world")
    assert res["count"] == 3
    assert {"Wörld", "worlds", "world", "WORLD"} <= set(res["highlights"]), res
    assert not {"Hello", "peace", "cup"} & set(res["highlights"]), res

    res = await search(client, alice, "北京")
    assert res["count"] == 1 and "北京" in res["highlights"], res
    res = await search(client, alice, '"quick brown"')
    assert res["count"] == 1
    assert "quick brown" in res["highlights"] or {"quick", "brown"} <= set(res["highlights"])
    res = await search(client, alice, "zzz")
    assert res == {"results": [], "count": 0, "highlights": []}


# -- event context, state, groups ----------------------------------------------------------------


async def test_event_context_and_profiles(client: TestClient, alice: User, bob: User) -> None:
    room = await public_room(client, alice, bob)
    status, data = await api(client, "PUT", f"/profile/{alice.user_id}/displayname", alice,
                             {"displayname": "Alice Liddell"})
    assert status == 200, data
    status, data = await api(client, "PUT", f"/profile/{bob.user_id}/displayname", bob,
                             {"displayname": "Bob Builder"})
    assert status == 200, data
    await send_text(client, alice, room, "ctx one")
    await send_text(client, bob, room, "ctx two")
    target = await send_text(client, alice, room, "the marker message")
    await send_text(client, bob, room, "ctx four")
    await send_text(client, alice, room, "ctx five")

    res = await search(client, alice, "marker", event_context={
        "before_limit": 2, "after_limit": 1, "include_profile": True})
    [result] = res["results"]
    assert result["result"]["event_id"] == target
    context = result["context"]
    assert [e["content"]["body"] for e in context["events_before"]] == ["ctx two", "ctx one"]
    assert [e["content"]["body"] for e in context["events_after"]] == ["ctx four"]
    assert isinstance(context["start"], str) and isinstance(context["end"], str)
    assert context["profile_info"][alice.user_id]["displayname"] == "Alice Liddell"
    assert context["profile_info"][bob.user_id]["displayname"] == "Bob Builder"
    # The context's end token goes on from there in /messages.
    status, page = await api(client, "GET", f"/rooms/{room}/messages", alice,
                             query={"dir": "f", "from": context["end"], "limit": "1"})
    assert status == 200, page
    assert [e["content"]["body"] for e in page["chunk"]] == ["ctx five"]

    # Defaults: five each side; no profiles unless asked.
    res = await search(client, alice, "marker", event_context={})
    context = res["results"][0]["context"]
    assert len(context["events_before"]) == 5
    assert [e["content"]["body"] for e in context["events_before"][:2]] == ["ctx two",
                                                                           "ctx one"]
    assert [e["content"]["body"] for e in context["events_after"]] == ["ctx four", "ctx five"]
    assert "profile_info" not in context
    # Zero on both sides, and no context at all without event_context.
    res = await search(client, alice, "marker", event_context={"before_limit": 0,
                                                               "after_limit": 0})
    context = res["results"][0]["context"]
    assert context["events_before"] == [] and context["events_after"] == []
    res = await search(client, alice, "marker")
    assert "context" not in res["results"][0]


async def test_include_state_and_groupings(client: TestClient, alice: User, bob: User) -> None:
    first = await public_room(client, alice, bob, name="First room")
    second = await public_room(client, alice, bob, name="Second room")
    quiet = await public_room(client, alice, bob, name="Quiet room")
    await send_text(client, alice, quiet, "nothing relevant")
    a1 = await send_text(client, alice, first, "group needle a1")
    b1 = await send_text(client, bob, first, "group needle b1")
    a2 = await send_text(client, alice, second, "group needle a2")

    res = await search(client, alice, "needle", order_by="recent", include_state=True,
                       groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]})
    assert result_ids(res) == [a2, b1, a1]
    assert set(res["state"]) == {first, second}, res["state"].keys()
    for room_id, name in ((first, "First room"), (second, "Second room")):
        state = {(e["type"], e["state_key"]): e for e in res["state"][room_id]}
        assert ("m.room.create", "") in state
        assert state[("m.room.name", "")]["content"]["name"] == name
        assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
    by_room = res["groups"]["room_id"]
    assert set(by_room) == {first, second}
    assert by_room[first]["results"] == [b1, a1] and by_room[second]["results"] == [a2]
    assert sorted(g["order"] for g in by_room.values()) == [1, 2]
    assert by_room[second]["order"] == 1  # holds the best (here: newest) result
    by_sender = res["groups"]["sender"]
    assert by_sender[alice.user_id]["results"] == [a2, a1]
    assert by_sender[bob.user_id]["results"] == [b1]
    assert "next_batch" not in by_room[first]

    res = await search(client, alice, "needle")
    assert "state" not in res and "groups" not in res
    res = await search(client, alice, "needle", include_state=False,
                       groupings={"group_by": [{"key": "sender"}]})
    assert "state" not in res and set(res["groups"]) == {"sender"}
    res = await search(client, alice, "needle", groupings={"group_by": []})
    assert not res.get("groups")
    # Groups on a page that goes on carry the next page's token.
    res = await search(client, alice, "needle", filter={"limit": 2},
                       groupings={"group_by": [{"key": "room_id"}]})
    assert "next_batch" in res
    assert all(g.get("next_batch") == res["next_batch"]
               for g in res["groups"]["room_id"].values())


# -- filters ------------------------------------------------------------------------------------


async def test_filter(client: TestClient, alice: User, bob: User) -> None:
    room1 = await public_room(client, alice, bob)
    room2 = await public_room(client, bob, alice)
    await send_text(client, alice, room1, "sieve alpha")
    await send_text(client, bob, room1, "sieve beta")
    await send_text(client, alice, room2, "sieve gamma")
    status, data = await put_state(client, bob, room2, "m.room.topic", {"topic": "sieve topic"})
    assert status == 200, data
    await send(client, alice, room1, "m.room.message", {
        "msgtype": "m.image", "body": "sieve picture", "url": "mxc://test.local/abc"})
    everything = {"sieve alpha", "sieve beta", "sieve gamma", None, "sieve picture"}

    async def found(**event_filter: Any) -> set[str | None]:
        res = await search(client, alice, "sieve", filter={"limit": 100, **event_filter})
        return set(result_bodies(res))

    assert await found() == everything
    assert await found(rooms=[room1]) == {"sieve alpha", "sieve beta", "sieve picture"}
    assert await found(rooms=[room1, room2]) == everything
    assert await found(rooms=[]) == set()
    assert await found(rooms=["!nowhere:test.local"]) == set()
    assert await found(not_rooms=[room1]) == {"sieve gamma", None}
    assert await found(rooms=[room1, room2], not_rooms=[room2]) == {
        "sieve alpha", "sieve beta", "sieve picture"}
    assert await found(senders=[bob.user_id]) == {"sieve beta", None}
    assert await found(senders=[]) == set()
    assert await found(not_senders=[bob.user_id]) == {"sieve alpha", "sieve gamma",
                                                       "sieve picture"}
    assert await found(rooms=[room1], senders=[alice.user_id]) == {"sieve alpha",
                                                                   "sieve picture"}
    assert await found(types=["m.room.topic"]) == {None}
    assert await found(types=["m.room.t*"]) == {None}
    assert await found(not_types=["m.room.message"]) == {None}
    assert await found(types=["m.room.member"]) == set()
    assert await found(contains_url=True) == {"sieve picture"}
    assert await found(contains_url=False) == everything - {"sieve picture"}
    res = await search(client, alice, "sieve", filter={"types": ["m.room.topic"]})
    assert res["results"][0]["result"]["content"]["topic"] == "sieve topic"

    # limit: the page size (default 10, at most 100).
    res = await search(client, alice, "sieve", filter={"limit": 2})
    assert len(res["results"]) == 2 and "next_batch" in res
    res = await search(client, alice, "sieve", filter={"limit": 1000})
    assert len(res["results"]) == 5 and "next_batch" not in res
    for n in range(12):
        await send_text(client, bob, room2, f"sieve extra {n}")
    res = await search(client, alice, "sieve")
    assert len(res["results"]) == 10 and "next_batch" in res and res["count"] == 17
    res = await search(client, alice, "sieve", filter={"senders": [bob.user_id]})
    assert res["count"] == 14


# -- tokens: languages, folding, prefixes, query syntax ------------------------------------------


async def test_multilingual(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    texts = {
        "zh": "我们明天在北京开会讨论项目",
        "zh_mixed": "今天用Matrix聊天很开心",
        "zh_in_en": "Dinner at 北京饭店 tonight",
        "ja": "東京で会議があります",
        "ja_kana": "コーヒーを飲みました",
        "ja_hira": "ありがとうございます",
        "th": "ฉันชอบกินข้าวผัดมาก",
        "th2": "สวัสดีครับ",
        "ko": "내일 회의는 오후에 있습니다",
    }
    for text in texts.values():
        await send_text(client, alice, room, text)

    expected: dict[str, set[str]] = {
        "北京": {texts["zh"], texts["zh_in_en"]},
        "开会": {texts["zh"]},
        "讨论项目": {texts["zh"]},
        "北京 项目": {texts["zh"]},
        "项目讨论": set(),
        "上海": set(),
        "聊天": {texts["zh_mixed"]},
        "matrix": {texts["zh_mixed"]},
        "Matrix聊天": {texts["zh_mixed"]},
        "饭店": {texts["zh_in_en"]},
        "dinner": {texts["zh_in_en"]},
        "会議": {texts["ja"]},
        "東京": {texts["ja"]},
        "東京 会議": {texts["ja"]},
        "コーヒー": {texts["ja_kana"]},
        "ｺｰﾋｰ": {texts["ja_kana"]},  # half-width katakana folds to full-width
        "ありがとう": {texts["ja_hira"]},
        "紅茶": set(),
        "ข้าวผัด": {texts["th"]},
        "กิน": {texts["th"]},
        "สวัสดี": {texts["th2"]},
        "ข้าวต้ม": set(),
        "회의": {texts["ko"]},
        "오후": {texts["ko"]},
        "회의는": {texts["ko"]},
        "회의실": set(),
    }
    for term, want in expected.items():
        assert await bodies(client, alice, term) == want, term
    await _folding_case_and_prefix(client, alice)


async def _folding_case_and_prefix(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    texts = {
        "naive": "Naïve Wörld at the Café",
        "plain": "plain naive text",
        "shout": "HELLO Shouting",
        "wide": f"{wide('FULLWIDTH')} letters",
        "ru": "Привет, мир",
        "el": "Καλημέρα κόσμε",
        "de": "Die Straße ist lang",
        "vi": "Tiếng Việt rất hay",
        "decomposed": "Re\u0301sume\u0301 ready",  # combining accents, not precomposed
    }
    for text in texts.values():
        await send_text(client, alice, room, text)
    expected: dict[str, set[str]] = {
        "naive": {texts["naive"], texts["plain"]},
        "naïve": {texts["naive"], texts["plain"]},
        "NAÏVE": {texts["naive"], texts["plain"]},
        "naiv": {texts["naive"], texts["plain"]},
        "world": {texts["naive"]},
        "wörld": {texts["naive"]},
        "WORLD": {texts["naive"]},
        "Wörld": {texts["naive"]},
        "cafe": {texts["naive"]},
        "café": {texts["naive"]},
        "CAF": {texts["naive"]},
        "hello": {texts["shout"]},
        "Hello": {texts["shout"]},
        "shou": {texts["shout"]},
        "outing": set(),  # prefixes, not infixes
        "hellox": set(),
        "fullwidth": {texts["wide"]},
        wide("full"): {texts["wide"]},
        "привет": {texts["ru"]},
        "ПРИВЕТ": {texts["ru"]},
        "прив": {texts["ru"]},
        "мир": {texts["ru"]},
        "καλημερα": {texts["el"]},
        "ΚΑΛΗΜΈΡΑ": {texts["el"]},
        "κοσμε": {texts["el"]},
        "strasse": {texts["de"]},
        "STRASSE": {texts["de"]},
        "straße": {texts["de"]},
        "tieng viet": {texts["vi"]},
        "việt": {texts["vi"]},
        "résumé": {texts["decomposed"]},
        "resume": {texts["decomposed"]},
        "RÉSUMÉ": {texts["decomposed"]},
        "naive hello": set(),  # words are ANDed
        "naive cafe": {texts["naive"]},
    }
    for term, want in expected.items():
        assert await bodies(client, alice, term) == want, term


async def test_query_syntax(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    first = "the quick brown fox"
    second = "the brown quick fox"
    third = "quick red fox"
    fourth = "lazy dog sleeps"
    fifth = "the needle and the haystack are not near"
    for text in (first, second, third, fourth, fifth):
        await send_text(client, alice, room, text)
    expected: dict[str, set[str]] = {
        '"quick brown"': {first},
        '"brown quick"': {second},
        '"QUICK Brown"': {first},
        '"quick bro"': set(),  # a quoted phrase is exact, no prefix
        '"quick brown': {first},  # an unclosed quote runs to the end
        "quick brown": {first, second},
        "quick -brown": {third},
        "fox -bro": {third},  # an excluded word is a prefix too
        "fo": {first, second, third},
        '"fo"': set(),
        '"fox"': {first, second, third},
        "fox -brown -red": set(),
        'fox -"quick brown"': {second, third},
        "dog OR red": {third, fourth},
        "lazy OR quick -brown": {third, fourth},
        "dog OR": {fourth},
        "OR dog": {fourth},
        "lazy dog OR quick red": {third, fourth},
        "dog or": set(),  # lower-case "or" is a word like any other
        "fox OR -fox": {first, second, third},
        # Characters that are operators in the index's own syntax are not operators here.
        "needle*": {fifth},
        "(needle)": {fifth},
        "needle:": {fifth},
        "NEAR(needle haystack)": {fifth},
        "needle AND haystack": {fifth},
        "NOT needle": {fifth},
        "needle&haystack": {fifth},
        "needle|haystack": {fifth},
        "needle!": {fifth},
        "{needle}^": {fifth},
        "needle\\": {fifth},
        "'needle'": {fifth},
        "needle:* & !haystack": {fifth},
        "haystack -fox": {fifth},
    }
    for term, want in expected.items():
        assert await bodies(client, alice, term) == want, term
    await _empty_and_only_negated_terms(client, alice)


async def _empty_and_only_negated_terms(client: TestClient, alice: User) -> None:
    """(Alice has one message with "needle" and "haystack".)"""
    for term in ("", "   ", "\t\n", "-needle", '-"needle in"', "-needle -haystack", "OR",
                 "OR OR", "***", "!!! ???", '""', '"', "-", "--", "-needle OR -haystack",
                 "\u200b", "_"):
        res = await search(client, alice, term)
        assert res["results"] == [] and res["count"] == 0, (term, res)
        assert "next_batch" not in res
    # Many words: still answered.
    res = await search(client, alice, " ".join(["needle"] * 100))
    assert len(res["results"]) == 1
    res = await search(client, alice, "x" * 4096)
    assert res["results"] == []


# -- who may find what --------------------------------------------------------------------------


async def _never_joined_rooms_are_not_searched(client: TestClient, alice: User, bob: User,
                                                   carol: User) -> None:
    private = await create_room(client, bob)
    await send_text(client, bob, private, "pin private")
    world = await create_room(client, bob, preset="public_chat")
    await set_visibility(client, bob, world, "world_readable")
    await send_text(client, bob, world, "pin world readable")
    invited = await create_room(client, bob)
    await send_text(client, bob, invited, "pin invited")
    status, data = await api(client, "POST", f"/rooms/{invited}/invite", bob,
                             {"user_id": alice.user_id})
    assert status == 200, data
    mine = await create_room(client, alice)
    await send_text(client, alice, mine, "pin mine")

    assert await bodies(client, alice, "pin") == {"pin mine"}
    assert await bodies(client, alice, "pin", filter={"rooms": [private, world, invited]}) \
        == set()
    assert await bodies(client, carol, "pin") == set()
    assert await bodies(client, bob, "pin") == {"pin private", "pin world readable",
                                                   "pin invited"}
    res = await search(client, alice, "pin", filter={"limit": 100})
    assert res["count"] == 1


async def test_history_visibility(client: TestClient, alice: User, bob: User,
                                  carol: User) -> None:
    joined = await public_room(client, bob)
    await set_visibility(client, bob, joined, "joined")
    await send_text(client, bob, joined, "needle joined before")
    shared = await public_room(client, bob)
    await send_text(client, bob, shared, "needle shared before")
    invited = await public_room(client, bob)
    await set_visibility(client, bob, invited, "invited")
    await send_text(client, bob, invited, "needle invited before")
    status, data = await api(client, "POST", f"/rooms/{invited}/invite", bob,
                             {"user_id": alice.user_id})
    assert status == 200, data
    await send_text(client, bob, invited, "needle invited during")
    for room_id in (joined, shared, invited):
        await join(client, alice, room_id)
    await send_text(client, bob, joined, "needle joined after")
    await send_text(client, bob, shared, "needle shared after")
    await send_text(client, bob, invited, "needle invited after")

    assert await bodies(client, alice, "needle") == {
        "needle joined after", "needle shared before", "needle shared after",
        "needle invited during", "needle invited after"}
    # The count is of what she may see too.
    assert (await search(client, alice, "needle"))["count"] == 5
    assert (await search(client, bob, "needle"))["count"] == 7
    for order in ("rank", "recent"):
        got = await page_all(client, alice, "needle", 2, order_by=order)
        assert "needle joined before" not in {r["result"]["content"]["body"] for r in got}
        assert "needle invited before" not in {r["result"]["content"]["body"] for r in got}
        assert len(got) == 5
    assert len(await bodies(client, bob, "needle")) == 7
    # Nor does the context of a visible result show the hidden event.
    res = await search(client, alice, "after", filter={"rooms": [joined]},
                       event_context={"before_limit": 20, "after_limit": 20,
                                      "include_profile": True})
    [result] = res["results"]
    around = result["context"]["events_before"] + result["context"]["events_after"]
    assert "needle joined before" not in str(around)
    assert "needle joined before" not in str(res)
    await _never_joined_rooms_are_not_searched(client, alice, bob, carol)


async def test_after_leaving_and_forgetting(client: TestClient, alice: User, bob: User) -> None:
    room = await public_room(client, bob, alice)
    await send_text(client, bob, room, "needle early")
    await send_text(client, alice, room, "needle mine")
    await leave(client, alice, room)
    await send_text(client, bob, room, "needle late")
    status, data = await put_state(client, bob, room, "m.room.topic", {"topic": "needle topic"})
    assert status == 200, data

    assert await bodies(client, alice, "needle") == {"needle early", "needle mine"}
    assert (await search(client, alice, "needle"))["count"] == 2
    assert await bodies(client, alice, "late") == set()
    assert (await search(client, alice, "late"))["count"] == 0
    assert await bodies(client, alice, "needle", keys=["content.topic"]) == set()
    res = await search(client, alice, "needle", event_context={"after_limit": 10})
    assert "needle late" not in str(res)
    res = await search(client, alice, "needle", include_state=True)
    assert "needle topic" not in str(res["state"])
    assert await bodies(client, bob, "needle") == {"needle early", "needle mine",
                                                   "needle late", None}

    status, data = await api(client, "POST", f"/rooms/{room}/forget", alice, {})
    assert status == 200, data
    assert await bodies(client, alice, "needle") == set()
    assert await bodies(client, alice, "needle", filter={"rooms": [room]}) == set()
    assert (await search(client, alice, "needle"))["count"] == 0
    assert len(await bodies(client, bob, "needle")) == 4


async def test_cleared_history(client: TestClient, alice: User, bob: User) -> None:
    room = await public_room(client, alice, bob)
    await send_text(client, alice, room, "needle one")
    two = await send_text(client, bob, room, "needle two")
    await send_text(client, alice, room, "needle three")

    await clear_history(client, alice, room, two)
    assert await bodies(client, alice, "needle") == {"needle three"}
    assert await bodies(client, bob, "needle") == {"needle one", "needle two", "needle three"}
    # The count leaves out what she cleared (and only for her).
    assert (await search(client, alice, "needle"))["count"] == 1
    assert (await search(client, alice, "needle", filter={"limit": 1}))["count"] == 1
    assert (await search(client, bob, "needle"))["count"] == 3
    res = await search(client, alice, "three", event_context={"before_limit": 10})
    assert "needle two" not in str(res) and "needle one" not in str(res)

    await clear_history(client, alice, room)
    assert await bodies(client, alice, "needle") == set()
    assert (await search(client, alice, "needle"))["count"] == 0
    await send_text(client, bob, room, "needle four")
    assert await bodies(client, alice, "needle") == {"needle four"}
    assert (await search(client, alice, "needle"))["count"] == 1
    res = await search(client, alice, "four", event_context={"before_limit": 10})
    assert "needle three" not in str(res)
    assert await bodies(client, bob, "needle") == {"needle one", "needle two", "needle three",
                                                   "needle four"}


async def test_redacted_events_leave_the_index(client: TestClient, services: Services,  # noqa: F811
                                               alice: User, bob: User) -> None:
    room = await public_room(client, alice, bob)
    secret = await send_text(client, alice, room, "needle secret plan")
    kept = await send_text(client, alice, room, "needle public plan")
    status, data = await put_state(client, alice, room, "m.room.name", {"name": "Hidden name"})
    assert status == 200, data
    name_event = data["event_id"]
    assert await in_index(services, secret) and await in_index(services, name_event)
    assert await bodies(client, bob, "secret") == {"needle secret plan"}

    for event_id in (secret, name_event):
        status, data = await redact(client, alice, room, event_id)
        assert status == 200, data
    assert not await in_index(services, secret)
    assert not await in_index(services, name_event)
    assert await in_index(services, kept)
    for user in (alice, bob):
        assert await bodies(client, user, "needle") == {"needle public plan"}
        assert await bodies(client, user, "secret") == set()
        assert result_ids(await search(client, user, "hidden")) == []
        assert (await search(client, user, "secret"))["count"] == 0
    # The redaction event itself (with its reason) is not a match either.
    status, data = await redact(client, alice, room, kept, reason="needle reason")
    assert status == 200, data
    assert await bodies(client, alice, "needle") == set()
    assert await bodies(client, alice, "reason") == set()


# -- errors -------------------------------------------------------------------------------------


async def test_errors(client: TestClient, alice: User) -> None:
    room = await create_room(client, alice)
    await send_text(client, alice, room, "needle")
    cases: list[tuple[Any, int, str]] = [
        ({"search_categories": {"room_events": {}}}, 400, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {"keys": ["content.body"]}}}, 400,
         "M_MISSING_PARAM"),
        ({}, 400, "M_MISSING_PARAM"),
        ({"search_categories": "room_events"}, 400, "M_BAD_JSON"),
        (search_body(5), 400, "M_BAD_JSON"),
        (search_body(None), 400, "M_BAD_JSON"),
        (search_body(["needle"]), 400, "M_BAD_JSON"),
        (search_body("needle", keys="content.body"), 400, "M_BAD_JSON"),
        (search_body("needle", keys=[1]), 400, "M_BAD_JSON"),
        (search_body("needle", filter=[]), 400, "M_BAD_JSON"),
        (search_body("needle", filter={"limit": "ten"}), 400, "M_BAD_JSON"),
        (search_body("needle", filter={"limit": -1}), 400, "M_BAD_JSON"),
        (search_body("needle", filter={"rooms": "!a:b"}), 400, "M_BAD_JSON"),
        (search_body("needle", filter={"contains_url": "yes"}), 400, "M_BAD_JSON"),
        (search_body("needle", order_by=1), 400, "M_BAD_JSON"),
        (search_body("needle", include_state="yes"), 400, "M_BAD_JSON"),
        (search_body("needle", event_context={"before_limit": "2"}), 400, "M_BAD_JSON"),
        (search_body("needle", event_context={"before_limit": -1}), 400, "M_BAD_JSON"),
        (search_body("needle", event_context=[]), 400, "M_BAD_JSON"),
        (search_body("needle", groupings={"group_by": [{"key": 1}]}), 400, "M_BAD_JSON"),
        (search_body("needle", groupings={"group_by": "room_id"}), 400, "M_BAD_JSON"),
        (search_body("needle", keys=["content.msgtype"]), 400, "M_INVALID_PARAM"),
        (search_body("needle", keys=["content.body", "body"]), 400, "M_INVALID_PARAM"),
        (search_body("needle", order_by="oldest"), 400, "M_INVALID_PARAM"),
        (search_body("needle", order_by="RANK"), 400, "M_INVALID_PARAM"),
        (search_body("needle", groupings={"group_by": [{"key": "type"}]}), 400,
         "M_INVALID_PARAM"),
        (search_body("needle", groupings={"group_by": [{"key": "room_id"}, {"key": "x"}]}),
         400, "M_INVALID_PARAM"),
        ([], 400, "M_BAD_JSON"),
        ("needle", 400, "M_BAD_JSON"),
    ]
    for body, status_wanted, errcode in cases:
        status, res = await search_raw(client, alice, body)
        assert (status, res.get("errcode")) == (status_wanted, errcode), (body, res)
        assert isinstance(res.get("error"), str)
    # A bad key is refused even when nothing could match.
    status, res = await search_raw(client, alice, search_body("", keys=["content.nope"]))
    assert_error(status, res, 400, "M_INVALID_PARAM")

    status, res = await search_raw(client, None, search_body("needle"))
    assert_error(status, res, 401, "M_MISSING_TOKEN")
    resp = await client.post("/_matrix/client/v3/search", json=search_body("needle"),
                             headers=bearer("not-a-token"))
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    for raw in (b"{not json", b"", b"\xff\xfe", b'{"search_categories": {"room_events": ',
                b"NaN"):
        resp = await client.post("/_matrix/client/v3/search", data=raw,
                                 headers={**bearer(alice.token),
                                          "Content-Type": "application/json"})
        assert resp.status == 400, raw
        assert (await resp.json())["errcode"] == "M_NOT_JSON", raw
    resp = await client.get("/_matrix/client/v3/search", headers=bearer(alice.token))
    assert resp.status == 405
    await _missing_category(client, alice)


async def _missing_category(client: TestClient, alice: User) -> None:
    for body in ({"search_categories": {}},
                 {"search_categories": {"room_events": None}},
                 {"search_categories": {"unknown_category": {"search_term": "needle"}}}):
        status, res = await search_raw(client, alice, body)
        assert status == 200, res
        assert res == {"search_categories": {}}, (body, res)
    # Unknown fields are ignored.
    status, res = await search_raw(client, alice, {
        "search_categories": {"room_events": {"search_term": "needle", "shiny": True}},
        "extra": 1})
    assert status == 200, res
    assert len(res["search_categories"]["room_events"]["results"]) == 1
