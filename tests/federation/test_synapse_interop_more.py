"""More interoperability with Synapse: one real Synapse process (from ``.venv-synapse``) and one
KT-Chat process federating over TLS on loopback; alice is on KT-Chat, sam on Synapse.

Redaction, kick, ban and unban, room state and power levels, a remote moderator, leave and
rejoin, concurrent sends, awkward message bodies, the invite state Synapse validates, a KT-Chat
friend request to a Synapse user, and concurrent renames (state resolution). Most tests run in
both directions. Each test makes its own rooms (and, where it needs a third user, its own
account); every wait is a /sync long-poll or a re-fetched answer bounded by at most 30 s.
Without the Synapse virtualenv the module skips (fails under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest

from tests.helpers.federation import FedPair, User, first, poll_until, q, send_refused
from tests.helpers.synapse import SynapseServer

WAIT = 30
DIRECTIONS = ["ktchat_to_synapse", "synapse_to_ktchat"]


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _users(pair: FedPair, direction: str) -> tuple[User, User]:
    """(the acting user, the one on the other server)."""
    return (pair.alice, pair.bob) if direction == "ktchat_to_synapse" else (pair.bob, pair.alice)


def _server_of(pair: FedPair, user: User) -> str:
    return pair.a.server_name if user is pair.alice else pair.b.server_name


async def _room_of(pair: FedPair, host: User, guest: User, **create: Any) -> str:
    """A public room created by ``host`` on its server, joined by ``guest`` from the other;
    returns once both have seen the join."""
    room_id = await host.create_room(preset="public_chat", **create)
    assert await guest.join(room_id, via=[_server_of(pair, host)]) == room_id
    await host.wait_for_membership(room_id, guest.user_id, "join", WAIT)
    await guest.wait_for_membership(room_id, guest.user_id, "join", WAIT)
    return room_id



async def _message_ids(user: User, room_id: str) -> list[str]:
    return [ev["event_id"] for ev in await user.timeline(room_id, limit=200)
            if ev["type"] == "m.room.message"]


async def _talk(sender: User, receiver: User, room_id: str) -> None:
    body = f"still talking {_tag()}"
    event_id = await sender.send_text(room_id, body)
    got = await receiver.wait_for_event(room_id, WAIT, event_id=event_id)
    assert got["content"]["body"] == body


async def _rejoin(pair: FedPair, user: User, room_id: str, host: User) -> None:
    assert await user.join(room_id, via=[_server_of(pair, host)]) == room_id
    await host.wait_for_membership(room_id, user.user_id, "join", WAIT)
    await user.wait_for_membership(room_id, user.user_id, "join", WAIT)
    assert set(await host.joined_members(room_id)) == {host.user_id, user.user_id}


def _assert_redacted(event: dict[str, Any], redaction_id: str, secret: str) -> None:
    assert event["content"] == {}, event
    assert event["unsigned"]["redacted_because"]["event_id"] == redaction_id, event
    assert secret not in json.dumps(event)


# -- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_redaction_crosses(interop: FedPair, direction: str) -> None:
    """The redacter (room admin) redacts its own message, then the other user's: both
    redactions reach the other server, whose /event and /messages show the content gone."""
    admin, other = _users(interop, direction)
    room_id = await _room_of(interop, admin, other)

    secret = f"secret {_tag()}"
    event_id = await admin.send_text(room_id, secret)
    await other.wait_for_event(room_id, WAIT, event_id=event_id)
    assert (await other.event(room_id, event_id))["content"]["body"] == secret

    redaction_id = await admin.redact(room_id, event_id, reason="oops")

    redaction = await other.wait_for_event(room_id, WAIT, event_id=redaction_id)
    assert redaction["type"] == "m.room.redaction"
    assert redaction["sender"] == admin.user_id
    assert redaction["content"].get("redacts", redaction.get("redacts")) == event_id
    _assert_redacted(await other.event(room_id, event_id), redaction_id, secret)
    in_messages = first(await other.timeline(room_id), event_id=event_id)
    assert in_messages is not None
    _assert_redacted(in_messages, redaction_id, secret)

    # A moderator's redaction of the other user's message, sent from the moderator's server.
    theirs = f"their secret {_tag()}"
    their_id = await other.send_text(room_id, theirs)
    await admin.wait_for_event(room_id, WAIT, event_id=their_id)

    redaction_id = await admin.redact(room_id, their_id, reason="moderated")

    redaction = await other.wait_for_event(room_id, WAIT, event_id=redaction_id)
    assert redaction["content"].get("redacts", redaction.get("redacts")) == their_id
    _assert_redacted(await other.event(room_id, their_id), redaction_id, theirs)
    _assert_redacted(await admin.event(room_id, their_id), redaction_id, theirs)
    assert theirs not in json.dumps(await other.messages(room_id))


# -- kick, ban, unban ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_kick_remote_user(interop: FedPair, direction: str) -> None:
    admin, target = _users(interop, direction)
    room_id = await _room_of(interop, admin, target)

    await admin.kick(room_id, target.user_id, reason="kicked across servers")

    kick = await target.wait_for_membership(room_id, target.user_id, "leave", WAIT)
    assert kick["sender"] == admin.user_id
    assert kick["content"].get("reason") == "kicked across servers"
    await target.wait_for_left(room_id, WAIT)
    assert room_id not in await target.joined_rooms()
    await admin.wait_for_membership(room_id, target.user_id, "leave", WAIT)
    assert set(await admin.joined_members(room_id)) == {admin.user_id}
    await send_refused(target, room_id)


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_ban_unban_rejoin(interop: FedPair, direction: str) -> None:
    admin, target = _users(interop, direction)
    room_id = await _room_of(interop, admin, target)

    await admin.ban(room_id, target.user_id, reason="banned across servers")

    ban = await target.wait_for_membership(room_id, target.user_id, "ban", WAIT)
    assert ban["sender"] == admin.user_id
    assert ban["content"].get("reason") == "banned across servers"
    await target.wait_for_left(room_id, WAIT)
    assert room_id not in await target.joined_rooms()
    await admin.wait_for_membership(room_id, target.user_id, "ban", WAIT)
    await send_refused(target, room_id)
    # Nor can the target come back.
    host = _server_of(interop, admin)
    status, body = await target.raw("POST", f"/join/{q(room_id)}", {},
                                    params=[("via", host), ("server_name", host)])
    assert status == 403, (status, body)
    assert body["errcode"] == "M_FORBIDDEN", body
    assert room_id not in await target.joined_rooms()

    await admin.request("POST", f"/rooms/{q(room_id)}/unban", {"user_id": target.user_id})
    unban = await admin.wait_for_membership(room_id, target.user_id, "leave", WAIT)
    assert unban["sender"] == admin.user_id

    await _rejoin(interop, target, room_id, admin)
    await _talk(target, admin, room_id)
    await _talk(admin, target, room_id)


# -- room state and power levels ---------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_name_topic_power_levels_cross(interop: FedPair, direction: str) -> None:
    """The room's creator renames it, sets its topic, and raises the other user to 50 with
    topics needing 50: each change reaches the other server as the same event, and the other
    server enforces the new power levels (the other user may now set the topic)."""
    admin, other = _users(interop, direction)
    tag = _tag()
    room_id = await _room_of(interop, admin, other, name="before")

    name_id = await admin.send_state(room_id, "m.room.name", {"name": f"Name {tag}"})
    topic_id = await admin.send_state(room_id, "m.room.topic", {"topic": f"Topic {tag}"})
    for event_id in (name_id, topic_id):
        seen = await other.wait_for_event(room_id, WAIT, event_id=event_id)
        assert seen["sender"] == admin.user_id
    assert await other.state_event(room_id, "m.room.name") == {"name": f"Name {tag}"}
    assert (await other.state_event(room_id, "m.room.topic"))["topic"] == f"Topic {tag}"

    # Before the change the other user may not set the topic.
    status, body = await other.raw("PUT", f"/rooms/{q(room_id)}/state/m.room.topic/",
                                   {"topic": "not allowed"})
    assert status == 403, (status, body)

    power = await admin.state_event(room_id, "m.room.power_levels")
    power.setdefault("users", {})[other.user_id] = 50
    power.setdefault("events", {})["m.room.topic"] = 50
    power_id = await admin.send_state(room_id, "m.room.power_levels", power)
    seen = await other.wait_for_event(room_id, WAIT, event_id=power_id)
    assert seen["content"]["users"][other.user_id] == 50
    assert seen["content"]["events"]["m.room.topic"] == 50
    on_other = await other.state_event(room_id, "m.room.power_levels")
    assert on_other["users"] == power["users"]
    assert on_other["events"]["m.room.topic"] == 50

    new_topic = await other.send_state(room_id, "m.room.topic", {"topic": f"By other {tag}"})
    seen = await admin.wait_for_event(room_id, WAIT, event_id=new_topic)
    assert seen["sender"] == other.user_id
    assert (await admin.state_event(room_id, "m.room.topic"))["topic"] == f"By other {tag}"

    def by_key(state: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
        return {(ev["type"], ev["state_key"]): ev["event_id"] for ev in state}

    on_admin, on_guest = by_key(await admin.state(room_id)), by_key(await other.state(room_id))
    assert on_admin == on_guest
    assert on_admin[("m.room.name", "")] == name_id
    assert on_admin[("m.room.topic", "")] == new_topic
    assert on_admin[("m.room.power_levels", "")] == power_id


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_promoted_remote_moderator_can_kick(interop: FedPair, direction: str) -> None:
    """The admin's room; a user from the other server cannot kick until the admin makes
    them a moderator (50), then kicks a third user who is on the admin's server."""
    admin, moderator = _users(interop, direction)
    admin_server = interop.a if admin is interop.alice else interop.b
    victim = await admin_server.register(f"victim{_tag()}")
    room_id = await _room_of(interop, admin, moderator)
    await victim.join(room_id)
    await moderator.wait_for_membership(room_id, victim.user_id, "join", WAIT)

    status, body = await moderator.raw("POST", f"/rooms/{q(room_id)}/kick",
                                       {"user_id": victim.user_id})
    assert status == 403, (status, body)

    power = await admin.state_event(room_id, "m.room.power_levels")
    power.setdefault("users", {})[moderator.user_id] = 50
    power_id = await admin.send_state(room_id, "m.room.power_levels", power)
    await moderator.wait_for_event(room_id, WAIT, event_id=power_id)

    await moderator.kick(room_id, victim.user_id, reason="moderated")

    for watcher in (admin, victim):
        kick = await watcher.wait_for_membership(room_id, victim.user_id, "leave", WAIT)
        assert kick["sender"] == moderator.user_id, watcher
        assert kick["content"].get("reason") == "moderated", watcher
    await victim.wait_for_left(room_id, WAIT)
    assert room_id not in await victim.joined_rooms()
    for user in (admin, moderator):
        assert set(await user.joined_members(room_id)) == {admin.user_id,
                                                            moderator.user_id}, user


