"""UI-auth sessions, registration tokens and shared-secret nonces, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from storage import Database
from storage.stores.auth_sessions import RegistrationToken

# -- user-interactive auth sessions ---------------------------------------------------------


async def test_ui_auth_session_round_trip(database: Database) -> None:
    store = database.ui_auth
    assert await store.get_session("s1") is None
    await store.create_session("s1", method="POST", uri="/_matrix/client/v3/register",
                               user_id=None, now=1000)
    session = await store.get_session("s1")
    assert session is not None
    assert (session.session_id, session.created_ts, session.method, session.uri) == (
        "s1", 1000, "POST", "/_matrix/client/v3/register")
    assert session.user_id is None
    assert session.completed == {}


async def test_ui_auth_stages_accumulate(database: Database) -> None:
    store = database.ui_auth
    await store.create_session("s1", method="DELETE", uri="/devices/X",
                               user_id="@alice:test.local", now=1)
    await store.create_session("s2", method="POST", uri="/register", user_id=None, now=1)
    await store.mark_stage_completed("s1", "m.login.password", "@alice:test.local")
    await store.mark_stage_completed("s1", "m.login.registration_token", {"token": "abc"})
    session = await store.get_session("s1")
    assert session is not None
    assert session.user_id == "@alice:test.local"
    assert session.completed == {"m.login.password": "@alice:test.local",
                                 "m.login.registration_token": {"token": "abc"}}
    # Completing a stage again overwrites only that stage.
    await store.mark_stage_completed("s1", "m.login.password", True)
    session = await store.get_session("s1")
    assert session is not None
    assert session.completed["m.login.password"] is True
    assert session.completed["m.login.registration_token"] == {"token": "abc"}
    other = await store.get_session("s2")
    assert other is not None and other.completed == {}


async def test_ui_auth_delete_session(database: Database) -> None:
    store = database.ui_auth
    await store.create_session("s1", method="POST", uri="/x", user_id=None, now=1)
    await store.create_session("s2", method="POST", uri="/x", user_id=None, now=1)
    await store.delete_session("s1")
    await store.delete_session("unknown")
    assert await store.get_session("s1") is None
    assert await store.get_session("s2") is not None


async def test_ui_auth_delete_expired(database: Database) -> None:
    store = database.ui_auth
    for session_id, ts in (("old", 100), ("edge", 200), ("new", 300)):
        await store.create_session(session_id, method="POST", uri="/x", user_id=None, now=ts)
    await store.delete_expired(200)
    assert await store.get_session("old") is None
    assert await store.get_session("edge") is not None
    assert await store.get_session("new") is not None


# -- registration tokens --------------------------------------------------------------------


async def test_registration_token_create_get_list_delete(database: Database) -> None:
    store = database.registration_tokens
    assert await store.create("bbb", uses_allowed=3, expiry_time=5000) is True
    assert await store.create("aaa", uses_allowed=None, expiry_time=None) is True
    assert await store.create("aaa", uses_allowed=1, expiry_time=1) is False
    assert await store.get("bbb") == RegistrationToken("bbb", 3, 0, 0, 5000)
    assert await store.get("aaa") == RegistrationToken("aaa", None, 0, 0, None)
    assert await store.get("ccc") is None
    assert [t.token for t in await store.list()] == ["aaa", "bbb"]
    assert await store.delete("aaa") is True
    assert await store.delete("aaa") is False
    assert [t.token for t in await store.list()] == ["bbb"]


async def test_registration_token_reserve_respects_uses_allowed(database: Database) -> None:
    store = database.registration_tokens
    await store.create("tok", uses_allowed=2, expiry_time=None)
    assert await store.reserve("tok", now=1) is True
    assert await store.reserve("tok", now=1) is True
    assert await store.reserve("tok", now=1) is False
    token = await store.get("tok")
    assert token is not None and (token.pending, token.completed) == (2, 0)
    # Completing moves a use from pending to completed; it still counts.
    await store.complete("tok")
    token = await store.get("tok")
    assert token is not None and (token.pending, token.completed) == (1, 1)
    assert await store.reserve("tok", now=1) is False


async def test_registration_token_unlimited_uses(database: Database) -> None:
    store = database.registration_tokens
    await store.create("tok", uses_allowed=None, expiry_time=None)
    for _ in range(5):
        assert await store.reserve("tok", now=1) is True
    token = await store.get("tok")
    assert token is not None and token.pending == 5


async def test_registration_token_zero_uses(database: Database) -> None:
    store = database.registration_tokens
    await store.create("tok", uses_allowed=0, expiry_time=None)
    assert await store.reserve("tok", now=1) is False


async def test_registration_token_reserve_respects_expiry(database: Database) -> None:
    store = database.registration_tokens
    await store.create("tok", uses_allowed=None, expiry_time=1000)
    assert await store.reserve("tok", now=999) is True
    assert await store.reserve("tok", now=1000) is False
    assert await store.reserve("tok", now=5000) is False
    token = await store.get("tok")
    assert token is not None and token.pending == 1


async def test_registration_token_reserve_unknown(database: Database) -> None:
    assert await database.registration_tokens.reserve("nope", now=1) is False


async def test_registration_token_concurrent_reserves(database: Database) -> None:
    store = database.registration_tokens
    await store.create("tok", uses_allowed=3, expiry_time=None)
    results = await asyncio.gather(*(store.reserve("tok", now=1) for _ in range(12)))
    assert results.count(True) == 3
    token = await store.get("tok")
    assert token is not None and token.pending == 3


# -- shared-secret registration nonces ------------------------------------------------------


async def test_nonce_consumed_once(database: Database) -> None:
    store = database.nonces
    await store.add("n1", now=1000)
    await store.add("n2", now=1000)
    assert await store.consume("n1", not_before_ts=0) is True
    assert await store.consume("n1", not_before_ts=0) is False
    assert await store.consume("unknown", not_before_ts=0) is False
    assert await store.consume("n2", not_before_ts=0) is True


async def test_nonce_expiry(database: Database) -> None:
    store = database.nonces
    await store.add("old", now=1000)
    await store.add("fresh", now=5000)
    assert await store.consume("old", not_before_ts=2000) is False
    assert await store.consume("fresh", not_before_ts=2000) is True
    # The expired nonce was swept, not merely refused.
    assert await store.consume("old", not_before_ts=0) is False


async def test_nonce_concurrent_consume(database: Database) -> None:
    store = database.nonces
    await store.add("n", now=1000)
    results = await asyncio.gather(*(store.consume("n", not_before_ts=0) for _ in range(8)))
    assert results.count(True) == 1


async def test_expired_sessions_give_back_reserved_registration_token_uses(database) -> None:
    await database.registration_tokens.create("tok", uses_allowed=1, expiry_time=None)
    assert await database.registration_tokens.reserve("tok", now=1000)
    await database.ui_auth.create_session("s1", method="POST", uri="/register", user_id=None,
                                          now=1000)
    await database.ui_auth.mark_stage_completed("s1", "m.login.registration_token", "tok")
    assert not await database.registration_tokens.reserve("tok", now=1001)  # used up

    await database.ui_auth.delete_expired(older_than_ts=2000)

    token = await database.registration_tokens.get("tok")
    assert token is not None and token.pending == 0 and token.completed == 0
    assert await database.ui_auth.get_session("s1") is None
    assert await database.registration_tokens.reserve("tok", now=2001)
