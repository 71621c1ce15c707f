"""Room history over real HTTP: /messages (both directions, tokens, `to`, limits, filters),
/context, /event, redaction, and who may read what (history visibility, leaving, world-readable
rooms)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers.room_api import (
    User,
    all_events,
    api,
    assert_error,
    create_room,
    ids,
    join,
    messages,
    new_user,
    put_state,
    send_text,
    txn,
)


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def page_through(client: TestClient, user: User, room_id: str, direction: str,
                       limit: int, **query: Any) -> list[dict[str, Any]]:
    """Every event from one end, page by page, following `end` until it is left out."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(1000):
        params = {"dir": direction, "limit": limit, **query}
        if token is not None:
            params["from"] = token
        status, page = await messages(client, user, room_id, **params)
        assert status == 200, page
        assert len(page["chunk"]) <= limit
        if token is not None:
            assert page["start"] == token
        events += page["chunk"]
        if "end" not in page:
            return events
        token = page["end"]
    raise AssertionError("pagination never ended")


async def redact(client: TestClient, user: User, room_id: str, event_id: str,
                 reason: str | None = None) -> tuple[int, Any]:
    return await api(client, "PUT", f"/rooms/{room_id}/redact/{event_id}/{txn()}", user,
                     {"reason": reason} if reason is not None else {})


# -- /messages --------------------------------------------------------------------------------

async def test_paginate_500_messages_both_ways(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    sent = [await send_text(client, alice, room_id, f"m{n}") for n in range(500)]
    forward = await page_through(client, alice, room_id, "f", 37)
    backward = await page_through(client, alice, room_id, "b", 41)
    # Each event exactly once, oldest first: the room's creation, then the 500 in order.
    assert len(ids(forward)) == len(set(ids(forward)))
    assert forward[0]["type"] == "m.room.create"
    assert [e["event_id"] for e in forward if e["type"] == "m.room.message"] == sent
    assert bodies(forward) == [f"m{n}" for n in range(500)]
    assert ids(backward) == ids(forward)[::-1]
    # One big page says the same.
    assert ids(await all_events(client, alice, room_id)) == ids(forward)


async def test_limit(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    for n in range(15):
        await send_text(client, alice, room_id, f"m{n}")
    status, page = await messages(client, alice, room_id)
    assert status == 200, page
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(14, 4, -1)]  # default 10
    assert "end" in page
    status, page = await messages(client, alice, room_id, limit=3)
    assert bodies(page["chunk"]) == ["m14", "m13", "m12"]
    status, page = await messages(client, alice, room_id, dir="f", limit=2)
    assert [e["type"] for e in page["chunk"]] == ["m.room.create", "m.room.member"]
    # A filter's limit applies when there is no limit parameter.
    status, page = await messages(client, alice, room_id, filter=json.dumps({"limit": 4}))
    assert bodies(page["chunk"]) == ["m14", "m13", "m12", "m11"]
    status, body = await messages(client, alice, room_id, limit="many")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await messages(client, alice, room_id, dir="sideways")
    assert_error(status, body, 400, "M_INVALID_PARAM")


async def test_to_bounds_a_page(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    for n in range(30):
        await send_text(client, alice, room_id, f"m{n}")
    everything = await all_events(client, alice, room_id)
    first = next(i for i, e in enumerate(everything) if e["type"] == "m.room.message")
    # A forward page ending at m9: its `end` sits after m9.
    status, page = await messages(client, alice, room_id, dir="f", limit=first + 10)
    assert bodies(page["chunk"])[-1] == "m9"
    after_m9 = page["end"]
    # A backward page ending at m20: its `end` sits before m20.
    status, page = await messages(client, alice, room_id, limit=10)
    assert bodies(page["chunk"])[-1] == "m20"
    before_m20 = page["end"]

    # Backwards from the newest, down to after m9: m29..m10.
    status, page = await messages(client, alice, room_id, limit=100, to=after_m9)
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(29, 9, -1)]
    # Forwards from after m9 up to before m20: m10..m19.
    status, page = await messages(client, alice, room_id, dir="f", limit=100,
                                  **{"from": after_m9, "to": before_m20})
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(10, 20)]
    # The same span backwards.
    status, page = await messages(client, alice, room_id, limit=100,
                                  **{"from": before_m20, "to": after_m9})
    assert status == 200, page
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(19, 9, -1)]
    # A limit smaller than the span still stops at `to` in the end.
    span = await page_through(client, alice, room_id, "f", 3, to=before_m20)
    assert bodies(span) == [f"m{n}" for n in range(20)]


