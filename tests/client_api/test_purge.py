"""Purging history, deleting and blocking rooms (Synapse's admin API), and message retention.

Every test that talks to a server runs on SQLite and on PostgreSQL. All test users are local,
so a history purge that should delete messages passes ``delete_local_events: true``; the
stored rows (events, event_edges, the search index) are checked as well as what clients see.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from core.errors import MatrixError
from homeserver.config import ConfigError
from homeserver.services.container import Services
from homeserver.services.purge import DeleteRoomRequest
from roomserver.api import NewEvent
from storage import search_index
from storage.schema import (
    account_data,
    current_state,
    event_edges,
    events,
    receipts,
    redactions,
    room_aliases,
    rooms,
    state_groups,
)
from tests.client_api.test_admin import admin_token
from tests.client_api.test_room_history import redact
from tests.client_api.test_sync import joined, sync, timeline_ids
from tests.client_api.test_sync_fanout import services  # noqa: F401
from tests.conftest import SERVER_NAME, bearer, make_config
from tests.helpers.room_api import (
    User,
    all_events,
    api,
    assert_error,
    create_room,
    join,
    messages,
    put_state,
    room_state,
    send_text,
)

ADMIN1 = "/_synapse/admin/v1"
ADMIN2 = "/_synapse/admin/v2"
DAY = 86_400_000
HOUR = 3_600_000


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def hs(services: Services) -> Services:  # noqa: F811
    """The server under test (the parametrised ``services``: SQLite, then PostgreSQL)."""
    return services


def q(value: str) -> str:
    return quote(value, safe="")


async def admin_call(client: TestClient, method: str, path: str, token: str | None,
                     body: Any = None) -> tuple[int, Any]:
    resp = await client.request(method, path, json=body,
                                headers=bearer(token) if token else None)
    return resp.status, await resp.json()


async def start_purge(client: TestClient, token: str, room_id: str, *,
                      event_id: str | None = None, **body: Any) -> str:
    path = f"{ADMIN1}/purge_history/{q(room_id)}" + (f"/{q(event_id)}" if event_id else "")
    status, res = await admin_call(client, "POST", path, token, body)
    assert status == 200, res
    assert isinstance(res["purge_id"], str) and res["purge_id"]
    return str(res["purge_id"])


async def wait_purge(client: TestClient, token: str, purge_id: str) -> dict[str, Any]:
    for _ in range(200):
        status, res = await admin_call(client, "GET", f"{ADMIN1}/purge_history_status/"
                                       f"{q(purge_id)}", token)
        assert status == 200, res
        if res["status"] != "active":
            return res  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError("the purge did not finish")


async def purge(client: TestClient, token: str, room_id: str, *, event_id: str | None = None,
                **body: Any) -> None:
    """Purge and wait until it is complete."""
    purge_id = await start_purge(client, token, room_id, event_id=event_id, **body)
    assert await wait_purge(client, token, purge_id) == {"status": "complete"}


async def wait_delete(client: TestClient, token: str, delete_id: str) -> dict[str, Any]:
    for _ in range(200):
        status, res = await admin_call(client, "GET", f"{ADMIN2}/rooms/delete_status/"
                                       f"{q(delete_id)}", token)
        assert status == 200, res
        if res["status"] not in ("shutting_down", "purging"):
            return res  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError("the room deletion did not finish")


async def tick(hs: Services) -> int:
    """A time strictly after every event sent so far and strictly before any sent later."""
    await asyncio.sleep(0.01)
    now = hs.clock.time_ms()
    await asyncio.sleep(0.01)
    return now


def bodies(evs: Iterable[dict[str, Any]]) -> list[str]:
    return [e["content"].get("body") for e in evs if e["type"] == "m.room.message"]


async def stored_events(hs: Services, room_id: str) -> dict[str, int]:
    """Event ID -> nid of every stored event of the room."""
    async with hs.db.engine.read() as conn:
        rows = await conn.execute(select(events.c.event_id, events.c.nid)
                                  .where(events.c.room_id == room_id))
        return {r.event_id: r.nid for r in rows}


async def edges_of(hs: Services, event_ids: Iterable[str]) -> set[str]:
    """Those of ``event_ids`` with a row in event_edges."""
    async with hs.db.engine.read() as conn:
        rows = await conn.execute(select(event_edges.c.event_id)
                                  .where(event_edges.c.event_id.in_(list(event_ids))))
        return {r[0] for r in rows}


async def indexed(hs: Services, nids: Iterable[int]) -> set[int]:
    """Those of ``nids`` in the search index (FTS5 rowid / tsvector nid)."""
    index, key = search_index.index_and_key(hs.db.engine.is_sqlite)
    async with hs.db.engine.read() as conn:
        rows = await conn.execute(select(key).select_from(index).where(key.in_(list(nids))))
        return {int(r[0]) for r in rows}


async def redaction_rows(hs: Services, event_ids: Iterable[str]) -> set[str]:
    """Those of ``event_ids`` (redactions or their targets) with a row in redactions."""
    ids = list(event_ids)
    async with hs.db.engine.read() as conn:
        rows = await conn.execute(select(redactions.c.event_id, redactions.c.redacts).where(
            redactions.c.event_id.in_(ids) | redactions.c.redacts.in_(ids)))
        return {e for r in rows for e in (r.event_id, r.redacts) if e in ids}


ROOM_TABLES = [events, current_state, rooms, state_groups, room_aliases, receipts,
               account_data]
ROOM_TABLE_NAMES = [t.name for t in ROOM_TABLES]


async def count_rows(hs: Services, room_id: str) -> dict[str, int]:
    """The number of the room's rows in each of ROOM_TABLES."""
    counts = {}
    async with hs.db.engine.read() as conn:
        for table in ROOM_TABLES:
            counts[table.name] = (await conn.execute(
                select(func.count()).select_from(table)
                .where(table.c.room_id == room_id))).scalar_one()
    return counts


