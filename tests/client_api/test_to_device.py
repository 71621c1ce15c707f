"""Send-to-device messaging over real HTTP: ``PUT /sendToDevice`` and ``to_device`` in /sync
(and the SSE stream): one device or all (``*``), idempotent transactions, delivery in order
until a later sync acknowledges it, 100 per response, long polls woken, deleted devices, the
EDUs queued for other servers, and the errors. Once on SQLite, once on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from homeserver.services.to_device import MAX_CONTENT_BYTES, PER_SYNC
from tests.client_api import test_sync_fanout
from tests.client_api.test_account import PASSWORD
from tests.client_api.test_sse import open_stream
from tests.client_api.test_sync import sync
from tests.conftest import bearer
from tests.helpers.room_api import V3, User, api, assert_error, new_user, txn

Json = dict[str, Any]


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Presence off: its updates would end long polls of their own."""
    return {"presence": {"enabled": False}}


services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL


# -- helpers ----------------------------------------------------------------------------------


async def send(client: TestClient, user: User, messages: Any, *, event_type: str = "m.test",
               txn_id: str | None = None) -> None:
    status, body = await api(client, "PUT", f"/sendToDevice/{event_type}/{txn_id or txn()}",
                             user, {"messages": messages})
    assert (status, body) == (200, {}), body


async def send_raw(client: TestClient, user: User | None, body: Any, *,
                   event_type: str = "m.test") -> tuple[int, Any]:
    resp = await client.put(f"{V3}/sendToDevice/{event_type}/{txn()}", json=body,
                            headers=bearer(user.token) if user else None)
    return resp.status, await resp.json()


async def device(client: TestClient, user: User, device_id: str | None = None) -> User:
    """Another session (device) of ``user``."""
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": PASSWORD, **({"device_id": device_id} if device_id else {})})
    body = await resp.json()
    assert resp.status == 200, body
    return User(user.user_id, body["access_token"], body["device_id"])


def to_device(body: Json) -> list[Json]:
    return list(body["to_device"]["events"])


def contents(body: Json) -> list[Any]:
    return [e["content"] for e in to_device(body)]


async def inbox(services: Services, user: User) -> list[Json]:
    """What still waits for the device in the database."""
    rows = await services.db.to_device.for_device(user.user_id, user.device_id, after=0,
                                                  up_to=2**62, limit=10_000)
    return [m for _, m in rows]


# -- sending and receiving --------------------------------------------------------------------


async def test_to_one_device(client: TestClient, alice: User, bob: User) -> None:
    bob2 = await device(client, bob)
    await send(client, alice, {bob.user_id: {bob.device_id: {"n": 1, "nested": {"a": [1]}}}},
               event_type="m.room_key_request")

    got = await sync(client, bob)
    assert to_device(got) == [{"sender": alice.user_id, "type": "m.room_key_request",
                               "content": {"n": 1, "nested": {"a": [1]}}}]
    assert to_device(await sync(client, bob2)) == []
    assert to_device(await sync(client, alice)) == []


async def test_to_all_devices(client: TestClient, alice: User, bob: User) -> None:
    bob2 = await device(client, bob)
    # "*" is every device of the user; a device named as well gets its own message.
    await send(client, alice, {bob.user_id: {"*": {"all": True}}})
    assert contents(await sync(client, bob)) == [{"all": True}]
    assert contents(await sync(client, bob2)) == [{"all": True}]

    bob3 = await device(client, bob)
    await send(client, alice, {bob.user_id: {"*": {"all": 2}, bob3.device_id: {"own": 3}}})
    assert contents(await sync(client, bob3)) == [{"own": 3}]
    bob_after = await sync(client, bob)
    assert contents(bob_after) == [{"all": True}, {"all": 2}]
    # Sending to oneself (another of one's devices) works too.
    await send(client, bob, {bob.user_id: {bob2.device_id: {"self": 1}}})
    assert contents(await sync(client, bob2)) == [{"all": True}, {"all": 2}, {"self": 1}]


