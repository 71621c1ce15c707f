"""Requests without a body, over real HTTP: where the spec requires a JSON object, an empty
body is ``400 M_NOT_JSON``; where real clients send none and Synapse accepts it (joining,
leaving, deleting a device), it is taken as ``{}``.

The table follows the spec's ``requestBody: required`` (tests/spec) and, where Synapse is more
lenient than the spec, its ``parse_json_object_from_request(allow_empty_body=True)`` call
sites.

The tests share one server (``server``, on SQLite as before) and each has a room and users of
its own (``place``), so what one request changes (a join, a leave, a logout) is its test's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from tests.conftest import bearer
from tests.helpers.harness import SharedServer, shared_server
from tests.helpers.room_api import User, api, create_room, join, new_user, room_state, send_text

V3 = "/_matrix/client/v3"
HISTORY = "/_matrix/client/unstable/org.ktchat.history"


@dataclass(frozen=True, slots=True)
class Place:
    """What the paths of the table are filled in with."""

    room_id: str
    event_id: str
    alice: User
    bob: User


# (method, path template, expected status, expected errcode or None for a success)
STRICT = "M_NOT_JSON"
TABLE: list[tuple[str, str, int, str | None]] = [
    # The spec requires a body and so does Synapse.
    ("POST", "/createRoom", 400, STRICT),
    ("PUT", "/rooms/{room}/send/m.room.message/t1", 400, STRICT),
    ("PUT", "/rooms/{room}/state/m.room.topic", 400, STRICT),
    ("PUT", "/rooms/{room}/state/m.room.member/{bob}", 400, STRICT),
    ("PUT", "/rooms/{room}/redact/{event}/t2", 400, STRICT),
    ("POST", "/rooms/{room}/receipt/m.read/{event}", 400, STRICT),
    ("POST", "/rooms/{room}/read_markers", 400, STRICT),
    ("PUT", "/rooms/{room}/typing/{alice}", 400, STRICT),
    ("POST", "/rooms/{room}/invite", 400, STRICT),
    ("POST", "/rooms/{room}/kick", 400, STRICT),
    ("POST", "/rooms/{room}/ban", 400, STRICT),
    ("POST", "/rooms/{room}/unban", 400, STRICT),
    ("POST", "/knock/{room}", 400, STRICT),
    ("PUT", "/devices/{device}", 400, STRICT),
    ("POST", "/delete_devices", 400, STRICT),
    ("PUT", "/profile/{alice}/displayname", 400, STRICT),
    ("PUT", "/user/{alice}/account_data/org.example", 400, STRICT),
    ("PUT", "/user/{alice}/rooms/{room}/account_data/org.example", 400, STRICT),
    ("PUT", "/user/{alice}/rooms/{room}/tags/u.work", 400, STRICT),
    ("POST", "/user/{alice}/filter", 400, STRICT),
    ("POST", "/search", 400, STRICT),
    ("PUT", "/presence/{alice}/status", 400, STRICT),
    ("PUT", "/sendToDevice/org.example/t3", 400, STRICT),
    ("POST", "/account/password", 400, STRICT),
    ("POST", "/account/deactivate", 400, STRICT),
    ("PUT", "/directory/room/%23empty:test.local", 400, STRICT),
    # Sent without a body by real clients; Synapse takes an empty body as {}.
    ("POST", "/rooms/{room}/join", 200, None),
    ("POST", "/join/{room}", 200, None),
    ("POST", "/rooms/{room}/leave", 200, None),
    # Deleting a device: the body only carries auth, so no body is the first UIA step.
    ("DELETE", "/devices/{device}", 401, None),
    # No body in the spec at all.
    ("POST", "/rooms/{room}/forget", 400, "M_UNKNOWN"),  # bob is still joined
    ("POST", "/logout/all", 200, None),
    # Clearing my history (DESIGN.md): the body is optional ("absent = everything").
    (HISTORY, "/rooms/{room}/clear", 200, None),
]


# Every test runs on the module's shared server, in the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


# One server (SQLite) for the module.
server = shared_server("empty-bodies", kinds=("sqlite",))


@pytest.fixture
def client(server: SharedServer) -> TestClient:
    return server[1]


_numbers = itertools.count()


@pytest_asyncio.fixture(loop_scope="module")
async def alice(client: TestClient) -> User:
    """A user of this test's own."""
    return await new_user(client, f"alice{next(_numbers)}")


@pytest_asyncio.fixture(loop_scope="module")
async def bob(client: TestClient) -> User:
    """A user of this test's own."""
    return await new_user(client, f"bob{next(_numbers)}")


@pytest_asyncio.fixture(loop_scope="module")
async def place(client: TestClient, alice: User, bob: User) -> Place:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    event_id = await send_text(client, alice, room_id, "hello")
    return Place(room_id, event_id, alice, bob)


def _path(template: str, place: Place) -> str:
    return template.format(room=quote(place.room_id, safe=""),
                           event=quote(place.event_id, safe=""),
                           alice=quote(place.alice.user_id, safe=""),
                           bob=quote(place.bob.user_id, safe=""),
                           device=quote(place.bob.device_id, safe=""))


@pytest.mark.parametrize("method, template, status, errcode", TABLE,
                         ids=[f"{m} {t}" for m, t, _, _ in TABLE])
@pytest.mark.parametrize("body", [b"", b" \r\n"], ids=["empty", "blank"])
async def test_request_without_a_body(client: TestClient, place: Place, method: str,
                                      template: str, status: int, errcode: str | None,
                                      body: bytes) -> None:
    prefix = V3
    if method == HISTORY:
        method, prefix = "POST", HISTORY
    # Bob asks (alice's paths are alice's), so what he may do is not in question here.
    user = place.alice if "{alice}" in template or template == "/createRoom" else place.bob
    before = await room_state(client, place.alice, place.room_id)
    resp = await client.request(method, prefix + _path(template, place), data=body,
                                headers=bearer(user.token))
    answer: Any = await resp.json()
    assert resp.status == status, (resp.status, answer)
    if errcode is not None:
        assert (answer.get("errcode"), type(answer.get("error"))) == (errcode, str), answer
    if status != 200:
        # A refusal changes nothing.
        after = await room_state(client, place.alice, place.room_id)
        assert {k: v["event_id"] for k, v in after.items()} == \
            {k: v["event_id"] for k, v in before.items()}


async def test_create_room_with_an_empty_object_still_works(client: TestClient,
                                                             alice: User) -> None:
    status, body = await api(client, "POST", "/createRoom", alice, {})
    assert status == 200, body
