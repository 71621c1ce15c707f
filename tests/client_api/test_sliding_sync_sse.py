"""The server-sent-events variant of sliding sync (docs/extensions.md, "Server-sent-events
sliding sync"): ``GET /_matrix/client/unstable/org.ktchat.sse/sliding_sync?request=JSON``,
one ``sync`` message per response with ``id`` = ``pos``, resumable with ``Last-Event-ID``.
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient

from tests.client_api import test_sync_fanout
from tests.client_api.test_rooms import User, assert_error, create_room, send_text
from tests.client_api.test_sliding_sync import bodies, check_shape, one_list, room_ids
from tests.client_api.test_sse import EventStream
from tests.conftest import bearer

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL

SSE = "/_matrix/client/unstable/org.ktchat.sse/sliding_sync"
REQUEST = {**one_list(limit=5), "conn_id": "web"}


@asynccontextmanager
async def open_stream(client: TestClient, user: User, body: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None) -> AsyncIterator[EventStream]:
    params = {"access_token": user.token, "request": json.dumps(body or REQUEST)}
    resp = await client.get(SSE, params=params, headers=headers or {})
    try:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        yield EventStream(resp)
    finally:
        resp.close()


async def next_response(stream: EventStream) -> tuple[str | None, dict[str, Any]]:
    message = await stream.next(5)
    assert message.event == "sync"
    body = message.body
    check_shape(body)
    assert message.id == body["pos"]
    return message.id, body


async def test_stream_live_and_resumed(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="sse")
    async with open_stream(client, alice) as stream:
        last_id, first = await next_response(stream)
        assert room_ids(first) == [room_id]
        assert first["rooms"][room_id]["initial"] is True
        await send_text(client, alice, room_id, "live")
        last_id, body = await next_response(stream)
        assert bodies(body["rooms"][room_id]) == ["live"]
        assert "initial" not in body["rooms"][room_id]
        await stream.nothing_for(0.3)  # nothing new: nothing sent
    # Missed while away: it comes first on reconnecting with Last-Event-ID, once.
    await send_text(client, alice, room_id, "missed")
    assert last_id is not None
    async with open_stream(client, alice, headers={"Last-Event-ID": last_id}) as stream:
        _, body = await next_response(stream)
        assert bodies(body["rooms"][room_id]) == ["missed"]
        await send_text(client, alice, room_id, "after")
        _, body = await next_response(stream)
        assert bodies(body["rooms"][room_id]) == ["after"]


async def test_stream_cors_and_errors(client: TestClient, alice: User) -> None:
    await create_room(client, alice, name="cors")
    resp = await client.get(SSE, params={"access_token": alice.token,
                                         "request": json.dumps(REQUEST)},
                            headers={"Origin": "https://app.example"})
    try:
        assert resp.status == 200
        assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    finally:
        resp.close()
    for request, errcode in (("{nope", "M_NOT_JSON"), ("[]", "M_BAD_JSON"),
                             (json.dumps({"lists": {"a": {"ranges": [[0, 1]]}}}),
                              "M_BAD_JSON")):
        resp = await client.get(SSE, params={"request": request}, headers=bearer(alice.token))
        assert_error(resp.status, await resp.json(), 400, errcode)
    resp = await client.get(SSE, params={"request": json.dumps(REQUEST)},
                            headers={**bearer(alice.token), "Last-Event-ID": "7/s1"})
    assert_error(resp.status, await resp.json(), 400, "M_UNKNOWN_POS")
    resp = await client.get(SSE)
    assert resp.status == 401