async def test_unknown_users_and_devices_are_ignored(client: TestClient, alice: User,
                                                     bob: User) -> None:
    await send(client, alice, {"@nobody:test.local": {"*": {"x": 1}, "DEV": {"x": 2}},
                               bob.user_id: {"NOSUCHDEVICE": {"x": 3}, bob.device_id: {"x": 4}},
                               "@someone:test.local": {}})
    assert contents(await sync(client, bob)) == [{"x": 4}]


async def test_any_event_type(client: TestClient, alice: User, bob: User) -> None:
    for event_type in ("m.room.encrypted", "org.example.custom", "m.key.verification.start"):
        await send(client, alice, {bob.user_id: {bob.device_id: {}}}, event_type=event_type)
    assert [e["type"] for e in to_device(await sync(client, bob))] == [
        "m.room.encrypted", "org.example.custom", "m.key.verification.start"]


async def test_repeated_transaction_sends_once(client: TestClient, alice: User,
                                               bob: User) -> None:
    messages = {bob.user_id: {bob.device_id: {"once": True}}}
    for _ in range(3):
        await send(client, alice, messages, txn_id="same-txn")
    # Concurrent repeats too.
    await asyncio.gather(*(send(client, alice, {bob.user_id: {bob.device_id: {"twice": 1}}},
                                txn_id="other-txn") for _ in range(4)))
    # The transaction ID is the device's: another device of alice may reuse it.
    alice2 = await device(client, alice)
    await send(client, alice2, messages, txn_id="same-txn")
    assert contents(await sync(client, bob)) == [{"once": True}, {"twice": 1}, {"once": True}]


async def test_delivered_until_acknowledged(client: TestClient, alice: User, bob: User,
                                            services: Services) -> None:
    first = await sync(client, bob)
    await send(client, alice, {bob.user_id: {bob.device_id: {"n": 1}}})
    got = await sync(client, bob, since=first["next_batch"])
    assert contents(got) == [{"n": 1}]
    # Not acknowledged yet: the same request (a retry) and an initial sync bring it again.
    assert contents(await sync(client, bob, since=first["next_batch"])) == [{"n": 1}]
    assert contents(await sync(client, bob)) == [{"n": 1}]
    assert await inbox(services, bob) != []

    # Syncing from the token that carried it acknowledges it: never again, and deleted.
    after = await sync(client, bob, since=got["next_batch"])
    assert to_device(after) == []
    assert await inbox(services, bob) == []
    assert to_device(await sync(client, bob)) == []
    assert to_device(await sync(client, bob, since=first["next_batch"])) == []

    await send(client, alice, {bob.user_id: {bob.device_id: {"n": 2}}})
    later = await sync(client, bob, since=after["next_batch"])
    assert contents(later) == [{"n": 2}]


async def test_order_and_100_per_sync(client: TestClient, alice: User, bob: User,
                                      services: Services) -> None:
    bob2 = await device(client, bob)
    total = 2 * PER_SYNC + 7
    for n in range(total):
        # Interleaved with messages for another device, which must not count.
        await send(client, alice, {bob.user_id: {bob.device_id: {"n": n},
                                                 bob2.device_id: {"other": n}}})
    seen: list[int] = []
    pages: list[int] = []
    body = await sync(client, bob)
    while to_device(body):
        pages.append(len(to_device(body)))
        seen += [c["n"] for c in contents(body)]
        body = await sync(client, bob, since=body["next_batch"])
    assert pages == [PER_SYNC, PER_SYNC, 7]
    assert seen == list(range(total))
    assert await inbox(services, bob) == []
    assert len(await inbox(services, bob2)) == total


async def test_long_poll_wakes_for_a_message(client: TestClient, alice: User,
                                             bob: User) -> None:
    bob2 = await device(client, bob)
    since = (await sync(client, bob))["next_batch"]
    since2 = (await sync(client, bob2))["next_batch"]

    async def send_later() -> None:
        await asyncio.sleep(0.3)
        await send(client, alice, {bob.user_id: {bob.device_id: {"wake": 1}}})

    start = time.monotonic()
    sender = asyncio.create_task(send_later())
    got = await sync(client, bob, since=since, timeout_ms=20_000)
    await sender
    assert time.monotonic() - start < 10
    assert contents(got) == [{"wake": 1}]
    # A message for another device leaves this one's poll alone (it times out empty).
    assert to_device(await sync(client, bob2, since=since2, timeout_ms=300)) == []


