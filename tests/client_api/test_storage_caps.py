"""What a user can store, over real HTTP, on SQLite and on PostgreSQL: account data, room
account data, tags and filters are capped (``homeserver/services/account_data.py``,
``homeserver/services/filtering.py``, ``homeserver/services/filters.py``). Over a cap is
``413 M_TOO_LARGE`` and nothing is stored; what is at a cap is stored and reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.services.account_data import (
    MAX_CONTENT_BYTES,
    MAX_TAG_CONTENT_BYTES,
    MAX_TAGS_PER_ROOM,
    MAX_TOTAL_BYTES,
)
from homeserver.services.filtering import MAX_FILTER_BYTES, MAX_FILTER_LIST
from storage import Database
from tests.client_api.test_sync import sync
from tests.helpers.harness import harness_services
from tests.helpers.room_api import User, api, assert_error, create_room

services = harness_services



def sized(n: int, **extra: Any) -> dict[str, Any]:
    """An object that is ``n`` bytes as compact JSON."""
    body: dict[str, Any] = {**extra, "pad": ""}
    body["pad"] = "x" * (n - len(json.dumps(body, separators=(",", ":"))))
    assert len(json.dumps(body, separators=(",", ":"))) == n
    return body


async def test_account_data_at_the_cap_is_stored_and_over_it_refused(
        client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    for path in (f"/user/{alice.user_id}/account_data/org.example.big",
                 f"/user/{alice.user_id}/rooms/{room_id}/account_data/org.example.big"):
        at_cap = sized(MAX_CONTENT_BYTES, v=1)
        status, body = await api(client, "PUT", path, alice, at_cap)
        assert status == 200, body
        status, body = await api(client, "PUT", path, alice, sized(MAX_CONTENT_BYTES + 1, v=2))
        assert_error(status, body, 413, "M_TOO_LARGE")
        status, body = await api(client, "GET", path, alice)
        assert (status, body) == (200, at_cap)
        # A new type over the cap is not stored at all.
        status, body = await api(client, "PUT", path + ".new", alice,
                                 sized(10 * MAX_CONTENT_BYTES))
        assert_error(status, body, 413, "M_TOO_LARGE")
        status, body = await api(client, "GET", path + ".new", alice)
        assert_error(status, body, 404, "M_NOT_FOUND")
    # Multi-byte characters count as their UTF-8 bytes.
    path = f"/user/{alice.user_id}/account_data/org.example.wide"
    status, body = await api(client, "PUT", path, alice, {"v": "é" * (MAX_CONTENT_BYTES // 2)})
    assert_error(status, body, 413, "M_TOO_LARGE")


async def test_tags_are_capped_in_size_and_number(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    tags = f"/user/{alice.user_id}/rooms/{room_id}/tags"
    status, body = await api(client, "PUT", f"{tags}/u.big", alice,
                             sized(MAX_TAG_CONTENT_BYTES + 1, order=0.5))
    assert_error(status, body, 413, "M_TOO_LARGE")
    at_cap = sized(MAX_TAG_CONTENT_BYTES, order=0.5)
    status, body = await api(client, "PUT", f"{tags}/u.big", alice, at_cap)
    assert status == 200, body
    for i in range(MAX_TAGS_PER_ROOM - 1):
        status, body = await api(client, "PUT", f"{tags}/u.t{i}", alice, {"order": i / 1000})
        assert status == 200, body
    status, body = await api(client, "PUT", f"{tags}/u.one-too-many", alice, {"order": 1})
    assert_error(status, body, 413, "M_TOO_LARGE")
    # Replacing one of them, or removing one, is fine at the cap.
    status, body = await api(client, "PUT", f"{tags}/u.t0", alice, {"order": 0.25})
    assert status == 200, body
    status, body = await api(client, "GET", tags, alice)
    assert status == 200, body
    assert len(body["tags"]) == MAX_TAGS_PER_ROOM and "u.one-too-many" not in body["tags"]
    assert body["tags"]["u.big"] == at_cap and body["tags"]["u.t0"] == {"order": 0.25}
    status, body = await api(client, "DELETE", f"{tags}/u.t1", alice)
    assert status == 200, body
    status, body = await api(client, "PUT", f"{tags}/u.one-more", alice, {"order": 1})
    assert status == 200, body


async def test_a_users_account_data_is_capped_in_all(client: TestClient, alice: User) -> None:
    """Many entries each within the cap: past MAX_TOTAL_BYTES the next is refused, what was
    stored reads back and comes in the initial sync, and shrinking an entry is allowed."""
    entry = MAX_CONTENT_BYTES - 200
    stored = 0
    for i in range(MAX_TOTAL_BYTES // entry + 1):
        path = f"/user/{alice.user_id}/account_data/org.example.e{i}"
        status, body = await api(client, "PUT", path, alice, sized(entry, i=i))
        if status != 200:
            assert_error(status, body, 413, "M_TOO_LARGE")
            break
        stored += 1
    else:
        pytest.fail("the total was never capped")
    assert stored == MAX_TOTAL_BYTES // (entry + 100)
    status, body = await api(client, "GET", f"/user/{alice.user_id}/account_data/"
                             f"org.example.e{stored}", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    # Room account data and tags count too.
    room_id = await create_room(client, alice)
    status, body = await api(client, "PUT", f"/user/{alice.user_id}/rooms/{room_id}/"
                             "account_data/org.example.r", alice, sized(entry))
    assert_error(status, body, 413, "M_TOO_LARGE")
    # Shrinking one makes room for a small one.
    status, body = await api(client, "PUT", f"/user/{alice.user_id}/account_data/"
                             "org.example.e0", alice, {"small": True})
    assert status == 200, body
    status, body = await api(client, "PUT", f"/user/{alice.user_id}/rooms/{room_id}/tags/"
                             "u.work", alice, {"order": 0.5})
    assert status == 200, body
    response = await sync(client, alice)
    types = {e["type"]: e["content"] for e in response["account_data"]["events"]}
    assert types["org.example.e0"] == {"small": True}
    assert types[f"org.example.e{stored - 1}"]["i"] == stored - 1
    assert f"org.example.e{stored}" not in types
    assert len(json.dumps(response["account_data"])) < MAX_TOTAL_BYTES + 64 * 1024


async def test_filters_at_the_cap_are_stored_and_over_it_refused(
        client: TestClient, alice: User) -> None:
    upload = f"/user/{alice.user_id}/filter"
    longest = {"room": {"timeline": {"types": [f"t{i}" for i in range(MAX_FILTER_LIST)]}}}
    status, body = await api(client, "POST", upload, alice, longest)
    assert status == 200, body
    status, body = await api(client, "GET", f"{upload}/{body['filter_id']}", alice)
    assert (status, body) == (200, longest)
    too_long = {"event_fields": [f"f{i}" for i in range(MAX_FILTER_LIST + 1)]}
    status, body = await api(client, "POST", upload, alice, too_long)
    assert_error(status, body, 413, "M_TOO_LARGE")
    # The whole filter: unknown keys count too (they are stored and given back).
    at_cap = sized(MAX_FILTER_BYTES, room={"timeline": {"limit": 5}})
    status, body = await api(client, "POST", upload, alice, at_cap)
    assert status == 200, body
    at_cap_id = body["filter_id"]
    status, body = await api(client, "POST", upload, alice,
                             sized(MAX_FILTER_BYTES + 1, room={"timeline": {"limit": 6}}))
    assert_error(status, body, 413, "M_TOO_LARGE")
    status, body = await api(client, "GET", f"{upload}/{int(at_cap_id) + 1}", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await api(client, "GET", f"{upload}/{at_cap_id}", alice)
    assert (status, body) == (200, at_cap)
    # And it works.
    await sync(client, alice, sync_filter=at_cap_id)


async def test_inline_filters_with_too_long_lists_are_refused(client: TestClient,
                                                              alice: User) -> None:
    room_id = await create_room(client, alice)
    too_long = json.dumps({"types": ["a"] * (MAX_FILTER_LIST + 1)}, separators=(",", ":"))
    status, body = await api(client, "GET", f"/rooms/{room_id}/messages", alice,
                             query={"dir": "b", "filter": too_long})
    assert_error(status, body, 413, "M_TOO_LARGE")
    # (Lists of one-letter strings: a longer URL is refused before the server sees it.)
    status, body = await api(client, "GET", "/sync", alice, query={"filter": json.dumps(
        {"room": {"timeline": {"not_senders": ["a"] * (MAX_FILTER_LIST + 1)}}},
        separators=(",", ":"))})
    assert_error(status, body, 413, "M_TOO_LARGE")


async def test_a_users_oldest_filters_are_forgotten(database: Database) -> None:
    store = database.filters
    ids = [await store.add("@a:x", {"n": i}, keep=3) for i in range(5)]
    assert ids == [0, 1, 2, 3, 4]
    assert [await store.get("@a:x", i) for i in ids] == [None, None, {"n": 2}, {"n": 3},
                                                          {"n": 4}]
    # The same filter again is the one already there, and forgets nothing.
    assert await store.add("@a:x", {"n": 3}, keep=3) == 3
    assert await store.get("@a:x", 2) == {"n": 2}
    # By size: each of these is 8 bytes stored ({"n":NN}, compact).
    ids = [await store.add("@b:x", {"n": 10 + i}, keep_bytes=20) for i in range(4)]
    assert [await store.get("@b:x", i) is not None for i in ids] == [False, False, True, True]
    # The newest is kept whatever its size, and other users' filters are untouched.
    big = await store.add("@b:x", {"n": "x" * 100}, keep_bytes=20)
    assert await store.get("@b:x", big) is not None
    assert await store.get("@b:x", ids[-1]) is None
    assert await store.get("@a:x", 4) == {"n": 4}