async def search(client: TestClient, user: User, term: str) -> list[str]:
    body = {"search_categories": {"room_events": {"search_term": term}}}
    status, res = await api(client, "POST", "/search", user, body)
    assert status == 200, res
    return [r["result"]["event_id"] for r in res["search_categories"]["room_events"]["results"]]


async def state_ids(client: TestClient, user: User, room_id: str
                    ) -> dict[tuple[str, str], tuple[str, Any]]:
    """The room's current state: (type, state_key) -> (event ID, content)."""
    return {k: (e["event_id"], e["content"])
            for k, e in (await room_state(client, user, room_id)).items()}


async def redact_ok(client: TestClient, user: User, room_id: str, event_id: str) -> str:
    status, res = await redact(client, user, room_id, event_id)
    assert status == 200, res
    return str(res["event_id"])


async def page_back(client: TestClient, user: User, room_id: str, limit: int) -> list[str]:
    """Every event ID from the newest back, a page of ``limit`` at a time (oldest first)."""
    out: list[str] = []
    token: str | None = None
    for _ in range(100):
        query: dict[str, Any] = {"limit": limit}
        if token is not None:
            query["from"] = token
        status, page = await messages(client, user, room_id, **query)
        assert status == 200, page
        out.extend(e["event_id"] for e in page["chunk"])
        if "end" not in page:
            return out[::-1]
        token = page["end"]
    raise AssertionError("pagination did not end")


# -- purging history ----------------------------------------------------------------------------


async def test_purge_by_timestamp(client: TestClient, hs: Services, alice: User,
                                  bob: User) -> None:
    token = await admin_token(client)
    room = await create_room(client, alice, preset="public_chat", name="Purged",
                             topic="the zebra topic")
    await join(client, bob, room)
    since = (await sync(client, bob))["next_batch"]
    old = [await send_text(client, alice if i % 2 else bob, room, f"zebra old {i}")
           for i in range(6)]
    status, _ = await api(client, "POST", f"/rooms/{room}/receipt/m.read/{old[2]}", bob, {})
    assert status == 200
    cut = await tick(hs)
    new = [await send_text(client, alice, room, f"zebra new {i}") for i in range(3)]
    # A client's token from before the purge, pointing into what is purged.
    prev_batch = joined(await sync(client, alice, sync_filter={
        "room": {"timeline": {"limit": 4}}}), room)["timeline"]["prev_batch"]
    before = await stored_events(hs, room)
    assert await indexed(hs, [before[e] for e in old]) == {before[e] for e in old}
    assert await edges_of(hs, old) == set(old)

    # Local users' messages stay unless delete_local_events (every user here is local).
    await purge(client, token, room, purge_up_to_ts=cut)
    await purge(client, token, room, purge_up_to_ts=cut, delete_local_events=False)
    assert await stored_events(hs, room) == before

    await purge(client, token, room, purge_up_to_ts=cut, delete_local_events=True)
    after = await stored_events(hs, room)
    assert set(before) - set(after) == set(old)
    assert await edges_of(hs, old) == set()
    assert await indexed(hs, [before[e] for e in old]) == set()
    kept = [after[e] for e in new]
    assert await indexed(hs, kept) == set(kept)
    assert await edges_of(hs, new) == set(new)

    # What clients see: the state and the new messages, nothing purged.
    evs = await all_events(client, alice, room)
    assert bodies(evs) == ["zebra new 0", "zebra new 1", "zebra new 2"]
    assert {"m.room.create", "m.room.member", "m.room.power_levels", "m.room.name",
            "m.room.topic", "m.room.join_rules"} <= {e["type"] for e in evs}
    assert not set(old) & {e["event_id"] for e in evs}
    for event_id in old:
        status, res = await api(client, "GET", f"/rooms/{room}/event/{event_id}", bob)
        assert status == 404, res
    status, page = await messages(client, alice, room, **{"from": prev_batch, "limit": 50})
    assert status == 200, page
    assert not set(old) & {e["event_id"] for e in page["chunk"]}
    assert "m.room.create" in {e["type"] for e in page["chunk"]}

    # The room goes on: sending, paging both ways, /sync, /context, search.
    last = await send_text(client, bob, room, "zebra after")
    expected = [e["event_id"] for e in evs] + [last]
    assert await page_back(client, alice, room, 3) == expected
    forward: list[str] = []
    query: dict[str, Any] = {"dir": "f", "limit": 3}
    for _ in range(20):
        status, page = await messages(client, alice, room, **query)
        assert status == 200, page
        forward.extend(e["event_id"] for e in page["chunk"])
        if "end" not in page:
            break
        query["from"] = page["end"]
    assert forward == expected

    initial = await sync(client, bob)
    timeline = timeline_ids(joined(initial, room))
    assert timeline[-4:] == [*new, last] and not set(old) & set(timeline)
    incremental = await sync(client, bob, since=since)
    timeline = timeline_ids(joined(incremental, room))
    assert last in timeline and not set(old) & set(timeline)
    again = await send_text(client, alice, room, "zebra again")
    incremental = await sync(client, bob, since=initial["next_batch"])
    assert timeline_ids(joined(incremental, room)) == [again]

    status, ctx = await api(client, "GET", f"/rooms/{room}/context/{new[0]}", alice,
                            query={"limit": "10"})
    assert status == 200, ctx
    assert ctx["event"]["event_id"] == new[0]
    assert [e["event_id"] for e in ctx["events_after"]] == [new[1], new[2], last, again]
    assert not set(old) & {e["event_id"] for e in ctx["events_before"]}
    status, ctx = await api(client, "GET", f"/rooms/{room}/context/{old[0]}", alice)
    assert status == 404, ctx

    found = await search(client, alice, "zebra")
    assert not set(old) & set(found)
    assert set(found) >= {*new, last, again}
    assert await search(client, bob, "old") == []