# -- leave and rejoin ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_leave_and_rejoin(interop: FedPair, direction: str) -> None:
    """The user on the non-hosting server leaves, then joins again through the host."""
    host, leaver = _users(interop, direction)
    room_id = await _room_of(interop, host, leaver)

    await leaver.leave(room_id)
    left = await host.wait_for_membership(room_id, leaver.user_id, "leave", WAIT)
    assert left["sender"] == leaver.user_id
    await leaver.wait_for_left(room_id, WAIT)
    await send_refused(leaver, room_id)
    await host.send_text(room_id, f"while away {_tag()}")

    await _rejoin(interop, leaver, room_id, host)
    assert set(await leaver.joined_members(room_id)) == {host.user_id, leaver.user_id}
    assert room_id in await leaver.joined_rooms()
    await _talk(leaver, host, room_id)
    await _talk(host, leaver, room_id)


# -- ordering -----------------------------------------------------------------------------------
#
# Both servers list a room's events in topological order: by depth, then by their own local
# arrival order (Synapse's `/messages` and KT-Chat's alike; the tokens read `t<depth>-...`).
# Events sent at the same time on the two servers sit on two branches at the same depths, and
# how such ties are broken is each server's own: Matrix promises no single order for
# concurrent events (two Synapses differ the same way). What it does give is the same events,
# each at the same depth on every server, and one order for events that follow each other.


