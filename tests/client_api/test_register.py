"""Registration over real HTTP: /register with user-interactive auth, registration tokens,
/register/available and the registration-token validity check.

Successful and UIA bodies are validated against the spec's OpenAPI definitions.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from tests.conftest import SERVER_NAME, bearer, register_user
from tests.helpers.spec import assert_matches_spec

V3 = "/_matrix/client/v3"
REGISTER = f"{V3}/register"
ADMIN = "/_synapse/admin/v1"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
PASSWORD = "correct horse"
REQUIRE_TOKEN = {"registration": {"require_token": True}}


async def post_register(client: TestClient, body: dict[str, Any], **query: str
                        ) -> tuple[int, dict[str, Any]]:
    resp = await client.post(REGISTER, json=body, params=query or None)
    return resp.status, await resp.json()


async def start_session(client: TestClient, body: dict[str, Any]) -> str:
    """The first /register round: 401 with a session."""
    status, uia = await post_register(client, body)
    assert status == 401, uia
    return uia["session"]  # type: ignore[no-any-return]


async def whoami(client: TestClient, token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get(f"{V3}/account/whoami", headers=bearer(token))
    return resp.status, await resp.json()


async def make_admin(client: TestClient, username: str = "admin") -> str:
    """An admin's access token, via shared-secret registration."""
    resp = await client.get(f"{ADMIN}/register")
    nonce = (await resp.json())["nonce"]
    mac = hmac.new(b"s3cret", digestmod=hashlib.sha1)
    mac.update(f"{nonce}\0{username}\0{PASSWORD}\0admin".encode())
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": nonce, "username": username, "password": PASSWORD, "admin": True,
        "mac": mac.hexdigest()})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["access_token"]  # type: ignore[no-any-return]


async def new_token(client: TestClient, admin: str, **body: Any) -> dict[str, Any]:
    resp = await client.post(f"{ADMIN}/registration_tokens/new", json=body,
                             headers=bearer(admin))
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def register_with_token(client: TestClient, username: str, token: str
                              ) -> tuple[int, dict[str, Any]]:
    session = await start_session(client, {"username": username, "password": PASSWORD})
    return await post_register(client, {
        "username": username, "password": PASSWORD,
        "auth": {"type": "m.login.registration_token", "token": token, "session": session}})


# -- disabled registration and account kinds --------------------------------------------------

@pytest.mark.parametrize("config_overrides", [{"registration": {"enabled": False}}])
async def test_disabled_registration_is_forbidden(client: TestClient) -> None:
    status, body = await post_register(client, {"username": "alice", "password": PASSWORD})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert_matches_spec("client-server", "POST", "/register", 403, body)
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert resp.status == 403


async def test_guest_registration_is_forbidden(client: TestClient) -> None:
    status, body = await post_register(client, {}, kind="guest")
    assert (status, body["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN"), body
    assert_matches_spec("client-server", "POST", "/register", 403, body)


async def test_unknown_kind_is_rejected(client: TestClient) -> None:
    status, body = await post_register(client, {}, kind="robot")
    assert status == 400, body


# -- the dummy flow ---------------------------------------------------------------------------

async def test_first_call_asks_for_dummy_auth(client: TestClient) -> None:
    status, body = await post_register(client, {"username": "alice", "password": PASSWORD})
    assert status == 401, body
    assert_matches_spec("client-server", "POST", "/register", 401, body)
    assert body["flows"] == [{"stages": ["m.login.dummy"]}]
    assert body["params"] == {}
    assert isinstance(body["session"], str) and body["session"]
    assert body.get("completed", []) == []
    assert "errcode" not in body


async def test_dummy_completes_registration(client: TestClient) -> None:
    session = await start_session(client, {"username": "alice", "password": PASSWORD})
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD, "device_id": "MYPHONE",
        "initial_device_display_name": "Alice's phone",
        "auth": {"type": "m.login.dummy", "session": session}})
    assert status == 200, body
    assert_matches_spec("client-server", "POST", "/register", 200, body)
    assert body["user_id"] == f"@alice:{SERVER_NAME}"
    assert body["device_id"] == "MYPHONE"
    assert body["access_token"]
    assert "refresh_token" not in body and "expires_in_ms" not in body
    status, me = await whoami(client, body["access_token"])
    assert status == 200, me
    assert (me["user_id"], me["device_id"]) == (body["user_id"], "MYPHONE")
    resp = await client.get(f"{V3}/devices/MYPHONE", headers=bearer(body["access_token"]))
    assert (await resp.json())["display_name"] == "Alice's phone"


