"""Server-side key backup over real HTTP, on SQLite and on PostgreSQL: /room_keys/version and
/room_keys/keys at all three levels (``homeserver/services/key_backup.py``), answers checked
against the spec's OpenAPI definitions.

A backup is its user's own (versions, etags and counts are counted per user), so the tests
share one server per backend (``env``) and each has users of its own (``alice``, ``fresh_user``),
whose backups start empty as on a fresh server."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from tests.helpers.harness import SharedServer, shared_server
from tests.helpers.room_api import User, api, assert_error, new_user
from tests.helpers.spec import assert_matches_spec

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:test.local"
OTHER_ROOM = "!other:test.local"
MAX_BODY = 300_000


# Every test runs on the module's shared server (``env``), in the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Env:
    client: TestClient
    services: Services


# One server per backend, shared by all the tests.
server = shared_server("key-backup", overrides={"http": {"max_request_body_bytes": MAX_BODY}})


@pytest.fixture(scope="module")
def env(server: SharedServer) -> Env:
    services, client = server
    return Env(client, services)


@pytest.fixture
def client(env: Env) -> TestClient:
    return env.client


@pytest.fixture
def services(env: Env) -> Services:
    return env.services


_numbers = itertools.count()


async def fresh_user(client: TestClient, name: str) -> User:
    """A user no other test has: a backup of nothing yet."""
    return await new_user(client, f"{name}{next(_numbers)}")


@pytest_asyncio.fixture(loop_scope="module")
async def alice(client: TestClient) -> User:
    return await fresh_user(client, "alice")


def auth_data(public_key: str = "abcdefg") -> dict[str, Any]:
    return {"public_key": public_key,
            "signatures": {"@alice:test.local": {"ed25519:DEV": "signature"}}}


def key(index: int = 0, forwarded: int = 0, verified: bool = False, data: str = "d"
        ) -> dict[str, Any]:
    return {"first_message_index": index, "forwarded_count": forwarded, "is_verified": verified,
            "session_data": {"ephemeral": "e", "ciphertext": data, "mac": "m"}}


async def create(client: TestClient, user: User, public_key: str = "abcdefg") -> str:
    status, body = await api(client, "POST", "/room_keys/version", user,
                             {"algorithm": ALGORITHM, "auth_data": auth_data(public_key)})
    assert status == 200, body
    return str(body["version"])


async def put(client: TestClient, user: User, version: str, path: str, body: Any
              ) -> tuple[int, Any]:
    status, answer = await api(client, "PUT", f"/room_keys/keys{path}", user, body,
                               query={"version": version})
    return status, answer


async def get(client: TestClient, user: User, version: str, path: str = "") -> tuple[int, Any]:
    return await api(client, "GET", f"/room_keys/keys{path}", user, query={"version": version})


def spec_error(method: str, path: str, status: int, body: Any) -> None:
    assert_matches_spec("client-server", method, path, status, body)


# -- versions ---------------------------------------------------------------------------------


async def test_versions_are_created_read_updated_and_deleted(client: TestClient,
                                                             alice: User) -> None:
    status, body = await api(client, "GET", "/room_keys/version", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    assert body["error"] == "No backup found"
    spec_error("GET", "/room_keys/version", 404, body)

    assert await create(client, alice) == "1"
    current = {"algorithm": ALGORITHM, "auth_data": auth_data(), "count": 0, "etag": "0",
               "version": "1"}
    assert await api(client, "GET", "/room_keys/version", alice) == (200, current)
    assert await api(client, "GET", "/room_keys/version/1", alice) == (200, current)

    assert await create(client, alice, "second") == "2"
    status, body = await api(client, "GET", "/room_keys/version", alice)
    assert (status, body["version"], body["auth_data"]) == (200, "2", auth_data("second"))
    # An older version can still be read.
    assert await api(client, "GET", "/room_keys/version/1", alice) == (200, current)

    # Only auth_data changes; the body's version, if given, must be the path's.
    status, body = await api(client, "PUT", "/room_keys/version/2", alice,
                             {"algorithm": ALGORITHM, "auth_data": auth_data("new"),
                              "version": "2"})
    assert (status, body) == (200, {})
    status, body = await api(client, "GET", "/room_keys/version/2", alice)
    assert (body["auth_data"], body["algorithm"]) == (auth_data("new"), ALGORITHM)
    status, body = await api(client, "PUT", "/room_keys/version/2", alice,
                             {"algorithm": ALGORITHM, "auth_data": auth_data()})
    assert (status, body) == (200, {})

    status, body = await api(client, "PUT", "/room_keys/version/2", alice,
                             {"algorithm": "org.example.other", "auth_data": auth_data()})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    spec_error("PUT", "/room_keys/version/2", 400, body)
    status, body = await api(client, "PUT", "/room_keys/version/2", alice,
                             {"algorithm": ALGORITHM, "auth_data": auth_data(), "version": "1"})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    for unknown in ("99", "abc", "-1", "1.0", "9" * 40):
        status, body = await api(client, "PUT", f"/room_keys/version/{unknown}", alice,
                                 {"algorithm": ALGORITHM, "auth_data": auth_data()})
        assert_error(status, body, 404, "M_NOT_FOUND")
        spec_error("PUT", "/room_keys/version/x", 404, body)
        status, body = await api(client, "GET", f"/room_keys/version/{unknown}", alice)
        assert_error(status, body, 404, "M_NOT_FOUND")
        spec_error("GET", "/room_keys/version/x", 404, body)
        status, body = await api(client, "DELETE", f"/room_keys/version/{unknown}", alice)
        assert_error(status, body, 404, "M_NOT_FOUND")
        spec_error("DELETE", "/room_keys/version/x", 404, body)

    # Deleting the current version makes the one before it current again; deleting it a
    # second time succeeds; its number is never handed out again.
    assert await api(client, "DELETE", "/room_keys/version/2", alice) == (200, {})
    status, body = await api(client, "GET", "/room_keys/version", alice)
    assert (status, body["version"]) == (200, "1")
    assert await api(client, "DELETE", "/room_keys/version/2", alice) == (200, {})
    status, body = await api(client, "GET", "/room_keys/version/2", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await api(client, "PUT", "/room_keys/version/2", alice,
                             {"algorithm": ALGORITHM, "auth_data": auth_data()})
    assert_error(status, body, 404, "M_NOT_FOUND")
    assert await create(client, alice) == "3"
    assert await api(client, "DELETE", "/room_keys/version/3", alice) == (200, {})
    assert await api(client, "DELETE", "/room_keys/version/1", alice) == (200, {})
    status, body = await api(client, "GET", "/room_keys/version", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")


# -- keys -------------------------------------------------------------------------------------


async def test_keys_at_every_level_with_etag_and_count(client: TestClient, alice: User) -> None:
    version = await create(client, alice)
    assert await put(client, alice, version, f"/{ROOM}/s1", key(data="one")) == \
        (200, {"etag": "1", "count": 1})
    assert await put(client, alice, version, f"/{ROOM}",
                     {"sessions": {"s2": key(data="two"), "s3": key(data="three")}}) == \
        (200, {"etag": "2", "count": 3})
    assert await put(client, alice, version, "", {"rooms": {
        OTHER_ROOM: {"sessions": {"o1": key(5, 1, True)}},
        ROOM: {"sessions": {"s4": key(data="four")}}}}) == (200, {"etag": "3", "count": 5})
    # Nothing new: the etag stays.
    assert await put(client, alice, version, f"/{ROOM}/s1", key(data="one")) == \
        (200, {"etag": "3", "count": 5})
    assert await put(client, alice, version, "", {"rooms": {}}) == \
        (200, {"etag": "3", "count": 5})

    status, body = await api(client, "GET", "/room_keys/version", alice)
    assert (status, body["count"], body["etag"]) == (200, 5, "3")
    status, body = await api(client, "GET", f"/room_keys/version/{version}", alice)
    assert (status, body["count"], body["etag"]) == (200, 5, "3")

    room = {"sessions": {"s1": key(data="one"), "s2": key(data="two"),
                         "s3": key(data="three"), "s4": key(data="four")}}
    assert await get(client, alice, version) == \
        (200, {"rooms": {ROOM: room, OTHER_ROOM: {"sessions": {"o1": key(5, 1, True)}}}})
    assert await get(client, alice, version, f"/{ROOM}") == (200, room)
    assert await get(client, alice, version, f"/{ROOM}/s2") == (200, key(data="two"))
    # A room without keys is an empty answer; a session without one is 404.
    assert await get(client, alice, version, "/!empty:test.local") == (200, {"sessions": {}})
    status, body = await get(client, alice, version, f"/{ROOM}/nope")
    assert_error(status, body, 404, "M_NOT_FOUND")
    spec_error("GET", "/room_keys/keys/r/s", 404, body)


async def test_an_empty_backup_answers_empty_objects(client: TestClient, alice: User) -> None:
    version = await create(client, alice)
    assert await get(client, alice, version) == (200, {"rooms": {}})
    assert await get(client, alice, version, f"/{ROOM}") == (200, {"sessions": {}})


# (stored, uploaded, replaced): the spec's order, a verified key over an unverified one, then
# the lower first_message_index, then the lower forwarded_count.
REPLACEMENTS = [
    (key(5, 2, False), key(5, 2, True), True),
    (key(5, 2, True), key(5, 2, False), False),
    (key(5, 2, True), key(0, 0, False), False),
    (key(0, 0, False), key(9, 9, True), True),
    (key(5, 2, False), key(4, 2, False), True),
    (key(5, 2, False), key(6, 0, False), False),
    (key(5, 2, True), key(4, 9, True), True),
    (key(5, 2, False), key(5, 1, False), True),
    (key(5, 2, False), key(5, 3, False), False),
    (key(5, 2, False), key(5, 2, False), False),
    (key(5, 2, True), key(5, 2, True), False),
]


@pytest.mark.parametrize(("stored", "uploaded", "replaced"), REPLACEMENTS)
async def test_a_session_uploaded_again_is_kept_only_if_better(
        client: TestClient, alice: User, stored: dict[str, Any], uploaded: dict[str, Any],
        replaced: bool) -> None:
    version = await create(client, alice)
    stored = {**stored, "session_data": {"ciphertext": "stored"}}
    uploaded = {**uploaded, "session_data": {"ciphertext": "uploaded"}}
    assert await put(client, alice, version, f"/{ROOM}/s", stored) == \
        (200, {"etag": "1", "count": 1})
    # Through the room level and the all-rooms level too: the same rule.
    for path, body in ((f"/{ROOM}/s", uploaded), (f"/{ROOM}", {"sessions": {"s": uploaded}}),
                       ("", {"rooms": {ROOM: {"sessions": {"s": uploaded}}}})):
        status, answer = await put(client, alice, version, path, body)
        assert (status, answer["count"]) == (200, 1)
        assert await get(client, alice, version, f"/{ROOM}/s") == \
            (200, uploaded if replaced else stored)
        assert answer["etag"] == ("2" if replaced else "1")


async def test_keys_go_only_to_the_current_version(client: TestClient, alice: User) -> None:
    status, body = await put(client, alice, "1", f"/{ROOM}/s", key())
    assert_error(status, body, 404, "M_NOT_FOUND")
    old = await create(client, alice)
    assert await put(client, alice, old, f"/{ROOM}/s", key(data="old")) == \
        (200, {"etag": "1", "count": 1})
    current = await create(client, alice)
    for path, body in ((f"/{ROOM}/s", key()), (f"/{ROOM}", {"sessions": {"s": key()}}),
                       ("", {"rooms": {ROOM: {"sessions": {"s": key()}}}})):
        status, answer = await put(client, alice, old, path, body)
        assert_error(status, answer, 403, "M_WRONG_ROOM_KEYS_VERSION")
        assert answer["current_version"] == current
        spec_error("PUT", "/room_keys/keys" + ("/r/s" if path.count("/") == 2 else
                                                "/r" if path else ""), 403, answer)
        status, answer = await put(client, alice, "42", path, body)
        assert_error(status, answer, 404, "M_NOT_FOUND")
        status, answer = await put(client, alice, "nonsense", path, body)
        assert_error(status, answer, 404, "M_NOT_FOUND")
    # The old version's keys can still be read and deleted; an unknown version's cannot.
    assert await get(client, alice, old, f"/{ROOM}/s") == (200, key(data="old"))
    for method in ("GET", "DELETE"):
        for path in ("", f"/{ROOM}", f"/{ROOM}/s"):
            status, answer = await api(client, method, f"/room_keys/keys{path}", alice,
                                       query={"version": "42"})
            assert_error(status, answer, 404, "M_NOT_FOUND")
            spec_error(method, "/room_keys/keys" + ("/r/s" if path.count("/") == 2 else
                                                    "/r" if path else ""), 404, answer)
    # Once the current version is deleted, the one before it takes keys again.
    assert await api(client, "DELETE", f"/room_keys/version/{current}", alice) == (200, {})
    status, answer = await put(client, alice, current, f"/{ROOM}/s", key())
    assert_error(status, answer, 404, "M_NOT_FOUND")
    assert await put(client, alice, old, f"/{ROOM}/t", key()) == (200, {"etag": "2", "count": 2})


async def test_deleting_keys_at_every_level(client: TestClient, alice: User) -> None:
    version = await create(client, alice)
    await put(client, alice, version, "", {"rooms": {
        ROOM: {"sessions": {"a": key(), "b": key(), "c": key()}},
        OTHER_ROOM: {"sessions": {"x": key(), "y": key()}}}})

    async def delete(path: str) -> tuple[int, Any]:
        return await api(client, "DELETE", f"/room_keys/keys{path}", alice,
                         query={"version": version})

    assert await delete(f"/{ROOM}/a") == (200, {"etag": "2", "count": 4})
    status, body = await get(client, alice, version, f"/{ROOM}/a")
    assert_error(status, body, 404, "M_NOT_FOUND")
    # Deleting what is not there still answers the etag and count (and raises the etag,
    # as Synapse does).
    assert await delete(f"/{ROOM}/a") == (200, {"etag": "3", "count": 4})
    assert await delete(f"/{OTHER_ROOM}") == (200, {"etag": "4", "count": 2})
    assert await get(client, alice, version, f"/{OTHER_ROOM}") == (200, {"sessions": {}})
    assert await get(client, alice, version) == \
        (200, {"rooms": {ROOM: {"sessions": {"b": key(), "c": key()}}}})
    assert await delete("") == (200, {"etag": "5", "count": 0})
    assert await get(client, alice, version) == (200, {"rooms": {}})
    status, body = await api(client, "GET", "/room_keys/version", alice)
    assert (body["count"], body["etag"]) == (0, "5")


async def test_deleting_a_version_deletes_its_keys(client: TestClient, alice: User,
                                                   services: Services) -> None:
    first = await create(client, alice)
    await put(client, alice, first, f"/{ROOM}", {"sessions": {"a": key(), "b": key()}})
    second = await create(client, alice)
    await put(client, alice, second, f"/{ROOM}/c", key())
    assert await api(client, "DELETE", f"/room_keys/version/{first}", alice) == (200, {})
    status, body = await get(client, alice, first)
    assert_error(status, body, 404, "M_NOT_FOUND")
    # The rows are gone, not just hidden.
    store = services.db.key_backup
    assert await store.get_keys(alice.user_id, int(first)) is None
    assert await get(client, alice, second) == \
        (200, {"rooms": {ROOM: {"sessions": {"c": key()}}}})


async def test_two_users_backups_are_their_own(client: TestClient, alice: User) -> None:
    bob = await fresh_user(client, "bob")
    assert await create(client, alice, "alice's") == "1"
    assert await create(client, bob, "bob's") == "1"
    await put(client, alice, "1", f"/{ROOM}/s", key(data="alice"))
    await put(client, bob, "1", f"/{ROOM}/s", key(data="bob"))
    await put(client, bob, "1", f"/{ROOM}/t", key(data="bob"))
    assert await get(client, alice, "1") == \
        (200, {"rooms": {ROOM: {"sessions": {"s": key(data="alice")}}}})
    status, body = await api(client, "GET", "/room_keys/version", alice)
    assert (body["auth_data"], body["count"], body["etag"]) == (auth_data("alice's"), 1, "1")
    status, body = await api(client, "GET", "/room_keys/version", bob)
    assert (body["auth_data"], body["count"], body["etag"]) == (auth_data("bob's"), 2, "2")
    # Bob's deletions touch only his backup.
    await api(client, "DELETE", "/room_keys/keys", bob, query={"version": "1"})
    assert await api(client, "DELETE", "/room_keys/version/1", bob) == (200, {})
    assert await get(client, alice, "1", f"/{ROOM}/s") == (200, key(data="alice"))
    status, body = await api(client, "GET", "/room_keys/version", bob)
    assert_error(status, body, 404, "M_NOT_FOUND")
    assert await create(client, bob) == "2"


async def test_many_sessions_in_one_request(client: TestClient, alice: User) -> None:
    version = await create(client, alice)
    rooms = {f"!r{r}:test.local": {"sessions": {f"s{s}": key(s % 7, s % 3, s % 2 == 0)
                                                for s in range(100)}}
             for r in range(12)}
    assert await put(client, alice, version, "", {"rooms": rooms}) == \
        (200, {"etag": "1", "count": 1200})
    assert await put(client, alice, version, "", {"rooms": rooms}) == \
        (200, {"etag": "1", "count": 1200})
    status, body = await get(client, alice, version)
    assert (status, body) == (200, {"rooms": rooms})


# -- bad input --------------------------------------------------------------------------------


BAD_VERSIONS: list[tuple[Any, str]] = [
    ({}, "M_BAD_JSON"),
    ({"algorithm": ALGORITHM}, "M_BAD_JSON"),
    ({"auth_data": {}}, "M_BAD_JSON"),
    ({"algorithm": 5, "auth_data": {}}, "M_BAD_JSON"),
    ({"algorithm": "", "auth_data": {}}, "M_BAD_JSON"),
    ({"algorithm": "x" * 300, "auth_data": {}}, "M_BAD_JSON"),
    ({"algorithm": ALGORITHM, "auth_data": "key"}, "M_BAD_JSON"),
    ({"algorithm": ALGORITHM, "auth_data": None}, "M_BAD_JSON"),
    ([ALGORITHM], "M_BAD_JSON"),
]


@pytest.mark.parametrize(("body", "errcode"), BAD_VERSIONS)
async def test_bad_version_bodies_are_refused(client: TestClient, alice: User, body: Any,
                                              errcode: str) -> None:
    status, answer = await api(client, "POST", "/room_keys/version", alice, body)
    assert_error(status, answer, 400, errcode)
    version = await create(client, alice)
    status, answer = await api(client, "PUT", f"/room_keys/version/{version}", alice, body)
    assert_error(status, answer, 400, errcode)
    status, answer = await api(client, "GET", "/room_keys/version", alice)
    assert (answer["version"], answer["auth_data"]) == (version, auth_data())


BAD_KEYS: list[tuple[str, Any, str]] = [
    ("/{room}/s", {}, "M_BAD_JSON"),
    ("/{room}/s", {**key(), "is_verified": "yes"}, "M_BAD_JSON"),
    ("/{room}/s", {**key(), "is_verified": None}, "M_BAD_JSON"),
    ("/{room}/s", {**key(), "first_message_index": "1"}, "M_BAD_JSON"),
    ("/{room}/s", {**key(), "first_message_index": 1.5}, "M_BAD_JSON"),
    ("/{room}/s", {**key(), "forwarded_count": True}, "M_BAD_JSON"),
    ("/{room}/s", {**key(), "session_data": "ciphertext"}, "M_BAD_JSON"),
    ("/{room}/s", {k: v for k, v in key().items() if k != "session_data"}, "M_BAD_JSON"),
    ("/{room}", {}, "M_BAD_JSON"),
    ("/{room}", {"sessions": []}, "M_BAD_JSON"),
    ("/{room}", {"sessions": {"s": 5}}, "M_BAD_JSON"),
    ("/{room}", {"sessions": {"s": key(), "t": {**key(), "is_verified": 1}}}, "M_BAD_JSON"),
    ("/{room}", {"sessions": {"": key()}}, "M_INVALID_PARAM"),
    ("/{room}", {"sessions": {"s" * 300: key()}}, "M_INVALID_PARAM"),
    ("", {}, "M_BAD_JSON"),
    ("", {"rooms": []}, "M_BAD_JSON"),
    ("", {"rooms": {"{room}": {}}}, "M_BAD_JSON"),
    ("", {"rooms": {"{room}": {"sessions": {"s": key()}}, "not-a-room": {"sessions": {}}}},
     "M_INVALID_PARAM"),
    ("/not-a-room", {"sessions": {}}, "M_INVALID_PARAM"),
    ("/not-a-room/s", key(), "M_INVALID_PARAM"),
]


@pytest.mark.parametrize(("path", "body", "errcode"), BAD_KEYS)
async def test_bad_key_bodies_are_refused_and_nothing_is_stored(
        client: TestClient, alice: User, path: str, body: Any, errcode: str) -> None:
    version = await create(client, alice)
    path = path.replace("{room}", ROOM)
    if isinstance(body, dict) and "rooms" in body and isinstance(body["rooms"], dict):
        body = {"rooms": {k.replace("{room}", ROOM): v for k, v in body["rooms"].items()}}
    status, answer = await put(client, alice, version, path, body)
    assert_error(status, answer, 400, errcode)
    assert await get(client, alice, version) == (200, {"rooms": {}})
    status, answer = await api(client, "GET", "/room_keys/version", alice)
    assert (answer["count"], answer["etag"]) == (0, "0")


async def test_bad_requests_get_matrix_errors(client: TestClient, alice: User) -> None:
    version = await create(client, alice)
    for method in ("GET", "PUT", "DELETE"):
        for path in ("", f"/{ROOM}", f"/{ROOM}/s"):
            body = key() if method == "PUT" else None
            status, answer = await api(client, method, f"/room_keys/keys{path}", alice, body)
            assert_error(status, answer, 400, "M_MISSING_PARAM")
        for path in ("/not-a-room", "/not-a-room/s"):
            status, answer = await api(client, method, f"/room_keys/keys{path}", alice,
                                       key() if method == "PUT" else None,
                                       query={"version": version})
            assert_error(status, answer, 400, "M_INVALID_PARAM")
    # Not JSON, or not an object.
    for raw in (b"{", b"[]", b'"x"', b""):
        resp = await client.put(f"/_matrix/client/v3/room_keys/keys?version={version}",
                                data=raw, headers={"Authorization": f"Bearer {alice.token}"})
        assert resp.status == 400
        assert (await resp.json())["errcode"] in ("M_NOT_JSON", "M_BAD_JSON")
    # Too large.
    huge = {"rooms": {ROOM: {"sessions": {f"s{i}": key(data="x" * 1000)
                                          for i in range(MAX_BODY // 1000 + 10)}}}}
    status, answer = await put(client, alice, version, "", huge)
    assert_error(status, answer, 413, "M_TOO_LARGE")
    # No token.
    for method, path in (("GET", "/room_keys/version"), ("POST", "/room_keys/version"),
                         ("GET", "/room_keys/keys?version=1")):
        resp = await client.request(method, f"/_matrix/client/v3{path}", json={})
        assert resp.status == 401
        assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    assert await get(client, alice, version) == (200, {"rooms": {}})
