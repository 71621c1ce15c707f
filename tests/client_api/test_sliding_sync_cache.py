"""What sliding sync keeps in memory (``SlidingSyncCache``) stays what the database says:
after the cache is warm, every kind of change (messages, names, joins, invites, leaves, kicks,
account data, push rules, a deleted room) shows in the next response, and the cache's answers
equal the database's for every room. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from homeserver.services.sliding_sync.cache import SlidingSyncCache, _Loads
from tests.client_api import test_sync_fanout
from tests.client_api.test_admin import admin_token
from tests.client_api.test_purge import ADMIN1, admin_call, q, start_purge, wait_purge
from tests.client_api.test_rooms import User, api, create_room, join, new_user, send_text
from tests.client_api.test_sliding_sync import bodies, one_list, ss
from tests.client_api.test_sync import invite, leave, put_account_data

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL

NAME_AND_MEMBERS: list[Any] = [["m.room.name", ""], ["m.room.member", "*"]]


def cache_of(services: Services) -> SlidingSyncCache:
    return services.sliding_sync.d.room_cache


async def assert_cache_is_exact(services: Services, room_ids: list[str], user_id: str) -> None:
    """The cache's state, summaries, latest events and bump stamps of the rooms equal the
    database's."""
    cache = cache_of(services)
    store, sync = services.db.sliding_sync, services.db.sync
    up_to = services.notifier.position
    assert await cache.current_state_ids(room_ids, all_types=True, types=[], pairs=[]) == \
        await store.current_state_ids(room_ids, all_types=True, types=[], pairs=[])
    pairs = [("m.room.name", ""), ("m.room.member", user_id)]
    assert await cache.current_state_ids(room_ids, all_types=False, types=["m.room.create"],
                                         pairs=pairs) == \
        await store.current_state_ids(room_ids, all_types=False, types=["m.room.create"],
                                      pairs=pairs)
    assert await cache.room_summaries(room_ids, user_id, heroes=5) == \
        await sync.room_summaries(room_ids, user_id, heroes=5)
    for position in (up_to, max(0, up_to - 2)):
        found = await store.bump_stamps(room_ids, position)
        assert await cache.bump_stamps(room_ids, position) == \
            {r: found.get(r, 0) for r in room_ids}
    for after in (0, max(0, up_to - 3)):
        for limit in (1, 2, SlidingSyncCache.TIMELINE + 3):
            assert await cache.latest_event_ids(room_ids, after=after, up_to=up_to,
                                                limit=limit) == \
                await sync.latest_event_ids(room_ids, after=after, up_to=up_to, limit=limit)


async def test_changes_after_the_cache_is_warm(services: Services, client: TestClient,
                                               alice: User, bob: User) -> None:
    carol = await new_user(client, "carol")
    quiet = await create_room(client, alice, name="quiet")
    busy = await create_room(client, alice)
    await invite(client, alice, busy, bob)
    await join(client, bob, busy)
    first = await ss(client, alice, one_list(limit=1, required_state=NAME_AND_MEMBERS))
    assert set(first["rooms"]) == {quiet, busy}
    assert first["rooms"][busy]["joined_count"] == 2
    await assert_cache_is_exact(services, [quiet, busy], alice.user_id)

    # Every change below is after the rooms were read into memory; each new connection's
    # first response must show it.
    await send_text(client, bob, busy, "after the cache")
    status, _ = await api(client, "PUT", f"/rooms/{busy}/state/m.room.name", alice,
                          {"name": "busy now"})
    assert status == 200
    await invite(client, alice, busy, carol)
    body = await ss(client, alice, one_list(limit=1, required_state=NAME_AND_MEMBERS))
    room = body["rooms"][busy]
    assert room["name"] == "busy now"
    assert room["joined_count"] == 2 and room["invited_count"] == 1
    assert ("m.room.member", carol.user_id) in {(e["type"], e["state_key"])
                                                for e in room["required_state"]}
    assert room["timeline"][-1]["type"] == "m.room.member"  # the invite: the latest event
    await assert_cache_is_exact(services, [quiet, busy], alice.user_id)

    await join(client, carol, busy)
    await leave(client, bob, busy)
    for n in range(SlidingSyncCache.TIMELINE + 2):
        await send_text(client, carol, busy, f"many {n}")
    body = await ss(client, alice, one_list(limit=SlidingSyncCache.TIMELINE + 1,
                                            required_state=NAME_AND_MEMBERS))
    room = body["rooms"][busy]
    assert room["joined_count"] == 2 and room["invited_count"] == 0
    assert bodies(room)[-3:] == [f"many {n}" for n in range(SlidingSyncCache.TIMELINE - 1,
                                                             SlidingSyncCache.TIMELINE + 2)]
    assert room["limited"] is True
    await assert_cache_is_exact(services, [quiet, busy], alice.user_id)

    # Unnamed rooms: heroes follow joins and leaves.
    status, _ = await api(client, "PUT", f"/rooms/{busy}/state/m.room.name", alice, {})
    assert status == 200
    body = await ss(client, alice, one_list(limit=1))
    assert [h["user_id"] for h in body["rooms"][busy]["heroes"]] == [carol.user_id]
    await invite(client, alice, busy, bob)
    await join(client, bob, busy)
    body = await ss(client, alice, one_list(limit=1))
    assert [h["user_id"] for h in body["rooms"][busy]["heroes"]] == \
        [carol.user_id, bob.user_id]
    await assert_cache_is_exact(services, [quiet, busy], alice.user_id)
    await assert_cache_is_exact(services, [quiet, busy], carol.user_id)