async def test_tokens_are_places_between_events(client: TestClient, alice: User) -> None:
    """A token names a place between two events, whichever way it is then used."""
    room_id = await create_room(client, alice)
    for n in range(10):
        await send_text(client, alice, room_id, f"m{n}")
    # Backwards m9..m5: `end` is between m4 and m5.
    status, page = await messages(client, alice, room_id, limit=5)
    assert bodies(page["chunk"]) == ["m9", "m8", "m7", "m6", "m5"]
    between_4_and_5 = page["end"]
    status, page = await messages(client, alice, room_id, dir="f", limit=2,
                                  **{"from": between_4_and_5})
    assert bodies(page["chunk"]) == ["m5", "m6"]
    between_6_and_7 = page["end"]
    status, page = await messages(client, alice, room_id, limit=2,
                                  **{"from": between_6_and_7})
    assert bodies(page["chunk"]) == ["m6", "m5"]
    status, page = await messages(client, alice, room_id, limit=100,
                                  **{"to": between_4_and_5})
    assert status == 200, page
    assert bodies(page["chunk"]) == ["m9", "m8", "m7", "m6", "m5"]


async def test_filters(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    for n in range(3):
        await send_text(client, alice, room_id, f"a{n}")
        await send_text(client, bob, room_id, f"b{n}")
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/org.example.ping/{txn()}",
                             bob, {"n": 1})
    assert status == 200, body
    await put_state(client, alice, room_id, "m.room.topic", {"topic": "t"})

    async def events_with(event_filter: dict[str, Any], **query: Any) -> list[dict[str, Any]]:
        status, page = await messages(client, alice, room_id, dir="f", limit=100,
                                      filter=json.dumps(event_filter), **query)
        assert status == 200, page
        return list(page["chunk"])

    got = await events_with({"types": ["m.room.message"]})
    assert bodies(got) == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert {e["type"] for e in got} == {"m.room.message"}
    got = await events_with({"types": ["org.example.*"]})
    assert [e["type"] for e in got] == ["org.example.ping"]
    got = await events_with({"not_types": ["m.room.message", "m.room.member"]})
    assert "m.room.message" not in {e["type"] for e in got}
    assert "org.example.ping" in {e["type"] for e in got}
    got = await events_with({"senders": [bob.user_id]})
    assert {e["sender"] for e in got} == {bob.user_id}
    assert bodies(got) == ["b0", "b1", "b2"]
    got = await events_with({"not_senders": [bob.user_id], "types": ["m.room.message"]})
    assert bodies(got) == ["a0", "a1", "a2"]
    # A filter that leaves out most events still fills a small page, and pages on.
    got = await page_through(client, alice, room_id, "b", 2,
                             filter=json.dumps({"senders": [bob.user_id],
                                                "types": ["m.room.message"]}))
    assert bodies(got) == ["b2", "b1", "b0"]
    status, body = await messages(client, alice, room_id, filter="{not json")
    assert status == 400, body


