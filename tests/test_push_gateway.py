"""HTTP pushers end to end: a small push gateway (aiohttp, on loopback) receives exactly what
the spec's push gateway API defines for messages that notify; a gateway that is down gets the
push later (also across a restart of the server); a ``rejected`` pushkey ends its pusher; the
IP range policy keeps pushes from addresses it denies. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from federation.transport.push_gateway import PushGatewayClient
from homeserver.app import build_app
from homeserver.config import HomeserverConfig
from tests.client_api.test_receipts_typing import read, shared_room
from tests.conftest import postgres_url
from tests.helpers.harness import Harness
from tests.helpers.room_api import User, api, new_user, send_text
from tests.helpers.spec import SPEC_DIR, _load

SERVER = "test.local"
LOOPBACK = {"federation": {"ip_range_allowlist": ["127.0.0.0/8"]}, "presence": {"enabled": False}}


def assert_notify_body_matches_spec(body: Any) -> None:
    spec = _load(SPEC_DIR / "push-gateway" / "push_notifier.yaml")
    schema = spec["paths"]["/notify"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]
    errors = list(Draft202012Validator(schema).iter_errors(body))
    assert not errors, [e.message for e in errors]


class Gateway:
    """A push gateway that records what it gets and answers as told."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.failures = 0  # answer 503 this many times first
        self.rejected: list[str] = []
        self.server: TestServer | None = None

    async def notify(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=503)
        self.received.append(body)
        return web.json_response({"rejected": self.rejected})

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/_matrix/push/v1/notify"

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        await until(lambda: len(self.received) >= count, timeout_s)
        return self.received


async def until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/_matrix/push/v1/notify", gw.notify)
    gw.server = TestServer(app, host="127.0.0.1")
    await gw.server.start_server()
    try:
        yield gw
    finally:
        await gw.server.close()


class GatewayHarness(Harness):
    """Services with the real push gateway client."""

    def extras(self, config: HomeserverConfig) -> dict[str, Any]:
        return {"push_gateway": PushGatewayClient(config.federation)}


@pytest.fixture
def overrides() -> dict[str, Any]:
    return LOOPBACK


@pytest.fixture(params=["sqlite", "postgres"])
async def hs(request: pytest.FixtureRequest, tmp_path: Path, overrides: dict[str, Any]
             ) -> AsyncIterator[GatewayHarness]:
    if request.param == "postgres" and postgres_url() is None:
        pytest.skip("KTCHAT_TEST_POSTGRES_URL is not set")
    h = GatewayHarness(request.param, tmp_path, overrides)
    try:
        await h.setup()
        yield h
    finally:
        await h.teardown()


@pytest.fixture
async def web_client(hs: GatewayHarness, aiohttp_client: Callable[..., Any]) -> TestClient:
    assert hs.services is not None
    return await aiohttp_client(build_app(hs.services))  # type: ignore[no-any-return]


async def set_pusher(client: TestClient, user: User, url: str, pushkey: str = "pk",
                     **data: Any) -> None:
    status, body = await api(client, "POST", "/pushers/set", user, {
        "kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
        "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
        "data": {"url": url, "extra": "x", **data}})
    assert status == 200, body


async def test_messages_reach_the_gateway_as_the_spec_says(
        web_client: TestClient, gateway: Gateway) -> None:
    client = web_client
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    status, _ = await api(client, "PUT", f"/profile/{alice.user_id}/displayname", alice,
                          {"displayname": "Alice A"})
    room_id = await shared_room(client, alice, bob)
    status, _ = await api(client, "PUT", f"/rooms/{room_id}/state/m.room.name", alice,
                          {"name": "The Room"})
    assert status == 200
    status, _ = await api(client, "PUT", f"/directory/room/#the-room:{SERVER}", alice,
                          {"room_id": room_id})
    assert status == 200
    status, _ = await api(client, "PUT", f"/rooms/{room_id}/state/m.room.canonical_alias",
                          alice, {"alias": f"#the-room:{SERVER}"})
    assert status == 200
    await set_pusher(client, bob, gateway.url)
    await send_text(client, bob, room_id, "bob's own: no push")
    first = await send_text(client, alice, room_id, "hello bob")
    mention = await send_text(client, alice, room_id, "hi")
    received = await gateway.wait_for(2)
    await asyncio.sleep(0.3)
    assert len(received) == 2  # nothing for bob's own message or the state events
    for body in received:
        assert_notify_body_matches_spec(body)
    note = received[0]["notification"]
    # The badge is counted when the push goes out (both messages may be unread by then).
    assert note.pop("counts") in ({"unread": 1}, {"unread": 2})
    assert note == {
        "event_id": first, "room_id": room_id, "type": "m.room.message",
        "sender": alice.user_id, "sender_display_name": "Alice A", "room_name": "The Room",
        "room_alias": f"#the-room:{SERVER}",
        "content": {"msgtype": "m.text", "body": "hello bob"},
        "prio": "high",  # "bob" in the body: sound and highlight
        "devices": [{"app_id": "org.example.app", "pushkey": "pk",
                     "pushkey_ts": note["devices"][0]["pushkey_ts"],
                     "data": {"extra": "x"},
                     "tweaks": {"sound": "default", "highlight": True}}]}
    second = received[1]["notification"]
    assert second["event_id"] == mention and second["counts"] == {"unread": 2}
    # Two members: .m.rule.room_one_to_one, with a sound.
    assert second["prio"] == "high"
    assert second["devices"][0]["tweaks"] == {"sound": "default"}
    # Read: the badge goes down.
    await read(client, bob, room_id, mention)
    await send_text(client, alice, room_id, "third")
    assert (await gateway.wait_for(3))[2]["notification"]["counts"] == {"unread": 1}