async def _depth(user: User, room_id: str, event_id: str) -> int:
    """The event's depth on ``user``'s server, from its ``/context`` token."""
    ctx = await user.request("GET", f"/rooms/{q(room_id)}/context/{q(event_id)}",
                             params={"limit": "0"})
    token = str(ctx.get("end", ""))
    assert re.match(r"^t\d+-", token), f"not a topological token: {ctx}"
    return int(token[1:].split("-", 1)[0])


async def test_concurrent_messages_converge(interop: FedPair) -> None:
    """alice and sam send ten messages each at the same time, alternating as the requests
    go, without waiting for the other server: both servers end up with all twenty, each
    sender's in the order sent, every event at the same depth on both, hence in the same
    order but for ties between concurrent events; a message sent after all of them comes
    last on both."""
    alice, sam = interop.alice, interop.bob
    room_id = await _room_of(interop, alice, sam)
    tag = _tag()

    async def send_ten(user: User) -> list[str]:
        ids = []
        for n in range(10):
            ids.append(await user.send_text(room_id, f"{tag} {user.localpart} {n}"))
            await asyncio.sleep(0)
        return ids

    from_alice, from_sam = await asyncio.gather(send_ten(alice), send_ten(sam))
    every = set(from_alice) | set(from_sam)
    await sam.wait_for_timeline(room_id, 10, WAIT, event_id=lambda e: e in from_alice)
    await alice.wait_for_timeline(room_id, 10, WAIT, event_id=lambda e: e in from_sam)

    on_ktchat = [e for e in await _message_ids(alice, room_id) if e in every]
    on_synapse = [e for e in await _message_ids(sam, room_id) if e in every]
    assert set(on_ktchat) == set(on_synapse) == every
    for sent in (from_alice, from_sam):
        assert [e for e in on_ktchat if e in sent] == sent
        assert [e for e in on_synapse if e in sent] == sent
    names = {e: f"a{n}" for n, e in enumerate(from_alice)}
    names.update({e: f"s{n}" for n, e in enumerate(from_sam)})
    depths_k = {e: await _depth(alice, room_id, e) for e in on_ktchat}
    depths_s = {e: await _depth(sam, room_id, e) for e in on_synapse}
    view_k = [f"{names[e]}@{depths_k[e]}" for e in on_ktchat]
    view_s = [f"{names[e]}@{depths_s[e]}" for e in on_synapse]
    assert depths_k == depths_s, f"depths differ:\n KT-Chat {view_k}\n Synapse {view_s}"
    for view, depths, order in ((view_k, depths_k, on_ktchat), (view_s, depths_s, on_synapse)):
        assert [depths[e] for e in order] == sorted(depths[e] for e in order), view
    assert sorted(on_ktchat, key=lambda e: (depths_k[e], e)) == \
        sorted(on_synapse, key=lambda e: (depths_s[e], e))

    # A message sent once alice has everything joins the branches: last on both servers.
    after = await alice.send_text(room_id, f"{tag} after")
    await sam.wait_for_event(room_id, WAIT, event_id=after)
    for user in (alice, sam):
        assert (await _message_ids(user, room_id))[-1] == after, user
    assert await _depth(alice, room_id, after) == await _depth(sam, room_id, after) == \
        max(depths_k.values()) + 1