async def test_sse_stream_carries_them(client: TestClient, alice: User, bob: User) -> None:
    async with open_stream(client, bob) as stream:
        await stream.next_sync()
        await send(client, alice, {bob.user_id: {bob.device_id: {"sse": 1}}})
        body = await stream.next_sync()
        assert contents(body) == [{"sse": 1}]


async def test_old_tokens_still_work(client: TestClient, alice: User, bob: User) -> None:
    await send(client, alice, {bob.user_id: {bob.device_id: {"n": 1}}})
    token = (await sync(client, bob))["next_batch"]
    assert token.count("_") == 6
    # A token of an earlier form (no to-device position) reads it as 0: from the start.
    old = token.rsplit("_", 2)[0]
    assert contents(await sync(client, bob, since=old)) == [{"n": 1}]
    assert contents(await sync(client, bob, since="s0")) == [{"n": 1}]


async def test_deleted_device_drops_its_messages(client: TestClient, alice: User, bob: User,
                                                 services: Services) -> None:
    gone = await device(client, bob, "DOOMED")
    await send(client, alice, {bob.user_id: {"DOOMED": {"old": 1}, bob.device_id: {"kept": 1}}})
    resp = await client.post(f"{V3}/logout", headers=bearer(gone.token), json={})
    assert resp.status == 200
    # Its messages went with it.
    assert await services.db.to_device.for_device(bob.user_id, "DOOMED", after=0,
                                                  up_to=2**62, limit=100) == []
    # Sent while it is gone: dropped.
    await send(client, alice, {bob.user_id: {"DOOMED": {"old": 2}}})

    # Created again under the same ID, it is a new device: nothing of the old one's.
    again = await device(client, bob, "DOOMED")
    assert to_device(await sync(client, again)) == []
    assert contents(await sync(client, bob)) == [{"kept": 1}]
    # New messages reach the new device.
    await send(client, alice, {bob.user_id: {"DOOMED": {"new": 1}}})
    assert contents(await sync(client, again)) == [{"new": 1}]


# -- other servers' users ---------------------------------------------------------------------


async def test_remote_users_get_one_edu_per_server(client: TestClient, alice: User, bob: User,
                                                   services: Services) -> None:
    queued: list[tuple[str, Json]] = []

    async def queue(edus: Sequence[tuple[str, Json]]) -> None:
        queued.extend(edus)

    services.to_device.remote_queue = queue
    await send(client, alice, {
        "@carol:one.example": {"CAROLDEV": {"c": 1}},
        "@dave:one.example": {"*": {"d": 1}},
        "@erin:two.example:8448": {"E1": {"e": 1}, "E2": {"e": 2}},
        bob.user_id: {bob.device_id: {"b": 1}},
    }, event_type="m.room.encrypted")
    assert contents(await sync(client, bob)) == [{"b": 1}]
    by_server = {d: edu for d, edu in queued}
    assert sorted(by_server) == ["one.example", "two.example:8448"]
    assert len(queued) == 2
    for edu in by_server.values():
        assert edu["sender"] == alice.user_id
        assert edu["type"] == "m.room.encrypted"
        assert isinstance(edu["message_id"], str) and edu["message_id"]
    assert by_server["one.example"]["messages"] == {
        "@carol:one.example": {"CAROLDEV": {"c": 1}}, "@dave:one.example": {"*": {"d": 1}}}
    assert by_server["two.example:8448"]["messages"] == {
        "@erin:two.example:8448": {"E1": {"e": 1}, "E2": {"e": 2}}}
    assert by_server["one.example"]["message_id"] != by_server["two.example:8448"]["message_id"]

    # Large batches are split into EDUs another server accepts, every message in one of them.
    queued.clear()
    big = {f"D{i}": {"pad": "x" * 20_000, "i": i} for i in range(10)}
    await send(client, alice, {"@carol:one.example": big})
    assert len(queued) > 1
    merged: dict[str, Any] = {}
    for destination, edu in queued:
        assert destination == "one.example"
        merged.update(edu["messages"]["@carol:one.example"])
    assert merged == big
    assert len({edu["message_id"] for _, edu in queued}) == len(queued)


