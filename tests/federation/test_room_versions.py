"""Every supported room version federates: a room of each version created on A is joined
from B, and messages and state cross both ways; knocking on a room of another server."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.federation import FedPair


def _tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_room_version_federates(fed_pair: FedPair, version: str) -> None:
    alice, bob, a = fed_pair.alice, fed_pair.bob, fed_pair.a
    room_id = await alice.create_room(preset="public_chat", room_version=version)
    assert await bob.join(room_id, via=[a.server_name]) == room_id
    await alice.wait_for_membership(room_id, bob.user_id, "join")

    from_a = await alice.send_text(room_id, f"from A in v{version} {_tag()}")
    await bob.wait_for_event(room_id, event_id=from_a)
    from_b = await bob.send_text(room_id, f"from B in v{version} {_tag()}")
    await alice.wait_for_event(room_id, event_id=from_b)

    topic = f"topic {_tag()}"
    await alice.send_state(room_id, "m.room.topic", {"topic": topic})
    await bob.wait_for_event(room_id, type="m.room.topic")
    assert (await bob.state_event(room_id, "m.room.topic"))["topic"] == topic

    # A redaction in each version's own form (v11+: content.redacts) reaches B.
    redaction = await alice.redact(room_id, from_a, reason="v" + version)
    await bob.wait_for_event(room_id, event_id=redaction)
    redacted = await bob.event(room_id, from_a)
    assert redacted["content"] == {}

    create = await bob.state_event(room_id, "m.room.create")
    assert create.get("room_version") == version


async def test_knock_on_a_room_of_another_server(fed_pair: FedPair) -> None:
    alice, bob, a = fed_pair.alice, fed_pair.bob, fed_pair.a
    room_id = await alice.create_room(preset="private_chat", initial_state=[{
        "type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])

    status, body = await bob.raw("POST", f"/knock/{room_id}?via={a.server_name}",
                                 {"reason": "let me in"})
    assert status == 200, body
    assert body["room_id"] == room_id
    knock = await alice.wait_for_membership(room_id, bob.user_id, "knock")
    assert knock["content"].get("reason") == "let me in"

    await alice.invite(room_id, bob.user_id)
    assert await bob.join(room_id, via=[a.server_name]) == room_id
    await alice.wait_for_membership(room_id, bob.user_id, "join")


async def test_knock_refused_where_the_room_does_not_allow_it(fed_pair: FedPair) -> None:
    alice, bob, a = fed_pair.alice, fed_pair.bob, fed_pair.a
    room_id = await alice.create_room(preset="private_chat")  # join rule: invite
    status, body = await bob.raw("POST", f"/knock/{room_id}?via={a.server_name}", {})
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
