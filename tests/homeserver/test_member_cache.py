"""The memberships cache: valid until a member event about the user commits; concurrent
misses share one query."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from tests.helpers.room_api import User, create_room, join, new_user


async def test_concurrent_misses_share_one_query(client: TestClient, services: Services,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    alice = await new_user(client, "alice")
    room_id = await create_room(client, alice)
    calls: list[str] = []
    original = services.db.sync.memberships

    async def counted(user_id: str) -> Any:
        calls.append(user_id)
        await asyncio.sleep(0.05)
        return await original(user_id)

    monkeypatch.setattr(services.db.sync, "memberships", counted)
    cache = type(services.members)(services.db.sync, services.notifier)
    results = await asyncio.gather(*(cache.joined_rooms(alice.user_id) for _ in range(20)))
    assert calls == [alice.user_id]
    assert all(r == frozenset({room_id}) for r in results)
    # Cached afterwards.
    await cache.memberships(alice.user_id)
    assert calls == [alice.user_id]


async def test_a_member_event_invalidates(client: TestClient, services: Services) -> None:
    alice: User = await new_user(client, "alice")
    bob: User = await new_user(client, "bob")
    room_id = await create_room(client, alice, preset="public_chat")
    assert room_id not in await services.members.joined_rooms(bob.user_id)
    await join(client, bob, room_id)
    assert room_id in await services.members.joined_rooms(bob.user_id)
    assert await services.members.share_a_room(alice.user_id, bob.user_id)


async def test_a_failed_load_is_not_shared_forever(client: TestClient, services: Services,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    alice = await new_user(client, "alice")
    original = services.db.sync.memberships
    failures = [RuntimeError("database away")]

    async def flaky(user_id: str) -> Any:
        await asyncio.sleep(0.02)
        if failures:
            raise failures.pop()
        return await original(user_id)

    monkeypatch.setattr(services.db.sync, "memberships", flaky)
    cache = type(services.members)(services.db.sync, services.notifier)
    results = await asyncio.gather(cache.joined_rooms(alice.user_id),
                                   cache.joined_rooms(alice.user_id), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1] == frozenset()  # the waiter loaded again on its own
    assert await cache.joined_rooms(alice.user_id) == frozenset()


async def test_many_users_at_once(client: TestClient, services: Services) -> None:
    """joined_rooms_of: cached users from the cache, the others in one read, then cached; a
    member event about one of them invalidates that one."""
    alice, bob, carol = [await new_user(client, n) for n in ("alice", "bob", "carol")]
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    cache = type(services.members)(services.db.sync, services.notifier)
    await cache.joined_rooms(alice.user_id)  # cached before
    found = await cache.joined_rooms_of([alice.user_id, bob.user_id, carol.user_id,
                                         "@nobody:test.local"])
    assert found == {alice.user_id: frozenset({room_id}), bob.user_id: frozenset({room_id}),
                     carol.user_id: frozenset(), "@nobody:test.local": frozenset()}
    await join(client, carol, room_id)
    assert (await cache.joined_rooms_of([carol.user_id]))[carol.user_id] == \
        frozenset({room_id})
    assert await cache.joined_rooms(bob.user_id) == frozenset({room_id})
