"""Logging in and out, refresh tokens, whoami and discovery, over real HTTP.

Every successful body the spec describes is validated against its OpenAPI definition.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.client_api.test_devices import list_devices
from tests.conftest import SERVER_NAME, bearer, register_user
from tests.helpers.spec import assert_matches_spec

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse"
ALICE = f"@alice:{SERVER_NAME}"


async def login(client: TestClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"{V3}/login", json=body)
    return resp.status, await resp.json()


def password_login(user: str = "alice", password: str = PASSWORD, **extra: Any
                   ) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password, **extra}


async def whoami(client: TestClient, token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get(f"{V3}/account/whoami", headers=bearer(token))
    return resp.status, await resp.json()


async def assert_token_dead(client: TestClient, token: str) -> None:
    status, body = await whoami(client, token)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN"), body


async def devices_of(client: TestClient, token: str) -> dict[str, dict[str, Any]]:
    return await list_devices(client, token)


# -- GET /login -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["r0", "v3"])
async def test_login_flows_offer_password(client: TestClient, version: str) -> None:
    resp = await client.get(f"/_matrix/client/{version}/login")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/login", 200, body)
    assert {"type": "m.login.password"} in body["flows"]


# -- POST /login ----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param(password_login("alice"), id="identifier-localpart"),
    pytest.param(password_login(ALICE), id="identifier-user-id"),
    pytest.param(password_login("ALICE"), id="identifier-localpart-other-case"),
    pytest.param({"type": "m.login.password", "user": "alice", "password": PASSWORD},
                 id="legacy-user-localpart"),
    pytest.param({"type": "m.login.password", "user": ALICE, "password": PASSWORD},
                 id="legacy-user-id"),
])
async def test_password_login_succeeds(client: TestClient, body: dict[str, Any]) -> None:
    await register_user(client, "alice")
    status, session = await login(client, body)
    assert status == 200, session
    assert_matches_spec("client-server", "POST", "/login", 200, session)
    assert session["user_id"] == ALICE
    assert session["home_server"] == SERVER_NAME
    assert isinstance(session["device_id"], str) and session["device_id"]
    assert "refresh_token" not in session and "expires_in_ms" not in session

    status, me = await whoami(client, session["access_token"])
    assert status == 200, me
    assert me == {"user_id": ALICE, "device_id": session["device_id"], "is_guest": False}


async def test_each_login_is_a_new_device(client: TestClient) -> None:
    await register_user(client, "alice")
    _, first = await login(client, password_login())
    _, second = await login(client, password_login())
    assert first["device_id"] != second["device_id"]
    assert first["access_token"] != second["access_token"]
    # Both sessions stay alive.
    assert (await whoami(client, first["access_token"]))[0] == 200
    assert (await whoami(client, second["access_token"]))[0] == 200


@pytest.mark.parametrize("user, password", [
    pytest.param("alice", "wrong password", id="wrong-password"),
    pytest.param("alice", "", id="empty-password"),
    pytest.param("nobody", PASSWORD, id="unknown-user"),
    pytest.param("@alice:elsewhere.example", PASSWORD, id="remote-user-id"),
    pytest.param("@alice", PASSWORD, id="user-id-without-server"),
    pytest.param("@:test.local", PASSWORD, id="user-id-empty-localpart"),
    pytest.param("@alice:test.local:8448", PASSWORD, id="user-id-other-port"),
    pytest.param("älice", PASSWORD, id="non-ascii-localpart"),
    pytest.param("a" * 1000, PASSWORD, id="very-long-localpart"),
    pytest.param("alice", "x" * 10_000, id="very-long-password"),
])
async def test_bad_credentials_are_forbidden(client: TestClient, user: str, password: str
                                             ) -> None:
    await register_user(client, "alice")
    status, body = await login(client, password_login(user, password))
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
    assert_matches_spec("client-server", "POST", "/login", 403, body)


async def test_unknown_user_and_wrong_password_look_alike(client: TestClient) -> None:
    await register_user(client, "alice")
    _, wrong = await login(client, password_login("alice", "wrong password"))
    _, unknown = await login(client, password_login("nobody", "wrong password"))
    assert wrong == unknown


@pytest.mark.parametrize("body", [
    pytest.param({"type": "m.login.fancy", "user": "alice", "password": PASSWORD},
                 id="unknown-type"),
    pytest.param({"type": "m.login.token", "token": "abc"}, id="token-login-not-offered"),
    pytest.param({"type": "m.login.password", "password": PASSWORD,
                  "identifier": {"type": "m.id.thirdparty", "medium": "email",
                                 "address": "a@example.org"}},
                 id="unsupported-identifier-type"),
])
async def test_unsupported_login_is_bad_request(client: TestClient, body: dict[str, Any]
                                                ) -> None:
    await register_user(client, "alice")
    status, error = await login(client, body)
    assert status == 400, error
    assert isinstance(error["errcode"], str) and error["errcode"].startswith("M_")
    assert_matches_spec("client-server", "POST", "/login", 400, error)


async def test_device_id_reuse_replaces_the_session(client: TestClient) -> None:
    await register_user(client, "alice")
    status, first = await login(client, password_login(device_id="MYPHONE",
                                                       initial_device_display_name="Phone"))
    assert status == 200, first
    assert first["device_id"] == "MYPHONE"
    status, second = await login(client, password_login(device_id="MYPHONE"))
    assert status == 200, second
    assert second["device_id"] == "MYPHONE"
    assert second["access_token"] != first["access_token"]

    await assert_token_dead(client, first["access_token"])
    status, me = await whoami(client, second["access_token"])
    assert (status, me["device_id"]) == (200, "MYPHONE")
    devices = await devices_of(client, second["access_token"])
    assert list(devices).count("MYPHONE") == 1
    # A reused device keeps its name when the new login gives none.
    assert devices["MYPHONE"]["display_name"] == "Phone"


async def test_initial_device_display_name_is_listed(client: TestClient) -> None:
    await register_user(client, "alice")
    _, session = await login(client, password_login(initial_device_display_name="Alice's laptop"))
    devices = await devices_of(client, session["access_token"])
    assert devices[session["device_id"]]["display_name"] == "Alice's laptop"

    resp = await client.get(f"{V3}/devices/{session['device_id']}",
                            headers=bearer(session["access_token"]))
    assert resp.status == 200
    assert (await resp.json())["display_name"] == "Alice's laptop"


# -- refresh tokens -------------------------------------------------------------------------

async def test_login_with_refresh_token(client: TestClient) -> None:
    await register_user(client, "alice")
    status, session = await login(client, password_login(refresh_token=True))
    assert status == 200, session
    assert_matches_spec("client-server", "POST", "/login", 200, session)
    assert isinstance(session["refresh_token"], str) and session["refresh_token"]
    assert isinstance(session["expires_in_ms"], int) and session["expires_in_ms"] > 0
    assert session["refresh_token"] != session["access_token"]
    assert (await whoami(client, session["access_token"]))[0] == 200


async def refresh(client: TestClient, refresh_token: str, version: str = "v3"
                  ) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"/_matrix/client/{version}/refresh",
                             json={"refresh_token": refresh_token})
    return resp.status, await resp.json()


@pytest.mark.parametrize("version", ["v1", "v3"])
async def test_refresh_rotates_tokens(client: TestClient, version: str) -> None:
    await register_user(client, "alice")
    _, session = await login(client, password_login(refresh_token=True))
    old_access, old_refresh = session["access_token"], session["refresh_token"]
    assert (await whoami(client, old_access))[0] == 200

    status, new = await refresh(client, old_refresh, version)
    assert status == 200, new
    assert_matches_spec("client-server", "POST", "/refresh", 200, new)
    assert new["access_token"] not in (old_access, old_refresh)
    assert new["refresh_token"] not in (old_access, old_refresh)
    assert isinstance(new["expires_in_ms"], int) and new["expires_in_ms"] > 0

    status, me = await whoami(client, new["access_token"])
    assert status == 200, me
    assert me["device_id"] == session["device_id"]
    await assert_token_dead(client, old_access)


async def test_old_refresh_token_lives_until_new_access_token_is_used(client: TestClient
                                                                      ) -> None:
    await register_user(client, "alice")
    _, session = await login(client, password_login(refresh_token=True))
    old_refresh = session["refresh_token"]

    # The response to the first /refresh was "lost": the client retries with the old token.
    status, lost = await refresh(client, old_refresh)
    assert status == 200, lost
    status, retried = await refresh(client, old_refresh)
    assert status == 200, retried
    assert retried["access_token"] != lost["access_token"]
    # Only the latest successor counts; the lost one was replaced.
    await assert_token_dead(client, lost["access_token"])

    # Using the new access token retires the old refresh token.
    assert (await whoami(client, retried["access_token"]))[0] == 200
    status, error = await refresh(client, old_refresh)
    assert (status, error["errcode"]) == (401, "M_UNKNOWN_TOKEN"), error
    assert_matches_spec("client-server", "POST", "/refresh", 401, error)

    # The chain continues from the new refresh token.
    status, third = await refresh(client, retried["refresh_token"])
    assert status == 200, third
    assert (await whoami(client, third["access_token"]))[0] == 200


@pytest.mark.parametrize("config_overrides", [{"auth": {"refresh_token_lifetime_ms": 1}}])
async def test_expired_refresh_token(client: TestClient) -> None:
    await register_user(client, "alice")
    _, session = await login(client, password_login(refresh_token=True))
    await asyncio.sleep(0.02)
    status, error = await refresh(client, session["refresh_token"])
    assert (status, error["errcode"]) == (401, "M_UNKNOWN_TOKEN"), error
    assert_matches_spec("client-server", "POST", "/refresh", 401, error)


@pytest.mark.parametrize("token", ["", "ktr_nonsense", "kta_not_a_refresh_token"])
async def test_refresh_with_unknown_token(client: TestClient, token: str) -> None:
    status, error = await refresh(client, token)
    assert (status, error["errcode"]) == (401, "M_UNKNOWN_TOKEN"), error


async def test_access_token_is_not_a_refresh_token(client: TestClient) -> None:
    await register_user(client, "alice")
    _, session = await login(client, password_login(refresh_token=True))
    status, error = await refresh(client, session["access_token"])
    assert (status, error["errcode"]) == (401, "M_UNKNOWN_TOKEN"), error


async def test_logout_kills_refresh_token(client: TestClient) -> None:
    await register_user(client, "alice")
    _, session = await login(client, password_login(refresh_token=True))
    resp = await client.post(f"{V3}/logout", headers=bearer(session["access_token"]))
    assert resp.status == 200
    status, error = await refresh(client, session["refresh_token"])
    assert (status, error["errcode"]) == (401, "M_UNKNOWN_TOKEN"), error


# -- logout ---------------------------------------------------------------------------------

async def test_logout_revokes_token_and_deletes_device(client: TestClient) -> None:
    await register_user(client, "alice")
    _, keep = await login(client, password_login())
    _, leaving = await login(client, password_login())
    assert leaving["device_id"] in await devices_of(client, keep["access_token"])

    resp = await client.post(f"{V3}/logout", headers=bearer(leaving["access_token"]))
    assert resp.status == 200
    body = await resp.json()
    assert body == {}
    assert_matches_spec("client-server", "POST", "/logout", 200, body)

    await assert_token_dead(client, leaving["access_token"])
    assert leaving["device_id"] not in await devices_of(client, keep["access_token"])
    assert (await whoami(client, keep["access_token"]))[0] == 200

    # Logging out twice: the token is gone.
    resp = await client.post(f"{V3}/logout", headers=bearer(leaving["access_token"]))
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_logout_all_revokes_every_session(client: TestClient) -> None:
    registered = await register_user(client, "alice")
    sessions = [(await login(client, password_login()))[1] for _ in range(2)]
    await register_user(client, "bob")
    _, bob = await login(client, password_login("bob"))

    resp = await client.post(f"{V3}/logout/all", headers=bearer(sessions[0]["access_token"]))
    assert resp.status == 200
    body = await resp.json()
    assert body == {}
    assert_matches_spec("client-server", "POST", "/logout/all", 200, body)

    for token in [registered["access_token"], *(s["access_token"] for s in sessions)]:
        await assert_token_dead(client, token)
    # Other users are untouched.
    assert (await whoami(client, bob["access_token"]))[0] == 200
    # Logging in again works and starts with only the new device.
    _, fresh = await login(client, password_login())
    assert list(await devices_of(client, fresh["access_token"])) == [fresh["device_id"]]


@pytest.mark.parametrize("path", ["/logout", "/logout/all"])
async def test_logout_requires_a_token(client: TestClient, path: str) -> None:
    resp = await client.post(f"{V3}{path}")
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"


# -- whoami ---------------------------------------------------------------------------------

async def test_whoami(client: TestClient) -> None:
    registered = await register_user(client, "alice")
    status, body = await whoami(client, registered["access_token"])
    assert status == 200
    assert_matches_spec("client-server", "GET", "/account/whoami", 200, body)
    assert body == {"user_id": ALICE, "device_id": registered["device_id"], "is_guest": False}


async def test_whoami_without_token(client: TestClient) -> None:
    resp = await client.get(f"{V3}/account/whoami")
    assert resp.status == 401
    body = await resp.json()
    assert body["errcode"] == "M_MISSING_TOKEN"
    assert_matches_spec("client-server", "GET", "/account/whoami", 401, body)


# -- deactivation ---------------------------------------------------------------------------

async def test_deactivated_account_cannot_log_in(client: TestClient) -> None:
    registered = await register_user(client, "alice")
    token = registered["access_token"]
    resp = await client.post(f"{V3}/account/deactivate", json={}, headers=bearer(token))
    assert resp.status == 401
    uia = await resp.json()
    assert {"stages": ["m.login.password"]} in uia["flows"]

    resp = await client.post(f"{V3}/account/deactivate", headers=bearer(token), json={"auth": {
        "type": "m.login.password", "session": uia["session"],
        "identifier": {"type": "m.id.user", "user": "alice"}, "password": PASSWORD}})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert_matches_spec("client-server", "POST", "/account/deactivate", 200, body)

    await assert_token_dead(client, token)
    status, error = await login(client, password_login())
    assert (status, error["errcode"]) == (403, "M_USER_DEACTIVATED"), error
    # The wrong password does not reveal that the account is deactivated.
    status, error = await login(client, password_login(password="wrong password"))
    assert (status, error["errcode"]) == (403, "M_FORBIDDEN"), error
    # And the name stays taken.
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_USER_IN_USE"


# -- discovery ------------------------------------------------------------------------------

async def test_versions(client: TestClient) -> None:
    resp = await client.get("/_matrix/client/versions")
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/versions", 200, body)
    assert "v1.1" in body["versions"]
    assert all(isinstance(v, bool) for v in body.get("unstable_features", {}).values())
    for feature in ("org.ktchat.sse", "org.ktchat.friends", "org.ktchat.history"):
        assert feature in body["unstable_features"]


async def test_versions_needs_no_auth_but_accepts_it(client: TestClient) -> None:
    registered = await register_user(client, "alice")
    resp = await client.get("/_matrix/client/versions",
                            headers=bearer(registered["access_token"]))
    assert resp.status == 200


async def test_well_known_client(client: TestClient) -> None:
    resp = await client.get("/.well-known/matrix/client")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/matrix/client", 200, body)
    assert body["m.homeserver"]["base_url"] == "http://127.0.0.1:8008/"


async def test_capabilities(client: TestClient) -> None:
    registered = await register_user(client, "alice")
    resp = await client.get(f"{V3}/capabilities", headers=bearer(registered["access_token"]))
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/capabilities", 200, body)
    caps = body["capabilities"]
    versions = caps["m.room_versions"]
    assert versions["default"] in versions["available"]
    assert set(versions["available"].values()) <= {"stable", "unstable"}
    assert caps["m.change_password"]["enabled"] is True


async def test_capabilities_requires_auth(client: TestClient) -> None:
    resp = await client.get(f"{V3}/capabilities")
    assert resp.status == 401
    body = await resp.json()
    # (The spec lists no 401 for /capabilities; the error contract still applies.)
    assert set(body) == {"errcode", "error"} and body["errcode"] == "M_MISSING_TOKEN"
