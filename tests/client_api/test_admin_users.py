"""Synapse's admin API for users (the subset the synapse-admin UI and operators' scripts
call), through HTTP, on SQLite and PostgreSQL: shapes as Synapse's documentation gives them,
admin-only everywhere, bad input refused with Matrix errors.

The refusals (and the server version) share one server per backend (``env``): they store
nothing. The tests that create, change or count users have a fresh server each (``client``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from tests.client_api.test_admin import admin_token
from tests.conftest import SERVER_NAME, bearer
from tests.helpers.harness import SharedServer, harness_services, shared_server
from tests.helpers.room_api import User, api, create_room, join, new_user

services = harness_services  # of the fresh server of ``client`` (once per test)

# The tests on the module's shared server (``env``) run in the module's event loop.
shared = pytest.mark.asyncio(loop_scope="module")

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
V3 = "/_matrix/client/v3"
PASSWORD = "correct horse"

# The keys of a listed user (Synapse's UserPaginateResponse without the MSC3866 flag).
LIST_KEYS = {"name", "user_type", "is_guest", "admin", "deactivated", "shadow_banned",
             "displayname", "avatar_url", "creation_ts", "erased", "last_seen_ts", "locked"}
USER_KEYS = {"name", "admin", "deactivated", "locked", "shadow_banned", "creation_ts",
             "appservice_id", "consent_server_notice_sent", "consent_version", "consent_ts",
             "user_type", "is_guest", "suspended", "displayname", "avatar_url", "threepids",
             "external_ids", "erased", "last_seen_ts"}
DEVICE_KEYS = {"device_id", "display_name", "last_seen_ip", "last_seen_ts",
               "last_seen_user_agent", "user_id", "dehydrated"}


def uid(name: str) -> str:
    return f"@{name}:{SERVER_NAME}"


async def call(client: TestClient, method: str, path: str, token: str | None,
               body: Any = None, **query: str) -> tuple[int, Any]:
    resp = await client.request(method, path, json=body, params=query or None,
                                headers=bearer(token) if token else None)
    return resp.status, await resp.json()


async def login(client: TestClient, name: str, password: str = PASSWORD) -> tuple[int, Any]:
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
        "password": password})
    return resp.status, await resp.json()


@pytest.fixture
async def admin(client: TestClient) -> str:
    return await admin_token(client)


@dataclass
class Env:
    client: TestClient
    admin: str
    alice: User


async def admin_env(server: SharedServer) -> Env:
    """An admin and alice on a module's shared server (``shared_server``)."""
    client = server[1]
    return Env(client, await admin_token(client), await new_user(client, "alice"))


server = shared_server("admin-users")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(server: SharedServer) -> Env:
    """One server per backend with an admin and alice, shared by the tests that store
    nothing."""
    return await admin_env(server)


@shared
async def test_server_version_needs_no_token(env: Env) -> None:
    client = env.client
    status, body = await call(client, "GET", f"{V1}/server_version", None)
    assert status == 200, body
    assert isinstance(body["server_version"], str) and body["server_version"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"{V2}/users"), ("GET", f"{V2}/users/@alice:test.local"),
    ("PUT", f"{V2}/users/@x:test.local"), ("POST", f"{V1}/deactivate/@alice:test.local"),
    ("POST", f"{V1}/reset_password/@alice:test.local"), ("GET", f"{V1}/whois/@alice:test.local"),
    ("GET", f"{V2}/users/@alice:test.local/devices"),
    ("GET", f"{V1}/users/@alice:test.local/joined_rooms"),
    ("GET", f"{V1}/users/@alice:test.local/admin"),
    ("PUT", f"{V1}/users/@alice:test.local/admin"),
    ("GET", f"{V1}/users/@alice:test.local/media"),
    ("POST", f"{V2}/users/@alice:test.local/delete_devices"),
])
@shared
async def test_admin_only(env: Env, method: str, path: str) -> None:
    client, alice = env.client, env.alice
    status, body = await call(client, method, path, alice.token, {})
    assert (status, body) == (403, {"errcode": "M_FORBIDDEN",
                                    "error": "You are not a server admin"})
    status, body = await call(client, method, path, None, {})
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", body