async def test_lazy_load_members(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    carol = await new_user(client, "carol")
    await join(client, carol, room_id)
    await send_text(client, alice, room_id, "from alice")
    await send_text(client, bob, room_id, "from bob")
    status, page = await messages(client, alice, room_id, limit=2,
                                  filter=json.dumps({"lazy_load_members": True}))
    assert status == 200, page
    assert bodies(page["chunk"]) == ["from bob", "from alice"]
    members = {e["state_key"]: e for e in page["state"]}
    assert set(members) == {alice.user_id, bob.user_id}
    assert all(e["type"] == "m.room.member" for e in members.values())
    assert members[bob.user_id]["content"]["membership"] == "join"
    # Without lazy loading there is no state.
    status, page = await messages(client, alice, room_id, limit=2)
    assert "state" not in page


async def test_messages_of_unknown_room(client: TestClient, alice: User) -> None:
    status, body = await messages(client, alice, "!nowhere:test.local")
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_bad_token(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await messages(client, alice, room_id, **{"from": "garbage"})
    assert status == 400, body
    for token in ("s", "s1_x", "s-1", "t1", "s1_2_3_4_5_6_7_8"):
        for key in ("from", "to"):
            status, body = await messages(client, alice, room_id, **{key: token})
            assert_error(status, body, 400, "M_INVALID_PARAM")


async def next_batch(client: TestClient, user: User) -> str:
    status, body = await api(client, "GET", "/sync", user, query={"timeout": "0"}, spec=False)
    assert status == 200, body
    return str(body["next_batch"])


async def test_sync_tokens_as_from_and_to(client: TestClient, alice: User, bob: User) -> None:
    """The spec lets /messages take any token /sync gave (``next_batch``, as matrix-nio's
    ``room_messages(start=next_batch)`` and matrix-commander's --tail send it): it names the
    place just after what that sync had, so backwards gives the newest events up to it and
    forwards what came after."""
    room_id = await create_room(client, alice, preset="public_chat")
    for n in range(5):
        await send_text(client, alice, room_id, f"m{n}")
    since = await next_batch(client, alice)
    for n in range(5, 10):
        await send_text(client, alice, room_id, f"m{n}")
    now = await next_batch(client, alice)

    # Backwards from it: m4 down, page by page, with `start` echoing it.
    status, page = await messages(client, alice, room_id, limit=3, **{"from": since})
    assert status == 200, page
    assert bodies(page["chunk"]) == ["m4", "m3", "m2"]
    assert page["start"] == since
    rest = await page_through(client, alice, room_id, "b", 3, **{"from": page["end"]})
    assert bodies(rest) == ["m1", "m0"]
    # Forwards from it: what came after.
    status, page = await messages(client, alice, room_id, dir="f", limit=100,
                                  **{"from": since})
    assert status == 200, page
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(5, 10)]
    assert "end" not in page
    # The newest token backwards is the whole room, newest first.
    status, page = await messages(client, alice, room_id, limit=100, **{"from": now})
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(9, -1, -1)]
    # As `to`: backwards from the newest down to it, forwards from the start up to it.
    status, page = await messages(client, alice, room_id, limit=100, to=since)
    assert status == 200, page
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(9, 4, -1)]
    status, page = await messages(client, alice, room_id, dir="f", limit=100, to=since)
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(5)]
    status, page = await messages(client, alice, room_id, dir="f", limit=100,
                                  **{"from": since, "to": now})
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(5, 10)]
    # Members as of a sync token (the spec's `at`: a token from /sync).
    status, body = await api(client, "GET", f"/rooms/{room_id}/members", alice,
                             query={"at": since})
    assert status == 200, body
    assert {e["state_key"] for e in body["chunk"]} == {alice.user_id}

    # A token from before the room: nothing behind it, everything after it.
    status, page = await messages(client, bob, room_id, limit=100,
                                  **{"from": "s0_0_0_0_0_0"})
    assert status == 403, page  # bob is not in the room (yet)
    await join(client, bob, room_id)
    status, page = await messages(client, bob, room_id, limit=100, **{"from": "s0"})
    assert (status, page["chunk"]) == (200, []), page
    assert "end" not in page
    status, page = await messages(client, bob, room_id, dir="f", limit=100, **{"from": "s0"})
    assert bodies(page["chunk"]) == [f"m{n}" for n in range(10)]


# -- /context ---------------------------------------------------------------------------------