async def test_dummy_without_prior_session_also_works(client: TestClient) -> None:
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
    assert status == 200, body
    assert body["user_id"] == f"@alice:{SERVER_NAME}"


async def test_new_account_can_log_in(client: TestClient) -> None:
    await register_user(client, "alice")
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["user_id"] == f"@alice:{SERVER_NAME}"


async def test_inhibit_login_returns_no_token(client: TestClient, services: Services) -> None:
    body = await register_user(client, "alice", inhibit_login=True)
    assert_matches_spec("client-server", "POST", "/register", 200, body)
    assert body["user_id"] == f"@alice:{SERVER_NAME}"
    assert "access_token" not in body
    assert "device_id" not in body
    assert "refresh_token" not in body
    assert await services.devices.list_devices(body["user_id"]) == []


async def test_refresh_token_requested(client: TestClient) -> None:
    body = await register_user(client, "alice", refresh_token=True)
    assert_matches_spec("client-server", "POST", "/register", 200, body)
    assert body["refresh_token"]
    assert isinstance(body["expires_in_ms"], int) and body["expires_in_ms"] > 0
    resp = await client.post(f"{V3}/refresh", json={"refresh_token": body["refresh_token"]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["access_token"] != body["access_token"]


async def test_missing_username_generates_user_id(client: TestClient) -> None:
    body = await register_user_without_username(client)
    assert_matches_spec("client-server", "POST", "/register", 200, body)
    localpart, server = body["user_id"][1:].split(":", 1)
    assert server == SERVER_NAME
    assert localpart and all(c in "abcdefghijklmnopqrstuvwxyz0123456789._=-/+" for c in localpart)
    status, me = await whoami(client, body["access_token"])
    assert (status, me["user_id"]) == (200, body["user_id"])
    other = await register_user_without_username(client)
    assert other["user_id"] != body["user_id"]


async def register_user_without_username(client: TestClient) -> dict[str, Any]:
    session = await start_session(client, {"password": PASSWORD})
    status, body = await post_register(client, {
        "password": PASSWORD, "auth": {"type": "m.login.dummy", "session": session}})
    assert status == 200, body
    return body


async def test_missing_password_after_auth_is_an_error(client: TestClient) -> None:
    session = await start_session(client, {"username": "alice"})
    status, body = await post_register(client, {
        "username": "alice", "auth": {"type": "m.login.dummy", "session": session}})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM"), body


# -- username and password checks -------------------------------------------------------------

async def test_user_in_use(client: TestClient) -> None:
    await register_user(client, "alice")
    status, body = await post_register(client, {"username": "alice", "password": PASSWORD})
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE"), body
    assert_matches_spec("client-server", "POST", "/register", 400, body)
    # Case does not make a different account.
    status, body = await post_register(client, {"username": "ALICE", "password": PASSWORD})
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE"), body


async def test_user_in_use_is_checked_after_auth_too(client: TestClient) -> None:
    session = await start_session(client, {"username": "alice", "password": PASSWORD})
    await register_user(client, "alice")
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD,
        "auth": {"type": "m.login.dummy", "session": session}})
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE"), body


async def test_upper_case_username_is_lowercased(client: TestClient) -> None:
    body = await register_user(client, "Alice-UPPER")
    assert body["user_id"] == f"@alice-upper:{SERVER_NAME}"
    resp = await client.get(f"{V3}/profile/{body['user_id']}/displayname")
    assert resp.status == 200
    # The default display name is the localpart the account really has.
    assert (await resp.json()) == {"displayname": "alice-upper"}


@pytest.mark.parametrize("username", [
    "al ice", "alice!", "al:ice", "al@ice", "ali\u00e7e", "_alice",
])
async def test_invalid_username(client: TestClient, username: str) -> None:
    status, body = await post_register(client, {"username": username, "password": PASSWORD})
    assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME"), body
    assert_matches_spec("client-server", "POST", "/register", 400, body)


async def test_username_too_long_for_user_id(client: TestClient) -> None:
    # Short enough for the body limit, too long once "@" and ":server" are added.
    username = "a" * (255 - len(SERVER_NAME) - 1)
    status, body = await post_register(client, {"username": username, "password": PASSWORD})
    assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME"), body


async def test_absurdly_long_username_is_rejected(client: TestClient) -> None:
    status, body = await post_register(client, {"username": "a" * 1000, "password": PASSWORD})
    assert status == 400, body
    assert body["errcode"] in ("M_BAD_JSON", "M_INVALID_USERNAME"), body


