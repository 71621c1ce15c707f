"""UserStore and ProfileStore, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import update

from storage import Database
from storage.schema import users
from storage.stores.devices import NewTokens
from storage.stores.users import Profile, UserRecord

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def tokens(name: str, *, refresh: bool = False) -> NewTokens:
    return NewTokens(access_token_hash=f"a-{name}", access_expires_ts=None,
                     refresh_token_hash=f"r-{name}" if refresh else None,
                     refresh_expires_ts=None)


async def test_create_and_get_user(database: Database) -> None:
    assert await database.users.get_user(ALICE) is None
    created = await database.users.create_user(
        ALICE, password_hash="$argon2id$x", created_ts=1234, user_type="bot",
        displayname="Alice")
    assert created is True
    user = await database.users.get_user(ALICE)
    assert user == UserRecord(user_id=ALICE, password_hash="$argon2id$x", admin=False,
                              deactivated=False, user_type="bot", created_ts=1234)
    assert user.admin is False and user.deactivated is False
    assert await database.users.count_users() == 1


async def test_create_user_also_creates_profile(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash=None, created_ts=1,
                                     displayname="Alice A.")
    await database.users.create_user(BOB, password_hash=None, created_ts=1)
    assert await database.profiles.get_profile(ALICE) == Profile("Alice A.", None)
    assert await database.profiles.get_profile(BOB) == Profile(None, None)
    assert await database.profiles.get_profile("@nobody:test.local") is None


async def test_duplicate_user_returns_false_and_keeps_original(database: Database) -> None:
    assert await database.users.create_user(ALICE, password_hash="first", created_ts=1,
                                            displayname="First")
    assert await database.users.create_user(ALICE, password_hash="second", created_ts=2,
                                            admin=True, displayname="Second") is False
    user = await database.users.get_user(ALICE)
    assert user is not None
    assert (user.password_hash, user.created_ts, user.admin) == ("first", 1, False)
    assert await database.profiles.get_profile(ALICE) == Profile("First", None)
    assert await database.users.count_users() == 1


async def test_concurrent_creates_of_one_user_id_succeed_once(database: Database) -> None:
    results = await asyncio.gather(*(
        database.users.create_user(ALICE, password_hash=str(i), created_ts=i)
        for i in range(10)))
    assert results.count(True) == 1
    assert await database.users.count_users() == 1


async def test_find_user_case_insensitive(database: Database) -> None:
    await database.users.create_user("@Alice:test.local", password_hash=None, created_ts=1)
    await database.users.create_user(BOB, password_hash=None, created_ts=1)
    assert await database.users.find_user_case_insensitive("@alice:test.local") == [
        "@Alice:test.local"]
    assert await database.users.find_user_case_insensitive("@ALICE:TEST.LOCAL") == [
        "@Alice:test.local"]
    assert await database.users.find_user_case_insensitive("@carol:test.local") == []
    await database.users.create_user("@ALICE:test.local", password_hash=None, created_ts=1)
    assert sorted(await database.users.find_user_case_insensitive(ALICE)) == [
        "@ALICE:test.local", "@Alice:test.local"]


async def test_set_password_hash(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash="old", created_ts=1)
    await database.users.create_user(BOB, password_hash="bob's", created_ts=1)
    await database.users.set_password_hash(ALICE, "new")
    alice, bob = await database.users.get_user(ALICE), await database.users.get_user(BOB)
    assert alice is not None and alice.password_hash == "new"
    assert bob is not None and bob.password_hash == "bob's"


async def test_set_admin(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash=None, created_ts=1)
    await database.users.set_admin(ALICE, True)
    user = await database.users.get_user(ALICE)
    assert user is not None and user.admin is True
    await database.users.set_admin(ALICE, False)
    user = await database.users.get_user(ALICE)
    assert user is not None and user.admin is False


async def test_create_admin_user(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash=None, created_ts=1, admin=True)
    user = await database.users.get_user(ALICE)
    assert user is not None and user.admin is True


async def _log_in(database: Database, user_id: str, device_id: str, name: str) -> None:
    await database.devices.create_session(user_id, device_id, display_name=None,
                                          tokens=tokens(name, refresh=True), now=10)


async def test_deactivate_ends_every_session(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash="h", created_ts=1, displayname="A")
    await database.users.create_user(BOB, password_hash="h", created_ts=1)
    await _log_in(database, ALICE, "D1", "alice1")
    await _log_in(database, ALICE, "D2", "alice2")
    await _log_in(database, BOB, "D1", "bob1")

    await database.users.deactivate(ALICE, erase=False)

    user = await database.users.get_user(ALICE)
    assert user is not None and user.deactivated is True
    assert await database.devices.get_devices(ALICE) == []
    assert await database.devices.get_access_token("a-alice1") is None
    assert await database.devices.get_access_token("a-alice2") is None
    assert await database.devices.get_refresh_token("r-alice1") is None
    assert await database.devices.get_refresh_token("r-alice2") is None
    # Without erase the profile stays.
    assert await database.profiles.get_profile(ALICE) == Profile("A", None)
    # Other users are untouched.
    bob_token = await database.devices.get_access_token("a-bob1")
    assert bob_token is not None and bob_token.user_id == BOB
    assert await database.devices.get_refresh_token("r-bob1") is not None
    assert [d.device_id for d in await database.devices.get_devices(BOB)] == ["D1"]
    bob = await database.users.get_user(BOB)
    assert bob is not None and bob.deactivated is False


async def test_deactivate_with_erase_clears_profile(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash="h", created_ts=1, displayname="A")
    await database.users.create_user(BOB, password_hash="h", created_ts=1, displayname="B")
    await database.profiles.set_profile_field(ALICE, "avatar_url", "mxc://test.local/a")
    await database.profiles.set_profile_field(BOB, "avatar_url", "mxc://test.local/b")

    await database.users.deactivate(ALICE, erase=True)

    assert await database.profiles.get_profile(ALICE) == Profile(None, None)
    assert await database.profiles.get_profile(BOB) == Profile("B", "mxc://test.local/b")
    # The account row remains (the user ID may never be reused).
    user = await database.users.get_user(ALICE)
    assert user is not None and user.deactivated is True
    assert await database.users.create_user(ALICE, password_hash=None, created_ts=2) is False


async def test_set_profile_fields(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash=None, created_ts=1)
    await database.profiles.set_profile_field(ALICE, "displayname", "Alice")
    await database.profiles.set_profile_field(ALICE, "avatar_url", "mxc://test.local/abc")
    assert await database.profiles.get_profile(ALICE) == Profile("Alice", "mxc://test.local/abc")
    await database.profiles.set_profile_field(ALICE, "displayname", None)
    assert await database.profiles.get_profile(ALICE) == Profile(None, "mxc://test.local/abc")


async def test_set_profile_rejects_unknown_field(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash=None, created_ts=1)
    with pytest.raises(ValueError):
        await database.profiles.set_profile_field(ALICE, "password_hash", "x")
    user = await database.users.get_user(ALICE)
    assert user is not None and user.password_hash is None


async def test_user_record_booleans_are_bools(database: Database) -> None:
    await database.users.create_user(ALICE, password_hash=None, created_ts=1)
    async with database.engine.write() as conn:
        await conn.execute(update(users).where(users.c.user_id == ALICE)
                           .values(deactivated=True, admin=True))
    user = await database.users.get_user(ALICE)
    assert user is not None
    assert user.admin is True and user.deactivated is True
