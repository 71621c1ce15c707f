"""DeviceStore: devices, access tokens and refresh-token rotation, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from storage import Database
from storage.schema import access_tokens, users
from storage.stores.devices import AccessTokenInfo, NewTokens, RefreshTokenInfo

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def tokens(name: str, *, refresh: bool = False, access_expires: int | None = None,
           refresh_expires: int | None = None) -> NewTokens:
    return NewTokens(access_token_hash=f"a-{name}", access_expires_ts=access_expires,
                     refresh_token_hash=f"r-{name}" if refresh else None,
                     refresh_expires_ts=refresh_expires)


@pytest.fixture
async def db(database: Database) -> Database:
    await database.users.create_user(ALICE, password_hash=None, created_ts=1)
    await database.users.create_user(BOB, password_hash=None, created_ts=1)
    return database


async def access(db: Database, name: str) -> AccessTokenInfo:
    info = await db.devices.get_access_token(f"a-{name}")
    assert info is not None, name
    return info


async def refresh(db: Database, name: str) -> RefreshTokenInfo:
    info = await db.devices.get_refresh_token(f"r-{name}")
    assert info is not None, name
    return info


# -- sessions and devices -------------------------------------------------------------------


async def test_create_session(db: Database) -> None:
    await db.devices.create_session(ALICE, "DEV1", display_name="Phone",
                                    tokens=tokens("1", access_expires=5000), now=100,
                                    ip="10.0.0.1", user_agent="nio")
    device = await db.devices.get_device(ALICE, "DEV1")
    assert device is not None
    assert (device.user_id, device.device_id, device.display_name) == (ALICE, "DEV1", "Phone")
    assert (device.created_ts, device.last_seen_ts) == (100, 100)
    assert (device.last_seen_ip, device.last_seen_user_agent) == ("10.0.0.1", "nio")
    info = await access(db, "1")
    assert (info.user_id, info.device_id, info.expires_ts) == (ALICE, "DEV1", 5000)
    assert info.refresh_token_id is None and info.used is False
    assert info.is_admin is False and info.deactivated is False
    assert await db.devices.get_access_token("a-unknown") is None
    assert await db.devices.get_device(ALICE, "NOPE") is None
    assert await db.devices.get_device(BOB, "DEV1") is None


async def test_session_for_unknown_user_is_refused(db: Database) -> None:
    # devices.user_id references users: foreign keys are enforced on both databases.
    with pytest.raises(IntegrityError):
        await db.devices.create_session("@ghost:test.local", "DEV", display_name=None,
                                        tokens=tokens("ghost"), now=1)
    assert await db.devices.get_access_token("a-ghost") is None


async def test_reused_device_replaces_tokens_and_keeps_display_name(db: Database) -> None:
    await db.devices.create_session(ALICE, "DEV1", display_name="Phone",
                                    tokens=tokens("1", refresh=True), now=100)
    await db.devices.create_session(ALICE, "DEV1", display_name=None,
                                    tokens=tokens("2"), now=200, ip="10.0.0.2")
    assert await db.devices.get_access_token("a-1") is None
    assert await db.devices.get_refresh_token("r-1") is None
    assert (await access(db, "2")).device_id == "DEV1"
    device = await db.devices.get_device(ALICE, "DEV1")
    assert device is not None
    assert device.display_name == "Phone"
    assert device.created_ts == 100
    assert (device.last_seen_ts, device.last_seen_ip) == (200, "10.0.0.2")
    # A given display name replaces the old one.
    await db.devices.create_session(ALICE, "DEV1", display_name="Laptop",
                                    tokens=tokens("3"), now=300)
    device = await db.devices.get_device(ALICE, "DEV1")
    assert device is not None and device.display_name == "Laptop"
    assert await db.devices.get_access_token("a-2") is None
    assert len(await db.devices.get_devices(ALICE)) == 1


async def test_reused_device_leaves_other_devices_alone(db: Database) -> None:
    await db.devices.create_session(ALICE, "DEV1", display_name=None, tokens=tokens("1"), now=1)
    await db.devices.create_session(ALICE, "DEV2", display_name=None, tokens=tokens("2"), now=1)
    await db.devices.create_session(BOB, "DEV1", display_name=None, tokens=tokens("b"), now=1)
    await db.devices.create_session(ALICE, "DEV1", display_name=None, tokens=tokens("3"), now=2)
    assert await db.devices.get_access_token("a-1") is None
    assert (await access(db, "2")).device_id == "DEV2"
    assert (await access(db, "b")).user_id == BOB
    assert [d.device_id for d in await db.devices.get_devices(ALICE)] == ["DEV1", "DEV2"]


async def test_get_access_token_joins_admin_and_deactivated(db: Database) -> None:
    await db.devices.create_session(ALICE, "DEV1", display_name=None, tokens=tokens("1"), now=1)
    await db.users.set_admin(ALICE, True)
    info = await access(db, "1")
    assert info.is_admin is True and info.deactivated is False
    async with db.engine.write() as conn:
        await conn.execute(update(users).where(users.c.user_id == ALICE)
                           .values(deactivated=True, admin=False))
    info = await access(db, "1")
    assert info.is_admin is False and info.deactivated is True


async def test_get_devices_sorted(db: Database) -> None:
    for device_id in ("CCC", "AAA", "BBB"):
        await db.devices.create_session(ALICE, device_id, display_name=device_id.lower(),
                                        tokens=tokens(device_id), now=1)
    devices = await db.devices.get_devices(ALICE)
    assert [d.device_id for d in devices] == ["AAA", "BBB", "CCC"]
    assert [d.display_name for d in devices] == ["aaa", "bbb", "ccc"]
    assert await db.devices.get_devices(BOB) == []


async def test_delete_devices(db: Database) -> None:
    for name in ("D1", "D2", "D3"):
        await db.devices.create_session(ALICE, name, display_name=None,
                                        tokens=tokens(name, refresh=True), now=1)
    await db.devices.create_session(BOB, "D1", display_name=None, tokens=tokens("bob"), now=1)
    await db.devices.delete_devices(ALICE, ["D1", "D3", "UNKNOWN"])
    assert [d.device_id for d in await db.devices.get_devices(ALICE)] == ["D2"]
    for gone in ("D1", "D3"):
        assert await db.devices.get_access_token(f"a-{gone}") is None
        assert await db.devices.get_refresh_token(f"r-{gone}") is None
    assert (await access(db, "D2")).device_id == "D2"
    assert await db.devices.get_refresh_token("r-D2") is not None
    assert (await access(db, "bob")).user_id == BOB
    assert [d.device_id for d in await db.devices.get_devices(BOB)] == ["D1"]


async def test_delete_all_devices(db: Database) -> None:
    for name in ("D1", "D2"):
        await db.devices.create_session(ALICE, name, display_name=None,
                                        tokens=tokens(name, refresh=True), now=1)
    await db.devices.create_session(BOB, "D1", display_name=None, tokens=tokens("bob"), now=1)
    deleted = await db.devices.delete_all_devices(ALICE)
    assert sorted(deleted) == ["D1", "D2"]
    assert await db.devices.get_devices(ALICE) == []
    for name in ("D1", "D2"):
        assert await db.devices.get_access_token(f"a-{name}") is None
        assert await db.devices.get_refresh_token(f"r-{name}") is None
    assert (await access(db, "bob")).user_id == BOB
    assert await db.devices.delete_all_devices(ALICE) == []


async def test_delete_all_devices_except_one(db: Database) -> None:
    for name in ("D1", "D2", "D3"):
        await db.devices.create_session(ALICE, name, display_name=None,
                                        tokens=tokens(name, refresh=True), now=1)
    deleted = await db.devices.delete_all_devices(ALICE, except_device_id="D2")
    assert sorted(deleted) == ["D1", "D3"]
    assert [d.device_id for d in await db.devices.get_devices(ALICE)] == ["D2"]
    assert (await access(db, "D2")).device_id == "D2"
    assert await db.devices.get_refresh_token("r-D2") is not None
    for name in ("D1", "D3"):
        assert await db.devices.get_access_token(f"a-{name}") is None
        assert await db.devices.get_refresh_token(f"r-{name}") is None


async def test_set_display_name(db: Database) -> None:
    await db.devices.create_session(ALICE, "D1", display_name="Old", tokens=tokens("1"), now=1)
    assert await db.devices.set_display_name(ALICE, "D1", "New") is True
    device = await db.devices.get_device(ALICE, "D1")
    assert device is not None and device.display_name == "New"
    assert await db.devices.set_display_name(ALICE, "D1", None) is True
    device = await db.devices.get_device(ALICE, "D1")
    assert device is not None and device.display_name is None
    assert await db.devices.set_display_name(ALICE, "NOPE", "x") is False
    assert await db.devices.set_display_name(BOB, "D1", "x") is False


async def test_record_last_seen_batch(db: Database) -> None:
    await db.devices.create_session(ALICE, "D1", display_name=None, tokens=tokens("1"), now=1)
    await db.devices.create_session(ALICE, "D2", display_name=None, tokens=tokens("2"), now=1,
                                    ip="1.1.1.1", user_agent="old")
    await db.devices.create_session(BOB, "D1", display_name=None, tokens=tokens("3"), now=1)
    await db.devices.record_last_seen([])  # a no-op
    await db.devices.record_last_seen([
        (ALICE, "D1", 500, "10.0.0.1", "ua-1"),
        (BOB, "D1", 600, None, None),
        (ALICE, "UNKNOWN", 700, "10.0.0.9", "ua-9"),  # silently ignored
    ])
    d1 = await db.devices.get_device(ALICE, "D1")
    d2 = await db.devices.get_device(ALICE, "D2")
    bob = await db.devices.get_device(BOB, "D1")
    assert d1 is not None and d2 is not None and bob is not None
    assert (d1.last_seen_ts, d1.last_seen_ip, d1.last_seen_user_agent) == (500, "10.0.0.1",
                                                                           "ua-1")
    assert (d2.last_seen_ts, d2.last_seen_ip, d2.last_seen_user_agent) == (1, "1.1.1.1", "old")
    assert (bob.last_seen_ts, bob.last_seen_ip, bob.last_seen_user_agent) == (600, None, None)
    assert await db.devices.get_device(ALICE, "UNKNOWN") is None


# -- refresh tokens -------------------------------------------------------------------------


async def test_login_with_refresh_token(db: Database) -> None:
    await db.devices.create_session(
        ALICE, "D1", display_name=None,
        tokens=tokens("1", refresh=True, access_expires=1000, refresh_expires=9000), now=1)
    rt = await refresh(db, "1")
    assert (rt.user_id, rt.device_id, rt.expires_ts) == (ALICE, "D1", 9000)
    assert rt.next_token_id is None and rt.successor_used is False
    at = await access(db, "1")
    assert at.refresh_token_id == rt.token_id
    assert at.expires_ts == 1000 and at.used is False
    assert await db.devices.get_refresh_token("r-unknown") is None


async def test_refresh_rotation(db: Database) -> None:
    await db.devices.create_session(ALICE, "D1", display_name=None,
                                    tokens=tokens("1", refresh=True), now=1)
    # The first access token is used (marking it used retires nothing: it replaced nothing).
    first = await access(db, "1")
    await db.devices.mark_refreshed_access_token_used(first.token_id, first.refresh_token_id)
    assert (await access(db, "1")).used is True
    assert await db.devices.get_refresh_token("r-1") is not None

    old = await refresh(db, "1")
    await db.devices.replace_refresh_token(old, tokens("2", refresh=True, access_expires=77), 50)

    # The access tokens of the old refresh token are gone; the new ones belong to the device.
    assert await db.devices.get_access_token("a-1") is None
    new_rt = await refresh(db, "2")
    new_at = await access(db, "2")
    assert (new_rt.user_id, new_rt.device_id) == (ALICE, "D1")
    assert new_at.refresh_token_id == new_rt.token_id
    assert new_at.used is False and new_at.expires_ts == 77
    # The old refresh token points at its successor and stays valid until that is used.
    old_after = await refresh(db, "1")
    assert old_after.next_token_id == new_rt.token_id
    assert old_after.successor_used is False

    # First use of the new access token retires the old refresh token.
    await db.devices.mark_refreshed_access_token_used(new_at.token_id, new_at.refresh_token_id)
    assert await db.devices.get_refresh_token("r-1") is None
    assert (await access(db, "2")).used is True
    assert await db.devices.get_refresh_token("r-2") is not None


async def test_refresh_retry_replaces_unused_successor(db: Database) -> None:
    """A client whose /refresh answer was lost refreshes again with the old token."""
    await db.devices.create_session(ALICE, "D1", display_name=None,
                                    tokens=tokens("1", refresh=True), now=1)
    await db.devices.replace_refresh_token(await refresh(db, "1"), tokens("2", refresh=True), 2)
    retry = await refresh(db, "1")
    assert retry.successor_used is False
    await db.devices.replace_refresh_token(retry, tokens("3", refresh=True), 3)

    # The unused successor and its access token are dropped.
    assert await db.devices.get_refresh_token("r-2") is None
    assert await db.devices.get_access_token("a-2") is None
    third_rt = await refresh(db, "3")
    third_at = await access(db, "3")
    assert third_at.refresh_token_id == third_rt.token_id
    assert (await refresh(db, "1")).next_token_id == third_rt.token_id

    await db.devices.mark_refreshed_access_token_used(third_at.token_id,
                                                      third_at.refresh_token_id)
    assert await db.devices.get_refresh_token("r-1") is None
    assert await db.devices.get_refresh_token("r-3") is not None


async def test_successor_used_once_successor_is_refreshed(db: Database) -> None:
    await db.devices.create_session(ALICE, "D1", display_name=None,
                                    tokens=tokens("1", refresh=True), now=1)
    await db.devices.replace_refresh_token(await refresh(db, "1"), tokens("2", refresh=True), 2)
    # The successor is itself refreshed before any of its access tokens was used.
    await db.devices.replace_refresh_token(await refresh(db, "2"), tokens("3", refresh=True), 3)
    assert (await refresh(db, "1")).successor_used is True
    assert (await refresh(db, "2")).successor_used is False


async def test_successor_used_once_its_access_token_is_used(db: Database) -> None:
    await db.devices.create_session(ALICE, "D1", display_name=None,
                                    tokens=tokens("1", refresh=True), now=1)
    await db.devices.replace_refresh_token(await refresh(db, "1"), tokens("2", refresh=True), 2)
    # Mark the successor's access token used without the retirement the service does, as a
    # second worker might see it: the old refresh token must already count as superseded.
    at = await access(db, "2")
    async with db.engine.write() as conn:
        await conn.execute(update(access_tokens).where(access_tokens.c.id == at.token_id)
                           .values(used=True))
    assert (await refresh(db, "1")).successor_used is True


async def test_new_login_on_device_drops_refresh_chain(db: Database) -> None:
    await db.devices.create_session(ALICE, "D1", display_name=None,
                                    tokens=tokens("1", refresh=True), now=1)
    await db.devices.replace_refresh_token(await refresh(db, "1"), tokens("2", refresh=True), 2)
    await db.devices.create_session(ALICE, "D1", display_name=None, tokens=tokens("3"), now=3)
    for name in ("1", "2"):
        assert await db.devices.get_refresh_token(f"r-{name}") is None
        assert await db.devices.get_access_token(f"a-{name}") is None
    assert (await access(db, "3")).refresh_token_id is None
