"""Another server's room directory: ``GET``/``POST /publicRooms?server=...`` on our client
API, answered by asking that server over federation (``/_matrix/federation/v1/publicRooms``).

Servers A and B are real processes federating over TLS on loopback (the ``fed_pair`` of this
module: alice on A, bob on B). B's directory is set up once: three published rooms (one a
space, one with alice as a second member) and one withdrawn from it; its exact contents and
order are what A must pass on, compared with what B itself answers. ``FakePeer`` plays a
server whose answers are malformed, refused or of the old kind (no ``POST``), and counts
what A asks of it: A caches answers for 30 s and shares identical questions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.federation.conftest import FedServers
from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import CLIENT_V3, FedPair, User, _http, q
from tests.helpers.processes import free_port
from tests.helpers.spec import assert_matches_spec

FED_PATH = "/_matrix/federation/v1/publicRooms"


@dataclass
class Directory:
    """B's published rooms, in B's order (most members first, then by room ID)."""

    meadow: str
    roses: str
    space: str
    withdrawn: str
    roses_alias: str

    @property
    def order(self) -> list[str]:
        ones = sorted([self.roses, self.space])
        return [self.meadow, *ones]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def directory(_fed_pair_module: FedPair) -> Directory:
    pair = _fed_pair_module
    bob, alice = pair.bob, pair.alice
    localpart = f"roses{uuid.uuid4().hex[:6]}"
    roses = await bob.create_room(preset="public_chat", visibility="public",
                                  name="Rose Garden", topic="All about roses",
                                  room_alias_name=localpart)
    meadow = await bob.create_room(preset="public_chat", visibility="public",
                                   name="Tulip Meadow", topic="Spring flowers")
    space = await bob.create_room(preset="public_chat", visibility="public",
                                  name="Flower Space", creation_content={"type": "m.space"})
    withdrawn = await bob.create_room(preset="public_chat", visibility="public",
                                      name="Secret roses", topic="roses, withdrawn")
    await bob.request("PUT", f"/directory/list/room/{q(withdrawn)}", {"visibility": "private"})
    await alice.join(meadow, via=[pair.b.server_name])
    await bob.wait_for_membership(meadow, alice.user_id, "join")
    return Directory(meadow, roses, space, withdrawn, pair.b.alias(localpart))


@pytest_asyncio.fixture
async def peer(tmp_path: Path) -> AsyncIterator[FakePeer]:
    """A fake server of its own per test: A's cache knows nothing of it."""
    fake = await FakePeer(tmp_path / "peer").start()
    try:
        yield fake
    finally:
        await fake.close()


async def remote_get(user: User, server: str, *, limit: str | None = None,
                     since: str | None = None, expect: int = 200) -> Any:
    params = {"server": server, "limit": limit, "since": since}
    return await user.request("GET", "/publicRooms", expect=expect,
                              params={k: v for k, v in params.items() if v is not None})


async def remote_post(user: User, server: str, body: dict[str, Any], expect: int = 200
                      ) -> Any:
    return await user.request("POST", "/publicRooms", body, params={"server": server},
                              expect=expect)


def ids(answer: dict[str, Any]) -> list[str]:
    return [entry["room_id"] for entry in answer["chunk"]]


def assert_error(answer: Any, errcode: str) -> None:
    assert isinstance(answer, dict) and answer.get("errcode") == errcode, answer
    assert isinstance(answer.get("error"), str), answer


# -- between our two servers ---------------------------------------------------------------


async def test_lists_the_other_servers_directory(fed_pair: FedPair, directory: Directory
                                                 ) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    answer = await remote_get(alice, fed_pair.b.server_name)
    assert_matches_spec("client-server", "GET", "/publicRooms", 200, answer)
    # Exactly what B lists itself: the withdrawn room is not there.
    assert answer == await bob.request("GET", "/publicRooms")
    assert ids(answer) == directory.order
    assert answer["total_room_count_estimate"] == 3
    assert "next_batch" not in answer and "prev_batch" not in answer
    entries = {e["room_id"]: e for e in answer["chunk"]}
    assert entries[directory.roses] == {
        "room_id": directory.roses, "name": "Rose Garden", "topic": "All about roses",
        "canonical_alias": directory.roses_alias, "num_joined_members": 1,
        "world_readable": False, "guest_can_join": False, "join_rule": "public"}
    assert entries[directory.meadow]["num_joined_members"] == 2
    assert entries[directory.space]["room_type"] == "m.space"