async def test_alternating_messages_same_order_on_both(interop: FedPair) -> None:
    """Twenty messages, alice and sam in turn, each sent once the other's previous one has
    arrived: both servers' /messages list them in exactly the order they were sent."""
    alice, sam = interop.alice, interop.bob
    room_id = await _room_of(interop, sam, alice)
    tag = _tag()

    sent: list[str] = []
    for n in range(20):
        speaker, listener = (alice, sam) if n % 2 == 0 else (sam, alice)
        event_id = await speaker.send_text(room_id, f"{tag} {n}")
        await listener.wait_for_event(room_id, WAIT, event_id=event_id)
        sent.append(event_id)

    every = set(sent)
    for user in (alice, sam):
        assert [e for e in await _message_ids(user, room_id) if e in every] == sent, user


# -- message bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_unusual_bodies_cross_intact(interop: FedPair, direction: str) -> None:
    sender, receiver = _users(interop, direction)
    room_id = await _room_of(interop, receiver, sender)
    tag = _tag()
    unicode_body = (f"{tag} Grüße, Ελληνικά, 日本語, עברית, 👩‍👩‍👧‍👦🏳️‍🌈🇯🇵 "
                    "\u200b zero-width, \u00a0 nbsp, \\ backslash \"quotes\" <b>&amp;</b>")
    large_body = f"{tag} large " + ("0123456789abcdef✓" * 1700)[:30_000]
    contents = [
        {"msgtype": "m.text", "body": unicode_body, "format": "org.matrix.custom.html",
         "formatted_body": f"<p>{unicode_body}</p>"},
        {"msgtype": "m.text", "body": large_body},
    ]
    assert len(json.dumps(contents[1], ensure_ascii=False).encode()) > 30_000

    for content in contents:
        event_id = await sender.send(room_id, "m.room.message", content)
        got = await receiver.wait_for_event(room_id, WAIT, event_id=event_id)
        assert got["content"] == content
        assert (await receiver.event(room_id, event_id))["content"] == content
        in_messages = first(await receiver.timeline(room_id), event_id=event_id)
        assert in_messages is not None
        assert in_messages["content"] == content


