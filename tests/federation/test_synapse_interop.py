"""Interoperability with Synapse: one real Synapse process (from ``.venv-synapse``) and one
KT-Chat process federating over TLS on loopback; alice is on KT-Chat, sam on Synapse.

Each test makes its own rooms; every wait is a /sync long-poll (or a re-fetched answer)
bounded by at most 30 s. Without the Synapse virtualenv the module skips (fails under
``CI=true``). A failing test's report carries both servers' logs from that test (the
federation conftest's hook reads them from the ``FedPair``).
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from tests.helpers.federation import (
    FedPair,
    User,
    first,
    poll_until,
    q,
)

WAIT = 30
DIRECTIONS = ["ktchat_to_synapse", "synapse_to_ktchat"]
ROOM_HOSTS = ["ktchat_room", "synapse_room"]


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _users(pair: FedPair, direction: str) -> tuple[User, User]:
    """(the acting user, the one watching on the other server)."""
    return (pair.alice, pair.bob) if direction == "ktchat_to_synapse" else (pair.bob, pair.alice)


async def _join_and_see(pair: FedPair, joiner: User, host: User, room_id: str,
                        room_id_or_alias: str, via: list[str]) -> None:
    """``joiner`` joins ``host``'s room; both see the join; both list both as members."""
    assert await joiner.join(room_id_or_alias, via=via) == room_id
    await host.wait_for_membership(room_id, joiner.user_id, "join", timeout=WAIT)
    await joiner.wait_for_membership(room_id, joiner.user_id, "join", timeout=WAIT)
    both = {joiner.user_id, host.user_id}
    assert set(await joiner.joined_members(room_id)) == both
    assert set(await host.joined_members(room_id)) == both


async def _ktchat_room(pair: FedPair, **create: Any) -> str:
    """A public room on KT-Chat (alice's) that sam has joined from Synapse."""
    room_id = await pair.alice.create_room(preset="public_chat", **create)
    await _join_and_see(pair, pair.bob, pair.alice, room_id, room_id, [pair.a.server_name])
    return room_id


async def _synapse_room(pair: FedPair, **create: Any) -> str:
    """A public room on Synapse (sam's) that alice has joined from KT-Chat."""
    room_id = await pair.bob.create_room(preset="public_chat", **create)
    await _join_and_see(pair, pair.alice, pair.bob, room_id, room_id, [pair.b.server_name])
    return room_id


async def _shared_room(pair: FedPair, host: str, **create: Any) -> str:
    return await (_ktchat_room if host == "ktchat_room" else _synapse_room)(pair, **create)


async def _chat_both_ways(pair: FedPair, room_id: str) -> None:
    """alice and sam each send; each sees the other's message in /sync, and in /messages."""
    alice, sam = pair.alice, pair.bob
    from_alice, from_sam = f"hello from ktchat {_tag()}", f"hello from synapse {_tag()}"
    alice_event = await alice.send_text(room_id, from_alice)
    sam_event = await sam.send_text(room_id, from_sam)

    got = await sam.wait_for_event(room_id, WAIT, body=from_alice, sender=alice.user_id)
    assert got["event_id"] == alice_event
    got = await alice.wait_for_event(room_id, WAIT, body=from_sam, sender=sam.user_id)
    assert got["event_id"] == sam_event
    for user in (alice, sam):
        bodies = [ev.get("content", {}).get("body") for ev in await user.timeline(room_id)]
        assert from_alice in bodies and from_sam in bodies, (user, bodies)


# -- keys -------------------------------------------------------------------------------------


async def test_each_server_fetches_the_others_keys(interop: FedPair) -> None:
    """Each server, as a notary (``POST /_matrix/key/v2/query`` naming the key), fetches the
    other's signing key over TLS and returns it with the origin's signature. (Synapse answers
    a ``GET`` for all of a server's keys from its cache only, so the query names the key.)"""
    ktchat, synapse = interop.a, interop.b
    for notary, origin in ((synapse, ktchat), (ktchat, synapse)):
        own = await origin.server_keys()
        query = {"server_keys": {origin.server_name: {
            key_id: {"minimum_valid_until_ts": 0} for key_id in own["verify_keys"]}}}

        async def fetch(notary: Any = notary, query: Any = query) -> Any:
            async with aiohttp.ClientSession() as session, session.post(
                    f"{notary.federation_url}/_matrix/key/v2/query", json=query,
                    ssl=notary.tls_context(), timeout=aiohttp.ClientTimeout(total=15)) as resp:
                return resp.status, await resp.json(content_type=None)

        _, body = await poll_until(
            fetch, lambda r: r[0] == 200 and r[1].get("server_keys"), timeout=WAIT,
            what=f"{origin.label}'s keys from {notary.label}")
        keys = body["server_keys"][0]
        assert keys["server_name"] == origin.server_name
        assert set(keys["verify_keys"]) == set(own["verify_keys"])
        assert origin.server_name in keys["signatures"]