async def test_remote_edu_delivered_to_local_devices(client: TestClient, bob: User,
                                                     services: Services) -> None:
    bob2 = await device(client, bob)
    edu = {"sender": "@alice:remote.example", "type": "m.room.encrypted", "message_id": "m1",
           "messages": {bob.user_id: {bob.device_id: {"r": 1}},
                        "@nobody:test.local": {"*": {"r": 2}},
                        "@other:elsewhere.example": {"X": {"r": 3}}}}
    await services.to_device.receive_remote("remote.example", edu)
    # The same EDU again (a retried transaction) is not delivered twice.
    await services.to_device.receive_remote("remote.example", edu)
    # A sender not of the origin is refused.
    await services.to_device.receive_remote("evil.example", {**edu, "message_id": "m2"})
    await services.to_device.receive_remote("remote.example", {
        **edu, "message_id": "m3", "messages": {bob.user_id: {"*": {"all": 1}}}})
    assert to_device(await sync(client, bob)) == [
        {"sender": "@alice:remote.example", "type": "m.room.encrypted", "content": {"r": 1}},
        {"sender": "@alice:remote.example", "type": "m.room.encrypted",
         "content": {"all": 1}}]
    assert contents(await sync(client, bob2)) == [{"all": 1}]


# -- errors -----------------------------------------------------------------------------------


async def test_errors(client: TestClient, alice: User, bob: User) -> None:
    target = {bob.user_id: {bob.device_id: {"x": 1}}}
    assert_error(*await send_raw(client, None, {"messages": target}), 401, "M_MISSING_TOKEN")
    assert_error(*await send_raw(client, alice, {}), 400, "M_MISSING_PARAM")
    assert_error(*await send_raw(client, alice, {"messages": []}), 400, "M_BAD_JSON")
    assert_error(*await send_raw(client, alice, {"messages": "x"}), 400, "M_BAD_JSON")
    assert_error(*await send_raw(client, alice, {"messages": {bob.user_id: ["x"]}}),
                 400, "M_BAD_JSON")
    assert_error(*await send_raw(client, alice, {"messages": {bob.user_id: {"D": "text"}}}),
                 400, "M_BAD_JSON")
    assert_error(*await send_raw(client, alice, {"messages": {bob.user_id: {"D": None}}}),
                 400, "M_BAD_JSON")
    assert_error(*await send_raw(client, alice, {"messages": {"not-a-user": {"D": {}}}}),
                 400, "M_INVALID_PARAM")
    assert_error(*await send_raw(client, alice, {"messages": {"@a:bad server": {"D": {}}}}),
                 400, "M_INVALID_PARAM")
    assert_error(*await send_raw(client, alice, {"messages": {bob.user_id: {"": {}}}}),
                 400, "M_INVALID_PARAM")
    assert_error(*await send_raw(client, alice, {"messages": target}, event_type="t" * 300),
                 400, "M_INVALID_PARAM")
    too_big = {bob.user_id: {bob.device_id: {"pad": "x" * MAX_CONTENT_BYTES}}}
    assert_error(*await send_raw(client, alice, {"messages": too_big}), 413, "M_TOO_LARGE")
    resp = await client.put(f"{V3}/sendToDevice/m.test/{txn()}", data=b"{not json",
                            headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_NOT_JSON")
    # A refused request sends nothing, not even to the valid targets it named.
    assert_error(*await send_raw(client, alice, {"messages": {**target, "bad": {}}}),
                 400, "M_INVALID_PARAM")
    assert to_device(await sync(client, bob)) == []
    # A request refused under a transaction ID may be corrected and sent under it again.
    resp = await client.put(f"{V3}/sendToDevice/m.test/fixme", json={},
                            headers=bearer(alice.token))
    assert resp.status == 400
    await send(client, alice, target, txn_id="fixme")
    assert contents(await sync(client, bob)) == [{"x": 1}]


async def test_no_device_yet(client: TestClient) -> None:
    """Users registered after messages were sent to their ID get nothing (no device yet)."""
    alice = await new_user(client, "alice")
    await send(client, alice, {"@latecomer:test.local": {"*": {"x": 1}}})
    late = await new_user(client, "latecomer")
    assert to_device(await sync(client, late)) == []
