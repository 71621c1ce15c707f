"""Device management over real HTTP: /devices, /devices/{deviceId}, /delete_devices."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from tests.conftest import bearer, register_user
from tests.helpers.spec import assert_matches_spec

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse"


def password_auth(session: str | None = None, password: str = PASSWORD, user: str = "alice"
                  ) -> dict[str, Any]:
    auth: dict[str, Any] = {"type": "m.login.password", "password": password,
                            "identifier": {"type": "m.id.user", "user": user}}
    if session is not None:
        auth["session"] = session
    return auth


async def login(client: TestClient, device_id: str | None = None, user: str = "alice",
                display_name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "m.login.password",
                            "identifier": {"type": "m.id.user", "user": user},
                            "password": PASSWORD}
    if device_id is not None:
        body["device_id"] = device_id
    if display_name is not None:
        body["initial_device_display_name"] = display_name
    resp = await client.post(f"{V3}/login", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


def without_nulls(device: dict[str, Any]) -> dict[str, Any]:
    """A device as the spec's schema describes it: Synapse sends what is unknown as null (and
    matrix-nio requires the keys), where the schema leaves it out."""
    return {k: v for k, v in device.items() if v is not None}


async def list_devices(client: TestClient, token: str) -> dict[str, dict[str, Any]]:
    resp = await client.get(f"{V3}/devices", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/devices", 200,
                        {"devices": [without_nulls(d) for d in body["devices"]]})
    for device in body["devices"]:
        assert {"device_id", "display_name", "last_seen_ip", "last_seen_ts"} <= set(device)
    return {d["device_id"]: d for d in body["devices"]}


async def token_status(client: TestClient, token: str) -> tuple[int, str | None]:
    resp = await client.get(f"{V3}/account/whoami", headers=bearer(token))
    return resp.status, (await resp.json()).get("errcode")


async def alice_with_two_devices(client: TestClient) -> tuple[str, str]:
    """Alice's token on device PHONE, and her token on device LAPTOP."""
    phone = await register_user(client, "alice", device_id="PHONE",
                                initial_device_display_name="Alice's phone")
    laptop = await login(client, "LAPTOP")
    return phone["access_token"], laptop["access_token"]


# -- listing and reading ----------------------------------------------------------------------

