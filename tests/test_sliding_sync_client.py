"""Simplified sliding sync (MSC4186) from the outside, as Element X (matrix-rust-sdk) uses it:
``tests/helpers/sliding_sync_client.py`` checks ``/versions``, logs in with a password, loads
the room list (``timeline_limit`` 1, ``$LAZY``/``$ME``, range 0-19 then growing), opens a room
(a subscription with ``timeline_limit`` 20), long-polls with ``pos`` and ``timeout``, and runs
the encryption connection (``to_device`` and ``e2ee``).

Each test runs against two real servers on loopback: Synapse (the reference; slower to start,
skipped without ``.venv-synapse``, required under ``CI=true``) and KT-Chat, whose parameter is
skipped while its ``/versions`` does not advertise ``org.matrix.simplified_msc3575``. Every test
makes its own accounts, so the two share a server per module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.helpers.sliding_sync_client import (
    ALL_ROOMS,
    SLIDING_SYNC_PATH,
    ElementXClient,
    Http,
    Peer,
    q,
)
from tests.helpers.sliding_sync_servers import PASSWORD, SERVERS, Target, start_target

# A Synapse start and a few hundred requests on a loaded two-core machine.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=SERVERS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Target]:
    yield from start_target(request.param, tmp_path_factory)


@pytest.fixture
async def people(target: Target) -> AsyncIterator[dict[str, Peer]]:
    """Three fresh accounts on the target, logged in as ordinary (non-sliding) clients."""
    names = await asyncio.gather(*(target.account(p) for p in ("alice", "bob", "carol")))
    peers = [await Peer.login(target.base, n, PASSWORD) for n in names]
    try:
        yield dict(zip(("alice", "bob", "carol"), peers, strict=True))
    finally:
        for peer in peers:
            await peer.close()


async def element_x(target: Target, peer: Peer) -> ElementXClient:
    """Element X logging in (a new device) to ``peer``'s account."""
    return await ElementXClient.login(target.base, peer.user_id[1:].split(":")[0], PASSWORD)


async def _rooms_with(owner: Peer, member: Peer, count: int, prefix: str) -> list[str]:
    """``count`` rooms that ``owner`` creates and ``member`` joins, each with one message
    sent after the join, oldest first."""
    rooms = []
    for i in range(count):
        room_id = await owner.create_room(name=f"{prefix} {i}", invite=[member.user_id])
        await member.join(room_id)
        rooms.append(room_id)
    for i, room_id in enumerate(rooms):
        await owner.send_text(room_id, f"{prefix} message {i}")
    return rooms


async def test_versions_login_and_the_first_room_list_response(
        target: Target, people: dict[str, Peer]) -> None:
    alice, bob = people["alice"], people["bob"]
    room_id = (await _rooms_with(bob, alice, 1, "first"))[0]
    client = await element_x(target, alice)
    try:
        assert client.device_id and client.user_id == alice.user_id
        # Element X asks for OAuth 2.0 server metadata first and logs in with a password
        # when there is none: Synapse without an authentication service answers 404.
        status, body = await client.http.raw("GET", "/_matrix/client/v1/auth_metadata")
        assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
        answer = await client.sync_room_list()
        assert isinstance(answer["pos"], str) and answer["pos"]
        listed = answer["lists"][ALL_ROOMS]
        assert listed["count"] == 1
        # Synapse sends the window as one SYNC op holding the room IDs of the range asked.
        assert [op["op"] for op in listed["ops"]] == ["SYNC"]
        assert listed["ops"][0]["range"][0] == 0
        assert listed["ops"][0]["room_ids"] == [room_id]
        room = answer["rooms"][room_id]
        assert room["initial"] is True
        assert room["name"] == "first 0"
        assert room["joined_count"] == 2 and room["invited_count"] == 0
        assert room["notification_count"] == target.unread(1) and room["highlight_count"] == 0
        assert isinstance(room["bump_stamp"], int)
        assert isinstance(room["prev_batch"], str)
        assert room["limited"] is True
        # timeline_limit 1: the latest event only, the message.
        assert [e["content"].get("body") for e in room["timeline"]] == ["first message 0"]
        state = {(e["type"], e["state_key"]) for e in room["required_state"]}
        assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.power_levels", ""),
                ("m.room.join_rules", ""), ("m.room.history_visibility", ""),
                ("m.room.member", alice.user_id),  # $ME
                ("m.room.member", bob.user_id),    # $LAZY: the timeline's sender
                } <= state
        assert not {k for k in state if k[0] == "m.room.member"} - {
            ("m.room.member", alice.user_id), ("m.room.member", bob.user_id)}
        for event in room["required_state"] + room["timeline"]:
            assert {"event_id", "sender", "type", "content", "origin_server_ts"} <= set(event)
        extensions = answer["extensions"]
        assert "m.push_rules" in {e["type"] for e in extensions["account_data"]["global"]}
        assert {"receipts", "typing"} <= set(extensions)
        # Nothing new: a second request at once carries no rooms.
        again = await client.sync_room_list(0)
        assert again["rooms"] == {}
        assert again["lists"][ALL_ROOMS]["count"] == 1
    finally:
        await client.close()


