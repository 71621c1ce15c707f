"""Reporting events and rooms (``POST /rooms/{roomId}/report[/{eventId}]``) and the admin API
listing the reports (Synapse's ``/_synapse/admin/v1/event_reports``), on SQLite and
PostgreSQL.

The refusals share one server, an admin and alice per backend (``env``): none of them reads
what another left (the reports they refuse are never made). The tests that make or count
reports have a fresh server each (``client``)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from tests.client_api.test_admin import admin_token
from tests.client_api.test_admin_users import Env, admin_env
from tests.conftest import bearer
from tests.helpers.harness import SharedServer, harness_services, shared_server
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    join,
    put_state,
    send_text,
    txn,
)

ADMIN = "/_synapse/admin/v1"


services = harness_services  # of the fresh server of ``client`` (once per test)

# The tests on the module's shared server (``env``) run in the module's event loop.
shared = pytest.mark.asyncio(loop_scope="module")


server = shared_server("reports")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(server: SharedServer) -> Env:
    """One server per backend with an admin and alice, shared by the refusals."""
    return await admin_env(server)


async def admin_get(client: TestClient, token: str, path: str, **query: str
                    ) -> tuple[int, Any]:
    resp = await client.get(ADMIN + path, params=query, headers=bearer(token))
    return resp.status, await resp.json()


async def report(client: TestClient, user: User, room_id: str, event_id: str,
                 body: Any) -> tuple[int, Any]:
    return await api(client, "POST", f"/rooms/{room_id}/report/{event_id}", user, body)


async def test_report_event_and_admin_reads_it(client: TestClient, alice: User,
                                               bob: User) -> None:
    room_id = await create_room(client, alice, name="Lobby", room_alias_name="lobby",
                                preset="public_chat")
    await join(client, bob, room_id)
    event_id = await send_text(client, alice, room_id, "rude")
    status, body = await report(client, bob, room_id, event_id,
                                {"reason": "this makes me sad", "score": -100})
    assert (status, body) == (200, {})
    # reason and score are optional; an empty body is a report without them.
    status, body = await report(client, bob, room_id, event_id, {})
    assert (status, body) == (200, {})

    token = await admin_token(client)
    status, page = await admin_get(client, token, "/event_reports")
    assert status == 200, page
    assert page["total"] == 2 and "next_token" not in page
    newest, oldest = page["event_reports"]
    assert oldest["reason"] == "this makes me sad" and oldest["score"] == -100
    assert newest["reason"] is None and newest["id"] > oldest["id"]
    assert oldest["event_id"] == event_id and oldest["room_id"] == room_id
    assert oldest["user_id"] == bob.user_id and oldest["sender"] == alice.user_id
    assert oldest["name"] == "Lobby" and oldest["canonical_alias"] == "#lobby:test.local"
    assert isinstance(oldest["received_ts"], int)

    status, one = await admin_get(client, token, f"/event_reports/{oldest['id']}")
    assert status == 200, one
    assert one["event_json"]["content"]["body"] == "rude"
    assert {k: v for k, v in one.items() if k != "event_json"} == oldest

    resp = await client.delete(f"{ADMIN}/event_reports/{oldest['id']}", headers=bearer(token))
    assert (resp.status, await resp.json()) == (200, {})
    status, page = await admin_get(client, token, "/event_reports")
    assert [r["id"] for r in page["event_reports"]] == [newest["id"]]
    status, body = await admin_get(client, token, f"/event_reports/{oldest['id']}")
    assert_error(status, body, 404, "M_NOT_FOUND")
    resp = await client.delete(f"{ADMIN}/event_reports/{oldest['id']}", headers=bearer(token))
    assert_error(resp.status, await resp.json(), 404, "M_NOT_FOUND")


async def test_paging_and_filters(client: TestClient, alice: User, bob: User) -> None:
    room_a = await create_room(client, alice, preset="public_chat")
    room_b = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_a)
    await join(client, bob, room_b)
    for i in range(3):
        await report(client, bob, room_a, await send_text(client, alice, room_a, f"a{i}"),
                     {"reason": f"a{i}"})
    await report(client, alice, room_b, await send_text(client, bob, room_b, "b"),
                 {"reason": "b"})
    token = await admin_token(client)

    status, page = await admin_get(client, token, "/event_reports", limit="2")
    assert status == 200, page
    assert [r["reason"] for r in page["event_reports"]] == ["b", "a2"]
    assert (page["total"], page["next_token"]) == (4, 2)
    status, page = await admin_get(client, token, "/event_reports", limit="2", **{"from": "2"})
    assert [r["reason"] for r in page["event_reports"]] == ["a1", "a0"]
    assert page["total"] == 4 and "next_token" not in page
    status, page = await admin_get(client, token, "/event_reports", dir="f", limit="1")
    assert [r["reason"] for r in page["event_reports"]] == ["a0"]
    assert page["next_token"] == 1

    status, page = await admin_get(client, token, "/event_reports", room_id=room_b)
    assert [r["reason"] for r in page["event_reports"]] == ["b"] and page["total"] == 1
    # user_id: the reporter; a part of it matches (as in Synapse).
    status, page = await admin_get(client, token, "/event_reports", user_id="bob")
    assert [r["reason"] for r in page["event_reports"]] == ["a2", "a1", "a0"]
    status, page = await admin_get(client, token, "/event_reports",
                                   event_sender_user_id=bob.user_id)
    assert [r["reason"] for r in page["event_reports"]] == ["b"]
    # LIKE wildcards in a filter are literal.
    status, page = await admin_get(client, token, "/event_reports", user_id="%")
    assert (page["event_reports"], page["total"]) == ([], 0)


@pytest.mark.parametrize("query", [{"from": "-1"}, {"from": "x"}, {"limit": "-5"},
                                   {"dir": "up"}])
@shared
async def test_admin_bad_query(env: Env, query: dict[str, str]) -> None:
    client, token = env.client, env.admin
    status, body = await admin_get(client, token, "/event_reports", **query)
    assert_error(status, body, 400, "M_INVALID_PARAM")


@pytest.mark.parametrize("report_id", ["abc", "-1", "99999999999999999999"])
@shared
async def test_admin_bad_report_id(env: Env, report_id: str) -> None:
    client, token = env.client, env.admin
    status, body = await admin_get(client, token, f"/event_reports/{report_id}")
    assert_error(status, body, 400, "M_INVALID_PARAM")


@shared
async def test_admin_only(env: Env) -> None:
    client, alice = env.client, env.alice
    for method, path in (("GET", "/event_reports"), ("GET", "/event_reports/1"),
                         ("DELETE", "/event_reports/1"), ("GET", "/room_reports")):
        resp = await client.request(method, ADMIN + path, headers=bearer(alice.token))
        assert_error(resp.status, await resp.json(), 403, "M_FORBIDDEN")
        resp = await client.request(method, ADMIN + path)
        assert_error(resp.status, await resp.json(), 401, "M_MISSING_TOKEN")


async def test_unknown_or_invisible_events_are_404(client: TestClient, alice: User,
                                                   bob: User) -> None:
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "private")
    # Not in the room.
    status, body = await report(client, bob, room_id, event_id, {"reason": "x"})
    assert_error(status, body, 404, "M_NOT_FOUND")
    # Unknown event, unknown room, an event of another room.
    status, body = await report(client, alice, room_id, "$nope", {"reason": "x"})
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await report(client, alice, "!nope:test.local", event_id, {})
    assert_error(status, body, 404, "M_NOT_FOUND")
    other = await create_room(client, alice)
    status, body = await report(client, alice, other, event_id, {})
    assert_error(status, body, 404, "M_NOT_FOUND")
    # History from before bob joined a room with "joined" visibility.
    await put_state(client, alice, room_id, "m.room.history_visibility",
                    {"history_visibility": "joined"})
    hidden = await send_text(client, alice, room_id, "before bob")
    await api(client, "POST", f"/rooms/{room_id}/invite", alice, {"user_id": bob.user_id})
    await join(client, bob, room_id)
    status, body = await report(client, bob, room_id, hidden, {})
    assert_error(status, body, 404, "M_NOT_FOUND")
    # A redacted event.
    status, _ = await api(client, "PUT", f"/rooms/{room_id}/redact/{event_id}/{txn()}", alice,
                          {})
    assert status == 200
    status, body = await report(client, alice, room_id, event_id, {})
    assert_error(status, body, 404, "M_NOT_FOUND")
    token = await admin_token(client)
    status, page = await admin_get(client, token, "/event_reports")
    assert page["total"] == 0


@pytest.mark.parametrize(("body", "errcode"), [
    ({"reason": 5}, "M_BAD_JSON"),
    ({"score": "high"}, "M_BAD_JSON"),
    ({"score": True}, "M_BAD_JSON"),
    ({"score": 1.5}, "M_BAD_JSON"),
    ({"reason": "x" * 70000}, "M_BAD_JSON"),
    (["reason"], "M_BAD_JSON"),
])
@shared
async def test_bad_event_report_bodies(env: Env, body: Any, errcode: str) -> None:
    client, alice = env.client, env.alice
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "x")
    status, answer = await report(client, alice, room_id, event_id, body)
    assert_error(status, answer, 400, errcode)


@shared
async def test_bad_ids(env: Env) -> None:
    client, alice = env.client, env.alice
    status, body = await report(client, alice, "not-a-room", "$x", {})
    assert status == 400 and body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), body
    status, body = await api(client, "POST", "/rooms/not-a-room/report", alice, {"reason": ""})
    assert status == 400 and body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), body


@shared
async def test_report_needs_auth(env: Env) -> None:
    client, alice = env.client, env.alice
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "x")
    status, body = await report(client, None, room_id, event_id, {})  # type: ignore[arg-type]
    assert_error(status, body, 401, "M_MISSING_TOKEN")


async def test_room_reports(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, name="Spam")
    status, body = await api(client, "POST", f"/rooms/{room_id}/report", bob,
                             {"reason": "spam room"})
    assert (status, body) == (200, {})
    status, body = await api(client, "POST", f"/rooms/{room_id}/report", bob, {"reason": ""})
    assert status == 200, body
    status, body = await api(client, "POST", "/rooms/!unknown:test.local/report", bob,
                             {"reason": "x"})
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await api(client, "POST", f"/rooms/{room_id}/report", bob, {})
    assert_error(status, body, 400, "M_MISSING_PARAM")
    status, body = await api(client, "POST", f"/rooms/{room_id}/report", bob, {"reason": 1})
    assert_error(status, body, 400, "M_BAD_JSON")

    token = await admin_token(client)
    status, page = await admin_get(client, token, "/room_reports", dir="f")
    assert status == 200, page
    assert page["total"] == 2
    first = page["room_reports"][0]
    assert (first["room_id"], first["user_id"], first["reason"], first["name"]) == (
        room_id, bob.user_id, "spam room", "Spam")
    # Room reports are not event reports.
    status, events = await admin_get(client, token, "/event_reports")
    assert events["total"] == 0
    status, body = await admin_get(client, token, f"/event_reports/{first['id']}")
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, one = await admin_get(client, token, f"/room_reports/{first['id']}")
    assert (status, one) == (200, first)
    resp = await client.delete(f"{ADMIN}/room_reports/{first['id']}", headers=bearer(token))
    assert resp.status == 200
    status, page = await admin_get(client, token, "/room_reports")
    assert page["total"] == 1