async def test_pages_through_the_other_servers_directory(fed_pair: FedPair,
                                                         directory: Directory) -> None:
    alice, bob, b = fed_pair.alice, fed_pair.bob, fed_pair.b.server_name
    pages: list[dict[str, Any]] = []
    since: str | None = None
    for _ in range(3):
        page = await remote_get(alice, b, limit="1", since=since)
        assert page == await bob.request("GET", "/publicRooms", params={
            "limit": "1", **({"since": since} if since else {})})
        pages.append(page)
        since = page.get("next_batch")
    assert [ids(p) for p in pages] == [[room] for room in directory.order]
    assert "prev_batch" not in pages[0] and "next_batch" not in pages[2]
    assert all(p["total_room_count_estimate"] == 3 for p in pages)
    # prev_batch leads back a page.
    back = await remote_get(alice, b, limit="1", since=pages[2]["prev_batch"])
    assert ids(back) == ids(pages[1])


async def test_searches_the_other_servers_directory(fed_pair: FedPair, directory: Directory
                                                   ) -> None:
    alice, bob, b = fed_pair.alice, fed_pair.bob, fed_pair.b.server_name
    roses = await remote_post(alice, b, {"filter": {"generic_search_term": "ROSE"}})
    assert_matches_spec("client-server", "POST", "/publicRooms", 200, roses)
    assert ids(roses) == [directory.roses]
    assert roses["chunk"][0]["topic"] == "All about roses"

    # Two rooms match "flower" (a topic and a name): one page each.
    search = {"generic_search_term": "flower"}
    first = await remote_post(alice, b, {"limit": 1, "filter": search})
    assert first == await bob.request("POST", "/publicRooms", {"limit": 1, "filter": search})
    second = await remote_post(alice, b, {"limit": 1, "filter": search,
                                          "since": first["next_batch"]})
    assert ids(first) + ids(second) == [directory.meadow, directory.space]
    assert "next_batch" not in second and "prev_batch" in second
    assert second["total_room_count_estimate"] == 2

    spaces = await remote_post(alice, b, {"filter": {"room_types": ["m.space"]}})
    assert ids(spaces) == [directory.space]
    untyped = await remote_post(alice, b, {"filter": {"room_types": [None]}})
    assert set(ids(untyped)) == {directory.meadow, directory.roses}
    none = await remote_post(alice, b, {"filter": {"generic_search_term": "withdrawn"}})
    assert none["chunk"] == []


async def test_our_own_name_lists_our_directory(fed_pair: FedPair, directory: Directory
                                                ) -> None:
    alice = fed_pair.alice
    room_id = await alice.create_room(preset="public_chat", visibility="public",
                                      name="On A")
    ours = await alice.request("GET", "/publicRooms")
    assert room_id in ids(ours)
    assert await remote_get(alice, fed_pair.a.server_name) == ours
    posted = await remote_post(alice, fed_pair.a.server_name, {"filter": {
        "generic_search_term": "on a"}})
    assert ids(posted) == [room_id]
    # And B's list does not have it.
    assert room_id not in ids(await remote_get(alice, fed_pair.b.server_name, limit="10"))


async def test_another_servers_directory_needs_a_login(fed_pair: FedPair,
                                                       directory: Directory) -> None:
    status, body = await _http("GET", f"{fed_pair.a.client_url}{CLIENT_V3}/publicRooms",
                               params=[("server", fed_pair.b.server_name)])
    assert status == 401, body
    assert_error(body, "M_MISSING_TOKEN")


@pytest.mark.parametrize("server", ["not a server", "bad/name", "host:99999", "[::1"])
async def test_invalid_server_name(fed_pair: FedPair, server: str) -> None:
    alice = fed_pair.alice
    assert_error(await remote_get(alice, server, expect=400), "M_INVALID_PARAM")
    assert_error(await remote_post(alice, server, {"filter": {"generic_search_term": "x"}},
                                   expect=400), "M_INVALID_PARAM")