async def test_room_list_order_follows_bump_stamp_and_invites_show_up(
        target: Target, people: dict[str, Peer]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    rooms = await _rooms_with(bob, alice, 23, "ordered")
    newest_first = rooms[::-1]
    client = await element_x(target, alice)
    try:
        # The selective range 0-19 first: the 20 most recent. The client orders them by
        # bump_stamp, as the rust-sdk and the js-sdk both do: neither reads the order of the
        # SYNC op's room IDs (Synapse 1.163 sends them newest first, but under load it was
        # seen sending a grown range oldest first, so only the window's content is checked).
        first = await client.sync_room_list(0)
        assert first["lists"][ALL_ROOMS]["count"] == 23
        assert set(client.list_room_ids) == set(newest_first[:20])
        assert set(first["rooms"]) == set(newest_first[:20])
        assert client.by_recency() == newest_first[:20]
        # Then growing: the rest, with nothing for the rooms the client has already.
        await client.load_room_list()
        assert client.range == (0, 22)
        assert set(client.list_room_ids) == set(newest_first)
        assert client.by_recency() == newest_first
        stamps = [client.rooms[r].bump_stamp for r in newest_first]
        assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 23
        assert all(client.rooms[r].get("notification_count") == target.unread(1)
                   for r in rooms)

        # A message into the oldest room brings it to the top, delivered once.
        oldest = rooms[0]
        event_id = await bob.send_text(oldest, "back to the top")
        await client.wait_room_list(lambda c: event_id in c.rooms[oldest].timeline)
        assert client.by_recency() == [oldest, *newest_first[:-1]]
        view = client.rooms[oldest]
        assert view.bump_stamp > max(stamps)
        assert view.get("notification_count") == target.unread(2)
        assert view.duplicates == []
        update = next(a["rooms"][oldest] for a in reversed(client.room_list.responses)
                      if oldest in a.get("rooms", {}))
        assert [e["event_id"] for e in update["timeline"]] == [event_id]
        assert update.get("initial") is None
        assert update["num_live"] == 1 and update["limited"] is False

        # A state event that is not a bump event (a topic) leaves the room's bump_stamp as
        # it was, so the client's order (by bump_stamp) keeps the room where it was. (Synapse
        # orders the SYNC op's room IDs by the last event of any type: there it moves up.)
        second, third = newest_first[1], newest_first[2]
        second_stamp = client.rooms[second].bump_stamp
        topic = (await bob.http.call("PUT", f"/rooms/{q(second)}/state/m.room.topic/",
                                     {"topic": "not a bump"}))["event_id"]
        await client.wait_room_list(lambda c: topic in c.rooms[second].timeline)
        assert client.rooms[second].bump_stamp == second_stamp
        event_id = await bob.send_text(third, "a bump")
        await client.wait_room_list(lambda c: event_id in c.rooms[third].timeline)
        assert client.by_recency()[:4] == [third, oldest, newest_first[0], second]

        # An invite shows up in the list (the rust-sdk's list has no is_invite filter), at
        # the top, with its stripped state and no timeline.
        invite_room = await carol.create_room(name="an invitation")
        await carol.invite(invite_room, alice.user_id)
        await client.wait_room_list(lambda c: invite_room in c.rooms)
        assert client.count == 24
        assert client.by_recency()[0] == invite_room
        invited = client.rooms[invite_room]
        assert invited.get("name") == "an invitation"
        assert "timeline" not in next(a["rooms"][invite_room]
                                      for a in client.room_list.responses
                                      if invite_room in a.get("rooms", {}))
        mine = [e for e in invited.invite_state
                if e["type"] == "m.room.member" and e["state_key"] == alice.user_id]
        assert mine and mine[0]["content"]["membership"] == "invite"
        assert {"m.room.create", "m.room.name", "m.room.join_rules"} <= {
            e["type"] for e in invited.invite_state}

        # Joining it turns it into a joined room; leaving another takes that off the list.
        await alice.join(invite_room)
        await client.wait_room_list(
            lambda c: ("m.room.member", alice.user_id) in c.rooms[invite_room].required_state
            and c.rooms[invite_room].required_state[("m.room.member", alice.user_id)]
            ["content"]["membership"] == "join")
        await alice.leave(rooms[5])
        await client.wait_room_list(lambda c: rooms[5] not in c.list_room_ids)
        assert client.count == 23
        assert all(not v.duplicates for v in client.rooms.values())
    finally:
        await client.close()


async def test_opened_room_gets_each_new_message_once_and_unread_counts_move(
        target: Target, people: dict[str, Peer]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    room_id = await bob.create_room(name="busy", invite=[alice.user_id, carol.user_id])
    await alice.join(room_id)
    await carol.join(room_id)
    before = [f"before {i}" for i in range(25)]
    for body in before:
        await bob.send_text(room_id, body)
    client = await element_x(target, alice)
    try:
        await client.load_room_list()
        assert client.rooms[room_id].bodies() == ["before 24"]
        assert client.rooms[room_id].get("notification_count") == target.unread(25)

        # Opening the room: a subscription with timeline_limit 20 brings the last 20.
        client.subscribe(room_id)
        answer = await client.sync_room_list(0)
        opened = answer["rooms"][room_id]
        assert [e["content"]["body"] for e in opened["timeline"]] == before[5:]
        assert opened["limited"] is True and isinstance(opened["prev_batch"], str)
        # Synapse marks the re-sent timeline as expanded (the room was sent with 1 before).
        assert opened.get("unstable_expanded_timeline") is True or opened.get("initial")
        members = {e["state_key"] for e in opened.get("required_state", [])
                   if e["type"] == "m.room.member"}
        assert ("m.room.member", alice.user_id) in client.rooms[room_id].required_state
        assert members <= {alice.user_id, bob.user_id}
        assert ("m.room.member", bob.user_id) in client.rooms[room_id].required_state
        # prev_batch works with /messages: it goes on with what came before the 20.
        older = await client.act().http.call(
            "GET", f"/rooms/{room_id}/messages",
            params={"dir": "b", "from": opened["prev_batch"], "limit": "5"})
        assert [e["content"].get("body") for e in older["chunk"]] == before[4::-1]

        # Two people send at once while the client long-polls: every message once, each
        # sender's in the order sent; carol shows up through $LAZY with her first message.
        sent: dict[str, list[str]] = {bob.user_id: [], carol.user_id: []}

        async def talk(peer: Peer, n: int) -> None:
            for i in range(n):
                sent[peer.user_id].append(await peer.send_text(room_id, f"{peer.user_id} {i}"))

        talking = asyncio.gather(talk(bob, 15), talk(carol, 15))
        view = client.rooms[room_id]
        while not talking.done() or not set(sent[bob.user_id] + sent[carol.user_id]) <= set(
                view.timeline):
            await client.sync_room_list(2_000)
        await talking
        assert view.duplicates == []
        live = [e for e in view.timeline if e in set(sent[bob.user_id] + sent[carol.user_id])]
        assert len(live) == 30
        for sender in (bob.user_id, carol.user_id):
            assert [e for e in live if view.events[e]["sender"] == sender] == sent[sender]
        assert ("m.room.member", carol.user_id) in view.required_state
        for response in client.room_list.responses[2:]:
            entry = response["rooms"].get(room_id)
            if entry and "timeline" in entry and not entry.get("initial"):
                assert entry["num_live"] == len(entry["timeline"])
        await client.wait_room_list(
            lambda c: c.rooms[room_id].get("notification_count") == target.unread(55))

        # Typing shows through the typing extension.
        await bob.typing(room_id)
        await client.wait_room_list(lambda c: bob.user_id in c.typing.get(room_id, []))

        # Reading the last message: the count drops to 0, the receipt comes back.
        last = view.timeline[-1]
        await client.act().receipt(room_id, last)
        await client.wait_room_list(lambda c: c.rooms[room_id].get("notification_count") == 0
                                    and last in c.receipts.get(room_id, {}).get("content", {}))
        read = client.receipts[room_id]
        assert read["type"] == "m.receipt"
        assert alice.user_id in read["content"][last]["m.read"]

        # Account data: global and for the room.
        await client.act().account_data("org.example.setting", {"on": True})
        await client.act().account_data("m.tag", {"tags": {"m.favourite": {"order": 0.5}}},
                                        room_id)
        await client.wait_room_list(
            lambda c: c.account_data.get("org.example.setting") == {"on": True}
            and "m.favourite" in c.room_account_data.get(room_id, {}).get("m.tag", {}).get(
                "tags", {}))

        # Closing the room: the subscription is left out, the list goes on.
        client.unsubscribe(room_id)
        event_id = await bob.send_text(room_id, "after closing")
        await client.wait_room_list(lambda c: event_id in c.rooms[room_id].timeline)
        assert view.duplicates == []
    finally:
        await client.close()


async def test_to_device_messages_arrive_once_and_are_acknowledged(
        target: Target, people: dict[str, Peer]) -> None:
    alice, bob = people["alice"], people["bob"]
    client = await element_x(target, alice)
    try:
        first = await client.sync_encryption(0)
        assert first["extensions"]["e2ee"]["device_one_time_keys_count"] is not None
        assert isinstance(first["extensions"]["e2ee"]["device_unused_fallback_key_types"],
                          list)
        assert first["extensions"]["to_device"]["events"] == []

        async def send(n: int, tag: str) -> None:
            for i in range(n):
                await bob.send_to_device("org.example.ping", alice.user_id, client.device_id,
                                         {"tag": tag, "n": i})

        async def received(tag: str, n: int, since: str | None = None) -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []
            for _ in range(20):
                client.to_device_since = since if since is not None else client.to_device_since
                since = None
                answer = await client.sync_encryption(5_000)
                got += [e for e in answer["extensions"].get("to_device", {}).get("events", [])
                        if e["content"].get("tag") == tag]
                if len(got) >= n:
                    return got
            raise AssertionError(f"only {got} of {n} {tag} messages")

        await send(3, "one")
        batch = await received("one", 3)
        assert [e["content"]["n"] for e in batch] == [0, 1, 2]
        assert all(e["sender"] == bob.user_id and e["type"] == "org.example.ping"
                   for e in batch)
        acked = client.to_device_since
        assert isinstance(acked, str)

        # The next request sends since=next_batch: the first batch is acknowledged, only the
        # new ones come.
        await send(2, "two")
        second = await received("two", 2)
        assert [e["content"]["n"] for e in second] == [0, 1]
        assert not [e for e in client.to_device if e["content"].get("tag") == "one"][3:]
        # The second batch was not acknowledged yet: asking again from the first batch's
        # next_batch hands it over again (and never the acknowledged first batch).
        client.to_device_since = acked
        again = await client.sync_encryption(0)
        events = again["extensions"]["to_device"]["events"]
        assert [e["content"] for e in events] == [{"tag": "two", "n": 0}, {"tag": "two", "n": 1}]
        # Acknowledged now: nothing more.
        done = await client.sync_encryption(0)
        assert done["extensions"]["to_device"]["events"] == []

        # Uploading one-time keys: the e2ee extension counts them.
        await client.act().http.call("POST", "/keys/upload", {
            "one_time_keys": {"curve25519:AAAAAQ": "dGVzdCBrZXkgb25lIGJ5dGVzIGhlcmUgLi4uLi4"}})
        counted = await client.sync_encryption(0)
        assert counted["extensions"]["e2ee"]["device_one_time_keys_count"].get(
            "curve25519") == 1
    finally:
        await client.close()


async def test_unknown_pos_is_refused_and_the_client_starts_over(
        target: Target, people: dict[str, Peer]) -> None:
    alice, bob = people["alice"], people["bob"]
    room_id = (await _rooms_with(bob, alice, 1, "restart"))[0]
    client = await element_x(target, alice)
    bob_client = await element_x(target, bob)
    other = Http(target.base, client.http.token)
    nobody = Http(target.base)
    try:
        await bob_client.sync_room_list(0)
        await client.sync_room_list(0)
        pos = client.room_list.pos
        assert pos is not None
        # A position of this connection, used on a connection that never had one.
        status, body = await other.raw(
            "POST", SLIDING_SYNC_PATH, {"conn_id": "never-used", **client.room_list_body()},
            {"pos": pos, "timeout": "0"})
        assert (status, body.get("errcode")) == (400, "M_UNKNOWN_POS"), body
        # Nonsense: 400 (Synapse says M_UNKNOWN for a position it cannot parse).
        status, body = await other.raw("POST", SLIDING_SYNC_PATH, client.room_list_body(),
                                       {"pos": "no such position", "timeout": "0"})
        assert status == 400 and body.get("errcode") in (
            "M_UNKNOWN_POS", "M_UNKNOWN", "M_INVALID_PARAM"), body
        # Without a token, 401 as anywhere else.
        status, body = await nobody.raw("POST", SLIDING_SYNC_PATH, {})
        assert (status, body.get("errcode")) == (401, "M_MISSING_TOKEN")

        # Another account's position is unknown on this connection. The rust-sdk, told
        # M_UNKNOWN_POS, drops its pos and starts over: everything comes again.
        client.room_list.pos = bob_client.room_list.pos
        again = await client.sync_room_list(0)
        assert client.room_list.restarts == 1
        assert again["rooms"][room_id]["initial"] is True
        assert again["lists"][ALL_ROOMS]["ops"][0]["room_ids"] == [room_id]
    finally:
        await nobody.close()
        await other.close()
        await bob_client.close()
        await client.close()
