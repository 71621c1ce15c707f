"""The account itself over real HTTP: /account/password and /account/deactivate, both behind
user-interactive auth with the m.login.password stage."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import SERVER_NAME, bearer, register_user
from tests.helpers.spec import assert_matches_spec

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse"
NEW_PASSWORD = "battery staple"
ALICE = f"@alice:{SERVER_NAME}"


def password_auth(session: str | None, password: str = PASSWORD, user: str = "alice"
                  ) -> dict[str, Any]:
    auth: dict[str, Any] = {"type": "m.login.password", "password": password,
                            "identifier": {"type": "m.id.user", "user": user}}
    if session is not None:
        auth["session"] = session
    return auth


async def login(client: TestClient, password: str = PASSWORD, user: str = "alice"
                ) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
        "password": password})
    return resp.status, await resp.json()


async def login_ok(client: TestClient) -> str:
    status, body = await login(client)
    assert status == 200, body
    return body["access_token"]  # type: ignore[no-any-return]


async def post(client: TestClient, path: str, token: str, body: dict[str, Any]
               ) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"{V3}{path}", json=body, headers=bearer(token))
    return resp.status, await resp.json()


async def whoami_status(client: TestClient, token: str) -> int:
    resp = await client.get(f"{V3}/account/whoami", headers=bearer(token))
    return resp.status


async def start_uia(client: TestClient, path: str, token: str, body: dict[str, Any]
                    ) -> dict[str, Any]:
    status, uia = await post(client, path, token, body)
    assert status == 401, uia
    assert_matches_spec("client-server", "POST", path, 401, uia)
    assert uia["flows"] == [{"stages": ["m.login.password"]}]
    assert uia["session"]
    return uia


# -- /account/password ------------------------------------------------------------------------

async def test_password_change_requires_uia(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    uia = await start_uia(client, "/account/password", token, {"new_password": NEW_PASSWORD})
    assert "errcode" not in uia
    assert uia["params"] == {}
    # Nothing changed yet.
    assert (await login(client))[0] == 200


async def test_password_change_needs_access_token(client: TestClient) -> None:
    resp = await client.post(f"{V3}/account/password", json={
        "new_password": NEW_PASSWORD, "auth": password_auth(None)})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"


async def test_wrong_password_is_401_with_errcode(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    uia = await start_uia(client, "/account/password", token, {"new_password": NEW_PASSWORD})
    status, body = await post(client, "/account/password", token, {
        "new_password": NEW_PASSWORD, "auth": password_auth(uia["session"], "wrong pw!")})
    assert status == 401, body
    assert_matches_spec("client-server", "POST", "/account/password", 401, body)
    assert body["errcode"] == "M_FORBIDDEN"
    assert body["flows"] == [{"stages": ["m.login.password"]}]
    assert body["session"] == uia["session"]
    assert body.get("completed", []) == []
    # The same session still accepts the right password afterwards.
    status, body = await post(client, "/account/password", token, {
        "new_password": NEW_PASSWORD, "auth": password_auth(uia["session"])})
    assert status == 200, body


async def test_someone_elses_identifier_is_refused(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    await register_user(client, "bob")
    uia = await start_uia(client, "/account/password", token, {"new_password": NEW_PASSWORD})
    # Bob's correct password does not authorise a change on Alice's account.
    status, body = await post(client, "/account/password", token, {
        "new_password": NEW_PASSWORD, "auth": password_auth(uia["session"], user="bob")})
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN"), body
    assert (await login(client))[0] == 200


async def test_password_change(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    uia = await start_uia(client, "/account/password", token, {"new_password": NEW_PASSWORD})
    status, body = await post(client, "/account/password", token, {
        "new_password": NEW_PASSWORD, "auth": password_auth(uia["session"])})
    assert status == 200, body
    assert_matches_spec("client-server", "POST", "/account/password", 200, body)
    assert body == {}
    status, body = await login(client)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    status, body = await login(client, NEW_PASSWORD)
    assert status == 200, body
    # The session is closed once used.
    status, body = await post(client, "/account/password", token, {
        "new_password": "yet another one", "auth": password_auth(uia["session"],
                                                                  NEW_PASSWORD)})
    assert status == 400, body


async def test_password_change_logs_out_other_devices(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    others = [await login_ok(client), await login_ok(client)]
    uia = await start_uia(client, "/account/password", token, {"new_password": NEW_PASSWORD})
    status, body = await post(client, "/account/password", token, {
        "new_password": NEW_PASSWORD, "auth": password_auth(uia["session"])})
    assert status == 200, body
    for other in others:
        resp = await client.get(f"{V3}/account/whoami", headers=bearer(other))
        assert resp.status == 401
        assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert await whoami_status(client, token) == 200
    resp = await client.get(f"{V3}/devices", headers=bearer(token))
    assert len((await resp.json())["devices"]) == 1


async def test_password_change_revokes_other_devices_refresh_tokens(client: TestClient
                                                                    ) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD, "refresh_token": True})
    refresh = (await resp.json())["refresh_token"]
    status, body = await post(client, "/account/password", token, {
        "new_password": NEW_PASSWORD, "auth": password_auth(None)})
    assert status == 200, body
    resp = await client.post(f"{V3}/refresh", json={"refresh_token": refresh})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_password_change_can_keep_other_devices(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    other = await login_ok(client)
    uia = await start_uia(client, "/account/password", token,
                          {"new_password": NEW_PASSWORD, "logout_devices": False})
    status, body = await post(client, "/account/password", token, {
        "new_password": NEW_PASSWORD, "logout_devices": False,
        "auth": password_auth(uia["session"])})
    assert status == 200, body
    assert await whoami_status(client, other) == 200
    assert await whoami_status(client, token) == 200
    assert (await login(client, NEW_PASSWORD))[0] == 200


async def test_weak_new_password(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    status, body = await post(client, "/account/password", token,
                              {"new_password": "short", "auth": password_auth(None)})
    assert (status, body["errcode"]) == (400, "M_WEAK_PASSWORD"), body
    assert (await login(client))[0] == 200


async def test_missing_new_password(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    status, body = await post(client, "/account/password", token, {"auth": password_auth(None)})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM"), body


async def test_password_session_cannot_be_used_by_another_user(client: TestClient) -> None:
    alice = (await register_user(client, "alice"))["access_token"]
    bob = (await register_user(client, "bob"))["access_token"]
    uia = await start_uia(client, "/account/password", alice, {"new_password": NEW_PASSWORD})
    status, body = await post(client, "/account/password", bob, {
        "new_password": NEW_PASSWORD, "auth": password_auth(uia["session"], user="bob")})
    assert status == 403, body
    assert (await login(client, user="bob"))[0] == 200


async def test_password_session_cannot_be_used_to_deactivate(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    uia = await start_uia(client, "/account/password", token, {"new_password": NEW_PASSWORD})
    status, body = await post(client, "/account/deactivate", token,
                              {"auth": password_auth(uia["session"])})
    assert status == 403, body
    assert await whoami_status(client, token) == 200


# -- /account/deactivate ----------------------------------------------------------------------

async def test_deactivate(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    other = await login_ok(client)
    uia = await start_uia(client, "/account/deactivate", token, {})
    assert await whoami_status(client, token) == 200
    status, body = await post(client, "/account/deactivate", token,
                              {"auth": password_auth(uia["session"])})
    assert status == 200, body
    assert_matches_spec("client-server", "POST", "/account/deactivate", 200, body)
    assert body["id_server_unbind_result"] == "no-support"
    for t in (token, other):
        resp = await client.get(f"{V3}/account/whoami", headers=bearer(t))
        assert resp.status == 401
        assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = await login(client)
    assert (status, body["errcode"]) == (403, "M_USER_DEACTIVATED"), body
    # A wrong password says nothing about the account's state.
    status, body = await login(client, "wrong pw!")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    # The user ID stays taken.
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert (await resp.json())["errcode"] == "M_USER_IN_USE"


async def test_deactivate_revokes_refresh_tokens(client: TestClient) -> None:
    body = await register_user(client, "alice", refresh_token=True)
    status, resp_body = await post(client, "/account/deactivate", body["access_token"],
                                   {"auth": password_auth(None)})
    assert status == 200, resp_body
    resp = await client.post(f"{V3}/refresh", json={"refresh_token": body["refresh_token"]})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_deactivate_wrong_password(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    uia = await start_uia(client, "/account/deactivate", token, {})
    status, body = await post(client, "/account/deactivate", token,
                              {"auth": password_auth(uia["session"], "wrong pw!")})
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN"), body
    assert_matches_spec("client-server", "POST", "/account/deactivate", 401, body)
    assert await whoami_status(client, token) == 200


async def test_deactivate_keeps_profile_without_erase(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    status, body = await post(client, "/account/deactivate", token,
                              {"auth": password_auth(None)})
    assert status == 200, body
    resp = await client.get(f"{V3}/profile/{ALICE}/displayname")
    assert resp.status == 200
    assert await resp.json() == {"displayname": "alice"}


async def test_deactivate_with_erase_clears_profile(client: TestClient) -> None:
    token = (await register_user(client, "alice"))["access_token"]
    resp = await client.put(f"{V3}/profile/{ALICE}/avatar_url", headers=bearer(token),
                            json={"avatar_url": "mxc://test.local/abc"})
    assert resp.status == 200
    status, body = await post(client, "/account/deactivate", token,
                              {"erase": True, "auth": password_auth(None)})
    assert status == 200, body
    for field in ("displayname", "avatar_url"):
        resp = await client.get(f"{V3}/profile/{ALICE}/{field}")
        assert resp.status == 404, field
        assert (await resp.json())["errcode"] == "M_NOT_FOUND"
    # Nothing left: "no profile information for this user" (Synapse answers the same).
    resp = await client.get(f"{V3}/profile/{ALICE}")
    assert resp.status == 404
    body = await resp.json()
    assert_matches_spec("client-server", "GET", f"/profile/{ALICE}", 404, body)
    assert body["errcode"] == "M_NOT_FOUND"


async def test_deactivate_needs_access_token(client: TestClient) -> None:
    resp = await client.post(f"{V3}/account/deactivate", json={"auth": password_auth(None)})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
