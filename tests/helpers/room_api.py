"""HTTP helpers for the room test modules: users, requests checked against the spec, and
the common room operations."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp.test_utils import TestClient

from tests.conftest import bearer, register_user
from tests.helpers.spec import assert_matches_spec

V3 = "/_matrix/client/v3"

@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    token: str
    device_id: str


async def new_user(client: TestClient, name: str) -> User:
    body = await register_user(client, name)
    return User(body["user_id"], body["access_token"], body["device_id"])


def _quoted(path: str) -> str:
    return "/".join(quote(segment, safe="") for segment in path.split("/"))


async def api(client: TestClient, method: str, path: str, user: User | None = None,
              body: Any = None, *, query: dict[str, str] | None = None,
              spec: bool | str = True) -> tuple[int, Any]:
    """One request to ``/_matrix/client/v3{path}`` (IDs in ``path`` unquoted); a 200 answer is
    checked against the spec's schema for ``path`` (or for ``spec`` when that is a path, for
    the paths the spec only lists in another form) unless ``spec`` is false."""
    resp = await client.request(method, V3 + _quoted(path), json=body, params=query,
                                headers=bearer(user.token) if user else None)
    data = await resp.json()
    if resp.status == 200 and spec:
        spec_path = spec if isinstance(spec, str) else path
        if _EMPTY_STATE_KEY.match(spec_path):
            # The spec lists /state/{eventType}/{stateKey} only; the empty key is the same.
            spec_path = spec_path.rstrip("/") + "/_"
        assert_matches_spec("client-server", method, spec_path, 200, data)
    return resp.status, data


_EMPTY_STATE_KEY = re.compile(r"^/rooms/[^/]+/state/[^/]+/?$")


_txn = itertools.count()


def txn() -> str:
    return f"txn{next(_txn)}"


async def create_room(client: TestClient, user: User, **body: Any) -> str:
    status, data = await api(client, "POST", "/createRoom", user, body)
    assert status == 200, data
    return str(data["room_id"])


async def send_text(client: TestClient, user: User, room_id: str, text: str,
                    txn_id: str | None = None) -> str:
    status, data = await api(client, "PUT",
                             f"/rooms/{room_id}/send/m.room.message/{txn_id or txn()}", user,
                             {"msgtype": "m.text", "body": text})
    assert status == 200, data
    return str(data["event_id"])


async def put_state(client: TestClient, user: User, room_id: str, event_type: str,
                    content: dict[str, Any], state_key: str = "") -> tuple[int, Any]:
    path = f"/rooms/{room_id}/state/{event_type}"
    return await api(client, "PUT", f"{path}/{state_key}" if state_key else path, user, content)


async def room_state(client: TestClient, user: User, room_id: str
                     ) -> dict[tuple[str, str], dict[str, Any]]:
    status, events = await api(client, "GET", f"/rooms/{room_id}/state", user)
    assert status == 200, events
    return {(e["type"], e["state_key"]): e for e in events}


async def join(client: TestClient, user: User, room_id: str) -> None:
    status, data = await api(client, "POST", f"/rooms/{room_id}/join", user, {})
    assert status == 200, data


async def messages(client: TestClient, user: User, room_id: str, **query: Any
                   ) -> tuple[int, Any]:
    return await api(client, "GET", f"/rooms/{room_id}/messages", user,
                     query={"dir": "b", **{k: str(v) for k, v in query.items()}})


def ids(events: Any) -> list[str]:
    """The event IDs of a list of events, or of a state map's values."""
    return [e["event_id"] for e in (events.values() if isinstance(events, dict) else events)]


async def all_events(client: TestClient, user: User, room_id: str) -> list[dict[str, Any]]:
    """Every event the user can see, oldest first."""
    status, data = await messages(client, user, room_id, dir="f", limit=1000)
    assert status == 200, data
    assert "end" not in data
    return list(data["chunk"])


def assert_error(status: int, body: Any, expected_status: int, errcode: str) -> None:
    assert (status, body.get("errcode")) == (expected_status, errcode), body
    assert isinstance(body.get("error"), str)