@pytest.mark.parametrize("server", [
    pytest.param(f"127.0.0.1:{free_port()}", id="nobody-listening"),
    pytest.param("10.255.255.1:8448", id="denied-ip-range"),
])
async def test_unreachable_server_is_502(fed_pair: FedPair, server: str) -> None:
    alice = fed_pair.alice
    assert_error(await remote_get(alice, server, expect=502), "M_UNKNOWN")
    # A filtered question does not fall back to an unfiltered one: the server is not there.
    assert_error(await remote_post(alice, server, {"filter": {"generic_search_term": "x"}},
                                   expect=502), "M_UNKNOWN")


async def test_federation_disabled(fed_servers: FedServers) -> None:
    lonely = fed_servers("lonely", config={"federation": {"enabled": False}})
    carol = await lonely.register("carol")
    answer = await remote_get(carol, f"127.0.0.1:{free_port()}", expect=403)
    assert_error(answer, "M_FORBIDDEN")
    assert "disabled" in answer["error"]
    # Its own directory is still there.
    assert await remote_get(carol, lonely.server_name) == await carol.request(
        "GET", "/publicRooms")


# -- an untrusted server -------------------------------------------------------------------


def entry(room_id: str, **fields: Any) -> dict[str, Any]:
    return {"room_id": room_id, "num_joined_members": 1, "world_readable": False,
            "guest_can_join": False, **fields}


def asked(peer: FakePeer) -> list[tuple[str, Any]]:
    """What A asked the fake of its directory: (method, query or body) in order."""
    return [(r.method, r.body if r.method == "POST" else r.query) for r in peer.requests
            if r.path.startswith(FED_PATH)]


async def test_malformed_entries_are_dropped(fed_pair: FedPair, peer: FakePeer) -> None:
    good = entry("!good:fake", name="Good", topic="t" * 5000, canonical_alias="#good:fake",
                 avatar_url="mxc://fake/a", join_rule="knock", room_type="m.space")
    stripped = entry("!stripped:fake", name=42, topic=None, canonical_alias="no-hash",
                     avatar_url="https://fake/a", join_rule=["public"], room_type={},
                     evil="<script>", aliases=["#x:fake"])
    malformed = [
        "not an object", None, 7,
        entry("no-bang:fake"), entry("!" + "x" * 300),
        {k: v for k, v in entry("!nocount:fake").items() if k != "num_joined_members"},
        entry("!textcount:fake", num_joined_members="3"),
        entry("!boolcount:fake", num_joined_members=True),
        entry("!negative:fake", num_joined_members=-1),
        entry("!huge:fake", num_joined_members=2**60),
        entry("!readable:fake", world_readable="yes"),
        {k: v for k, v in entry("!guests:fake").items() if k != "guest_can_join"},
    ]
    peer.public_rooms["GET"] = (200, {
        "chunk": [good, *malformed, stripped], "next_batch": 12, "prev_batch": "p" * 2000,
        "total_room_count_estimate": "many", "unexpected": {"x": 1}})

    answer = await remote_get(fed_pair.alice, peer.server_name)
    assert_matches_spec("client-server", "GET", "/publicRooms", 200, answer)
    assert answer == {"chunk": [
        {**good, "topic": "t" * 1024},
        entry("!stripped:fake"),
    ]}
    # The question: the largest page we pass on, no token, no third-party network.
    assert asked(peer) == [("GET", {"limit": ["100"], "include_all_networks": ["false"]})]


async def test_paging_fields_are_passed_on(fed_pair: FedPair, peer: FakePeer) -> None:
    peer.public_rooms["GET"] = (200, {"chunk": [entry(f"!r{n}:fake") for n in range(150)],
                                      "next_batch": "next", "prev_batch": "prev",
                                      "total_room_count_estimate": 1234})
    answer = await remote_get(fed_pair.alice, peer.server_name, limit="20", since="tok")
    # More than asked for: the rest is cut off.
    assert ids(answer) == [f"!r{n}:fake" for n in range(20)]
    assert {k: v for k, v in answer.items() if k != "chunk"} == {
        "next_batch": "next", "prev_batch": "prev", "total_room_count_estimate": 1234}
    many = await remote_get(fed_pair.alice, peer.server_name, limit="1000")
    assert len(many["chunk"]) == 100
    assert asked(peer) == [
        ("GET", {"limit": ["20"], "since": ["tok"], "include_all_networks": ["false"]}),
        ("GET", {"limit": ["100"], "include_all_networks": ["false"]}),
    ]