async def test_weak_password(client: TestClient) -> None:
    status, body = await post_register(client, {"username": "alice", "password": "short"})
    assert (status, body["errcode"]) == (400, "M_WEAK_PASSWORD"), body
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert (await resp.json()) == {"available": True}


@pytest.mark.parametrize("body", [
    {"username": 5, "password": PASSWORD},
    {"username": "alice", "password": ["x"]},
    {"username": "alice", "password": PASSWORD, "inhibit_login": "yes"},
])
async def test_wrongly_typed_fields(client: TestClient, body: dict[str, Any]) -> None:
    status, resp = await post_register(client, body)
    assert (status, resp["errcode"]) == (400, "M_BAD_JSON"), resp


async def test_malformed_json(client: TestClient) -> None:
    resp = await client.post(REGISTER, data=b"{not json",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


# -- UIA sessions -----------------------------------------------------------------------------

async def test_unknown_session(client: TestClient) -> None:
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD,
        "auth": {"type": "m.login.dummy", "session": "no-such-session"}})
    assert status == 400, body
    assert body["errcode"].startswith("M_")


async def test_expired_session(client: TestClient, services: Services,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    session = await start_session(client, {"username": "alice", "password": PASSWORD})
    later = services.clock.time_ms() + services.config.auth.ui_auth_session_timeout_ms + 1000
    monkeypatch.setattr(services.clock, "time_ms", lambda: later)
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD,
        "auth": {"type": "m.login.dummy", "session": session}})
    assert status == 400, body
    assert "access_token" not in body


async def test_session_is_single_use(client: TestClient) -> None:
    session = await start_session(client, {"username": "alice", "password": PASSWORD})
    status, _ = await post_register(client, {
        "username": "alice", "password": PASSWORD,
        "auth": {"type": "m.login.dummy", "session": session}})
    assert status == 200
    status, body = await post_register(client, {
        "username": "bob", "password": PASSWORD,
        "auth": {"type": "m.login.dummy", "session": session}})
    assert status == 400, body


async def test_register_session_cannot_be_used_elsewhere(client: TestClient) -> None:
    alice = await register_user(client, "alice")
    session = await start_session(client, {"username": "bob", "password": PASSWORD})
    resp = await client.post(f"{V3}/account/password", headers=bearer(alice["access_token"]),
                             json={"new_password": "a new password",
                                   "auth": {"type": "m.login.password", "session": session,
                                            "identifier": {"type": "m.id.user",
                                                           "user": "alice"},
                                            "password": PASSWORD}})
    assert resp.status == 403, await resp.text()
    resp = await client.post(f"{V3}/account/deactivate", headers=bearer(alice["access_token"]),
                             json={"auth": {"type": "m.login.dummy", "session": session}})
    assert resp.status == 403, await resp.text()
    # Alice is still there with her old password, and the session still registers bob.
    status, me = await whoami(client, alice["access_token"])
    assert status == 200, me
    status, body = await post_register(client, {
        "username": "bob", "password": PASSWORD,
        "auth": {"type": "m.login.dummy", "session": session}})
    assert status == 200, body


async def test_stage_not_offered(client: TestClient) -> None:
    session = await start_session(client, {"username": "alice", "password": PASSWORD})
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD,
        "auth": {"type": "m.login.password", "session": session, "password": "x"}})
    assert status in (400, 401), body
    assert "errcode" in body
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert (await resp.json()) == {"available": True}


# -- registration tokens ----------------------------------------------------------------------

@pytest.mark.parametrize("config_overrides", [REQUIRE_TOKEN])
async def test_require_token_offers_token_flow(client: TestClient) -> None:
    status, body = await post_register(client, {"username": "alice", "password": PASSWORD})
    assert status == 401, body
    assert_matches_spec("client-server", "POST", "/register", 401, body)
    assert body["flows"] == [{"stages": ["m.login.registration_token"]}]
    # The dummy stage does not get around the token.
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD,
        "auth": {"type": "m.login.dummy", "session": body["session"]}})
    assert status in (400, 401), body
    assert "access_token" not in body


@pytest.mark.parametrize("config_overrides", [REQUIRE_TOKEN])
async def test_invalid_token(client: TestClient) -> None:
    status, body = await register_with_token(client, "alice", "nope")
    assert status == 401, body
    assert_matches_spec("client-server", "POST", "/register", 401, body)
    assert body["errcode"] == "M_FORBIDDEN"
    assert body["flows"] == [{"stages": ["m.login.registration_token"]}]
    assert body.get("completed", []) == []