async def test_list_users_filters_and_pages(client: TestClient, admin: str) -> None:
    for name in ("bob", "carol", "dave", "erin"):
        await new_user(client, name)
    status, body = await call(client, "PUT", f"{V2}/users/{uid('frank')}", admin,
                              {"password": PASSWORD, "displayname": "Carolina Fan"})
    assert status == 201, body

    status, page = await call(client, "GET", f"{V2}/users", admin, limit="2")
    assert status == 200, page
    assert page["total"] == 6 and page["next_token"] == "2"
    assert [u["name"] for u in page["users"]] == [uid("admin"), uid("bob")]
    assert set(page["users"][0]) == LIST_KEYS
    assert page["users"][0]["admin"] is True and page["users"][1]["admin"] is False
    # creation_ts in milliseconds, as Synapse's list gives it.
    assert page["users"][0]["creation_ts"] > 10**12
    status, page = await call(client, "GET", f"{V2}/users", admin, limit="2", **{"from": "4"})
    assert [u["name"] for u in page["users"]] == [uid("erin"), uid("frank")]
    assert "next_token" not in page
    # An empty page still counts (past the end, or limit=0).
    for query in ({"from": "10"}, {"limit": "0"}):
        status, page = await call(client, "GET", f"{V2}/users", admin, **query)
        assert (status, page["users"], page["total"]) == (200, [], 6)

    # name: part of the localpart or of the display name; user_id: part of the user ID.
    status, page = await call(client, "GET", f"{V2}/users", admin, name="carol")
    assert sorted(u["name"] for u in page["users"]) == [uid("carol"), uid("frank")]
    status, page = await call(client, "GET", f"{V2}/users", admin, user_id="ERI")
    assert [u["name"] for u in page["users"]] == [uid("erin")]
    status, page = await call(client, "GET", f"{V2}/users", admin, admins="true")
    assert [u["name"] for u in page["users"]] == [uid("admin")]
    status, page = await call(client, "GET", f"{V2}/users", admin, admins="false")
    assert page["total"] == 5

    # Ordering, both ways; deactivated users only when asked for.
    status, page = await call(client, "GET", f"{V2}/users", admin, order_by="name", dir="b")
    assert page["users"][0]["name"] == uid("frank")
    status, page = await call(client, "GET", f"{V2}/users", admin, order_by="displayname")
    assert page["users"][0]["displayname"] == "Carolina Fan"
    status, page = await call(client, "GET", f"{V2}/users", admin, order_by="creation_ts",
                              dir="b")
    assert page["users"][0]["name"] == uid("frank")
    status, body = await call(client, "POST", f"{V1}/deactivate/{uid('dave')}", admin, {})
    assert status == 200, body
    status, page = await call(client, "GET", f"{V2}/users", admin)
    assert uid("dave") not in [u["name"] for u in page["users"]] and page["total"] == 5
    status, page = await call(client, "GET", f"{V2}/users", admin, deactivated="true")
    dave = next(u for u in page["users"] if u["name"] == uid("dave"))
    assert dave["deactivated"] is True and page["total"] == 6
    # v3: deactivated picks one side, absent lists both.
    for query, total in (({"deactivated": "true"}, 1), ({"deactivated": "false"}, 5),
                         ({}, 6)):
        status, page = await call(client, "GET", "/_synapse/admin/v3/users", admin, **query)
        assert (status, page["total"]) == (200, total), query


@pytest.mark.parametrize(("query", "error"), [
    ({"from": "-1"}, "Query parameter from must be a positive integer."),
    ({"limit": "ten"}, "Query parameter limit must be an integer"),
    ({"order_by": "height"}, "Query parameter 'order_by' must be one of"),
    ({"dir": "up"}, "Query parameter 'dir' must be one of ['b', 'f']"),
    ({"deactivated": "yes"}, "Boolean query parameter 'deactivated' must be one of"),
])
@shared
async def test_list_users_bad_query(env: Env, query: dict[str, str], error: str) -> None:
    client, admin = env.client, env.admin
    status, body = await call(client, "GET", f"{V2}/users", admin, **query)
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
    assert body["error"].startswith(error), body