async def test_list_devices(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    devices = await list_devices(client, phone)
    assert set(devices) == {"PHONE", "LAPTOP"}
    assert devices["PHONE"]["display_name"] == "Alice's phone"
    # An unnamed device has a null name (as Synapse sends it; matrix-nio requires the key).
    assert devices["LAPTOP"]["display_name"] is None


async def test_list_shows_only_own_devices(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    bob = await register_user(client, "bob", device_id="BOBDEV")
    assert set(await list_devices(client, bob["access_token"])) == {"BOBDEV"}
    assert "BOBDEV" not in await list_devices(client, phone)


async def test_list_devices_needs_auth(client: TestClient) -> None:
    resp = await client.get(f"{V3}/devices")
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    resp = await client.get(f"{V3}/devices", headers=bearer("kta_nonsense"))
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_get_device(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.get(f"{V3}/devices/PHONE", headers=bearer(phone))
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/devices/PHONE", 200, body)
    assert body["device_id"] == "PHONE"
    assert body["display_name"] == "Alice's phone"


async def test_get_unnamed_device_has_null_fields(client: TestClient) -> None:
    """Synapse's shape: every key present, null when unknown."""
    phone, _ = await alice_with_two_devices(client)
    resp = await client.get(f"{V3}/devices/LAPTOP", headers=bearer(phone))
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/devices/LAPTOP", 200, without_nulls(body))
    assert body["device_id"] == "LAPTOP"
    assert body["display_name"] is None
    assert {"last_seen_ip", "last_seen_ts"} <= set(body)


async def test_get_unknown_device(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.get(f"{V3}/devices/NOPE", headers=bearer(phone))
    assert resp.status == 404
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/devices/NOPE", 404, body)
    assert body["errcode"] == "M_NOT_FOUND"


async def test_cannot_get_another_users_device(client: TestClient) -> None:
    await alice_with_two_devices(client)
    bob = await register_user(client, "bob")
    resp = await client.get(f"{V3}/devices/PHONE", headers=bearer(bob["access_token"]))
    assert resp.status == 404


async def test_last_seen_recorded(client: TestClient, services: Services) -> None:
    phone, laptop = await alice_with_two_devices(client)
    await token_status(client, laptop)
    await services.auth.flush_last_seen()
    devices = await list_devices(client, phone)
    assert isinstance(devices["LAPTOP"].get("last_seen_ts"), int)
    assert devices["LAPTOP"].get("last_seen_ip")


# -- renaming ---------------------------------------------------------------------------------

async def test_rename_device(client: TestClient) -> None:
    phone, laptop = await alice_with_two_devices(client)
    resp = await client.put(f"{V3}/devices/LAPTOP", headers=bearer(phone),
                            json={"display_name": "Work laptop"})
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "PUT", "/devices/LAPTOP", 200, body)
    assert body == {}
    devices = await list_devices(client, laptop)
    assert devices["LAPTOP"]["display_name"] == "Work laptop"
    assert devices["PHONE"]["display_name"] == "Alice's phone"


async def test_update_without_name_keeps_the_name(client: TestClient) -> None:
    # "If not given, the display name is unchanged."
    phone, _ = await alice_with_two_devices(client)
    resp = await client.put(f"{V3}/devices/PHONE", headers=bearer(phone), json={})
    assert resp.status == 200
    assert await resp.json() == {}
    resp = await client.get(f"{V3}/devices/PHONE", headers=bearer(phone))
    assert (await resp.json())["display_name"] == "Alice's phone"
    resp = await client.put(f"{V3}/devices/NOPE", headers=bearer(phone), json={})
    assert resp.status == 404


async def test_rename_unknown_device(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.put(f"{V3}/devices/NOPE", headers=bearer(phone),
                            json={"display_name": "x"})
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_rename_another_users_device(client: TestClient) -> None:
    await alice_with_two_devices(client)
    bob = await register_user(client, "bob")
    resp = await client.put(f"{V3}/devices/PHONE", headers=bearer(bob["access_token"]),
                            json={"display_name": "pwned"})
    assert resp.status == 404
    alice = await login(client)
    assert (await list_devices(client, alice["access_token"]))["PHONE"]["display_name"] \
        == "Alice's phone"


async def test_rename_wrong_type(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.put(f"{V3}/devices/PHONE", headers=bearer(phone),
                            json={"display_name": 42})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_BAD_JSON"


# -- deleting ---------------------------------------------------------------------------------

async def test_delete_device_with_uia(client: TestClient) -> None:
    phone, laptop = await alice_with_two_devices(client)
    resp = await client.delete(f"{V3}/devices/LAPTOP", headers=bearer(phone), json={})
    assert resp.status == 401
    uia = await resp.json()
    assert_matches_spec("client-server", "DELETE", "/devices/LAPTOP", 401, uia)
    assert uia["flows"] == [{"stages": ["m.login.password"]}]
    assert await token_status(client, laptop) == (200, None)

    resp = await client.delete(f"{V3}/devices/LAPTOP", headers=bearer(phone),
                               json={"auth": password_auth(uia["session"])})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert_matches_spec("client-server", "DELETE", "/devices/LAPTOP", 200, body)
    assert body == {}
    assert await token_status(client, laptop) == (401, "M_UNKNOWN_TOKEN")
    assert await token_status(client, phone) == (200, None)
    assert set(await list_devices(client, phone)) == {"PHONE"}


async def test_delete_device_revokes_its_refresh_token(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD, "device_id": "TABLET", "refresh_token": True})
    refresh = (await resp.json())["refresh_token"]
    resp = await client.delete(f"{V3}/devices/TABLET", headers=bearer(phone),
                               json={"auth": password_auth()})
    assert resp.status == 200, await resp.text()
    resp = await client.post(f"{V3}/refresh", json={"refresh_token": refresh})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_delete_device_without_body(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.delete(f"{V3}/devices/LAPTOP", headers=bearer(phone))
    assert resp.status == 401
    assert (await resp.json())["flows"] == [{"stages": ["m.login.password"]}]


async def test_delete_device_wrong_password(client: TestClient) -> None:
    phone, laptop = await alice_with_two_devices(client)
    resp = await client.delete(f"{V3}/devices/LAPTOP", headers=bearer(phone),
                               json={"auth": password_auth(password="wrong pw!")})
    assert resp.status == 401
    body = await resp.json()
    assert body["errcode"] == "M_FORBIDDEN"
    assert await token_status(client, laptop) == (200, None)


async def test_delete_own_current_device(client: TestClient) -> None:
    phone, laptop = await alice_with_two_devices(client)
    resp = await client.delete(f"{V3}/devices/PHONE", headers=bearer(phone),
                               json={"auth": password_auth()})
    assert resp.status == 200, await resp.text()
    assert await token_status(client, phone) == (401, "M_UNKNOWN_TOKEN")
    assert set(await list_devices(client, laptop)) == {"LAPTOP"}


async def test_delete_unknown_device(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.delete(f"{V3}/devices/NOPE", headers=bearer(phone),
                               json={"auth": password_auth()})
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_delete_session_bound_to_the_device(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.delete(f"{V3}/devices/LAPTOP", headers=bearer(phone))
    session = (await resp.json())["session"]
    # The session that was opened to delete LAPTOP cannot delete PHONE.
    resp = await client.delete(f"{V3}/devices/PHONE", headers=bearer(phone),
                               json={"auth": password_auth(session)})
    assert resp.status == 403, await resp.text()
    assert await token_status(client, phone) == (200, None)


async def test_delete_devices(client: TestClient) -> None:
    phone, laptop = await alice_with_two_devices(client)
    tablet = (await login(client, "TABLET"))["access_token"]
    resp = await client.post(f"{V3}/delete_devices", headers=bearer(phone),
                             json={"devices": ["LAPTOP", "TABLET"]})
    assert resp.status == 401
    uia = await resp.json()
    assert_matches_spec("client-server", "POST", "/delete_devices", 401, uia)
    assert uia["flows"] == [{"stages": ["m.login.password"]}]

    # A wrong password keeps the devices and the session.
    resp = await client.post(f"{V3}/delete_devices", headers=bearer(phone), json={
        "devices": ["LAPTOP", "TABLET"],
        "auth": password_auth(uia["session"], password="wrong pw!")})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"
    assert await token_status(client, laptop) == (200, None)
    resp = await client.post(f"{V3}/delete_devices", headers=bearer(phone), json={
        "devices": ["LAPTOP", "TABLET"], "auth": password_auth(uia["session"])})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert_matches_spec("client-server", "POST", "/delete_devices", 200, body)
    assert body == {}
    for token in (laptop, tablet):
        assert await token_status(client, token) == (401, "M_UNKNOWN_TOKEN")
    assert set(await list_devices(client, phone)) == {"PHONE"}


async def test_delete_devices_ignores_unknown_and_foreign_ids(client: TestClient) -> None:
    phone, laptop = await alice_with_two_devices(client)
    bob = await register_user(client, "bob", device_id="BOBDEV")
    resp = await client.post(f"{V3}/delete_devices", headers=bearer(phone), json={
        "devices": ["LAPTOP", "NOPE", "BOBDEV"], "auth": password_auth()})
    assert resp.status == 200, await resp.text()
    assert await token_status(client, laptop) == (401, "M_UNKNOWN_TOKEN")
    assert await token_status(client, bob["access_token"]) == (200, None)


async def test_delete_devices_missing_list(client: TestClient) -> None:
    phone, _ = await alice_with_two_devices(client)
    resp = await client.post(f"{V3}/delete_devices", headers=bearer(phone),
                             json={"auth": password_auth()})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_MISSING_PARAM"


async def test_deleting_devices_without_a_valid_token_answers_the_spec_401(
        client: TestClient) -> None:
    """The spec's only 401 for these two endpoints is the user-interactive auth response
    (``flows`` required): a missing or unknown token keeps its errcode (what clients act on,
    as Synapse sends it) and carries the flows too, so the body fits both."""
    phone, laptop = await alice_with_two_devices(client)
    requests = [("DELETE", "/devices/LAPTOP", {}), ("POST", "/delete_devices",
                                                   {"devices": ["LAPTOP"]})]
    for method, path, body in requests:
        for headers, errcode in (({}, "M_MISSING_TOKEN"),
                                 (bearer("kta_nonsense"), "M_UNKNOWN_TOKEN"),
                                 ({"Authorization": "Basic abc"}, "M_MISSING_TOKEN")):
            resp = await client.request(method, f"{V3}{path}", json=body, headers=headers)
            assert resp.status == 401, await resp.text()
            answer = await resp.json()
            assert answer["errcode"] == errcode
            assert_matches_spec("client-server", method, path, 401, answer)
            assert answer["flows"] == [{"stages": ["m.login.password"]}]
            assert "session" not in answer  # no UIA session for an unauthenticated request
    assert await token_status(client, laptop) == (200, None)
    assert set(await list_devices(client, phone)) == {"PHONE", "LAPTOP"}