@pytest.mark.parametrize("config_overrides", [REQUIRE_TOKEN])
async def test_valid_token_registers_and_counts(client: TestClient) -> None:
    admin = await make_admin(client)
    token = (await new_token(client, admin, token="letmein"))["token"]
    assert token == "letmein"
    status, body = await register_with_token(client, "alice", token)
    assert status == 200, body
    assert_matches_spec("client-server", "POST", "/register", 200, body)
    assert body["user_id"] == f"@alice:{SERVER_NAME}"
    resp = await client.get(f"{ADMIN}/registration_tokens/letmein", headers=bearer(admin))
    info = await resp.json()
    assert (info["pending"], info["completed"]) == (0, 1)


@pytest.mark.parametrize("config_overrides", [REQUIRE_TOKEN])
async def test_token_uses_allowed(client: TestClient) -> None:
    admin = await make_admin(client)
    token = (await new_token(client, admin, uses_allowed=1))["token"]
    resp = await client.get(VALIDITY, params={"token": token})
    assert (await resp.json()) == {"valid": True}
    status, body = await register_with_token(client, "alice", token)
    assert status == 200, body
    status, body = await register_with_token(client, "bob", token)
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN"), body
    resp = await client.get(VALIDITY, params={"token": token})
    assert (await resp.json()) == {"valid": False}


@pytest.mark.parametrize("config_overrides", [REQUIRE_TOKEN])
async def test_token_expiry(client: TestClient, services: Services,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    admin = await make_admin(client)
    now = services.clock.time_ms()
    token = (await new_token(client, admin, expiry_time=now + 60_000))["token"]
    resp = await client.get(VALIDITY, params={"token": token})
    assert (await resp.json()) == {"valid": True}
    monkeypatch.setattr(services.clock, "time_ms", lambda: now + 120_000)
    resp = await client.get(VALIDITY, params={"token": token})
    assert (await resp.json()) == {"valid": False}
    status, body = await register_with_token(client, "alice", token)
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN"), body


@pytest.mark.parametrize("config_overrides", [REQUIRE_TOKEN])
async def test_completed_token_stage_is_not_counted_twice(client: TestClient) -> None:
    admin = await make_admin(client)
    token = (await new_token(client, admin, uses_allowed=1))["token"]
    session = await start_session(client, {"username": "alice"})
    # The stage completes, but the request fails for want of a password...
    status, body = await post_register(client, {
        "username": "alice",
        "auth": {"type": "m.login.registration_token", "token": token, "session": session}})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM"), body
    # ...and the retry in the same session still goes through on the one use.
    status, body = await post_register(client, {
        "username": "alice", "password": PASSWORD,
        "auth": {"type": "m.login.registration_token", "token": token, "session": session}})
    assert status == 200, body


async def test_token_validity_endpoint(client: TestClient) -> None:
    admin = await make_admin(client)
    token = (await new_token(client, admin))["token"]
    resp = await client.get(VALIDITY, params={"token": token})
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/register/m.login.registration_token/validity",
                        200, body)
    assert body == {"valid": True}
    resp = await client.get(VALIDITY, params={"token": "unknown"})
    assert (await resp.json()) == {"valid": False}
    resp = await client.get(VALIDITY)
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_MISSING_PARAM"


@pytest.mark.parametrize("config_overrides", [{"registration": {"enabled": False}}])
async def test_token_validity_when_registration_disabled(client: TestClient) -> None:
    resp = await client.get(VALIDITY, params={"token": "abc"})
    assert resp.status == 403
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/register/m.login.registration_token/validity",
                        403, body)


# -- /register/available ----------------------------------------------------------------------

async def test_available(client: TestClient) -> None:
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/register/available", 200, body)
    assert body == {"available": True}


async def test_available_in_use(client: TestClient) -> None:
    await register_user(client, "alice")
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert resp.status == 400
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/register/available", 400, body)
    assert body["errcode"] == "M_USER_IN_USE"


@pytest.mark.parametrize("username", ["al ice", "_alice", "alice!"])
async def test_available_invalid(client: TestClient, username: str) -> None:
    resp = await client.get(f"{V3}/register/available", params={"username": username})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_INVALID_USERNAME"


async def test_available_missing_username(client: TestClient) -> None:
    resp = await client.get(f"{V3}/register/available")
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_MISSING_PARAM"


async def test_r0_prefix_also_registers(client: TestClient) -> None:
    resp = await client.post("/_matrix/client/r0/register",
                             json={"username": "alice", "password": PASSWORD,
                                   "auth": {"type": "m.login.dummy"}})
    assert resp.status == 200, await resp.text()
