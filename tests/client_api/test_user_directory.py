"""The user directory (POST /user_directory/search) over real HTTP, on SQLite and PostgreSQL:
who can be found (room mates, members of public rooms, everyone with ``search_all_users``,
never deactivated users), how words match (prefixes of display name and user ID words, case
and diacritics folded, other scripts), ranking, ``limit`` and ``limited``, the directory kept
current (renames, joins, leaves, a room made private, deactivation) and rebuilt from what is
stored (the migration), and the errors."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import delete, select, text, update

from homeserver.services.container import Services
from storage import migrations, schema
from tests.client_api import test_sync_fanout
from tests.conftest import SERVER_NAME, bearer
from tests.helpers.room_api import (
    V3,
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
    put_state,
)

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL
PATH = "/user_directory/search"
# The schema version just before the directory's tables.
before_directory = next(i for i, m in enumerate(migrations.MIGRATIONS)
                        if m.__name__.endswith("_directory")) + 1


async def search_raw(client: TestClient, user: User, body: Any) -> tuple[int, Any]:
    return await api(client, "POST", PATH, user, body)


async def search(client: TestClient, user: User, term: str, **extra: Any) -> dict[str, Any]:
    status, body = await search_raw(client, user, {"search_term": term, **extra})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def found(client: TestClient, user: User, term: str, **extra: Any) -> list[str]:
    return [r["user_id"] for r in (await search(client, user, term, **extra))["results"]]


async def set_name(client: TestClient, user: User, name: str) -> None:
    status, body = await api(client, "PUT", f"/profile/{user.user_id}/displayname", user,
                             {"displayname": name})
    assert status == 200, body


async def leave(client: TestClient, user: User, room_id: str) -> None:
    status, body = await api(client, "POST", f"/rooms/{room_id}/leave", user, {})
    assert status == 200, body


def uid(name: str) -> str:
    return f"@{name}:{SERVER_NAME}"


# -- who can be found ---------------------------------------------------------------------------

async def test_room_mates_and_public_room_members_are_found(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bobby")
    carol = await new_user(client, "bobcat")
    await new_user(client, "bobsleigh")  # in no room: not found
    private = await create_room(client, alice, preset="private_chat", invite=[bob.user_id])
    await join(client, bob, private)
    await create_room(client, carol, preset="public_chat")
    assert sorted(await found(client, alice, "bob")) == [uid("bobby"), uid("bobcat")]
    # Bobcat (only in a public room) finds bobby? No: they share nothing and bobby's room is
    # private; bobcat finds themselves through their public room, as Synapse does.
    assert await found(client, carol, "bob") == [uid("bobcat")]


async def test_entries_carry_profile(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    status, body = await api(client, "PUT", f"/profile/{bob.user_id}/avatar_url", bob,
                             {"avatar_url": "mxc://example.org/abc"})
    assert status == 200, body
    await set_name(client, bob, "Robert Tables")
    await create_room(client, bob, preset="public_chat")
    body = await search(client, alice, "robert")
    assert body == {"results": [{"user_id": bob.user_id, "display_name": "Robert Tables",
                                 "avatar_url": "mxc://example.org/abc"}],
                    "limited": False}


@pytest.mark.parametrize("config_overrides", [{"user_directory": {"search_all_users": True}}])
async def test_search_all_users_finds_every_local_user(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    await new_user(client, "bob")
    await new_user(client, "bobby")
    assert sorted(await found(client, alice, "bob")) == [uid("bob"), uid("bobby")]
    # Never the searcher.
    assert await found(client, alice, "alice") == []


async def test_deactivated_users_are_never_found(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    await create_room(client, bob, preset="public_chat")
    assert await found(client, alice, "bob") == [bob.user_id]
    resp = await client.post(f"{V3}/account/deactivate", headers=bearer(bob.token), json={
        "auth": {"type": "m.login.password", "password": "correct horse",
                 "identifier": {"type": "m.id.user", "user": "bob"}}})
    assert resp.status == 200, await resp.text()
    assert await found(client, alice, "bob") == []


# -- matching and ranking ------------------------------------------------------------------------

async def test_words_match_as_prefixes_case_and_diacritics_folded(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    zoe = await new_user(client, "zoe_w")
    li = await new_user(client, "li")
    room = await create_room(client, alice, preset="public_chat")
    for user, name in ((zoe, "Zoë Wäller-Smith"), (li, "李小龙 Ли")):
        await set_name(client, user, name)
        await join(client, user, room)
    for term in ("zoe", "ZOË", "wall", "smi", "zoe smith", "smith zo", "zoe_w", "@zoe_w",
                 f"@zoe_w:{SERVER_NAME}", "ZOE_"):
        assert await found(client, alice, term) == [zoe.user_id], term
    for term in ("李", "小龙", "ли", "ЛИ"):
        assert await found(client, alice, term) == [li.user_id], term
    for term in ("zoey", "smithy", "zoe bob", "oe", "", "   ", "!!!"):
        assert await found(client, alice, term) == [], term


async def test_ranking_room_mates_then_whole_words(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    users = {name: await new_user(client, name) for name in ("sam", "samantha", "samuel",
                                                             "sami")}
    public = await create_room(client, users["samantha"], preset="public_chat")
    for name in ("sam", "sami"):
        await join(client, users[name], public)
    status, body = await api(client, "PUT", f"/profile/{uid('sami')}/displayname",
                             users["sami"], {"displayname": None})
    assert status == 200, body
    status, body = await api(client, "PUT", f"/profile/{uid('samuel')}/avatar_url",
                             users["samuel"], {"avatar_url": "mxc://test.local/x"})
    assert status == 200, body
    private = await create_room(client, alice, preset="private_chat",
                                invite=[users["samuel"].user_id])
    await join(client, users["samuel"], private)
    # As Synapse: sharing a room counts 4 times, a display name and an avatar 1.2 times
    # each, a whole word 3 more than a prefix: Samuel (4 * 1.2 * 1.2 * 1), then "sam" whole
    # (1.2 * 4), then the prefixes with a display name (1.2), then without (1).
    assert await found(client, alice, "sam") == [uid("samuel"), uid("sam"), uid("samantha"),
                                                 uid("sami")]
    assert (await search(client, alice, "sami"))["results"] == [{"user_id": uid("sami")}]


async def test_limit_and_limited(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    room = await create_room(client, alice, preset="public_chat")
    for i in range(5):
        await join(client, await new_user(client, f"user{i}"), room)
    body = await search(client, alice, "user", limit=3)
    assert len(body["results"]) == 3 and body["limited"] is True
    body = await search(client, alice, "user", limit=5)
    assert len(body["results"]) == 5 and body["limited"] is False
    body = await search(client, alice, "user")  # default 10
    assert len(body["results"]) == 5 and body["limited"] is False
    body = await search(client, alice, "user", limit=0)
    assert body == {"results": [], "limited": False}
    body = await search(client, alice, "user", limit=-5)
    assert body["results"] == []


# -- kept current ----------------------------------------------------------------------------

async def test_rename_is_searchable_at_once(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    room = await create_room(client, alice, preset="private_chat", invite=[bob.user_id])
    await join(client, bob, room)
    await set_name(client, bob, "Marvin")
    assert await found(client, alice, "marvin") == [bob.user_id]
    await set_name(client, bob, "Zaphod")
    assert await found(client, alice, "marvin") == []
    assert (await search(client, alice, "zaph"))["results"] == [
        {"user_id": bob.user_id, "display_name": "Zaphod"}]


async def test_leaving_and_rooms_made_private(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    private = await create_room(client, alice, preset="private_chat", invite=[bob.user_id])
    await join(client, bob, private)
    assert await found(client, alice, "bob") == [bob.user_id]
    await leave(client, bob, private)
    assert await found(client, alice, "bob") == []
    # Carol's public room makes her findable; made invite-only, no longer.
    public = await create_room(client, carol, preset="public_chat")
    assert await found(client, alice, "carol") == [carol.user_id]
    status, body = await put_state(client, carol, public, "m.room.join_rules",
                                   {"join_rule": "invite"})
    assert status == 200, body
    assert await found(client, alice, "carol") == []
    # World-readable history makes a room public for the directory too.
    status, body = await put_state(client, carol, public, "m.room.history_visibility",
                                   {"history_visibility": "world_readable"})
    assert status == 200, body
    assert await found(client, alice, "carol") == [carol.user_id]
    # Joining Carol's room makes them room mates again after it goes private.
    status, body = await put_state(client, carol, public, "m.room.history_visibility",
                                   {"history_visibility": "shared"})
    assert status == 200, body
    assert await found(client, alice, "carol") == []
    status, body = await api(client, "POST", f"/rooms/{public}/invite", carol,
                             {"user_id": alice.user_id})
    assert status == 200, body
    await join(client, alice, public)
    assert await found(client, alice, "carol") == [carol.user_id]


async def test_migration_builds_the_directory(client: TestClient, services: Services) -> None:
    """A database from before the directory gets it built from rooms and profiles."""
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    carol = await new_user(client, "bobcat")
    await set_name(client, carol, "Cat Stevens")
    private = await create_room(client, alice, preset="private_chat", invite=[bob.user_id])
    await join(client, bob, private)
    await create_room(client, carol, preset="public_chat")
    before = await search(client, alice, "bob")
    assert len(before["results"]) == 2
    async with services.db.engine.write() as conn:
        for table in schema.USER_DIRECTORY_TABLES:
            await conn.execute(text(f"DROP TABLE {table.name}"))
        await conn.execute(update(schema.schema_version).values(version=before_directory))
    assert await services.db.engine.migrate() == before_directory
    assert await search(client, alice, "bob") == before
    assert await found(client, alice, "stevens") == [carol.user_id]
    # And it is kept current from there.
    await set_name(client, carol, "Yusuf")
    assert await found(client, alice, "yus") == [carol.user_id]


# -- errors -----------------------------------------------------------------------------------

async def test_errors(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    status, body = await api(client, "POST", PATH, alice, {})
    assert_error(status, body, 400, "M_MISSING_PARAM")
    for bad in ({"search_term": 5}, {"search_term": None, "x": 1}, {"search_term": ["a"]},
                {"search_term": "a", "limit": "10"}, {"search_term": "a", "limit": 1.5},
                {"search_term": "a", "limit": True}):
        status, body = await api(client, "POST", PATH, alice, bad)
        assert status == 400 and body["errcode"] in ("M_BAD_JSON", "M_MISSING_PARAM"), bad
    resp = await client.post(V3 + PATH, data=b"{not json", headers=bearer(alice.token))
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"
    resp = await client.post(V3 + PATH, json=[1, 2], headers=bearer(alice.token))
    assert resp.status == 400
    resp = await client.post(V3 + PATH, json={"search_term": "a"})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    # A huge term is cut, not an error.
    assert await found(client, alice, "a" * 100_000) == []


async def test_updates_lost_to_a_crash_are_made_at_start(client: TestClient,
                                                         services: Services) -> None:
    """Commits whose directory update never ran (the process died between them) are found
    from the directory's stream position at the next start."""
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    room = await create_room(client, alice, preset="private_chat", invite=[bob.user_id])
    await join(client, bob, room)
    assert await found(client, alice, "bob") == [bob.user_id]
    stream = schema.user_directory_stream
    async with services.db.engine.read() as conn:
        position = (await conn.execute(select(stream.c.stream_ordering))).scalar_one()
        saved = (await conn.execute(select(schema.user_directory_rooms))).all()
    # Bob leaves and Carol makes a public room; then the directory is put back as it was
    # before (as if those updates were lost).
    await leave(client, bob, room)
    await create_room(client, carol, preset="public_chat")
    assert await found(client, alice, "bob") == []
    assert await found(client, alice, "carol") == [carol.user_id]
    async with services.db.engine.write() as conn:
        await conn.execute(delete(schema.user_directory_rooms))
        await conn.execute(delete(schema.user_directory_public_rooms))
        await conn.execute(schema.user_directory_rooms.insert(),
                           [dict(row._mapping) for row in saved])
        await conn.execute(update(stream).values(stream_ordering=position))
    assert await found(client, alice, "bob") == [bob.user_id]
    assert await found(client, alice, "carol") == []
    await services.user_directory.start()
    assert await found(client, alice, "bob") == []
    assert await found(client, alice, "carol") == [carol.user_id]
    async with services.db.engine.read() as conn:
        assert (await conn.execute(select(stream.c.stream_ordering))).scalar_one() > position
