"""Synapse's admin API for rooms (list with search, ordering and paging; details, members,
state, messages, media), through HTTP, on SQLite and PostgreSQL, with the shapes Synapse's
documentation gives."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.client_api.test_admin import admin_token
from tests.client_api.test_admin_users import call
from tests.helpers.harness import harness_services
from tests.helpers.room_api import User, api, create_room, join, put_state, send_text, txn

services = harness_services

V1 = "/_synapse/admin/v1"

ROOM_KEYS = {"room_id", "name", "canonical_alias", "joined_members", "joined_local_members",
             "version", "creator", "encryption", "federatable", "public", "join_rules",
             "guest_access", "history_visibility", "state_events", "room_type"}


@pytest.fixture
async def admin(client: TestClient) -> str:
    return await admin_token(client)


@pytest.fixture
async def rooms(client: TestClient, alice: User, bob: User) -> dict[str, str]:
    """Three rooms: "Alpha" (public, alias, two members), "beta" (encrypted, private) and
    one without a name."""
    alpha = await create_room(client, alice, name="Alpha", room_alias_name="alpha",
                              preset="public_chat", visibility="public")
    await join(client, bob, alpha)
    beta = await create_room(client, bob, name="beta", preset="private_chat",
                             initial_state=[{"type": "m.room.encryption", "state_key": "",
                                             "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
                             creation_content={"m.federate": False})
    unnamed = await create_room(client, alice)
    return {"alpha": alpha, "beta": beta, "unnamed": unnamed}


@pytest.mark.parametrize("path", ["/rooms", "/rooms/!r:test.local",
                                  "/rooms/!r:test.local/members", "/rooms/!r:test.local/state",
                                  "/rooms/!r:test.local/messages", "/room/!r:test.local/media"])
async def test_admin_only(client: TestClient, alice: User, path: str) -> None:
    status, body = await call(client, "GET", V1 + path, alice.token)
    assert (status, body["errcode"], body["error"]) == (403, "M_FORBIDDEN",
                                                        "You are not a server admin")
    status, body = await call(client, "GET", V1 + path, None)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_list_rooms(client: TestClient, admin: str, alice: User, bob: User,
                          rooms: dict[str, str]) -> None:
    status, page = await call(client, "GET", f"{V1}/rooms", admin)
    assert status == 200, page
    assert (page["offset"], page["total_rooms"]) == (0, 3)
    assert "next_batch" not in page and "prev_batch" not in page
    # By name by default; rooms without one last.
    assert [r["room_id"] for r in page["rooms"]] == [rooms["alpha"], rooms["beta"],
                                                     rooms["unnamed"]]
    alpha, beta, unnamed = page["rooms"]
    assert set(alpha) == ROOM_KEYS
    assert {k: alpha[k] for k in ("name", "canonical_alias", "joined_members",
                                  "joined_local_members", "creator", "encryption",
                                  "federatable", "public", "join_rules", "history_visibility",
                                  "room_type")} == {
        "name": "Alpha", "canonical_alias": "#alpha:test.local", "joined_members": 2,
        "joined_local_members": 2, "creator": alice.user_id, "encryption": None,
        "federatable": True, "public": True, "join_rules": "public",
        "history_visibility": "shared", "room_type": None}
    assert alpha["version"] and alpha["state_events"] >= 6
    assert (beta["encryption"], beta["federatable"], beta["public"], beta["join_rules"],
            beta["joined_members"]) == ("m.megolm.v1.aes-sha2", False, False, "invite", 1)
    assert unnamed["name"] is None and unnamed["canonical_alias"] is None

    # Paging: next_batch and prev_batch are offsets.
    status, page = await call(client, "GET", f"{V1}/rooms", admin, limit="1")
    assert (page["next_batch"], len(page["rooms"])) == (1, 1)
    status, page = await call(client, "GET", f"{V1}/rooms", admin, limit="1",
                              **{"from": "2"})
    assert (page["offset"], page["prev_batch"], page["rooms"][0]["room_id"]) == (
        2, 1, rooms["unnamed"])
    assert "next_batch" not in page
    status, page = await call(client, "GET", f"{V1}/rooms", admin, limit="0")
    assert (page["rooms"], page["total_rooms"]) == ([], 3)

    # Orderings.
    status, page = await call(client, "GET", f"{V1}/rooms", admin, order_by="joined_members")
    assert page["rooms"][0]["room_id"] == rooms["alpha"]
    status, page = await call(client, "GET", f"{V1}/rooms", admin, order_by="name", dir="b")
    assert [r["room_id"] for r in page["rooms"]][:2] == [rooms["beta"], rooms["alpha"]]
    status, page = await call(client, "GET", f"{V1}/rooms", admin, order_by="encryption")
    assert page["rooms"][0]["room_id"] == rooms["beta"]

    # Search: name, alias or room ID, any case. Whole names: room IDs are random letters, and
    # a three-letter term once turned up in another room's ID (a failed CI run).
    for term, expected in (("ALPHA", [rooms["alpha"]]), ("bEtA", [rooms["beta"]]),
                           (rooms["unnamed"][1:8], [rooms["unnamed"]])):
        status, page = await call(client, "GET", f"{V1}/rooms", admin, search_term=term)
        assert [r["room_id"] for r in page["rooms"]] == expected, term
        assert page["total_rooms"] == len(expected)
    status, page = await call(client, "GET", f"{V1}/rooms", admin, public_rooms="true")
    assert [r["room_id"] for r in page["rooms"]] == [rooms["alpha"]]


@pytest.mark.parametrize(("query", "error"), [
    ({"search_term": ""}, "search_term cannot be an empty string"),
    ({"order_by": "colour"}, "Query parameter 'order_by' must be one of"),
    ({"dir": "x"}, "Query parameter 'dir' must be one of ['b', 'f']"),
    ({"from": "-3"}, "Query parameter from must be a positive integer."),
    ({"limit": "1e3"}, "Query parameter limit must be an integer"),
])
async def test_list_rooms_bad_query(client: TestClient, admin: str, query: dict[str, str],
                                    error: str) -> None:
    status, body = await call(client, "GET", f"{V1}/rooms", admin, **query)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), body
    assert body["error"].startswith(error)


async def test_room_details_members_state(client: TestClient, admin: str, alice: User,
                                          bob: User, rooms: dict[str, str]) -> None:
    alpha = rooms["alpha"]
    status, body = await put_state(client, alice, alpha, "m.room.topic", {"topic": "Greek"})
    assert status == 200, body
    status, room = await call(client, "GET", f"{V1}/rooms/{alpha}", admin)
    assert status == 200, room
    assert ROOM_KEYS <= set(room)
    assert (room["name"], room["topic"], room["avatar"], room["joined_members"],
            room["joined_local_devices"], room["forgotten"]) == ("Alpha", "Greek", None, 2,
                                                                 2, False)
    status, body = await call(client, "GET", f"{V1}/rooms/!nope:test.local", admin)
    assert (status, body) == (404, {"errcode": "M_NOT_FOUND", "error": "Room not found"})
    status, body = await call(client, "GET", f"{V1}/rooms/not-a-room", admin)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

    status, members = await call(client, "GET", f"{V1}/rooms/{alpha}/members", admin)
    assert members == {"members": sorted([alice.user_id, bob.user_id]), "total": 2}
    status, body = await call(client, "GET", f"{V1}/rooms/!nope:test.local/members", admin)
    assert status == 404

    # The admin is in none of these rooms and still reads their state.
    status, state = await call(client, "GET", f"{V1}/rooms/{rooms['beta']}/state", admin)
    assert status == 200, state
    types = {(e["type"], e["state_key"]) for e in state["state"]}
    assert {("m.room.create", ""), ("m.room.encryption", ""), ("m.room.name", ""),
            ("m.room.member", bob.user_id)} <= types
    assert all({"event_id", "sender", "content", "origin_server_ts"} <= set(e)
               for e in state["state"])


async def test_room_messages_as_admin(client: TestClient, admin: str, alice: User,
                                      bob: User) -> None:
    # A private room with shared history the admin never joined, where bob came late.
    room_id = await create_room(client, alice, preset="private_chat",
                                initial_state=[{"type": "m.room.history_visibility",
                                                "state_key": "",
                                                "content": {"history_visibility": "joined"}}])
    early = [await send_text(client, alice, room_id, f"early {i}") for i in range(3)]
    status, body = await api(client, "POST", f"/rooms/{room_id}/invite", alice,
                             {"user_id": bob.user_id})
    assert status == 200, body
    await join(client, bob, room_id)
    late = await send_text(client, bob, room_id, "late")

    status, page = await call(client, "GET", f"{V1}/rooms/{room_id}/messages", admin,
                              limit="3")
    assert status == 200, page
    assert page["chunk"][0]["event_id"] == late and "start" in page and "end" in page
    seen = [e["event_id"] for e in page["chunk"]]
    while "end" in page:
        status, page = await call(client, "GET", f"{V1}/rooms/{room_id}/messages", admin,
                                  limit="3", **{"from": page["end"]})
        assert status == 200, page
        seen += [e["event_id"] for e in page["chunk"]]
    # Every event, including the history bob may not see.
    assert set(early) <= set(seen)
    status, page = await call(client, "GET", f"{V1}/rooms/{room_id}/messages", admin,
                              dir="f", limit="1")
    assert page["chunk"][0]["type"] == "m.room.create"
    filtered = '{"types": ["m.room.message"]}'
    status, page = await call(client, "GET", f"{V1}/rooms/{room_id}/messages", admin,
                              dir="f", filter=filtered)
    assert [e["event_id"] for e in page["chunk"]] == [*early, late]

    status, body = await call(client, "GET", f"{V1}/rooms/!nope:test.local/messages", admin)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(client, "GET", f"{V1}/rooms/{room_id}/messages", admin,
                              dir="sideways")
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await call(client, "GET", f"{V1}/rooms/{room_id}/messages", admin,
                              **{"from": "garbage"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_room_media(client: TestClient, admin: str, alice: User) -> None:
    room_id = await create_room(client, alice)
    content: list[dict[str, Any]] = [
        {"msgtype": "m.image", "body": "a.png", "url": "mxc://test.local/local1",
         "info": {"thumbnail_url": "mxc://test.local/thumb1"}},
        {"msgtype": "m.file", "body": "b.txt", "url": "mxc://other.example/remote1"},
        {"msgtype": "m.text", "body": "no media"},
        {"msgtype": "m.image", "body": "again.png", "url": "mxc://test.local/local1"},
    ]
    for c in content:
        status, body = await api(client, "PUT",
                                 f"/rooms/{room_id}/send/m.room.message/{txn()}", alice, c)
        assert status == 200, body
    status, media = await call(client, "GET", f"{V1}/room/{room_id}/media", admin)
    assert status == 200, media
    assert media == {"local": ["mxc://test.local/local1", "mxc://test.local/thumb1"],
                     "remote": ["mxc://other.example/remote1"]}
    status, body = await call(client, "GET", f"{V1}/room/!nope:test.local/media", admin)
    assert status == 404