# -- joining ----------------------------------------------------------------------------------


@pytest.mark.parametrize("room_version", ["10", "11", "12"])
async def test_synapse_user_joins_our_room_by_id(interop: FedPair, room_version: str) -> None:
    alice, sam, ktchat = interop.alice, interop.bob, interop.a
    name = f"ktchat room v{room_version} {_tag()}"
    room_id = await alice.create_room(preset="public_chat", name=name,
                                      room_version=room_version)
    await _join_and_see(interop, sam, alice, room_id, room_id, [ktchat.server_name])
    # Synapse has the room's state from us.
    assert (await sam.state_event(room_id, "m.room.name"))["name"] == name
    create = await sam.state_event(room_id, "m.room.create")
    assert create.get("room_version", "1") == room_version


async def test_synapse_user_joins_our_room_by_alias(interop: FedPair) -> None:
    alice, sam, ktchat = interop.alice, interop.bob, interop.a
    localpart = f"interop{_tag()}"
    room_id = await alice.create_room(preset="public_chat", room_alias_name=localpart)
    alias = ktchat.alias(localpart)

    resolved = await sam.resolve_alias(alias)  # Synapse asks us (/query/directory)
    assert resolved["room_id"] == room_id
    assert ktchat.server_name in resolved["servers"]
    await _join_and_see(interop, sam, alice, room_id, alias, [])


async def test_our_user_joins_synapse_room_by_id(interop: FedPair) -> None:
    alice, sam, synapse = interop.alice, interop.bob, interop.b
    name = f"synapse room {_tag()}"
    room_id = await sam.create_room(preset="public_chat", name=name)
    await _join_and_see(interop, alice, sam, room_id, room_id, [synapse.server_name])
    assert (await alice.state_event(room_id, "m.room.name"))["name"] == name


async def test_our_user_joins_synapse_room_by_alias(interop: FedPair) -> None:
    alice, sam, synapse = interop.alice, interop.bob, interop.b
    localpart = f"interop{_tag()}"
    room_id = await sam.create_room(preset="public_chat", room_alias_name=localpart)
    alias = synapse.alias(localpart)

    resolved = await alice.resolve_alias(alias)  # we ask Synapse
    assert resolved["room_id"] == room_id
    assert synapse.server_name in resolved["servers"]
    await _join_and_see(interop, alice, sam, room_id, alias, [])


@pytest.mark.parametrize("room_version", ["10", "11", "12"])
async def test_our_user_joins_synapse_room_of_each_version(interop: FedPair,
                                                           room_version: str) -> None:
    alice, sam, synapse = interop.alice, interop.bob, interop.b
    room_id = await sam.create_room(preset="public_chat", room_version=room_version)
    await _join_and_see(interop, alice, sam, room_id, room_id, [synapse.server_name])
    create = await alice.state_event(room_id, "m.room.create")
    assert create.get("room_version", "1") == room_version


# -- messages ---------------------------------------------------------------------------------


async def test_chat_both_ways_in_our_room(interop: FedPair) -> None:
    await _chat_both_ways(interop, await _ktchat_room(interop))


async def test_chat_both_ways_in_synapse_room(interop: FedPair) -> None:
    await _chat_both_ways(interop, await _synapse_room(interop))


async def test_burst_of_messages_arrives_in_order(interop: FedPair) -> None:
    """Twenty messages from each side, sent back to back, all arrive, each side's in the
    order they were sent."""
    room_id = await _ktchat_room(interop)
    alice, sam = interop.alice, interop.bob
    tag = _tag()
    for n in range(20):
        await alice.send_text(room_id, f"{tag} a{n}")
        await sam.send_text(room_id, f"{tag} s{n}")

    def mine(prefix: str) -> Any:
        return lambda body: isinstance(body, str) and body.startswith(f"{tag} {prefix}")

    got_a = await sam.wait_for_timeline(room_id, 20, timeout=WAIT, body=mine("a"))
    got_s = await alice.wait_for_timeline(room_id, 20, timeout=WAIT, body=mine("s"))
    assert [ev["content"]["body"] for ev in got_a] == [f"{tag} a{n}" for n in range(20)]
    assert [ev["content"]["body"] for ev in got_s] == [f"{tag} s{n}" for n in range(20)]


