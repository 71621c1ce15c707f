"""Redactions received from other servers (spec: rooms v3+, "Handling redactions").

A redaction passes the auth rules without regard to what it redacts; it is applied only to
an event of its own room whose sender is on the redacting user's server, or by a user with
the ``redact`` power level. One received before its event waits for it and is settled when
it arrives. An unapplied redaction stays in the timeline and redacts nothing. Checked
through the persister's receive path and read back both from the cache and, after a
restart, from the database, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from core.events.model import Event
from homeserver.services.container import Services
from roomserver.api import NewEvent
from tests.helpers.harness import Harness
from tests.roomserver.test_roomserver import ALICE, make_room, register

BOB = "@bob:remote.example"        # power 0
CAROL = "@carol:remote.example"    # power 0, on bob's server
DAVE = "@dave:other.example"       # power 0, another server
MOD = "@mod:other.example"         # power 50: may redact anything


async def room_with_remote_members(hs: Services) -> str:
    await register(hs, "alice")
    room_id = await make_room(hs, ALICE)
    for user in (BOB, CAROL, DAVE, MOD):
        await receive(hs, await hs.roomserver.build(room_id, NewEvent(
            "m.room.member", user, {"membership": "join"}, state_key=user)))
    levels = dict(await hs.roomserver.state_content(room_id, ("m.room.power_levels", "")) or {})
    levels["users"] = {**levels.get("users", {}), MOD: 50}
    await hs.roomserver.send(room_id, NewEvent("m.room.power_levels", ALICE, levels,
                                              state_key=""))
    return room_id


async def receive(hs: Services, event: Event) -> None:
    assert await hs.roomserver.receive(event) == "accepted"


async def message(hs: Services, room_id: str, sender: str, body: str) -> Event:
    return await hs.roomserver.build(room_id, NewEvent(
        "m.room.message", sender, {"msgtype": "m.text", "body": body}))


async def redaction(hs: Services, room_id: str, sender: str, target: str) -> Event:
    return await hs.roomserver.build(room_id, NewEvent(
        "m.room.redaction", sender, {"reason": "test"}, redacts=target))


async def redacted_by(hs: Services, event_id: str) -> str | None:
    stored = await hs.db.events.get_event(event_id)
    assert stored is not None
    return stored.redacted_by


async def test_redaction_of_a_known_event(harness: Harness, hs: Services) -> None:
    room_id = await room_with_remote_members(hs)
    local = await hs.roomserver.send(room_id, NewEvent(
        "m.room.message", ALICE, {"msgtype": "m.text", "body": "mine"}))
    bobs = await message(hs, room_id, BOB, "bob's")
    await receive(hs, bobs)
    daves = await message(hs, room_id, DAVE, "dave's")
    await receive(hs, daves)

    cases = {  # target -> (redacting user, applied?)
        local.event_id: (BOB, False),     # another server's event, no power
        bobs.event_id: (CAROL, True),     # same server as the sender
        daves.event_id: (MOD, True),      # power to redact anything
    }
    redactions = {}
    for target, (sender, _) in cases.items():
        event = await redaction(hs, room_id, sender, target)
        await receive(hs, event)  # accepted either way: it stays in the timeline
        redactions[target] = event.event_id

    for services in (hs, await harness.restart()):
        for target, (_, applied) in cases.items():
            expected = redactions[target] if applied else None
            assert await redacted_by(services, target) == expected, target
            assert await services.db.events.get_event(redactions[target]) is not None


async def test_redaction_received_before_its_event(harness: Harness, hs: Services) -> None:
    room_id = await room_with_remote_members(hs)
    other_room = await make_room(hs, ALICE)
    # Each target is built (so its ID is known) but arrives after its redaction.
    from_bobs_server = await message(hs, room_id, CAROL, "carol's")
    from_another = await message(hs, room_id, DAVE, "dave's")
    moderated = await message(hs, room_id, DAVE, "dave's again")
    await receive(hs, await hs.roomserver.build(other_room, NewEvent(
        "m.room.member", BOB, {"membership": "join"}, state_key=BOB)))
    elsewhere = await message(hs, other_room, BOB, "bob's, in another room")
    cases = [  # (target, redacting user, its room, applied?)
        (from_bobs_server, BOB, room_id, True),
        (from_another, BOB, room_id, False),
        (moderated, MOD, room_id, True),
        (elsewhere, BOB, room_id, False),  # the redaction is of another room
    ]
    redactions = {}
    for target, sender, in_room, _ in cases:
        event = await redaction(hs, in_room, sender, target.event_id)
        await receive(hs, event)
        redactions[target.event_id] = event.event_id
        assert await hs.db.events.get_event(target.event_id) is None  # not here yet
    for target, *_ in cases:
        await receive(hs, target)

    for services in (hs, await harness.restart()):
        for target, _, _, applied in cases:
            expected = redactions[target.event_id] if applied else None
            assert await redacted_by(services, target.event_id) == expected, target.content