async def test_purge_up_to_an_event(client: TestClient, hs: Services, alice: User) -> None:
    token = await admin_token(client)
    room = await create_room(client, alice, name="By event")
    sent = [await send_text(client, alice, room, f"m{i}") for i in range(8)]

    # Without delete_local_events nothing of a local user's goes.
    await purge(client, token, room, event_id=sent[6])
    assert bodies(await all_events(client, alice, room)) == [f"m{i}" for i in range(8)]

    # The path form: the event itself and what follows stay.
    await purge(client, token, room, event_id=sent[3], delete_local_events=True)
    assert bodies(await all_events(client, alice, room)) == ["m3", "m4", "m5", "m6", "m7"]
    stored = set(await stored_events(hs, room))
    assert set(sent[3:]) <= stored and not set(sent[:3]) & stored

    # The body form.
    await purge(client, token, room, purge_up_to_event_id=sent[5], delete_local_events=True)
    assert bodies(await all_events(client, alice, room)) == ["m5", "m6", "m7"]

    # Purging up to the newest event (or past everything): the newest stays.
    await purge(client, token, room, event_id=sent[7], delete_local_events=True)
    assert bodies(await all_events(client, alice, room)) == ["m7"]
    await purge(client, token, room, purge_up_to_ts=hs.clock.time_ms() + DAY,
                delete_local_events=True)
    assert bodies(await all_events(client, alice, room)) == ["m7"]
    assert await send_text(client, alice, room, "m8")
    assert bodies(await all_events(client, alice, room)) == ["m7", "m8"]

    # Retention is off by default: a room's policy purges nothing.
    assert hs.config.retention.enabled is False
    status, _ = await api(client, "PUT", f"/rooms/{room}/state/m.room.retention", alice,
                          {"max_lifetime": 1000}, spec=False)
    assert status == 200
    await send_text(client, alice, room, "m9")
    assert await hs.purge.run_retention(hs.clock.time_ms() + 10 * 365 * DAY) == 0
    assert bodies(await all_events(client, alice, room)) == ["m7", "m8", "m9"]


async def test_state_and_redactions_of_kept_events_stay(client: TestClient, hs: Services,
                                                       alice: User, bob: User,
                                                       carol: User) -> None:
    token = await admin_token(client)
    room = await create_room(client, alice, preset="public_chat", name="Kept name")
    await join(client, bob, room)
    for i in range(3):
        await send_text(client, bob, room, f"before topic {i}")
    status, _ = await put_state(client, alice, room, "m.room.topic", {"topic": "Kept topic"})
    assert status == 200
    levels = (await room_state(client, alice, room))[("m.room.power_levels", "")]["content"]
    levels["users"][bob.user_id] = 50
    status, _ = await put_state(client, alice, room, "m.room.power_levels", levels)
    assert status == 200
    for i in range(3):
        await send_text(client, alice, room, f"after topic {i}")
    last = await send_text(client, bob, room, "the last word")
    state_before = await state_ids(client, alice, room)

    # Everything before now: only the state and the newest event are left.
    await purge(client, token, room, purge_up_to_ts=hs.clock.time_ms() + 1000,
                delete_local_events=True)
    assert await state_ids(client, alice, room) == state_before
    state = await room_state(client, bob, room)
    assert state[("m.room.name", "")]["content"] == {"name": "Kept name"}
    assert state[("m.room.topic", "")]["content"] == {"topic": "Kept topic"}
    assert state[("m.room.power_levels", "")]["content"]["users"][bob.user_id] == 50
    assert {k for (t, k) in state if t == "m.room.member"} == {alice.user_id, bob.user_id}
    evs = await all_events(client, alice, room)
    assert bodies(evs) == ["the last word"] and evs[-1]["event_id"] == last
    async with hs.db.engine.read() as conn:
        rows = (await conn.execute(select(events.c.event_id, events.c.state_key)
                                   .where(events.c.room_id == room))).all()
    assert {r.event_id for r in rows if r.state_key is None} == {last}

    # New members, new state, new messages.
    await join(client, carol, room)
    status, _ = await put_state(client, bob, room, "m.room.topic", {"topic": "Newer topic"})
    assert status == 200
    hello = await send_text(client, carol, room, "hello, new here")
    assert hello in timeline_ids(joined(await sync(client, alice), room))
    state = await room_state(client, carol, room)
    assert state[("m.room.topic", "")]["content"] == {"topic": "Newer topic"}
    assert state[("m.room.member", carol.user_id)]["content"]["membership"] == "join"

    # Redactions: one whose target stays (state) stays; one whose target goes, goes.
    room = await create_room(client, alice, topic="secret topic")
    topic_id = (await room_state(client, alice, room))[("m.room.topic", "")]["event_id"]
    gone = await send_text(client, alice, room, "gone with its redaction")
    later_redacted = await send_text(client, alice, room, "redacted after the cut")
    topic_redaction = await redact_ok(client, alice, room, topic_id)
    gone_redaction = await redact_ok(client, alice, room, gone)
    cut = await tick(hs)
    late_redaction = await redact_ok(client, alice, room, later_redacted)
    last = await send_text(client, alice, room, "last")

    await purge(client, token, room, purge_up_to_ts=cut, delete_local_events=True)
    stored = set(await stored_events(hs, room))
    assert {topic_id, topic_redaction, late_redaction, last} <= stored
    assert not {gone, gone_redaction, later_redacted} & stored
    assert await redaction_rows(hs, [topic_redaction, topic_id]) == {topic_redaction, topic_id}
    assert await redaction_rows(hs, [gone, gone_redaction, later_redacted]) == set()
    status, topic = await api(client, "GET", f"/rooms/{room}/event/{topic_id}", alice)
    assert status == 200, topic
    assert topic["content"] == {}
    assert topic["unsigned"]["redacted_because"]["event_id"] == topic_redaction
    assert (await room_state(client, alice, room))[("m.room.topic", "")]["content"] == {}
    evs = await all_events(client, alice, room)
    assert "secret topic" not in str(evs)
    assert {topic_redaction, late_redaction, last} <= {e["event_id"] for e in evs}
    assert await send_text(client, alice, room, "still works")