async def test_event_id_only_format(web_client: TestClient, gateway: Gateway) -> None:
    client = web_client
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    room_id = await shared_room(client, alice, bob)
    await set_pusher(client, bob, gateway.url, format="event_id_only")
    event_id = await send_text(client, alice, room_id, "secret")
    (body,) = await gateway.wait_for(1)
    assert_notify_body_matches_spec(body)
    assert set(body["notification"]) == {"event_id", "room_id", "counts", "devices", "prio"}
    assert body["notification"]["event_id"] == event_id
    assert body["notification"]["devices"][0]["data"] == {"extra": "x",
                                                           "format": "event_id_only"}


async def test_retried_after_the_gateway_was_down_also_across_a_restart(
        hs: GatewayHarness, web_client: TestClient, gateway: Gateway,
        aiohttp_client: Callable[..., Any]) -> None:
    client = web_client
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    room_id = await shared_room(client, alice, bob)
    await set_pusher(client, bob, gateway.url)
    gateway.failures = 2
    first = await send_text(client, alice, room_id, "one")
    (body,) = await gateway.wait_for(1)  # after two failures, with backoff
    assert body["notification"]["event_id"] == first
    assert gateway.failures == 0
    # Down while the server stops: the push waits in the database for the next life.
    gateway.failures = 1
    second = await send_text(client, alice, room_id, "two")
    await until(lambda: not gateway.failures)
    await hs.restart()
    received = await gateway.wait_for(2)
    assert received[1]["notification"]["event_id"] == second
    assert len(received) == 2


async def test_a_rejected_pushkey_removes_the_pusher(web_client: TestClient, gateway: Gateway
                                                      ) -> None:
    client = web_client
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    room_id = await shared_room(client, alice, bob)
    await set_pusher(client, bob, gateway.url, pushkey="gone")
    gateway.rejected = ["gone"]
    await send_text(client, alice, room_id, "one")
    await gateway.wait_for(1)
    for _ in range(100):
        if not (await api(client, "GET", "/pushers", bob))[1]["pushers"]:
            break
        await asyncio.sleep(0.05)
    assert not (await api(client, "GET", "/pushers", bob))[1]["pushers"]
    await send_text(client, alice, room_id, "two")
    await asyncio.sleep(0.5)
    assert len(gateway.received) == 1


class TestDeniedAddresses:
    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return {"presence": {"enabled": False}}  # the default denylist: loopback denied

    async def test_no_push_to_a_denied_address(self, web_client: TestClient,
                                               gateway: Gateway) -> None:
        client = web_client
        alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
        room_id = await shared_room(client, alice, bob)
        await set_pusher(client, bob, gateway.url)
        await send_text(client, alice, room_id, "one")
        await asyncio.sleep(1.5)
        assert gateway.received == []


class TestPushOff:
    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return {**LOOPBACK, "push": {"enabled": False}}

    async def test_nothing_is_sent(self, web_client: TestClient, gateway: Gateway) -> None:
        client = web_client
        alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
        room_id = await shared_room(client, alice, bob)
        await set_pusher(client, bob, gateway.url)
        await send_text(client, alice, room_id, "one")
        await asyncio.sleep(1.0)
        assert gateway.received == []
        # Counts do not depend on it.
        status, body = await api(client, "GET", "/notifications", bob)
        assert status == 200 and len(body["notifications"]) == 1


class TestWithoutContent:
    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return {**LOOPBACK, "push": {"include_content": False}}

    async def test_content_is_left_out(self, web_client: TestClient, gateway: Gateway) -> None:
        client = web_client
        alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
        room_id = await shared_room(client, alice, bob)
        await set_pusher(client, bob, gateway.url)
        await send_text(client, alice, room_id, "private words")
        (body,) = await gateway.wait_for(1)
        assert_notify_body_matches_spec(body)
        assert "content" not in body["notification"]
        assert body["notification"]["sender"] == alice.user_id