@pytest.mark.parametrize(("status", "body"), [
    pytest.param(200, [entry("!a:fake")], id="a-list"),
    pytest.param(200, {"chunk": {"!a:fake": entry("!a:fake")}}, id="chunk-not-a-list"),
    pytest.param(200, {"rooms": []}, id="no-chunk"),
    pytest.param(200, b"{not json", id="not-json"),
    pytest.param(500, {"errcode": "M_UNKNOWN", "error": "secret internals"}, id="500"),
    pytest.param(404, {"errcode": "M_UNRECOGNIZED", "error": "secret internals"}, id="404"),
    pytest.param(429, {"errcode": "M_LIMIT_EXCEEDED", "error": "secret internals",
                       "retry_after_ms": 1000}, id="429"),
])
async def test_unusable_answer_is_502(fed_pair: FedPair, peer: FakePeer, status: int,
                                      body: Any) -> None:
    peer.public_rooms["GET"] = (status, body)
    answer = await remote_get(fed_pair.alice, peer.server_name, expect=502)
    assert_error(answer, "M_UNKNOWN")
    assert set(answer) == {"errcode", "error"}
    assert "secret" not in answer["error"]


async def test_refusal_is_403(fed_pair: FedPair, peer: FakePeer) -> None:
    refusal = {"errcode": "M_FORBIDDEN", "error": "secret internals"}
    peer.public_rooms = {"GET": (403, refusal), "POST": (403, refusal)}
    for answer in (await remote_get(fed_pair.alice, peer.server_name, expect=403),
                   await remote_post(fed_pair.alice, peer.server_name,
                                     {"filter": {"generic_search_term": "x"}}, expect=403)):
        assert_error(answer, "M_FORBIDDEN")
        assert "secret" not in answer["error"] and peer.server_name in answer["error"]


async def test_filter_and_paging_are_passed_on(fed_pair: FedPair, peer: FakePeer) -> None:
    listed = {"chunk": [entry("!space:fake", room_type="m.space")], "next_batch": "n2"}
    peer.public_rooms["POST"] = (200, listed)
    room_filter = {"generic_search_term": "garden", "room_types": [None, "m.space"]}
    answer = await remote_post(fed_pair.alice, peer.server_name, {
        "limit": 5, "since": "n1", "filter": room_filter, "include_all_networks": True})
    assert answer == listed
    answer = await remote_post(fed_pair.alice, peer.server_name, {
        "filter": {"generic_search_term": "garden"}, "third_party_instance_id": "irc"})
    assert asked(peer) == [
        ("POST", {"limit": 5, "since": "n1", "filter": room_filter,
                  "include_all_networks": True}),
        ("POST", {"limit": 100, "filter": {"generic_search_term": "garden"},
                  "include_all_networks": False, "third_party_instance_id": "irc"}),
    ]
    # An empty filter is no filter: a GET.
    peer.public_rooms["GET"] = (200, {"chunk": []})
    await remote_post(fed_pair.alice, peer.server_name, {"filter": {}, "limit": 3})
    assert asked(peer)[-1] == ("GET", {"limit": ["3"], "include_all_networks": ["false"]})