async def test_space_is_reclaimed(client: TestClient, hs: Services, alice: User) -> None:
    token = await admin_token(client)
    room = await create_room(client, alice)
    filler = "lorem ipsum dolor sit amet " * 152  # about 4 KB
    sent = [e.event_id for e in await asyncio.gather(*(
        hs.rooms.send_message(room, NewEvent("m.room.message", alice.user_id,
                                             {"msgtype": "m.text", "body": f"{i} {filler}"}))
        for i in range(300)))]
    last = await send_text(client, alice, room, "the end")
    assert len(await stored_events(hs, room)) > 300

    if hs.db.engine.is_sqlite:
        path = Path(hs.config.database.url.split(":///", 1)[1])
        mode, pages_before, _ = sqlite_pages(path)
        assert mode == 2  # auto_vacuum=INCREMENTAL
        size_before = file_size(path)

    await purge(client, token, room, purge_up_to_ts=hs.clock.time_ms() + 1000,
                delete_local_events=True)
    stored = await stored_events(hs, room)
    assert last in stored and not set(sent) & set(stored)
    assert await edges_of(hs, sent) == set()
    assert bodies(await all_events(client, alice, room)) == ["the end"]
    assert await search(client, alice, "lorem") == []

    if hs.db.engine.is_sqlite:
        _, pages_after, free_after = sqlite_pages(path)
        assert free_after == 0
        assert pages_after < pages_before - 300, (pages_before, pages_after)
        assert file_size(path) < size_before - 300 * 4096, (size_before, file_size(path))
    assert await send_text(client, alice, room, "and on")