async def test_query_create_and_modify_user(client: TestClient, admin: str) -> None:
    status, body = await call(client, "GET", f"{V2}/users/{uid('zed')}", admin)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(client, "GET", f"{V2}/users/@zed:elsewhere.example", admin)
    assert (status, body["errcode"]) == (400, "M_UNKNOWN")
    status, body = await call(client, "GET", f"{V2}/users/not-a-user-id", admin)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

    status, user = await call(client, "PUT", f"{V2}/users/{uid('zed')}", admin, {
        "password": PASSWORD, "displayname": "Zed", "avatar_url": "mxc://test.local/abc",
        "user_type": "bot"})
    assert status == 201, user
    assert set(user) == USER_KEYS
    assert (user["name"], user["displayname"], user["avatar_url"], user["user_type"],
            user["admin"], user["deactivated"], user["erased"]) == (
        uid("zed"), "Zed", "mxc://test.local/abc", "bot", False, False, False)
    assert 10**9 < user["creation_ts"] < 10**11  # seconds, as Synapse's user query
    status, session = await login(client, "zed")
    assert status == 200, session
    # The profile API agrees.
    status, profile = await api(client, "GET", f"/profile/{uid('zed')}")
    assert profile == {"displayname": "Zed", "avatar_url": "mxc://test.local/abc"}

    # Changing: 200 with the user as it now is; a new password logs the devices out.
    status, user = await call(client, "PUT", f"{V2}/users/{uid('zed')}", admin, {
        "displayname": "Zed II", "admin": True, "password": "another horse",
        "user_type": None})
    assert status == 200, user
    assert (user["displayname"], user["admin"], user["user_type"]) == ("Zed II", True, None)
    status, body = await call(client, "GET", f"{V3}/account/whoami", session["access_token"])
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert (await login(client, "zed", "another horse"))[0] == 200

    # Deactivate and reactivate through PUT.
    status, user = await call(client, "PUT", f"{V2}/users/{uid('zed')}", admin,
                              {"deactivated": True})
    assert (status, user["deactivated"]) == (200, True)
    assert (await login(client, "zed", "another horse"))[0] == 403
    status, user = await call(client, "PUT", f"{V2}/users/{uid('zed')}", admin,
                              {"deactivated": False})
    assert (status, user["deactivated"]) == (200, False)
    assert (await login(client, "zed", "another horse"))[0] == 200


@pytest.mark.parametrize(("body", "errcode", "error"), [
    ({"admin": "yes"}, "M_BAD_JSON", "Param 'admin' must be a boolean, if given"),
    ({"password": 12}, "M_UNKNOWN", "Invalid password"),
    ({"password": "x" * 513}, "M_UNKNOWN", "Invalid password"),
    ({"user_type": "robot"}, "M_UNKNOWN", "Invalid user type"),
    ({"deactivated": 1}, "M_UNKNOWN", "'deactivated' parameter is not of type boolean"),
    ({"logout_devices": "no"}, "M_UNKNOWN",
     "'logout_devices' parameter is not of type boolean"),
    ({"displayname": 5}, "M_INVALID_PARAM", None),
    ({"displayname": "d" * 300}, "M_INVALID_PARAM", None),
])
@shared
async def test_put_user_bad_body(env: Env, body: dict[str, Any], errcode: str,
                                 error: str | None) -> None:
    client, admin = env.client, env.admin
    status, answer = await call(client, "PUT", f"{V2}/users/{uid('newbie')}", admin, body)
    assert (status, answer["errcode"]) == (400, errcode), answer
    if error is not None:
        assert answer["error"] == error
    # Nothing was created.
    status, _ = await call(client, "GET", f"{V2}/users/{uid('newbie')}", admin)
    assert status == 404


@shared
async def test_put_user_refuses_other_servers_and_bad_json(env: Env) -> None:
    client, admin = env.client, env.admin
    status, body = await call(client, "PUT", f"{V2}/users/@x:elsewhere.example", admin, {})
    assert (status, body["error"]) == (400, "This endpoint can only be used with local users")
    for bad in ("@Upper:test.local", "@_hidden:test.local"):
        status, body = await call(client, "PUT", f"{V2}/users/{bad}", admin, {})
        assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME"), bad
    resp = await client.put(f"{V2}/users/{uid('x')}", data=b"{nope", headers=bearer(admin))
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"