# -- invite room state ----------------------------------------------------------------------


async def test_invite_room_state_passes_synapse_validation(interop: FedPair) -> None:
    """Since Matrix 1.16 (MSC4311) the ``invite_room_state`` of a federation invite MUST hold
    the room's ``m.room.create`` event, every entry a full PDU in the room version's format,
    and the invitee's server SHOULD refuse anything else for room version 12+. Synapse checks
    it (it logs the failure, for now, instead of answering 400 ``M_INVALID_PARAM``): an invite
    from KT-Chat to a version 12 room must pass that check, and show as usual."""
    alice, sam, synapse = interop.alice, interop.bob, interop.b
    assert isinstance(synapse, SynapseServer)
    name = f"v12 invite {_tag()}"
    mark = synapse.log_size()
    room_id = await alice.create_room(preset="private_chat", name=name, room_version="12")

    await alice.invite(room_id, sam.user_id)

    invite = await alice.wait_for_membership(room_id, sam.user_id, "invite", WAIT)
    invite_state = await sam.wait_for_invite(room_id, WAIT)
    assert first(invite_state, type="m.room.create"), invite_state
    assert first(invite_state, type="m.room.name", content={"name": name}), invite_state
    complaints = [line for line in synapse.log()[mark:].splitlines()
                  if "invite_room_state" in line and invite["event_id"] in line]
    assert not complaints, "\n".join(complaints)
    assert await sam.join_room_id(room_id) == room_id
    await alice.wait_for_membership(room_id, sam.user_id, "join", WAIT)


# -- friends ------------------------------------------------------------------------------------