def sqlite_pages(path: Path) -> tuple[int, int, int]:
    """auto_vacuum mode, page_count and freelist_count, read by a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        return tuple(conn.execute(f"PRAGMA {p}").fetchone()[0]  # type: ignore[return-value]
                     for p in ("auto_vacuum", "page_count", "freelist_count"))
    finally:
        conn.close()


def file_size(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_admin_api_errors(client: TestClient, hs: Services, alice: User, bob: User,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    token = await admin_token(client)
    room = await create_room(client, alice)
    other = await create_room(client, bob)
    event_id = await send_text(client, alice, room, "hello")
    elsewhere = await send_text(client, bob, other, "elsewhere")
    path = f"{ADMIN1}/purge_history/{q(room)}"

    async def post(url: str, body: Any, tok: str | None = token) -> tuple[int, Any]:
        return await admin_call(client, "POST", url, tok, body)

    # Purging: unknown room or event, an event of another room, no point, bad bodies.
    assert_error(*await post(f"{ADMIN1}/purge_history/{q('!unknown:' + SERVER_NAME)}",
                             {"purge_up_to_ts": 1}), 404, "M_NOT_FOUND")
    assert_error(*await post(f"{path}/{q('$unknown')}", {}), 404, "M_NOT_FOUND")
    assert_error(*await post(path, {"purge_up_to_event_id": "$unknown"}), 404, "M_NOT_FOUND")
    assert_error(*await post(f"{path}/{q(elsewhere)}", {}), 400, "M_INVALID_PARAM")
    assert_error(*await post(path, {"purge_up_to_event_id": elsewhere}), 400,
                 "M_INVALID_PARAM")
    for body in ({}, None, {"delete_local_events": True}):
        status, res = await post(path, body)
        assert status == 400 and isinstance(res.get("errcode"), str), (body, res)
    assert_error(*await post(f"{ADMIN1}/purge_history/not-a-room", {"purge_up_to_ts": 1}),
                 400, "M_INVALID_PARAM")
    assert_error(*await post(path, {"purge_up_to_ts": 1}, alice.token), 403, "M_FORBIDDEN")
    assert_error(*await post(path, {"purge_up_to_ts": 1}, None), 401, "M_MISSING_TOKEN")
    assert_error(*await post(path, {"purge_up_to_ts": 1}, "not-a-token"), 401,
                 "M_UNKNOWN_TOKEN")
    for bad in ({"purge_up_to_ts": "1"}, {"purge_up_to_ts": 1.5}, {"purge_up_to_ts": -1},
                {"purge_up_to_ts": True}, {"purge_up_to_event_id": 5},
                {"purge_up_to_ts": 1, "delete_local_events": "yes"},
                {"purge_up_to_ts": 1, "delete_local_events": 1}):
        assert_error(*await post(path, bad), 400, "M_BAD_JSON")
    assert_error(*await post(path, [1]), 400, "M_BAD_JSON")
    # A time the database cannot hold is refused, not accepted to fail later.
    assert_error(*await post(path, {"purge_up_to_ts": 2**63}), 400, "M_BAD_JSON")
    resp = await client.post(path, data=b"{not json", headers=bearer(token))
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"

    # Purge status: unknown ID, not an admin.
    status_path = f"{ADMIN1}/purge_history_status"
    assert_error(*await admin_call(client, "GET", f"{status_path}/nope", token), 404,
                 "M_NOT_FOUND")
    purge_id = await start_purge(client, token, room, event_id=event_id)
    assert_error(*await admin_call(client, "GET", f"{status_path}/{purge_id}", alice.token),
                 403, "M_FORBIDDEN")
    assert_error(*await admin_call(client, "GET", f"{status_path}/{purge_id}", None),
                 401, "M_MISSING_TOKEN")
    assert await wait_purge(client, token, purge_id) == {"status": "complete"}
    # One purge of a room at a time (the first has not started running yet).
    point = await hs.purge.purge_point(room, event_id=event_id, ts=None)
    first = hs.purge.start_purge(room, point, delete_local_events=False)
    with pytest.raises(MatrixError) as excinfo:
        hs.purge.start_purge(room, point, delete_local_events=False)
    assert excinfo.value.status == 400
    assert await wait_purge(client, token, first) == {"status": "complete"}
    # The largest time a body may carry: everything not local (nothing here) goes.
    await purge(client, token, room, purge_up_to_ts=2**53 - 1)

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("disk on fire")

    # A purge that fails says so.
    monkeypatch.setattr(hs.purge, "purge_history", broken)
    failed = await start_purge(client, token, room, event_id=event_id)
    assert await wait_purge(client, token, failed) == {"status": "failed",
                                                       "error": "RuntimeError"}
    monkeypatch.undo()

    # Deleting rooms: not an admin, bad bodies, a new room for a user who is not local.
    path = f"{ADMIN2}/rooms/{q(room)}"
    assert_error(*await admin_call(client, "DELETE", path, alice.token, {}), 403,
                 "M_FORBIDDEN")
    assert_error(*await admin_call(client, "DELETE", path, None, {}), 401, "M_MISSING_TOKEN")
    assert_error(*await admin_call(client, "DELETE", f"{ADMIN1}/rooms/{q(room)}", alice.token,
                                   {}), 403, "M_FORBIDDEN")
    for bad in ({"block": "yes"}, {"purge": 0}, {"new_room_user_id": 5},
                {"room_name": ["x"]}, {"message": {}}):
        assert_error(*await admin_call(client, "DELETE", path, token, bad), 400, "M_BAD_JSON")
    for user_id in ("@nobody:" + SERVER_NAME, "@someone:elsewhere.example", "not-a-user"):
        status, res = await admin_call(client, "DELETE", path, token,
                                       {"new_room_user_id": user_id})
        assert status == 400, res
    # Delete status: no task for the room, unknown ID, not an admin.
    assert_error(*await admin_call(client, "GET", f"{path}/delete_status", token), 404,
                 "M_NOT_FOUND")
    assert_error(*await admin_call(client, "GET", f"{ADMIN2}/rooms/delete_status/nope", token),
                 404, "M_NOT_FOUND")
    assert_error(*await admin_call(client, "GET", f"{ADMIN2}/rooms/delete_status/nope",
                                   alice.token), 403, "M_FORBIDDEN")
    assert_error(*await admin_call(client, "GET", f"{path}/delete_status", alice.token), 403,
                 "M_FORBIDDEN")
    # Nothing was purged or deleted by any of it.
    assert bodies(await all_events(client, alice, room)) == ["hello"]
    assert bodies(await all_events(client, bob, other)) == ["elsewhere"]
    assert await send_text(client, alice, room, "still here")
    # One deletion of a room at a time.
    first_delete = await hs.purge.start_delete(DeleteRoomRequest(other, "@admin:" + SERVER_NAME))
    with pytest.raises(MatrixError) as excinfo:
        await hs.purge.start_delete(DeleteRoomRequest(other, "@admin:" + SERVER_NAME))
    assert excinfo.value.status == 400
    done = await wait_delete(client, token, first_delete.delete_id)
    assert done["status"] == "complete" and done["shutdown_room"]["kicked_users"] == [
        bob.user_id]

    # A v1 deletion that fails is marked failed, so a later one may start.
    monkeypatch.setattr(hs.roomserver, "remove_room", broken)
    status, res = await admin_call(client, "DELETE", f"{ADMIN1}/rooms/{q(room)}", token, {})
    assert status == 500, res
    monkeypatch.undo()
    status, res = await admin_call(client, "GET", f"{ADMIN2}/rooms/{q(room)}/delete_status",
                                   token)
    assert status == 200 and [t["status"] for t in res["results"]] == ["failed"], res
    assert res["results"][0]["error"] == "RuntimeError"
    status, res = await admin_call(client, "DELETE", f"{ADMIN2}/rooms/{q(room)}", token, {})
    assert status == 200, res
    done = await wait_delete(client, token, res["delete_id"])
    assert done["status"] == "complete", done
    assert await count_rows(hs, room) == dict.fromkeys(ROOM_TABLE_NAMES, 0)

    # Deleting a room the server does not know, with block: it is blocked, for good.
    unknown = "!never-seen:elsewhere.example"
    status, res = await admin_call(client, "DELETE", f"{ADMIN2}/rooms/{q(unknown)}", token,
                                   {"block": True})
    assert status == 200, res
    done = await wait_delete(client, token, res["delete_id"])
    assert done["status"] == "complete" and done["shutdown_room"]["kicked_users"] == []
    status, res = await admin_call(client, "GET", f"{ADMIN1}/rooms/{q(unknown)}/block", token)
    assert (status, res) == (200, {"block": True, "user_id": f"@admin:{SERVER_NAME}"})

    # The block API.
    path = f"{ADMIN1}/rooms/{q(room)}/block"
    assert_error(*await admin_call(client, "PUT", path, alice.token, {"block": True}), 403,
                 "M_FORBIDDEN")
    assert_error(*await admin_call(client, "GET", path, alice.token), 403, "M_FORBIDDEN")
    assert_error(*await admin_call(client, "GET", path, None), 401, "M_MISSING_TOKEN")
    assert_error(*await admin_call(client, "PUT", path, token, {}), 400, "M_MISSING_PARAM")
    assert_error(*await admin_call(client, "PUT", path, token, {"block": "true"}), 400,
                 "M_BAD_JSON")
    assert_error(*await admin_call(client, "GET", f"{ADMIN1}/rooms/not-a-room/block", token),
                 400, "M_INVALID_PARAM")
    assert await admin_call(client, "GET", path, token) == (200, {"block": False})


# -- retention ----------------------------------------------------------------------------------


class TestRetention:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return {"retention": {
            "enabled": True,
            "default_policy": {"min_lifetime": "1d", "max_lifetime": "30d"},
            "allowed_lifetime_min": "1h",
            "allowed_lifetime_max": 60 * DAY,
            "purge_interval": "12h",
        }}

    async def test_rooms_lose_messages_older_than_their_lifetime(
            self, client: TestClient, hs: Services, alice: User) -> None:
        config = hs.config.retention
        assert (config.enabled, config.default_min_lifetime_ms, config.default_max_lifetime_ms,
                config.allowed_lifetime_min_ms, config.allowed_lifetime_max_ms,
                config.purge_interval_ms) == (True, DAY, 30 * DAY, HOUR, 60 * DAY, 12 * HOUR)

        async def new_room(name: str, max_lifetime: Any) -> str:
            room = await create_room(client, alice, preset="public_chat", name=name)
            if max_lifetime is not None:
                status, res = await api(client, "PUT", f"/rooms/{room}/state/m.room.retention",
                                        alice, {"max_lifetime": max_lifetime}, spec=False)
                assert status == 200, res
            return room

        two_days = await new_room("two days", 2 * DAY)
        default = await new_room("default", None)
        too_short = await new_room("1s, raised to 1h", 1000)
        too_long = await new_room("a year, lowered to 60d", 365 * DAY)
        not_a_number = await new_room("bad policy: the default", "1d")
        all_rooms = [two_days, default, too_short, too_long, not_a_number]
        for room in all_rooms:
            await send_text(client, alice, room, "old 1")
            await send_text(client, alice, room, "old 2")
        t = await tick(hs)
        for room in all_rooms:
            await send_text(client, alice, room, "new 1")
            await send_text(client, alice, room, "new 2")

        async def room_bodies() -> dict[str, list[str]]:
            return {room: bodies(await all_events(client, alice, room)) for room in all_rooms}

        everything = ["old 1", "old 2", "new 1", "new 2"]
        recent = ["new 1", "new 2"]
        newest = ["new 2"]  # a room's newest event always stays
        assert await hs.purge.run_retention(t + 2000) == 0
        assert await room_bodies() == dict.fromkeys(all_rooms, everything)

        assert await hs.purge.run_retention(t + HOUR) == 2
        assert await room_bodies() == {two_days: everything, default: everything,
                                       too_short: recent, too_long: everything,
                                       not_a_number: everything}

        assert await hs.purge.run_retention(t + 2 * DAY) == 3
        assert await room_bodies() == {two_days: recent, default: everything,
                                       too_short: newest, too_long: everything,
                                       not_a_number: everything}

        assert await hs.purge.run_retention(t + 30 * DAY) == 5
        assert await room_bodies() == {two_days: newest, default: recent,
                                       too_short: newest, too_long: everything,
                                       not_a_number: recent}

        assert await hs.purge.run_retention(t + 60 * DAY) == 4
        assert await room_bodies() == {two_days: newest, default: newest,
                                       too_short: newest, too_long: recent,
                                       not_a_number: newest}

        # State stays, and every room goes on.
        for room in all_rooms:
            types = {e["type"] for e in await all_events(client, alice, room)}
            assert {"m.room.create", "m.room.member", "m.room.power_levels", "m.room.name",
                    "m.room.join_rules"} <= types
            assert await send_text(client, alice, room, "still here")
        assert await search(client, alice, "old") == []


@pytest.mark.parametrize(("section", "expected"), [
    ({}, (False, None, None, None, None, HOUR)),
    ({"enabled": True, "default_policy": {"min_lifetime": "1d", "max_lifetime": "1y"},
      "allowed_lifetime_min": "500ms", "allowed_lifetime_max": "12h", "purge_interval": "30m"},
     (True, DAY, 365 * DAY, 500, 12 * HOUR, 30 * 60_000)),
    ({"enabled": True, "default_policy": {"min_lifetime": 5, "max_lifetime": None},
      "allowed_lifetime_min": None, "allowed_lifetime_max": "2w", "purge_interval": 60_000},
     (True, 5, None, None, 14 * DAY, 60_000)),
])
def test_retention_config(tmp_path: Path, section: dict[str, Any],
                          expected: tuple[Any, ...]) -> None:
    config = make_config(tmp_path, retention=section).retention
    assert (config.enabled, config.default_min_lifetime_ms, config.default_max_lifetime_ms,
            config.allowed_lifetime_min_ms, config.allowed_lifetime_max_ms,
            config.purge_interval_ms) == expected


@pytest.mark.parametrize(("section", "key"), [
    ({"enabled": "yes"}, "retention.enabled"),
    ({"enabled": 1}, "retention.enabled"),
    ({"default_policy": {"max_lifetime": "soon"}}, "retention.default_policy.max_lifetime"),
    ({"default_policy": {"min_lifetime": -1}}, "retention.default_policy.min_lifetime"),
    ({"default_policy": {"min_lifetime": True}}, "retention.default_policy.min_lifetime"),
    ({"default_policy": "30d"}, "retention.default_policy"),
    ({"allowed_lifetime_min": "1 hour"}, "retention.allowed_lifetime_min"),
    ({"allowed_lifetime_max": [1]}, "retention.allowed_lifetime_max"),
    ({"purge_interval": "5x"}, "retention.purge_interval"),
    ("on", "retention"),
])
def test_bad_retention_config_is_reported(tmp_path: Path, section: Any, key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        make_config(tmp_path, retention=section)
    assert any(p.startswith(key + ":") for p in excinfo.value.problems), excinfo.value.problems


# -- deleting and blocking rooms ----------------------------------------------------------------


async def test_delete_room(client: TestClient, hs: Services, alice: User, bob: User,
                           carol: User) -> None:
    token = await admin_token(client)
    admin_id = f"@admin:{SERVER_NAME}"
    room = await create_room(client, alice, preset="public_chat", name="Doomed",
                             room_alias_name="doomed", visibility="public")
    alias = f"#doomed:{SERVER_NAME}"
    await join(client, bob, room)
    status, res = await api(client, "POST", f"/rooms/{room}/invite", alice,
                            {"user_id": carol.user_id})
    assert status == 200, res
    for i in range(3):
        await send_text(client, alice, room, f"doomed {i}")
    await redact_ok(client, alice, room, await send_text(client, bob, room, "redacted"))
    read = await send_text(client, alice, room, "read")
    status, res = await api(client, "POST", f"/rooms/{room}/receipt/m.read/{read}", bob, {})
    assert status == 200, res
    status, res = await api(client, "PUT", f"/user/{alice.user_id}/rooms/{room}/tags/u.work",
                            alice, {"order": 0.5})
    assert status == 200, res
    bystander = await create_room(client, bob)
    await send_text(client, bob, bystander, "unrelated")
    since = {u.user_id: (await sync(client, u))["next_batch"] for u in (alice, bob, carol)}
    stored = await stored_events(hs, room)
    assert await indexed(hs, stored.values())
    assert await redaction_rows(hs, stored)
    status, res = await api(client, "GET", f"/directory/room/{alias}", bob)
    assert status == 200 and res["room_id"] == room
    long_poll = asyncio.create_task(sync(client, bob, since=since[bob.user_id],
                                         timeout_ms=5000))
    await asyncio.sleep(0.05)

    status, res = await admin_call(client, "DELETE", f"{ADMIN2}/rooms/{q(room)}", token, {
        "block": True, "new_room_user_id": admin_id, "room_name": "Moved",
        "message": "This room was removed"})
    assert status == 200, res
    delete_id = res["delete_id"]
    done = await wait_delete(client, token, delete_id)
    assert done["status"] == "complete", done
    shutdown = done["shutdown_room"]
    new_room = shutdown["new_room_id"]
    assert isinstance(new_room, str) and new_room.startswith("!")
    assert shutdown == {"kicked_users": [alice.user_id, bob.user_id, carol.user_id],
                        "failed_to_kick_users": [], "local_aliases": [alias],
                        "new_room_id": new_room}
    status, res = await admin_call(client, "GET", f"{ADMIN2}/rooms/{q(room)}/delete_status",
                                   token)
    assert status == 200, res
    assert res == {"results": [{"delete_id": delete_id, "status": "complete",
                                "shutdown_room": shutdown}]}
    await long_poll  # woken by the deletion, and answered

    # Every row of the room is gone; other rooms are untouched.
    assert await count_rows(hs, room) == dict.fromkeys(ROOM_TABLE_NAMES, 0)
    assert await edges_of(hs, stored) == set()
    assert await indexed(hs, stored.values()) == set()
    assert await redaction_rows(hs, stored) == set()
    assert bodies(await all_events(client, bob, bystander)) == ["unrelated"]

    # The members are out, the room forgotten, and they are in the new room.
    for user in (alice, bob, carol):
        status, res = await api(client, "GET", "/joined_rooms", user)
        assert status == 200, res
        assert room not in res["joined_rooms"] and new_room in res["joined_rooms"]
        for body in (await sync(client, user),
                     await sync(client, user, since=since[user.user_id])):
            for section in ("join", "invite", "leave", "knock"):
                assert room not in body["rooms"].get(section, {}), (section, body)
            assert "This room was removed" in str(joined(body, new_room))
        status, res = await api(client, "GET", f"/rooms/{room}/messages", user,
                                query={"dir": "b"})
        assert status in (403, 404), res
        assert await search(client, user, "doomed") == []
    state = await room_state(client, alice, new_room)
    assert state[("m.room.name", "")]["content"] == {"name": "Moved"}
    assert state[("m.room.create", "")]["sender"] == admin_id

    # The alias is gone, the room is out of the directory, and it is blocked.
    assert_error(*await api(client, "GET", f"/directory/room/{alias}", bob), 404,
                 "M_NOT_FOUND")
    status, res = await api(client, "GET", "/publicRooms", bob)
    assert status == 200 and room not in str(res)
    assert_error(*await api(client, "POST", f"/rooms/{room}/join", bob, {}), 403,
                 "M_FORBIDDEN")
    assert_error(*await api(client, "POST", f"/join/{room}", carol, {}), 403, "M_FORBIDDEN")
    assert_error(*await api(client, "POST", f"/knock/{room}", carol, {}), 403, "M_FORBIDDEN")
    assert_error(*await api(client, "POST", f"/rooms/{room}/invite", alice,
                            {"user_id": carol.user_id}), 403, "M_FORBIDDEN")
    assert await admin_call(client, "GET", f"{ADMIN1}/rooms/{q(room)}/block", token) == (
        200, {"block": True, "user_id": admin_id})
    # The alias can be taken again.
    assert await create_room(client, bob, room_alias_name="doomed")


async def test_delete_room_v1_without_purge_and_blocking(
        client: TestClient, hs: Services, alice: User, bob: User, carol: User) -> None:
    token = await admin_token(client)
    room = await create_room(client, alice, preset="public_chat", room_alias_name="v1")
    await join(client, bob, room)
    await join(client, carol, room)
    await send_text(client, bob, room, "v1")
    status, res = await api(client, "POST", f"/rooms/{room}/leave", carol, {})
    assert status == 200, res
    with_leave = {"room": {"include_leave": True}}
    assert room in (await sync(client, carol, sync_filter=with_leave))["rooms"]["leave"]
    # A new room for a user who is not local (or does not exist) is refused, as in v2.
    for user_id in ("@nobody:" + SERVER_NAME, "@someone:elsewhere.example"):
        status, res = await admin_call(client, "DELETE", f"{ADMIN1}/rooms/{q(room)}", token,
                                       {"new_room_user_id": user_id})
        assert_error(status, res, 400, "M_INVALID_PARAM")
    status, res = await api(client, "GET", "/joined_rooms", bob)
    assert status == 200 and res["joined_rooms"] == [room]

    # v1 answers once the room is gone.
    status, res = await admin_call(client, "DELETE", f"{ADMIN1}/rooms/{q(room)}", token, {})
    assert status == 200, res
    assert res == {"kicked_users": [alice.user_id, bob.user_id], "failed_to_kick_users": [],
                   "local_aliases": [f"#v1:{SERVER_NAME}"], "new_room_id": None}
    assert await count_rows(hs, room) == dict.fromkeys(ROOM_TABLE_NAMES, 0)
    for user in (alice, bob):
        status, res = await api(client, "GET", "/joined_rooms", user)
        assert status == 200 and res["joined_rooms"] == []
    # Who had left before is rid of the room too (no leave entry it could never forget).
    for user in (alice, bob, carol):
        body = await sync(client, user, sync_filter=with_leave)
        assert room not in str(body["rooms"]), body["rooms"]
    # Not blocked: joining fails only because the room is unknown now.
    status, res = await api(client, "POST", f"/rooms/{room}/join", bob, {})
    assert status == 404, res
    assert await admin_call(client, "GET", f"{ADMIN1}/rooms/{q(room)}/block", token) == (
        200, {"block": False})

    # purge: false removes everyone but keeps the room and its history.
    kept = await create_room(client, alice, preset="public_chat", room_alias_name="kept",
                             visibility="public")
    await join(client, bob, kept)
    message = await send_text(client, bob, kept, "kept")
    status, res = await admin_call(client, "DELETE", f"{ADMIN2}/rooms/{q(kept)}", token,
                                   {"purge": False})
    assert status == 200, res
    done = await wait_delete(client, token, res["delete_id"])
    assert done["status"] == "complete", done
    assert done["shutdown_room"]["kicked_users"] == [alice.user_id, bob.user_id]
    assert message in await stored_events(hs, kept)
    counts = await count_rows(hs, kept)
    assert counts["rooms"] == 1 and counts["room_aliases"] == 0
    for user in (alice, bob):
        status, res = await api(client, "GET", "/joined_rooms", user)
        assert status == 200 and kept not in res["joined_rooms"]
        body = await sync(client, user)
        assert kept not in body["rooms"].get("join", {})
        assert kept not in body["rooms"].get("leave", {})
    assert_error(*await api(client, "GET", f"/directory/room/#kept:{SERVER_NAME}", bob), 404,
                 "M_NOT_FOUND")
    status, res = await api(client, "GET", "/publicRooms", bob)
    assert status == 200 and kept not in str(res)
    await join(client, bob, kept)  # not blocked
    assert bodies(await all_events(client, bob, kept)) == ["kept"]

    # Blocking and unblocking a room that goes on.
    room = await create_room(client, alice, preset="public_chat", room_alias_name="blocked")
    await send_text(client, alice, room, "before the block")
    path = f"{ADMIN1}/rooms/{q(room)}/block"
    assert await admin_call(client, "GET", path, token) == (200, {"block": False})
    assert await admin_call(client, "PUT", path, token, {"block": True}) == (
        200, {"block": True})
    assert await admin_call(client, "GET", path, token) == (
        200, {"block": True, "user_id": f"@admin:{SERVER_NAME}"})
    assert_error(*await api(client, "POST", f"/rooms/{room}/join", bob, {}), 403,
                 "M_FORBIDDEN")
    assert_error(*await api(client, "POST", f"/join/#blocked:{SERVER_NAME}", bob, {}), 403,
                 "M_FORBIDDEN")
    assert_error(*await api(client, "POST", f"/knock/{room}", bob, {}), 403, "M_FORBIDDEN")
    assert_error(*await api(client, "POST", f"/rooms/{room}/invite", alice,
                            {"user_id": carol.user_id}), 403, "M_FORBIDDEN")
    # Blocking removes no one and nothing.
    assert bodies(await all_events(client, alice, room)) == ["before the block"]
    status, res = await api(client, "GET", "/joined_rooms", alice)
    assert status == 200 and room in res["joined_rooms"]

    assert await admin_call(client, "PUT", path, token, {"block": False}) == (
        200, {"block": False})
    assert await admin_call(client, "GET", path, token) == (200, {"block": False})
    await join(client, bob, room)
    status, res = await api(client, "POST", f"/rooms/{room}/invite", alice,
                            {"user_id": carol.user_id})
    assert status == 200, res


@pytest.mark.parametrize(("retention", "key"), [
    ({"allowed_lifetime_min": "2d", "allowed_lifetime_max": "1d"},
     "retention.allowed_lifetime_min"),
    ({"default_policy": {"min_lifetime": "2d", "max_lifetime": "1d"}},
     "retention.default_policy.min_lifetime"),
    ({"purge_interval": 0}, "retention.purge_interval"),
    ({"purge_interval": None}, "retention.purge_interval"),
])
def test_inconsistent_retention_config_is_reported(tmp_path: Path, retention: dict[str, Any],
                                                   key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(tmp_path, retention=retention)