# -- invites ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["invite_endpoint", "create_room"])
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_invite_and_join(interop: FedPair, direction: str, how: str) -> None:
    """A private room; its creator invites the user on the other server (``/invite``, or
    ``createRoom``'s ``invite`` with ``is_direct``, as clients open a DM); the invitee sees
    the invite with the room's stripped state, joins, and they talk."""
    inviter, invitee = _users(interop, direction)
    name = f"private {_tag()}"
    if how == "invite_endpoint":
        room_id = await inviter.create_room(preset="private_chat", name=name)
        await inviter.invite(room_id, invitee.user_id)
    else:
        room_id = await inviter.create_room(preset="trusted_private_chat", name=name,
                                            invite=[invitee.user_id], is_direct=True)

    invite_state = await invitee.wait_for_invite(room_id, timeout=WAIT)
    assert first(invite_state, type="m.room.name", content={"name": name}), invite_state
    member = first(invite_state, type="m.room.member", state_key=invitee.user_id)
    assert member and member["content"]["membership"] == "invite", invite_state
    if how == "create_room":
        assert member["content"].get("is_direct") is True, member
    await inviter.wait_for_membership(room_id, invitee.user_id, "invite", timeout=WAIT)

    assert await invitee.join_room_id(room_id) == room_id
    await inviter.wait_for_membership(room_id, invitee.user_id, "join", timeout=WAIT)
    await invitee.wait_for_membership(room_id, invitee.user_id, "join", timeout=WAIT)
    await _chat_both_ways(interop, room_id)


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_invite_rejected(interop: FedPair, direction: str) -> None:
    """The invitee declines (leave without joining): the inviter sees the leave."""
    inviter, invitee = _users(interop, direction)
    room_id = await inviter.create_room(preset="private_chat")
    await inviter.invite(room_id, invitee.user_id)
    await invitee.wait_for_invite(room_id, timeout=WAIT)
    await invitee.leave(room_id)
    await inviter.wait_for_membership(room_id, invitee.user_id, "leave", timeout=WAIT)
    await invitee.wait_for_left(room_id, timeout=WAIT)


# -- leaving ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_leave_crosses(interop: FedPair, direction: str) -> None:
    """The member on the room's non-hosting side leaves; the host sees it."""
    if direction == "ktchat_to_synapse":
        room_id = await _synapse_room(interop)
    else:
        room_id = await _ktchat_room(interop)
    leaver, watcher = _users(interop, direction)
    await leaver.leave(room_id)
    await watcher.wait_for_membership(room_id, leaver.user_id, "leave", timeout=WAIT)
    await leaver.wait_for_left(room_id, timeout=WAIT)
    assert set(await watcher.joined_members(room_id)) == {watcher.user_id}


# -- ephemeral: typing, receipts, presence ----------------------------------------------------