async def test_context(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    sent = [await send_text(client, alice, room_id, f"m{n}") for n in range(20)]
    status, body = await api(client, "GET", f"/rooms/{room_id}/context/{sent[10]}", alice,
                             query={"limit": "6"})
    assert status == 200, body
    assert body["event"]["event_id"] == sent[10]
    assert bodies(body["events_before"]) == ["m9", "m8", "m7"]
    assert bodies(body["events_after"]) == ["m11", "m12", "m13"]
    state_types = {(e["type"], e["state_key"]) for e in body["state"]}
    assert ("m.room.create", "") in state_types
    assert ("m.room.member", alice.user_id) in state_types
    # The tokens carry on from there without a gap or a repeat.
    status, page = await messages(client, alice, room_id, limit=3, **{"from": body["start"]})
    assert bodies(page["chunk"]) == ["m6", "m5", "m4"]
    status, page = await messages(client, alice, room_id, dir="f", limit=3,
                                  **{"from": body["end"]})
    assert bodies(page["chunk"]) == ["m14", "m15", "m16"]


async def test_context_with_nothing_around(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    sent = [await send_text(client, alice, room_id, f"m{n}") for n in range(3)]
    status, body = await api(client, "GET", f"/rooms/{room_id}/context/{sent[1]}", alice,
                             query={"limit": "0"})
    assert status == 200, body
    assert body["events_before"] == [] and body["events_after"] == []
    status, page = await messages(client, alice, room_id, limit=1, **{"from": body["start"]})
    assert bodies(page["chunk"]) == ["m0"]
    status, page = await messages(client, alice, room_id, dir="f", limit=1,
                                  **{"from": body["end"]})
    assert bodies(page["chunk"]) == ["m2"]


async def test_context_with_filter(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    middle = ""
    for n in range(4):
        await send_text(client, alice, room_id, f"a{n}")
        event_id = await send_text(client, bob, room_id, f"b{n}")
        middle = event_id if n == 1 else middle
    status, body = await api(client, "GET", f"/rooms/{room_id}/context/{middle}", alice,
                             query={"limit": "10", "filter": json.dumps(
                                 {"senders": [bob.user_id], "lazy_load_members": True})})
    assert status == 200, body
    assert bodies(body["events_before"]) == ["b0"]
    assert bodies(body["events_after"]) == ["b2", "b3"]
    members = {e["state_key"] for e in body["state"] if e["type"] == "m.room.member"}
    assert members == {bob.user_id}


async def test_context_unknown_event(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    other = await create_room(client, alice)
    elsewhere = await send_text(client, alice, other, "elsewhere")
    for event_id in ("$unknown", elsewhere):
        status, body = await api(client, "GET", f"/rooms/{room_id}/context/{event_id}", alice)
        assert_error(status, body, 404, "M_NOT_FOUND")


# -- /event -----------------------------------------------------------------------------------

async def test_get_event(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "hello")
    status, body = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", alice)
    assert status == 200, body
    assert body["event_id"] == event_id and body["room_id"] == room_id
    assert body["type"] == "m.room.message" and body["sender"] == alice.user_id
    assert body["content"] == {"msgtype": "m.text", "body": "hello"}
    # Federation-only fields stay on the federation side.
    for key in ("auth_events", "prev_events", "hashes", "signatures", "depth"):
        assert key not in body


async def test_get_event_unknown_or_elsewhere(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    other = await create_room(client, alice)
    elsewhere = await send_text(client, alice, other, "elsewhere")
    for event_id in ("$unknown", "$Rx6wtGEkSSrYXeUxVq4mZdCpoqBZ4ZWbaRk5Znn8Qzs", elsewhere):
        status, body = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", alice)
        assert_error(status, body, 404, "M_NOT_FOUND")


# -- redaction --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["10", "12"])
async def test_redact_own_message(client: TestClient, alice: User, version: str) -> None:
    room_id = await create_room(client, alice, room_version=version)
    event_id = await send_text(client, alice, room_id, "oops")
    status, body = await redact(client, alice, room_id, event_id, reason="typo")
    assert status == 200, body
    redaction_id = body["event_id"]
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", alice)
    assert status == 200, event
    assert event["content"] == {}
    because = event["unsigned"]["redacted_because"]
    assert because["event_id"] == redaction_id
    assert because["type"] == "m.room.redaction"
    assert because["sender"] == alice.user_id
    assert because["content"]["reason"] == "typo"
    events = {e["event_id"]: e for e in await all_events(client, alice, room_id)}
    assert events[event_id]["content"] == {}
    assert events[event_id]["unsigned"]["redacted_because"]["event_id"] == redaction_id
    # The redaction event names what it redacts: at the top level before v11; from v11 in
    # the content, and at the top level too for older clients.
    assert events[redaction_id]["redacts"] == event_id
    if version != "10":
        assert events[redaction_id]["content"]["redacts"] == event_id
    assert events[redaction_id]["content"]["reason"] == "typo"


async def test_redact_keeps_what_the_algorithm_keeps(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="Secret name")
    state = {e["type"]: e for e in await all_events(client, alice, room_id)}
    name_id = state["m.room.name"]["event_id"]
    power_id = state["m.room.power_levels"]["event_id"]
    for event_id in (name_id, power_id):
        status, body = await redact(client, alice, room_id, event_id)
        assert status == 200, body
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{name_id}", alice)
    assert event["content"] == {}
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{power_id}", alice)
    assert event["content"]["events"]["m.room.power_levels"] == 100  # kept by the rules


async def test_redacting_others_events_needs_power(client: TestClient, alice: User,
                                                   bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    from_alice = await send_text(client, alice, room_id, "alice's words")
    from_bob = await send_text(client, bob, room_id, "bob's words")
    before = ids(await all_events(client, alice, room_id))
    status, body = await redact(client, bob, room_id, from_alice)
    assert_error(status, body, 403, "M_FORBIDDEN")
    assert ids(await all_events(client, alice, room_id)) == before
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{from_alice}", bob)
    assert event["content"]["body"] == "alice's words"
    assert "redacted_because" not in event["unsigned"]
    # The room's creator has the power.
    status, body = await redact(client, alice, room_id, from_bob, reason="moderation")
    assert status == 200, body
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{from_bob}", bob)
    assert event["content"] == {}


async def test_redact_is_idempotent_per_txn(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "once")
    path = f"/rooms/{room_id}/redact/{event_id}/r1"
    status, first = await api(client, "PUT", path, alice, {})
    assert status == 200, first
    status, again = await api(client, "PUT", path, alice, {})
    assert (status, again) == (200, first)
    redactions = [e for e in await all_events(client, alice, room_id)
                  if e["type"] == "m.room.redaction"]
    assert len(redactions) == 1


async def test_redact_unknown_event(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    other = await create_room(client, alice)
    elsewhere = await send_text(client, alice, other, "elsewhere")
    for event_id in ("$unknown", elsewhere):
        status, body = await redact(client, alice, room_id, event_id)
        assert_error(status, body, 404, "M_NOT_FOUND")


async def test_non_member_cannot_redact(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    from_bob = await send_text(client, bob, room_id, "mine")
    await api(client, "POST", f"/rooms/{room_id}/leave", bob, {})
    status, body = await redact(client, bob, room_id, from_bob)
    assert_error(status, body, 403, "M_FORBIDDEN")


# -- who may read what ------------------------------------------------------------------------

async def test_outsider_cannot_read_a_private_room(client: TestClient, alice: User, bob: User
                                                   ) -> None:
    room_id = await create_room(client, alice, preset="private_chat")
    event_id = await send_text(client, alice, room_id, "private")
    for path in (f"/rooms/{room_id}/messages", f"/rooms/{room_id}/state",
                 f"/rooms/{room_id}/members", f"/rooms/{room_id}/event/{event_id}",
                 f"/rooms/{room_id}/context/{event_id}",
                 f"/rooms/{room_id}/state/m.room.create", f"/rooms/{room_id}/aliases"):
        status, body = await api(client, "GET", path, bob, query={"dir": "b"})
        assert_error(status, body, 403, "M_FORBIDDEN")


async def test_outsider_cannot_read_a_public_room_either(client: TestClient, alice: User,
                                                         bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await send_text(client, alice, room_id, "joinable, not readable")
    status, body = await messages(client, bob, room_id)
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_world_readable_room(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="private_chat", initial_state=[
        {"type": "m.room.history_visibility",
         "content": {"history_visibility": "world_readable"}}])
    event_id = await send_text(client, alice, room_id, "for everyone")
    status, page = await messages(client, bob, room_id)
    assert status == 200, page
    assert bodies(page["chunk"]) == ["for everyone"]
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", bob)
    assert status == 200 and event["content"]["body"] == "for everyone"
    status, state = await api(client, "GET", f"/rooms/{room_id}/state", bob)
    assert status == 200 and any(e["type"] == "m.room.create" for e in state)
    status, body = await api(client, "GET", f"/rooms/{room_id}/members", bob)
    assert status == 200
    assert {e["state_key"] for e in body["chunk"]} == {alice.user_id}
    # Reading is not sending.
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             bob, {"msgtype": "m.text", "body": "hi"})
    assert_error(status, body, 403, "M_FORBIDDEN")


@pytest.mark.parametrize(("visibility", "sees_earlier"), [
    ("joined", False), ("invited", False), ("shared", True), ("world_readable", True)])
async def test_history_visibility_for_a_later_joiner(client: TestClient, alice: User,
                                                     bob: User, visibility: str,
                                                     sees_earlier: bool) -> None:
    room_id = await create_room(client, alice, preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "content": {"history_visibility": visibility}}])
    earlier = await send_text(client, alice, room_id, "before bob")
    await join(client, bob, room_id)
    await send_text(client, alice, room_id, "after bob")
    status, page = await messages(client, bob, room_id, limit=100)
    assert status == 200, page
    expected = ["after bob", "before bob"] if sees_earlier else ["after bob"]
    assert bodies(page["chunk"]) == expected
    # bob sees his own join whatever the rule.
    assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id
               for e in page["chunk"])
    status, body = await api(client, "GET", f"/rooms/{room_id}/event/{earlier}", bob)
    if sees_earlier:
        assert status == 200, body
    else:
        assert_error(status, body, 404, "M_NOT_FOUND")
        status, body = await api(client, "GET", f"/rooms/{room_id}/context/{earlier}", bob)
        assert_error(status, body, 404, "M_NOT_FOUND")


async def test_invited_visibility_shows_history_from_the_invite(client: TestClient,
                                                                alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, initial_state=[
        {"type": "m.room.history_visibility", "content": {"history_visibility": "invited"}}])
    await send_text(client, alice, room_id, "before the invite")
    status, body = await api(client, "POST", f"/rooms/{room_id}/invite", alice,
                             {"user_id": bob.user_id})
    assert status == 200, body
    await send_text(client, alice, room_id, "after the invite")
    await join(client, bob, room_id)
    await send_text(client, alice, room_id, "after the join")
    status, page = await messages(client, bob, room_id, dir="f", limit=100)
    assert bodies(page["chunk"]) == ["after the invite", "after the join"]


async def test_left_user_reads_up_to_their_leave(client: TestClient, alice: User, bob: User
                                                 ) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    seen = await send_text(client, alice, room_id, "while bob is here")
    status, body = await api(client, "POST", f"/rooms/{room_id}/leave", bob, {})
    assert status == 200, body
    unseen = await send_text(client, alice, room_id, "after bob left")
    await put_state(client, alice, room_id, "m.room.topic", {"topic": "new topic"})
    for direction in ("b", "f"):
        status, page = await messages(client, bob, room_id, dir=direction, limit=100)
        assert status == 200, page
        assert bodies(page["chunk"]) == ["while bob is here"]
        assert page["chunk"][-1 if direction == "f" else 0]["type"] == "m.room.member"
    events = await page_through(client, bob, room_id, "b", 2)
    assert bodies(events) == ["while bob is here"]
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{seen}", bob)
    assert status == 200, event
    status, body = await api(client, "GET", f"/rooms/{room_id}/event/{unseen}", bob)
    assert_error(status, body, 404, "M_NOT_FOUND")
    # The state is the room's as it was when bob left.
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.topic", bob)
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, state = await api(client, "GET", f"/rooms/{room_id}/state", bob)
    members = {e["state_key"]: e["content"]["membership"] for e in state
               if e["type"] == "m.room.member"}
    assert members == {alice.user_id: "join", bob.user_id: "leave"}


async def test_rejoining_user_sees_both_stays(client: TestClient, alice: User, bob: User
                                              ) -> None:
    room_id = await create_room(client, alice, preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}])
    await join(client, bob, room_id)
    await send_text(client, alice, room_id, "first stay")
    await api(client, "POST", f"/rooms/{room_id}/leave", bob, {})
    await send_text(client, alice, room_id, "while away")
    await join(client, bob, room_id)
    await send_text(client, alice, room_id, "second stay")
    status, page = await messages(client, bob, room_id, dir="f", limit=100)
    assert status == 200, page
    assert bodies(page["chunk"]) == ["first stay", "second stay"]


async def test_redact_txn_ids_are_apart_from_send_txn_ids(client: TestClient, alice: User
                                                          ) -> None:
    # Transaction IDs are scoped to a device and an endpoint: /send and /redact are two.
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "soon gone", txn_id="same")
    status, body = await api(client, "PUT", f"/rooms/{room_id}/redact/{event_id}/same", alice,
                             {})
    assert status == 200, body
    assert body["event_id"] != event_id
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", alice)
    assert event["content"] == {}
    assert event["unsigned"]["redacted_because"]["event_id"] == body["event_id"]
    # The redacting device sees its own transaction ID on the redaction.
    status, page = await messages(client, alice, room_id, limit=1)
    assert page["chunk"][0]["event_id"] == body["event_id"]
    assert page["chunk"][0]["unsigned"]["transaction_id"] == "same"


async def test_lazy_loaded_members_of_senders_who_joined_within_the_page(
        client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await send_text(client, alice, room_id, "before bob")
    await join(client, bob, room_id)
    await send_text(client, bob, room_id, "bob's first")
    # The page's events are messages only; bob's join is not among them.
    status, page = await messages(client, alice, room_id, limit=10, filter=json.dumps(
        {"types": ["m.room.message"], "lazy_load_members": True}))
    assert status == 200, page
    assert bodies(page["chunk"]) == ["bob's first", "before bob"]
    members = {e["state_key"]: e["content"]["membership"] for e in page["state"]}
    assert members == {alice.user_id: "join", bob.user_id: "join"}


async def test_context_state_is_at_the_last_event_returned(client: TestClient, alice: User,
                                                           bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat", name="Before")
    middle = await send_text(client, alice, room_id, "middle")
    await put_state(client, alice, room_id, "m.room.name", {"name": "After"})
    await join(client, bob, room_id)
    await send_text(client, bob, room_id, "last")
    status, body = await api(client, "GET", f"/rooms/{room_id}/context/{middle}", alice,
                             query={"limit": "10"})
    assert status == 200, body
    assert bodies(body["events_after"]) == ["last"]
    state = {(e["type"], e["state_key"]): e["content"] for e in body["state"]}
    assert state[("m.room.name", "")] == {"name": "After"}
    assert state[("m.room.member", bob.user_id)]["membership"] == "join"
    # With nothing after, it is the state at the event itself.
    status, body = await api(client, "GET", f"/rooms/{room_id}/context/{middle}", alice,
                             query={"limit": "0"})
    state = {(e["type"], e["state_key"]): e["content"] for e in body["state"]}
    assert state[("m.room.name", "")] == {"name": "Before"}
    assert ("m.room.member", bob.user_id) not in state


async def test_invited_user_reads_nothing_until_joined(client: TestClient, alice: User,
                                                       bob: User) -> None:
    room_id = await create_room(client, alice, preset="private_chat", invite=[bob.user_id])
    await send_text(client, alice, room_id, "secret plans")
    for path in (f"/rooms/{room_id}/messages", f"/rooms/{room_id}/state",
                 f"/rooms/{room_id}/members"):
        status, body = await api(client, "GET", path, bob, query={"dir": "b"})
        assert_error(status, body, 403, "M_FORBIDDEN")
    await join(client, bob, room_id)
    status, page = await messages(client, bob, room_id, dir="b", limit=10)
    assert status == 200
    assert "secret plans" in bodies(page["chunk"])
