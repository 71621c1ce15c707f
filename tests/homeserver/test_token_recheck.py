"""The access-token cache rechecks the database: a change this process was not told of (made
by ``ktchat admin`` on the database while the server runs) takes effect within
``TOKEN_RECHECK_MS``; real SQLite and PostgreSQL, a clock the test moves."""

from __future__ import annotations

import pytest

from core.errors import UnknownToken, UserDeactivated
from homeserver.config import AuthConfig
from homeserver.services.auth import TOKEN_RECHECK_MS, AuthService
from storage import Database
from tests.homeserver.test_ratelimit import FakeClock


async def test_a_session_ended_behind_the_cache_ends_within_the_recheck(
        database: Database) -> None:
    clock = FakeClock()
    auth = AuthService(database.devices, clock, AuthConfig())
    for user_id in ("@alice:test", "@bob:test"):
        await database.users.create_user(user_id, password_hash="hash",
                                         created_ts=clock.time_ms())
    _, alice = await auth.create_session("@alice:test", device_id="A", display_name=None,
                                         with_refresh_token=False)
    _, bob = await auth.create_session("@bob:test", device_id="B", display_name=None,
                                       with_refresh_token=False)
    for issued in (alice, bob):
        await auth.get_requester(issued.access_token)  # cached now
    # Another process (the admin command) ends alice's session and deactivates bob.
    other = AuthService(database.devices, clock, AuthConfig())
    await other.logout_all("@alice:test")
    await database.users.deactivate("@bob:test", erase=False)
    # Within the recheck, the cache still answers (the price of not asking every time)...
    clock.advance(TOKEN_RECHECK_MS / 1000 / 2)
    assert (await auth.get_requester(alice.access_token)).user_id == "@alice:test"
    # ...after it, the database does.
    clock.advance(TOKEN_RECHECK_MS / 1000)
    with pytest.raises(UnknownToken):
        await auth.get_requester(alice.access_token)
    with pytest.raises((UnknownToken, UserDeactivated)):
        await auth.get_requester(bob.access_token)