async def test_deactivate_with_erase(client: TestClient, admin: str, alice: User,
                                     bob: User) -> None:
    room_id = await create_room(client, bob, preset="public_chat")
    await join(client, alice, room_id)
    status, body = await api(client, "PUT", f"/profile/{alice.user_id}/displayname", alice,
                             {"displayname": "Alice A."})
    assert status == 200, body

    status, body = await call(client, "POST", f"{V1}/deactivate/{alice.user_id}", admin,
                              {"erase": "please"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await call(client, "POST", f"{V1}/deactivate/{uid('nobody')}", admin, {})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(client, "POST", f"{V1}/deactivate/@x:elsewhere.example", admin)
    assert (status, body["error"]) == (400, "Can only deactivate local users")

    status, body = await call(client, "POST", f"{V1}/deactivate/{alice.user_id}", admin,
                              {"erase": True})
    assert (status, body) == (200, {"id_server_unbind_result": "success"})
    status, user = await call(client, "GET", f"{V2}/users/{alice.user_id}", admin)
    assert (user["deactivated"], user["erased"], user["displayname"]) == (True, True, None)
    # Her sessions are gone and she left the room.
    status, body = await call(client, "GET", f"{V3}/account/whoami", alice.token)
    assert status == 401
    status, members = await call(client, "GET", f"{V1}/rooms/{room_id}/members", admin)
    assert members == {"members": [bob.user_id], "total": 1}


async def test_reset_password(client: TestClient, admin: str, alice: User) -> None:
    status, body = await call(client, "POST", f"{V1}/reset_password/{alice.user_id}", admin,
                              {})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await call(client, "POST", f"{V1}/reset_password/{alice.user_id}", admin,
                              {"new_password": ["x"]})
    assert (status, body["error"]) == (400, "Invalid password")
    status, body = await call(client, "POST", f"{V1}/reset_password/{uid('ghost')}", admin,
                              {"new_password": "new password!"})
    assert status == 404

    status, body = await call(client, "POST", f"{V1}/reset_password/{alice.user_id}", admin,
                              {"new_password": "new password!", "logout_devices": False})
    assert (status, body) == (200, {})
    assert (await call(client, "GET", f"{V3}/account/whoami", alice.token))[0] == 200
    assert (await login(client, "alice"))[0] == 403
    assert (await login(client, "alice", "new password!"))[0] == 200
    # By default the devices are logged out.
    status, body = await call(client, "POST", f"{V1}/reset_password/{alice.user_id}", admin,
                              {"new_password": "newer password"})
    assert status == 200
    assert (await call(client, "GET", f"{V3}/account/whoami", alice.token))[0] == 401


async def test_whois_and_devices(client: TestClient, admin: str, alice: User) -> None:
    # A request records where the device was seen.
    resp = await client.get(f"{V3}/account/whoami",
                            headers={**bearer(alice.token), "User-Agent": "TestAgent/1"})
    assert resp.status == 200
    status, second = await login(client, "alice")
    assert status == 200
    await request_services_flush(client)

    status, whois = await call(client, "GET", f"{V1}/whois/{alice.user_id}", admin)
    assert status == 200, whois
    assert whois["user_id"] == alice.user_id
    connections = whois["devices"][""]["sessions"][0]["connections"]
    assert any(c["user_agent"] == "TestAgent/1" and c["ip"] and c["last_seen"] > 0
               for c in connections), whois
    status, body = await call(client, "GET", f"{V1}/whois/{uid('ghost')}", admin)
    assert status == 404

    status, devices = await call(client, "GET", f"{V2}/users/{alice.user_id}/devices", admin)
    assert status == 200, devices
    assert devices["total"] == 2
    assert {d["device_id"] for d in devices["devices"]} == {alice.device_id,
                                                             second["device_id"]}
    assert all(set(d) == DEVICE_KEYS for d in devices["devices"])
    status, device = await call(
        client, "GET", f"{V2}/users/{alice.user_id}/devices/{alice.device_id}", admin)
    assert (status, device["user_id"], device["device_id"]) == (200, alice.user_id,
                                                                alice.device_id)
    status, body = await call(
        client, "PUT", f"{V2}/users/{alice.user_id}/devices/{alice.device_id}", admin,
        {"display_name": "Laptop"})
    assert (status, body) == (200, {})
    status, device = await call(
        client, "GET", f"{V2}/users/{alice.user_id}/devices/{alice.device_id}", admin)
    assert device["display_name"] == "Laptop"
    status, body = await call(client, "GET", f"{V2}/users/{alice.user_id}/devices/NOPE",
                              admin)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(client, "GET", f"{V2}/users/{uid('ghost')}/devices", admin)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(client, "GET", f"{V2}/users/@a:elsewhere.example/devices",
                              admin)
    assert status == 400

    # Deleting one ends its session; delete_devices takes a list.
    status, body = await call(
        client, "DELETE", f"{V2}/users/{alice.user_id}/devices/{alice.device_id}", admin)
    assert (status, body) == (200, {})
    assert (await call(client, "GET", f"{V3}/account/whoami", alice.token))[0] == 401
    status, body = await call(client, "POST", f"{V2}/users/{alice.user_id}/delete_devices",
                              admin, {"devices": "all"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await call(client, "POST", f"{V2}/users/{alice.user_id}/delete_devices",
                              admin, {"devices": [second["device_id"], "UNKNOWN"]})
    assert (status, body) == (200, {})
    status, devices = await call(client, "GET", f"{V2}/users/{alice.user_id}/devices", admin)
    assert devices == {"devices": [], "total": 0}


async def request_services_flush(client: TestClient) -> None:
    """Write the buffered last-seen times (the server does it every few seconds)."""
    from homeserver.appkeys import SERVICES

    await client.app[SERVICES].auth.flush_last_seen()


async def test_joined_rooms_and_admin_flag(client: TestClient, admin: str, alice: User,
                                           bob: User) -> None:
    first = await create_room(client, alice)
    second = await create_room(client, bob, preset="public_chat")
    await join(client, alice, second)
    status, body = await call(client, "GET", f"{V1}/users/{alice.user_id}/joined_rooms",
                              admin)
    assert status == 200
    assert body == {"joined_rooms": sorted([first, second]), "total": 2}

    status, body = await call(client, "GET", f"{V1}/users/{alice.user_id}/admin", admin)
    assert (status, body) == (200, {"admin": False})
    status, body = await call(client, "PUT", f"{V1}/users/{alice.user_id}/admin", admin, {})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await call(client, "PUT", f"{V1}/users/{alice.user_id}/admin", admin,
                              {"admin": "true"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await call(client, "PUT", f"{V1}/users/{alice.user_id}/admin", admin,
                              {"admin": True})
    assert (status, body) == (200, {})
    # At once: alice's existing session may use the admin API.
    status, body = await call(client, "GET", f"{V1}/users/{alice.user_id}/admin", alice.token)
    assert (status, body) == (200, {"admin": True})
    status, body = await call(client, "PUT", f"{V1}/users/{alice.user_id}/admin", alice.token,
                              {"admin": False})
    assert (status, body["error"]) == (400, "You may not demote yourself.")
    status, body = await call(client, "PUT", f"{V1}/users/{alice.user_id}/admin", admin,
                              {"admin": False})
    assert status == 200
    status, body = await call(client, "GET", f"{V2}/users", alice.token)
    assert status == 403
    status, body = await call(client, "GET", f"{V1}/users/@x:elsewhere.example/admin", admin)
    assert (status, body["error"]) == (400,
                                       "Only local users can be admins of this homeserver")


async def test_user_media(client: TestClient, admin: str, alice: User) -> None:
    ids = []
    for i, size in enumerate((10, 30, 20)):
        resp = await client.post("/_matrix/media/v3/upload", data=b"x" * size,
                                 params={"filename": f"f{i}.txt"},
                                 headers={**bearer(alice.token), "Content-Type": "text/plain"})
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["content_uri"].rsplit("/", 1)[1])
    status, page = await call(client, "GET", f"{V1}/users/{alice.user_id}/media", admin,
                              limit="2")
    assert status == 200, page
    assert page["total"] == 3 and page["next_token"] == 2
    assert [m["media_id"] for m in page["media"]] == ids[:2]
    assert set(page["media"][0]) == {"media_id", "media_type", "media_length", "upload_name",
                                     "created_ts", "last_access_ts", "quarantined_by",
                                     "safe_from_quarantine"}
    assert (page["media"][0]["media_type"], page["media"][0]["media_length"],
            page["media"][0]["upload_name"]) == ("text/plain", 10, "f0.txt")
    status, page = await call(client, "GET", f"{V1}/users/{alice.user_id}/media", admin,
                              order_by="media_length", dir="b")
    assert [m["media_length"] for m in page["media"]] == [30, 20, 10]
    status, _ = await call(client, "GET", f"{V1}/users/{uid('ghost')}/media", admin)
    assert status == 404