@pytest.mark.parametrize(("status", "body"), [
    pytest.param(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"},
                 id="404-unrecognized"),
    pytest.param(400, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"},
                 id="400-unrecognized"),
    pytest.param(405, b"Method Not Allowed", id="405"),
])
async def test_server_without_post_is_searched_here(fed_pair: FedPair, peer: FakePeer,
                                                    status: int, body: Any) -> None:
    """As Synapse: a server that takes no filtered query is asked for its list, which is
    filtered here (name, topic or alias), with its tokens to search on."""
    peer.public_rooms = {"POST": (status, body), "GET": (200, {
        "chunk": [entry("!name:fake", name="Rose Garden"),
                  entry("!topic:fake", name="Other", topic="we grow ROSES"),
                  entry("!alias:fake", canonical_alias="#roses:fake"),
                  entry("!none:fake", name="Tulips", topic="no match")],
        "next_batch": "more", "total_room_count_estimate": 400})}
    alice = fed_pair.alice
    found = await remote_post(alice, peer.server_name, {
        "limit": 2, "filter": {"generic_search_term": "rose", "room_types": ["m.space"]}})
    # Every match of the page (room types cannot be told apart: such servers give none).
    assert found == {"chunk": [entry("!name:fake", name="Rose Garden"),
                               entry("!topic:fake", name="Other", topic="we grow ROSES"),
                               entry("!alias:fake", canonical_alias="#roses:fake")],
                     "next_batch": "more"}
    assert asked(peer) == [
        ("POST", {"limit": 2, "filter": {"generic_search_term": "rose",
                                         "room_types": ["m.space"]},
                  "include_all_networks": False}),
        ("GET", {"limit": ["100"], "include_all_networks": ["false"]}),
    ]
    # Another search of the same server asks nothing more: both answers are remembered.
    again = await remote_post(alice, peer.server_name, {
        "limit": 2, "filter": {"generic_search_term": "rose", "room_types": ["m.space"]}})
    assert again == found
    other = await remote_post(alice, peer.server_name, {
        "filter": {"generic_search_term": "tulip"}})
    assert ids(other) == ["!none:fake"]
    assert [m for m, _ in asked(peer)] == ["POST", "GET", "POST"]
    # And the next page is asked with the server's token.
    await remote_post(alice, peer.server_name, {
        "filter": {"generic_search_term": "tulip"}, "since": "more"})
    assert asked(peer)[-1] == ("GET", {"limit": ["100"], "since": ["more"],
                                       "include_all_networks": ["false"]})


async def test_failed_search_does_not_fall_back(fed_pair: FedPair, peer: FakePeer) -> None:
    peer.public_rooms = {"POST": (500, {"errcode": "M_UNKNOWN", "error": "oops"}),
                         "GET": (200, {"chunk": []})}
    assert_error(await remote_post(fed_pair.alice, peer.server_name,
                                   {"filter": {"generic_search_term": "x"}}, expect=502),
                 "M_UNKNOWN")
    assert [m for m, _ in asked(peer)] == ["POST"]


async def test_answers_are_shared_and_remembered(fed_pair: FedPair, peer: FakePeer) -> None:
    peer.public_rooms["GET"] = (200, {"chunk": [entry("!one:fake")]})
    alice = fed_pair.alice
    answers = await asyncio.gather(*(remote_get(alice, peer.server_name, limit="7")
                                     for _ in range(5)))
    answers.append(await remote_get(alice, peer.server_name, limit="7"))
    assert all(a == {"chunk": [entry("!one:fake")]} for a in answers)
    assert len(asked(peer)) == 1
    # Another question is asked.
    await remote_get(alice, peer.server_name, limit="8")
    assert len(asked(peer)) == 2


async def test_failures_are_not_remembered(fed_pair: FedPair, peer: FakePeer) -> None:
    peer.public_rooms["GET"] = (502, {"errcode": "M_UNKNOWN", "error": "busy"})
    await remote_get(fed_pair.alice, peer.server_name, expect=502)
    peer.public_rooms["GET"] = (200, {"chunk": [entry("!back:fake")]})
    answer = await remote_get(fed_pair.alice, peer.server_name)
    assert ids(answer) == ["!back:fake"]
    assert len(asked(peer)) == 2


# -- last: it changes B's directory ------------------------------------------------------


async def test_answers_are_cached_for_a_while(fed_pair: FedPair, directory: Directory
                                              ) -> None:
    alice, bob, b = fed_pair.alice, fed_pair.bob, fed_pair.b.server_name
    before = await remote_get(alice, b, limit="50")
    assert ids(before) == directory.order
    late = await bob.create_room(preset="public_chat", visibility="public", name="Late")
    try:
        assert late in ids(await bob.request("GET", "/publicRooms"))
        # The same question within the cache's time: the same answer.
        assert await remote_get(alice, b, limit="50") == before
        # Another question is asked afresh.
        assert late in ids(await remote_get(alice, b, limit="49"))
    finally:
        await bob.request("PUT", f"/directory/list/room/{q(late)}", {"visibility": "private"})
