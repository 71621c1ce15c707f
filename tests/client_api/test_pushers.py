"""GET /pushers and POST /pushers/set: create, replace, append, delete, and the errors."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from homeserver.appkeys import SERVICES
from tests.helpers.harness import harness_services
from tests.helpers.room_api import User, api, assert_error

services = harness_services


URL = "https://push.example.org/_matrix/push/v1/notify"


def pusher(pushkey: str = "key1", **extra: Any) -> dict[str, Any]:
    return {"kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": {"url": URL, "format": "event_id_only", "custom": 1}, **extra}


async def pushers(client: TestClient, user: User) -> list[dict[str, Any]]:
    status, body = await api(client, "GET", "/pushers", user)
    assert status == 200
    return body["pushers"]  # type: ignore[no-any-return]


async def test_set_list_replace_and_delete(client: TestClient, alice: User, bob: User) -> None:
    status, body = await api(client, "POST", "/pushers/set", alice,
                             pusher(profile_tag="tag"))
    assert (status, body) == (200, {})
    status, _ = await api(client, "POST", "/pushers/set", alice, pusher("key2"))
    listed = await pushers(client, alice)
    assert sorted(p["pushkey"] for p in listed) == ["key1", "key2"]
    first = next(p for p in listed if p["pushkey"] == "key1")
    assert first == {"pushkey": "key1", "kind": "http", "app_id": "org.example.app",
                     "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
                     "profile_tag": "tag",
                     "data": {"url": URL, "format": "event_id_only", "custom": 1}}
    # The same app ID and pushkey for another user takes it over, unless appended.
    status, _ = await api(client, "POST", "/pushers/set", bob, pusher("key1", append=True))
    assert len(await pushers(client, alice)) == 2
    status, _ = await api(client, "POST", "/pushers/set", bob, pusher("key2"))
    assert [p["pushkey"] for p in await pushers(client, alice)] == ["key1"]
    assert sorted(p["pushkey"] for p in await pushers(client, bob)) == ["key1", "key2"]
    # Updating keeps one pusher.
    status, _ = await api(client, "POST", "/pushers/set", bob, pusher("key2", lang="de"))
    assert [p["lang"] for p in await pushers(client, bob) if p["pushkey"] == "key2"] == ["de"]
    status, _ = await api(client, "POST", "/pushers/set", bob,
                          {"kind": None, "app_id": "org.example.app", "pushkey": "key2"})
    assert status == 200
    assert [p["pushkey"] for p in await pushers(client, bob)] == ["key1"]


async def test_pusher_errors(client: TestClient, alice: User) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"app_id": "a", "pushkey": "k"}, "M_MISSING_PARAM"),
        ({"kind": "http", "app_id": "a", "pushkey": "k"}, "M_MISSING_PARAM"),
        (pusher(kind="email"), "M_INVALID_PARAM"),
        (pusher(data={}), "M_MISSING_PARAM"),
        (pusher(data={"url": "https://push.example.org/wrong"}), "M_INVALID_PARAM"),
        (pusher(data={"url": "ftp://push.example.org/_matrix/push/v1/notify"}),
         "M_INVALID_PARAM"),
        (pusher(data={"url": URL, "format": "full"}), "M_INVALID_PARAM"),
        (pusher(data="x"), "M_INVALID_PARAM"),
        (pusher(app_id="a" * 65), "M_INVALID_PARAM"),
        (pusher(pushkey=5), "M_INVALID_PARAM"),
        (pusher(append="yes"), "M_INVALID_PARAM"),
        (pusher(lang=None), "M_INVALID_PARAM"),
    ]
    for body, errcode in cases:
        status, answer = await api(client, "POST", "/pushers/set", alice, body)
        assert_error(status, answer, 400, errcode)
    resp = await client.post("/_matrix/client/v3/pushers/set", data=b"[",
                             headers={"Authorization": f"Bearer {alice.token}"})
    assert resp.status == 400
    assert await pushers(client, alice) == []
    resp = await client.get("/_matrix/client/v3/pushers")
    assert resp.status == 401


async def test_deactivation_removes_the_users_pushers(client: TestClient, alice: User) -> None:
    status, _ = await api(client, "POST", "/pushers/set", alice, pusher())
    assert status == 200
    status, body = await api(client, "POST", "/account/deactivate", alice, {
        "auth": {"type": "m.login.password", "password": "correct horse",
                 "identifier": {"type": "m.id.user", "user": alice.user_id}}})
    assert status == 200, body
    services = client.app[SERVICES]
    assert services.pushers.get_pushers(alice.user_id) == []
    assert await services.db.push.all_pushers() == []
