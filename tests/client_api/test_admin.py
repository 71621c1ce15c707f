"""The Synapse-compatible admin API: shared-secret registration (as ``register_new_matrix_user``
does it) and the registration-token API."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from tests.conftest import SERVER_NAME, bearer, register_user

ADMIN = "/_synapse/admin/v1"
V3 = "/_matrix/client/v3"
SECRET = b"s3cret"
PASSWORD = "correct horse"


def mac_for(nonce: str, username: str, password: str, admin: bool,
            user_type: str | None = None, secret: bytes = SECRET) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha1)
    mac.update(nonce.encode() + b"\x00" + username.encode() + b"\x00" + password.encode()
               + b"\x00" + (b"admin" if admin else b"notadmin"))
    if user_type:
        mac.update(b"\x00" + user_type.encode())
    return mac.hexdigest()


async def get_nonce(client: TestClient) -> str:
    resp = await client.get(f"{ADMIN}/register")
    assert resp.status == 200, await resp.text()
    nonce = (await resp.json())["nonce"]
    assert isinstance(nonce, str) and nonce
    return nonce


async def shared_secret_register(client: TestClient, username: str, *, admin: bool = False,
                                 password: str = PASSWORD, **extra: Any
                                 ) -> tuple[int, dict[str, Any]]:
    nonce = await get_nonce(client)
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": nonce, "username": username, "password": password, "admin": admin,
        "mac": mac_for(nonce, username, password, admin), **extra})
    return resp.status, await resp.json()


async def admin_token(client: TestClient) -> str:
    status, body = await shared_secret_register(client, "admin", admin=True)
    assert status == 200, body
    return body["access_token"]  # type: ignore[no-any-return]


async def whoami(client: TestClient, token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get(f"{V3}/account/whoami", headers=bearer(token))
    return resp.status, await resp.json()


# -- shared-secret registration ---------------------------------------------------------------

async def test_nonces_are_fresh(client: TestClient) -> None:
    assert await get_nonce(client) != await get_nonce(client)


async def test_shared_secret_registration(client: TestClient) -> None:
    status, body = await shared_secret_register(client, "alice", displayname="Alice A.")
    assert status == 200, body
    assert body["user_id"] == f"@alice:{SERVER_NAME}"
    assert body["home_server"] == SERVER_NAME
    assert body["device_id"]
    status, me = await whoami(client, body["access_token"])
    assert status == 200, me
    assert (me["user_id"], me["device_id"]) == (body["user_id"], body["device_id"])
    # The password works for a normal login, and the display name was taken.
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"{V3}/profile/@alice:{SERVER_NAME}/displayname")
    assert (await resp.json()) == {"displayname": "Alice A."}


async def test_shared_secret_not_admin_by_default(client: TestClient) -> None:
    status, body = await shared_secret_register(client, "alice")
    assert status == 200, body
    resp = await client.get(f"{ADMIN}/registration_tokens", headers=bearer(body["access_token"]))
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_shared_secret_admin_flag_makes_admin(client: TestClient) -> None:
    token = await admin_token(client)
    resp = await client.get(f"{ADMIN}/registration_tokens", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json()) == {"registration_tokens": []}


async def test_shared_secret_with_user_type(client: TestClient) -> None:
    nonce = await get_nonce(client)
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": nonce, "username": "bot", "password": PASSWORD, "admin": False,
        "user_type": "bot", "mac": mac_for(nonce, "bot", PASSWORD, False, "bot")})
    assert resp.status == 200, await resp.text()
    # The user type is part of the MAC: leaving it out of the MAC fails.
    nonce = await get_nonce(client)
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": nonce, "username": "bot2", "password": PASSWORD, "admin": False,
        "user_type": "bot", "mac": mac_for(nonce, "bot2", PASSWORD, False)})
    assert resp.status == 403


async def test_bad_mac(client: TestClient, services: Services) -> None:
    nonce = await get_nonce(client)
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": nonce, "username": "alice", "password": PASSWORD, "admin": False,
        "mac": mac_for(nonce, "alice", PASSWORD, False, secret=b"wrong")})
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"
    assert await services.db.users.get_user(f"@alice:{SERVER_NAME}") is None


async def test_mac_covers_admin_flag(client: TestClient, services: Services) -> None:
    nonce = await get_nonce(client)
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": nonce, "username": "mallory", "password": PASSWORD, "admin": True,
        "mac": mac_for(nonce, "mallory", PASSWORD, False)})
    assert resp.status == 403
    assert await services.db.users.get_user(f"@mallory:{SERVER_NAME}") is None


async def test_reused_nonce(client: TestClient) -> None:
    nonce = await get_nonce(client)
    body = {"nonce": nonce, "username": "alice", "password": PASSWORD, "admin": False,
            "mac": mac_for(nonce, "alice", PASSWORD, False)}
    resp = await client.post(f"{ADMIN}/register", json=body)
    assert resp.status == 200, await resp.text()
    again = {**body, "username": "bob", "mac": mac_for(nonce, "bob", PASSWORD, False)}
    resp = await client.post(f"{ADMIN}/register", json=again)
    assert resp.status == 400, await resp.text()


async def test_unknown_nonce(client: TestClient) -> None:
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": "abc", "username": "alice", "password": PASSWORD, "admin": False,
        "mac": mac_for("abc", "alice", PASSWORD, False)})
    assert resp.status == 400, await resp.text()


async def test_shared_secret_user_in_use(client: TestClient) -> None:
    await register_user(client, "alice")
    status, body = await shared_secret_register(client, "alice")
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE"), body


async def test_shared_secret_missing_fields(client: TestClient) -> None:
    nonce = await get_nonce(client)
    resp = await client.post(f"{ADMIN}/register", json={"nonce": nonce, "username": "alice"})
    assert resp.status == 400


@pytest.mark.parametrize("config_overrides", [{"registration": {"shared_secret": None}}])
async def test_shared_secret_not_configured(client: TestClient) -> None:
    resp = await client.get(f"{ADMIN}/register")
    assert resp.status == 400
    resp = await client.post(f"{ADMIN}/register", json={
        "nonce": "abc", "username": "alice", "password": PASSWORD, "admin": False,
        "mac": mac_for("abc", "alice", PASSWORD, False)})
    assert resp.status == 400
    assert "errcode" in await resp.json()


@pytest.mark.parametrize("config_overrides", [{"registration": {"enabled": False}}])
async def test_shared_secret_works_with_registration_disabled(client: TestClient) -> None:
    status, body = await shared_secret_register(client, "alice")
    assert status == 200, body


# -- registration tokens ----------------------------------------------------------------------

async def test_token_api_needs_admin(client: TestClient) -> None:
    user = await register_user(client, "alice")
    headers = bearer(user["access_token"])
    for method, path in (("GET", "/registration_tokens"),
                         ("POST", "/registration_tokens/new"),
                         ("GET", "/registration_tokens/abc"),
                         ("DELETE", "/registration_tokens/abc")):
        resp = await client.request(method, ADMIN + path, headers=headers,
                                    json={} if method == "POST" else None)
        assert resp.status == 403, (method, path)
        assert (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_token_api_needs_auth(client: TestClient) -> None:
    resp = await client.get(f"{ADMIN}/registration_tokens")
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"


async def test_create_list_get_delete_tokens(client: TestClient) -> None:
    headers = bearer(await admin_token(client))
    resp = await client.post(f"{ADMIN}/registration_tokens/new", headers=headers,
                             json={"token": "abcd", "uses_allowed": 3, "expiry_time": 2**42})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"token": "abcd", "uses_allowed": 3, "pending": 0,
                                 "completed": 0, "expiry_time": 2**42}
    resp = await client.post(f"{ADMIN}/registration_tokens/new", headers=headers, json={})
    generated = await resp.json()
    assert len(generated["token"]) == 16
    assert (generated["uses_allowed"], generated["expiry_time"]) == (None, None)
    resp = await client.post(f"{ADMIN}/registration_tokens/new", headers=headers,
                             json={"length": 5})
    assert len((await resp.json())["token"]) == 5

    resp = await client.get(f"{ADMIN}/registration_tokens", headers=headers)
    listed = (await resp.json())["registration_tokens"]
    assert len(listed) == 3
    assert {"token": "abcd", "uses_allowed": 3, "pending": 0, "completed": 0,
            "expiry_time": 2**42} in listed

    resp = await client.get(f"{ADMIN}/registration_tokens/abcd", headers=headers)
    assert resp.status == 200
    assert (await resp.json())["token"] == "abcd"

    resp = await client.delete(f"{ADMIN}/registration_tokens/abcd", headers=headers)
    assert resp.status == 200
    assert await resp.json() == {}
    resp = await client.get(f"{ADMIN}/registration_tokens/abcd", headers=headers)
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_NOT_FOUND"
    resp = await client.get(f"{ADMIN}/registration_tokens", headers=headers)
    assert len((await resp.json())["registration_tokens"]) == 2


async def test_unknown_token_is_404(client: TestClient) -> None:
    headers = bearer(await admin_token(client))
    resp = await client.get(f"{ADMIN}/registration_tokens/nope", headers=headers)
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_NOT_FOUND"
    resp = await client.delete(f"{ADMIN}/registration_tokens/nope", headers=headers)
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_duplicate_token_rejected(client: TestClient) -> None:
    headers = bearer(await admin_token(client))
    resp = await client.post(f"{ADMIN}/registration_tokens/new", headers=headers,
                             json={"token": "dup"})
    assert resp.status == 200
    resp = await client.post(f"{ADMIN}/registration_tokens/new", headers=headers,
                             json={"token": "dup"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize("body", [
    {"token": "has space"},
    {"token": "x" * 65},
    {"uses_allowed": -1},
    {"uses_allowed": "3"},
    {"length": 0},
    {"length": 65},
    {"expiry_time": -5},
    {"expiry_time": 1},  # in the past, as Synapse refuses it
])
async def test_invalid_token_parameters(client: TestClient, body: dict[str, Any]) -> None:
    headers = bearer(await admin_token(client))
    resp = await client.post(f"{ADMIN}/registration_tokens/new", headers=headers, json=body)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON")
