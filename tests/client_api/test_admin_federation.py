"""Synapse's admin API for federation destinations (list, details, rooms, reset_connection)
and the background-updates status: paging, ordering and errors through HTTP on SQLite and
PostgreSQL, and a real pair of servers where one goes down and is retried at once.

The refusals and the background-updates status share one server per backend (``env``): they
store nothing. The tests of destinations have a fresh server each (``client``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from storage.stores.federation import Backoff
from tests.client_api.test_admin import admin_token
from tests.client_api.test_admin_users import Env, admin_env, call
from tests.federation.conftest import FedServers
from tests.helpers.federation import FedServer, User
from tests.helpers.harness import SharedServer, harness_services, shared_server

services = harness_services  # of the fresh server of ``client`` (once per test)

# The tests on the module's shared server (``env``) run in the module's event loop.
shared = pytest.mark.asyncio(loop_scope="module")

V1 = "/_synapse/admin/v1"
DEST = f"{V1}/federation/destinations"
DEST_KEYS = {"destination", "retry_last_ts", "retry_interval", "failure_ts",
             "last_successful_stream_ordering"}


@pytest.fixture
async def admin(client: TestClient) -> str:
    return await admin_token(client)


server = shared_server("admin-federation")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(server: SharedServer) -> Env:
    """One server per backend with an admin and alice, shared by the tests that store
    nothing."""
    return await admin_env(server)


async def backing_off(services: Services) -> None:
    """Three servers this one is backing off from (as its federation sender records them)."""
    for i, name in enumerate(("c.example", "a.example", "b.example")):
        await services.db.federation.set_backoff(name, Backoff(1000 * (i + 1), 60_000 * (3 - i)),
                                                 5000 + i)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", DEST), ("GET", f"{DEST}/a.example"), ("GET", f"{DEST}/a.example/rooms"),
    ("POST", f"{DEST}/a.example/reset_connection"), ("GET", f"{V1}/background_updates/status"),
])
@shared
async def test_admin_only(env: Env, method: str, path: str) -> None:
    client, alice = env.client, env.alice
    status, body = await call(client, method, path, alice.token, {})
    assert (status, body["errcode"], body["error"]) == (403, "M_FORBIDDEN",
                                                        "You are not a server admin")
    status, body = await call(client, method, path, None, {})
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_list_destinations(client: TestClient, services: Services, admin: str) -> None:
    status, page = await call(client, "GET", DEST, admin)
    assert (status, page) == (200, {"destinations": [], "total": 0})
    await backing_off(services)

    status, page = await call(client, "GET", DEST, admin)
    assert status == 200, page
    assert page["total"] == 3 and "next_token" not in page
    assert [d["destination"] for d in page["destinations"]] == ["a.example", "b.example",
                                                                "c.example"]
    assert page["destinations"][0] == {"destination": "a.example", "retry_last_ts": 2000,
                                       "retry_interval": 120_000, "failure_ts": 5001,
                                       "last_successful_stream_ordering": None}
    status, page = await call(client, "GET", DEST, admin, limit="2")
    assert page["next_token"] == "2" and len(page["destinations"]) == 2
    status, page = await call(client, "GET", DEST, admin, limit="2", **{"from": "2"})
    assert [d["destination"] for d in page["destinations"]] == ["c.example"]
    assert "next_token" not in page
    status, page = await call(client, "GET", DEST, admin, **{"from": "5"})
    assert (page["destinations"], page["total"]) == ([], 3)
    status, page = await call(client, "GET", DEST, admin, order_by="retry_interval")
    assert [d["destination"] for d in page["destinations"]] == ["b.example", "a.example",
                                                                "c.example"]
    status, page = await call(client, "GET", DEST, admin, order_by="retry_last_ts", dir="b")
    assert [d["destination"] for d in page["destinations"]] == ["b.example", "a.example",
                                                                "c.example"]
    status, page = await call(client, "GET", DEST, admin, destination="B.EX")
    assert [d["destination"] for d in page["destinations"]] == ["b.example"]

    status, one = await call(client, "GET", f"{DEST}/c.example", admin)
    assert (status, set(one), one["retry_interval"]) == (200, DEST_KEYS, 180_000)
    status, rooms = await call(client, "GET", f"{DEST}/c.example/rooms", admin)
    assert (status, rooms) == (200, {"rooms": [], "total": 0})


@pytest.mark.parametrize(("query", "error"), [
    ({"order_by": "speed"}, "Query parameter 'order_by' must be one of"),
    ({"dir": "n"}, "Query parameter 'dir' must be one of ['b', 'f']"),
    ({"from": "-1"}, "Query parameter from must be a positive integer."),
    ({"limit": "many"}, "Query parameter limit must be an integer"),
])
@shared
async def test_list_destinations_bad_query(env: Env, query: dict[str, str], error: str
                                           ) -> None:
    client, admin = env.client, env.admin
    status, body = await call(client, "GET", DEST, admin, **query)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), body
    assert body["error"].startswith(error)


async def test_unknown_destination_and_reset(client: TestClient, services: Services,
                                             admin: str) -> None:
    for method, path in (("GET", "/nowhere.example"), ("GET", "/nowhere.example/rooms"),
                         ("POST", "/nowhere.example/reset_connection")):
        status, body = await call(client, method, DEST + path, admin, {})
        assert (status, body) == (404, {"errcode": "M_NOT_FOUND",
                                        "error": "Unknown destination"}), path
    await backing_off(services)
    status, body = await call(client, "POST", f"{DEST}/a.example/reset_connection", admin, {})
    assert (status, body) == (200, {})
    status, one = await call(client, "GET", f"{DEST}/a.example", admin)
    assert (one["retry_last_ts"], one["retry_interval"], one["failure_ts"]) == (0, 0, None)
    # Nothing left to reset.
    status, body = await call(client, "POST", f"{DEST}/a.example/reset_connection", admin, {})
    assert (status, body["errcode"]) == (400, "M_UNKNOWN")
    assert body["error"] == "The retry timing does not need to be reset for this destination."


@shared
async def test_background_updates_status(env: Env) -> None:
    client, admin = env.client, env.admin
    status, body = await call(client, "GET", f"{V1}/background_updates/status", admin)
    assert (status, body) == (200, {"enabled": True, "current_updates": {}})


# -- two real servers -------------------------------------------------------------------------


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path
               ) -> AsyncIterator[tuple[FedServer, FedServer]]:
    """Server A (SQLite or PostgreSQL) and server B."""
    servers = FedServers(tmp_path)
    try:
        a = await servers.postgres("A") if request.param == "postgres" else servers("A")
        yield a, servers("B")
    finally:
        await servers.close()


async def admin_get(admin: User, path: str, **query: str) -> tuple[int, Any]:
    return await admin.raw("GET", path, params=query)


async def until(check: Any, within: float = 20) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_destination_down_then_reset(pair: tuple[FedServer, FedServer]) -> None:
    a, b = pair
    admin = await a.register("admin", admin=True)
    alice = await a.register("alice")
    bob = await b.register("bob")
    room_id = await alice.create_room(preset="public_chat")
    assert await bob.join(room_id, via=[a.server_name]) == room_id
    await alice.wait_for_membership(room_id, bob.user_id, "join")

    # B shares a room: A knows it, and is not backing off.
    status, page = await admin_get(admin, DEST)
    assert status == 200, page
    assert page["destinations"] == [{"destination": b.server_name, "retry_last_ts": 0,
                                     "retry_interval": 0, "failure_ts": None,
                                     "last_successful_stream_ordering": None}]
    status, rooms = await admin_get(admin, f"{DEST}/{b.server_name}/rooms")
    assert status == 200, rooms
    assert rooms["total"] == 1 and rooms["rooms"][0]["room_id"] == room_id
    assert rooms["rooms"][0]["stream_ordering"] > 0
    status, body = await admin.raw("POST", f"{DEST}/{b.server_name}/reset_connection", {})
    assert status == 400, body

    # B goes down: A backs off from it after failing to send.
    assert b.stop() == 0
    event_id = await alice.send_text(room_id, "while B is down")

    async def backed_off() -> Any:
        status, one = await admin_get(admin, f"{DEST}/{b.server_name}")
        return one if status == 200 and one["retry_last_ts"] > 0 else None

    one = await until(backed_off)
    assert one, "A never recorded a failure to reach B"
    assert one["retry_interval"] > 0 and one["failure_ts"] > 0

    # B is back; the admin resets the connection: the backoff is gone, the event arrives.
    b.start()
    status, body = await admin.raw("POST", f"{DEST}/{b.server_name}/reset_connection", {})
    assert (status, body) == (200, {})
    status, one = await admin_get(admin, f"{DEST}/{b.server_name}")
    assert (one["retry_last_ts"], one["retry_interval"], one["failure_ts"]) == (0, 0, None)
    await bob.wait_for_event(room_id, event_id=event_id, timeout=30)
