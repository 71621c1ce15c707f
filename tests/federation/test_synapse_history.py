"""History across KT-Chat and Synapse: backfill both ways, and catching up after downtime.

Backfill: a user who joins a room that lives on the other server pages back through its
history from before the join; Synapse asks us (``GET /backfill``) and we ask Synapse.

Catching up with Synapse after downtime: a gap longer than one /get_missing_events answer.

When Synapse has lost track of what a server missed (restarted, or after a long outage),
it "catches up" by sending only the newest event of each room (``PerDestinationQueue``'s
catch-up mode) once it hears from that server again, and the server must fetch the rest.
A gap of more than 20 events (Synapse's cap per ``/get_missing_events``) with a member
joining inside it: every message reaches KT-Chat in order, and the new member's messages
are accepted (their join is part of the state they are checked against).

Its own pair of servers (``interop``; the catch-up test, last, stops and restarts both).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.helpers.federation import FedPair, User, poll_until

WAIT = 60
GAP = 45  # messages sent while KT-Chat is down: more than two /get_missing_events answers


async def _history(user: User, room_id: str) -> list[Any]:
    """Every event ``/messages`` gives going back from now (pages of 20), oldest first."""
    events: list[Any] = []
    token: str | None = None
    for _ in range(30):
        page = await user.messages(room_id, "b", 20, token)
        events += page["chunk"]
        token = page.get("end")
        if token is None:
            break
    return list(reversed(events))


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("host", ["synapse_room", "ktchat_room"])
async def test_joiner_pages_back_through_history(interop: FedPair, host: str) -> None:
    ktchat_user, synapse_user = interop.alice, interop.bob
    owner, joiner = (synapse_user, ktchat_user) if host == "synapse_room" \
        else (ktchat_user, synapse_user)
    tag = uuid.uuid4().hex[:8]
    room_id = await owner.create_room(preset="public_chat", name=f"history {tag}")
    sent = [await owner.send_text(room_id, f"old {tag} {i}") for i in range(30)]
    via = [owner.server.server_name]
    assert await joiner.join(room_id, via=via) == room_id
    body = f"new {tag}"
    await owner.send_text(room_id, body)
    await joiner.wait_for_event(room_id, WAIT, body=body)

    async def seen() -> list[str]:
        return [e["event_id"] for e in await _history(joiner, room_id)]

    # Synapse backfills in the background of a request at times: ask until it is all there.
    ids = await poll_until(seen, lambda got: set(sent) <= set(got), timeout=WAIT)
    assert [i for i in ids if i in set(sent)] == sent


@pytest.mark.asyncio(loop_scope="module")
async def test_gap_with_a_new_member_is_filled_after_downtime(interop: FedPair) -> None:
    alice, sam = interop.alice, interop.bob
    tag = uuid.uuid4().hex[:8]
    room_id = await sam.create_room(preset="public_chat")
    assert await alice.join(room_id, via=[interop.b.server_name]) == room_id
    await sam.wait_for_membership(room_id, alice.user_id, "join", timeout=WAIT)
    await alice.send_text(room_id, f"before {tag}")
    await sam.wait_for_event(room_id, WAIT, body=f"before {tag}")
    # Synapse catches up only from a PDU the destination is known to have taken.
    await sam.send_text(room_id, f"hello {tag}")
    await alice.wait_for_event(room_id, WAIT, body=f"hello {tag}")

    interop.a.stop()
    sent = [await sam.send_text(room_id, f"gap {tag} {i}") for i in range(GAP // 2)]
    carol = await interop.b.register(f"carol{tag}")  # type: ignore[attr-defined]
    assert await carol.join(room_id) == room_id
    sent += [await carol.send_text(room_id, f"carol {tag} {i}") for i in range(3)]
    sent += [await sam.send_text(room_id, f"gap {tag} {i}") for i in range(GAP // 2, GAP)]
    # Synapse keeps retrying the transaction it has in flight; restarted, it knows only
    # what its database says: KT-Chat missed events since the last one it took.
    interop.b.stop()
    interop.b.start()
    interop.a.start()
    await alice.catch_up()

    # Anything from KT-Chat tells Synapse it is back; it then sends the newest event.
    await alice.send_text(room_id, f"back {tag}")

    async def timeline_ids() -> list[str]:
        return [e["event_id"] for e in await alice.timeline(room_id, limit=200)]

    ids = await poll_until(timeline_ids, lambda got: set(sent) <= set(got), timeout=WAIT)
    in_order = [e for e in ids if e in set(sent)]  # oldest first
    assert in_order == sent
    assert carol.user_id in await alice.joined_members(room_id)
    # And carol can go on speaking to alice.
    body = f"carol again {tag}"
    await carol.send_text(room_id, body)
    await alice.wait_for_event(room_id, WAIT, body=body, sender=carol.user_id)