async def test_friend_request_to_synapse_user(interop: FedPair) -> None:
    """A KT-Chat user befriends a Synapse user: Synapse sees an ordinary DM invite, sam
    joins it, and the two chat; KT-Chat counts sam as alice's friend."""
    alice, sam = interop.alice, interop.bob

    room_id = await alice.friend_request(sam.user_id)

    invite_state = await sam.wait_for_invite(room_id, WAIT)
    member = first(invite_state, type="m.room.member", state_key=sam.user_id)
    assert member is not None, invite_state
    assert member["content"]["membership"] == "invite"
    assert member["content"].get("is_direct") is True, member
    assert member["sender"] == alice.user_id
    outgoing = (await alice.friend_requests())["outgoing"]
    assert {"user_id": sam.user_id, "room_id": room_id} in outgoing

    assert await sam.join_room_id(room_id) == room_id
    await alice.wait_for_membership(room_id, sam.user_id, "join", WAIT)
    await sam.wait_for_membership(room_id, sam.user_id, "join", WAIT)
    assert set(await sam.joined_members(room_id)) == {alice.user_id, sam.user_id}

    from_alice = await alice.send_text(room_id, f"hi sam {_tag()}")
    await sam.wait_for_event(room_id, WAIT, event_id=from_alice)
    from_sam = await sam.send_text(room_id, f"hi alice {_tag()}")
    await alice.wait_for_event(room_id, WAIT, event_id=from_sam)

    friends = await poll_until(
        alice.friends, lambda f: any(x["user_id"] == sam.user_id for x in f), timeout=WAIT,
        what="sam in alice's friends once sam joined the DM")
    assert first(friends, user_id=sam.user_id)["room_id"] == room_id  # type: ignore[index]
    assert not any(x["user_id"] == sam.user_id
                   for x in (await alice.friend_requests())["outgoing"])
    assert room_id in (await alice.account_data("m.direct")).get(sam.user_id, [])


# -- conflicting state (last: it restarts KT-Chat; the fixture starts it again if need be) -----


async def test_conflicting_name_changes_converge(interop: FedPair) -> None:
    """sam renames the room while KT-Chat is down; KT-Chat comes back and alice renames it
    before sam's rename reaches her (Synapse holds it back until KT-Chat contacts it again,
    which alice's rename does). The two renames are concurrent; once each server has both,
    and each side has sent a message on top, Synapse and KT-Chat must agree on the room's
    ``m.room.name``: state resolution (room versions 2+) gives every server the same
    answer, whatever order the events arrived in."""
    alice, sam, ktchat = interop.alice, interop.bob, interop.a
    tag = _tag()
    room_id = await _room_of(interop, alice, sam, name="start")
    power = await alice.state_event(room_id, "m.room.power_levels")
    power.setdefault("users", {})[sam.user_id] = 50
    power_id = await alice.send_state(room_id, "m.room.power_levels", power)
    await sam.wait_for_event(room_id, WAIT, event_id=power_id)

    assert ktchat.stop() == 0
    by_sam = await sam.send_state(room_id, "m.room.name", {"name": f"{tag} by sam"})
    ktchat.start()
    by_alice = await alice.send_state(room_id, "m.room.name", {"name": f"{tag} by alice"})
    ids = [by_sam, by_alice]
    for user in (alice, sam):
        await user.wait_for_timeline(room_id, 2, WAIT, event_id=lambda e: e in ids)
    after = [await u.send_text(room_id, f"{tag} after") for u in (alice, sam)]
    for user in (alice, sam):
        await user.wait_for_timeline(room_id, 2, WAIT, event_id=lambda e: e in after)

    seen = []
    for user in (alice, sam):
        state = {(ev["type"], ev["state_key"]): ev for ev in await user.state(room_id)}
        seen.append((state[("m.room.name", "")]["event_id"],
                     (await user.state_event(room_id, "m.room.name"))["name"]))
    assert seen[0][0] in ids, seen
    assert seen[0] == seen[1], f"KT-Chat and Synapse disagree on the room name: {seen}"