async def test_account_data_and_push_rules_after_the_cache_is_warm(
        services: Services, client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="tagged")
    request = {**one_list(), "extensions": {"account_data": {"enabled": True}}}
    first = await ss(client, alice, request)
    assert first["extensions"]["account_data"]["rooms"] == {}
    await put_account_data(client, alice, "m.tag", {"tags": {"u.work": {}}}, room_id)
    await put_account_data(client, alice, "org.example.global", {"n": 1})
    status, _ = await api(client, "PUT", "/pushrules/global/content/mine", alice,
                          {"actions": ["notify"], "pattern": "cheese"})
    assert status == 200
    body = await ss(client, alice, request)
    account = body["extensions"]["account_data"]
    assert account["rooms"][room_id] == [{"type": "m.tag",
                                          "content": {"tags": {"u.work": {}}}}]
    by_type = {e["type"]: e["content"] for e in account["global"]}
    assert by_type["org.example.global"] == {"n": 1}
    assert "mine" in [r["rule_id"] for r in by_type["m.push_rules"]["global"]["content"]]
    # Changed again: the next new connection has the new values.
    await put_account_data(client, alice, "org.example.global", {"n": 2})
    status, _ = await api(client, "DELETE", "/pushrules/global/content/mine", alice)
    assert status == 200
    body = await ss(client, alice, request)
    by_type = {e["type"]: e["content"] for e in body["extensions"]["account_data"]["global"]}
    assert by_type["org.example.global"] == {"n": 2}
    assert "mine" not in [r["rule_id"] for r in by_type["m.push_rules"]["global"]["content"]]
    # An incremental response carries only what changed since its position.
    await put_account_data(client, alice, "org.example.global", {"n": 3})
    after = await ss(client, alice, request, pos=body["pos"])
    assert after["extensions"]["account_data"]["global"] == [
        {"type": "org.example.global", "content": {"n": 3}}]


async def test_purged_history_and_deleted_rooms(services: Services, client: TestClient,
                                               alice: User) -> None:
    token = await admin_token(client)
    room_id = await create_room(client, alice, name="doomed")
    for n in range(3):
        await send_text(client, alice, room_id, f"old {n}")
    await ss(client, alice, one_list())
    await assert_cache_is_exact(services, [room_id], alice.user_id)
    purge_id = await start_purge(client, token, room_id, delete_local_events=True,
                                 purge_up_to_ts=services.clock.time_ms() + 1)
    assert (await wait_purge(client, token, purge_id))["status"] == "complete"
    await assert_cache_is_exact(services, [room_id], alice.user_id)
    cache = cache_of(services)
    await ss(client, alice, one_list())
    status, res = await admin_call(client, "DELETE", f"{ADMIN1}/rooms/{q(room_id)}", token, {})
    assert status == 200, res
    assert room_id not in cache._states and room_id not in cache._timelines
    await assert_cache_is_exact(services, [room_id], alice.user_id)


def test_a_load_overtaken_by_a_commit_is_not_kept() -> None:
    loads = _Loads()
    first = loads.start(["!a", "!b"])
    loads.touch("!a")  # a commit to !a while the load runs
    second = loads.start(["!a"])  # a load started after that commit
    assert loads.finish(first) == {"!b"}
    assert loads.finish(second) == {"!a"}
    loads.touch("!a")  # no load running: nothing to remember
    assert loads.running == {} and loads.touched == {}