@pytest.mark.parametrize("host", ROOM_HOSTS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_typing_crosses(interop: FedPair, direction: str, host: str) -> None:
    room_id = await _shared_room(interop, host)
    typer, watcher = _users(interop, direction)
    await typer.typing(room_id, True, timeout_ms=30_000)
    await watcher.wait_for_ephemeral(
        room_id, "m.typing", lambda c: typer.user_id in c.get("user_ids", []), timeout=WAIT)
    await typer.typing(room_id, False)
    await watcher.wait_for_ephemeral(
        room_id, "m.typing", lambda c: typer.user_id not in c.get("user_ids", []),
        timeout=WAIT)


@pytest.mark.parametrize("host", ROOM_HOSTS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_a_message_ends_typing_on_the_other_server(interop: FedPair, direction: str,
                                                         host: str) -> None:
    """Sending a message ends the sender's typing here (KT-Chat) and is told to the other
    server with the message; a KT-Chat watcher also ends a Synapse sender's typing when the
    message arrives. Nobody sends ``typing: false``."""
    room_id = await _shared_room(interop, host)
    typer, watcher = _users(interop, direction)
    await typer.typing(room_id, True, timeout_ms=60_000)
    await watcher.wait_for_ephemeral(
        room_id, "m.typing", lambda c: typer.user_id in c.get("user_ids", []), timeout=WAIT)
    await typer.send_text(room_id, f"done typing {_tag()}")
    await watcher.wait_for_ephemeral(
        room_id, "m.typing", lambda c: typer.user_id not in c.get("user_ids", []),
        timeout=WAIT)


@pytest.mark.parametrize("host", ROOM_HOSTS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_read_receipt_crosses(interop: FedPair, direction: str, host: str) -> None:
    """The watcher sends a message; the reader, on the other server, marks it read; the
    watcher sees the reader's ``m.read`` receipt on it."""
    room_id = await _shared_room(interop, host)
    reader, watcher = _users(interop, direction)
    body = f"read me {_tag()}"
    event_id = await watcher.send_text(room_id, body)
    await reader.wait_for_event(room_id, WAIT, event_id=event_id)
    await reader.receipt(room_id, event_id, "m.read")

    def has_receipt(content: dict[str, Any]) -> bool:
        return reader.user_id in content.get(event_id, {}).get("m.read", {})

    receipt = await watcher.wait_for_ephemeral(room_id, "m.receipt", has_receipt, timeout=WAIT)
    assert isinstance(receipt["content"][event_id]["m.read"][reader.user_id].get("ts"), int)


@pytest.mark.parametrize("host", ROOM_HOSTS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_presence_crosses(interop: FedPair, direction: str, host: str) -> None:
    """Users sharing a room see each other's presence: a status set on one server reaches the
    other's /sync, and its ``GET /presence`` answer."""
    await _shared_room(interop, host)  # presence goes only to servers sharing a room
    actor, watcher = _users(interop, direction)
    for state in ("online", "unavailable"):
        status_msg = f"{state} {_tag()}"
        await actor.set_presence(state, status_msg)
        event = await watcher.wait_for_presence(actor.user_id, state, status_msg, timeout=WAIT,
                                                set_presence="offline")
        assert event["content"]["presence"] == state
        await poll_until(lambda: watcher.get_presence(actor.user_id),
                         lambda p: p.get("presence") == state and
                         p.get("status_msg") == status_msg, timeout=WAIT,
                         what=f"GET /presence of {actor.user_id} on the watcher's server")


# -- profile and directory --------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_profile_query(interop: FedPair, direction: str) -> None:
    """A display name set on one server is what the other's ``GET /profile`` answers (a
    federation profile query)."""
    owner, asker = _users(interop, direction)
    name = f"Name {_tag()}"
    await owner.request("PUT", f"/profile/{q(owner.user_id)}/displayname",
                        {"displayname": name})
    # Each server may cache remote profiles; a fresh name is asked for at once here.
    profile = await poll_until(
        lambda: asker.request("GET", f"/profile/{q(owner.user_id)}"),
        lambda p: p.get("displayname") == name, timeout=WAIT,
        what=f"{owner.user_id}'s profile from the other server")
    assert profile["displayname"] == name


async def test_synapse_lists_our_public_rooms(interop: FedPair) -> None:
    """Synapse's client asks our server's public room directory over federation."""
    ktchat, sam, alice = interop.a, interop.bob, interop.alice
    name = f"listed {_tag()}"
    room_id = await alice.create_room(preset="public_chat", name=name, visibility="public")

    def listed(answer: Any) -> bool:
        return any(r.get("room_id") == room_id for r in answer.get("chunk", []))

    answer = await poll_until(
        lambda: sam.request("GET", "/publicRooms", params={"server": ktchat.server_name}),
        listed, timeout=WAIT, what=f"{room_id} in our directory as Synapse sees it")
    entry = next(r for r in answer["chunk"] if r["room_id"] == room_id)
    assert entry.get("name") == name


async def test_we_list_synapses_public_rooms(interop: FedPair) -> None:
    """Our client asks Synapse's directory through us (federation GET, and POST with a
    filter): the entries are Synapse's own, field for field."""
    synapse, sam, alice = interop.b, interop.bob, interop.alice
    tag = _tag()
    room_id = await sam.create_room(preset="public_chat", visibility="public",
                                    name=f"Synapse {tag}", topic=f"Topic {tag}")
    search = {"filter": {"generic_search_term": tag}}
    # Synapse lists a new room once its room stats catch up.
    own = await poll_until(
        lambda: sam.request("POST", "/publicRooms", search),
        lambda answer: [r["room_id"] for r in answer["chunk"]] == [room_id], timeout=WAIT,
        what=f"{room_id} in Synapse's own directory")
    (entry,) = own["chunk"]
    assert entry["name"] == f"Synapse {tag}" and entry["topic"] == f"Topic {tag}"

    found = await alice.request("POST", "/publicRooms", search,
                                params={"server": synapse.server_name})
    assert found["chunk"] == [entry]
    listed = await alice.request("GET", "/publicRooms",
                                 params={"server": synapse.server_name, "limit": "100"})
    assert entry in listed["chunk"]
    assert isinstance(listed.get("total_room_count_estimate"), int)
