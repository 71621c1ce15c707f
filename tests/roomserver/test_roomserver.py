"""The event persister: concurrency, transaction IDs, restarts, write failures, durability.

Most tests run on SQLite and PostgreSQL (the ``hs`` fixture builds the services on either);
the durability test kills a real ``ktchat run`` process.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import func, insert, select

from core.errors import Forbidden, MatrixError, NotFound
from homeserver.services.container import Services
from homeserver.services.filtering import RoomEventFilter
from homeserver.services.messages import Reader
from homeserver.services.rooms import CreateRoomRequest
from roomserver.api import NewEvent
from storage.schema import events as events_table
from storage.stores.events import StoredEvent
from tests.helpers.harness import Harness
from tests.helpers.processes import ServerProcess, free_port, ktchat, wait_for_port

ALICE = "@alice:test.local"


# -- helpers --------------------------------------------------------------------------------


async def register(services: Services, *names: str) -> list[str]:
    return [await services.accounts.register(name, None) for name in names]


async def make_room(services: Services, creator: str, *joiners: str, **extra: Any) -> str:
    room_id, _ = await services.rooms.create_room(CreateRoomRequest(
        creator=creator, preset="public_chat", **extra))
    for user in joiners:
        await services.membership.join(user, room_id)
    return room_id


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 10)


def message(sender: str, body: str, *, device: str | None = "DEV", txn: str | None = None
            ) -> NewEvent:
    return NewEvent("m.room.message", sender, {"msgtype": "m.text", "body": body},
                    device_id=device, txn_id=txn)


async def room_events(services: Services, room_id: str) -> list[StoredEvent]:
    return await services.db.events.paginate(room_id, backwards=False, limit=100_000)


async def all_stream_orderings(services: Services) -> list[int]:
    async with services.db.engine.read() as conn:
        rows = await conn.execute(select(events_table.c.stream_ordering)
                                  .order_by(events_table.c.stream_ordering))
        return [r[0] for r in rows]


async def count_events(services: Services, **where: Any) -> int:
    query = select(func.count()).select_from(events_table)
    for column, value in where.items():
        query = query.where(events_table.c[column] == value)
    async with services.db.engine.read() as conn:
        return int((await conn.execute(query)).scalar_one())


def assert_single_chain(chain: list[StoredEvent]) -> None:
    """One linear chain: each event points at the one before it, depth up by one each time,
    stream orderings increasing."""
    assert chain[0].pdu["type"] == "m.room.create"
    assert chain[0].pdu["prev_events"] == []
    for before, event in itertools.pairwise(chain):
        assert event.pdu["prev_events"] == [before.event_id], event.event_id
        assert event.depth == before.depth + 1
        assert event.stream_ordering > before.stream_ordering
    assert len({e.event_id for e in chain}) == len(chain)


async def assert_room_consistent(services: Services, room_id: str) -> list[StoredEvent]:
    """The stored chain is linear, its newest event is the only extremity, and the current
    state (table, state group, persister snapshot) all agree."""
    chain = await room_events(services, room_id)
    assert_single_chain(chain)
    assert await services.db.events.room_extremities(room_id) == [chain[-1].event_id]
    expected: dict[tuple[str, str], str] = {}
    for event in chain:
        if "state_key" in event.pdu:
            expected[(event.pdu["type"], event.pdu["state_key"])] = event.event_id
    table = {(e.type, e.state_key): e.event_id
             for e in await services.db.state.current_state(room_id)}
    assert table == expected
    info = await services.db.events.room_info(room_id)
    assert info is not None
    assert await services.db.state.state_at_group(info[1]) == expected
    assert chain[-1].state_group_after == info[1]
    assert await services.roomserver.current_state(room_id) == expected
    state_events = sum(1 for e in chain if "state_key" in e.pdu)
    assert await services.db.state.count_state_groups(room_id) == state_events
    return chain


# -- concurrency ----------------------------------------------------------------------------


def fail_first_write(hs: Services, monkeypatch: pytest.MonkeyPatch, error: str
                     ) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the next batch write wait at a gate, then fail with ``error``; later writes go
    through. Returns ``(gate, entered)``: set the gate to let it fail; ``entered`` is set
    once the write is waiting."""
    gate, entered = asyncio.Event(), asyncio.Event()
    real = hs.db.events.persist_batch
    calls = 0

    async def write(items: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await gate.wait()
            raise RuntimeError(error)
        await real(items)

    monkeypatch.setattr(hs.db.events, "persist_batch", write)
    return gate, entered


async def test_concurrent_senders_one_chain(hs: Services) -> None:
    senders = await register(hs, *[f"user{n}" for n in range(10)])
    room_id = await make_room(hs, senders[0], *senders[1:])

    async def send_all(sender: str) -> list[str]:
        out = []
        for n in range(50):
            event = await hs.roomserver.send(room_id, message(sender, f"{sender} {n}",
                                                             txn=f"txn{n}"))
            out.append(event.event_id)
        return out

    sent = await asyncio.gather(*(send_all(s) for s in senders))
    ids = [e for per_sender in sent for e in per_sender]
    assert len(set(ids)) == 500

    chain = await assert_room_consistent(hs, room_id)
    messages = [e for e in chain if e.pdu["type"] == "m.room.message"]
    assert [e.event_id for e in messages if e.event_id in set(ids)] == \
        [e.event_id for e in messages]
    assert sorted(e.event_id for e in messages) == sorted(ids)
    assert await count_events(hs, room_id=room_id, type="m.room.message") == 500
    # Each sender's messages are in the order that sender sent them.
    for sender, per_sender in zip(senders, sent, strict=True):
        mine = [e for e in messages if e.pdu["sender"] == sender]
        assert [e.event_id for e in mine] == per_sender
        assert [e.pdu["content"]["body"] for e in mine] == [f"{sender} {n}" for n in range(50)]
        assert [e.txn_id for e in mine] == [f"txn{n}" for n in range(50)]

    # /messages returns the same 500 in the same order, both directions.
    reader = Reader(senders[3], None)
    forward = await hs.messages.messages(reader, room_id, from_token=None, to_token=None,
                                         backwards=False, limit=1000,
                                         event_filter=RoomEventFilter())
    assert [e["event_id"] for e in forward["chunk"]] == [e.event_id for e in chain]
    backward: list[str] = []
    token = None
    while True:
        page = await hs.messages.messages(reader, room_id, from_token=token, to_token=None,
                                          backwards=True, limit=70,
                                          event_filter=RoomEventFilter())
        backward += [e["event_id"] for e in page["chunk"]]
        if "end" not in page:
            break
        token = page["end"]
    assert backward == [e.event_id for e in chain][::-1]

    # Stream orderings: unique, gap-free, and the notifier is at the newest.
    orderings = await all_stream_orderings(hs)
    assert orderings == list(range(1, len(orderings) + 1))
    assert hs.notifier.position == orderings[-1]
    assert [e.stream_ordering for e in chain] == sorted(e.stream_ordering for e in chain)


async def test_burst_of_concurrent_sends_shares_commits(hs: Services,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    (alice,) = await register(hs, "alice")
    room_id = await make_room(hs, alice)
    batches: list[int] = []
    real = hs.db.events.persist_batch

    async def counting(items: Any) -> None:
        batches.append(len(items))
        await real(items)

    monkeypatch.setattr(hs.db.events, "persist_batch", counting)
    events = await asyncio.gather(*(hs.roomserver.send(room_id, message(alice, str(n),
                                                                       txn=f"b{n}"))
                                    for n in range(200)))
    assert len({e.event_id for e in events}) == 200
    assert sum(batches) == 200
    assert len(batches) < 200  # senders shared transactions
    chain = await assert_room_consistent(hs, room_id)
    assert [e.event_id for e in chain[-200:]] == [e.event_id for e in events]


async def test_repeated_transaction_ids(harness: Harness, hs: Services) -> None:
    alice, bob = await register(hs, "alice", "bob")
    room_id = await make_room(hs, alice, bob)
    before = await count_events(hs)

    # Concurrently: one event, every caller gets its ID.
    same = await asyncio.gather(*(hs.roomserver.send(room_id, message(alice, "once", txn="t1"))
                                  for _ in range(20)))
    assert len({e.event_id for e in same}) == 1
    assert await count_events(hs) == before + 1
    # Again after the commit.
    again = await hs.roomserver.send(room_id, message(alice, "different body", txn="t1"))
    assert again.event_id == same[0].event_id
    assert again.content["body"] == "once"
    # Mixed with new transactions in one concurrent burst.
    mixed = await asyncio.gather(*(hs.roomserver.send(room_id, message(
        alice, f"m{n % 5}", txn=f"m{n % 5}")) for n in range(25)))
    assert len({e.event_id for e in mixed}) == 5
    for n, event in enumerate(mixed):
        assert event.event_id == mixed[n % 5].event_id
    assert await count_events(hs) == before + 6

    # The scope is (room, sender, device): other devices, senders and rooms get new events.
    other_device = await hs.roomserver.send(room_id, message(alice, "x", device="DEV2",
                                                            txn="t1"))
    other_sender = await hs.roomserver.send(room_id, message(bob, "x", txn="t1"))
    other_room_id = await make_room(hs, alice)
    other_room = await hs.roomserver.send(other_room_id, message(alice, "x", txn="t1"))
    ids = {same[0].event_id, other_device.event_id, other_sender.event_id,
           other_room.event_id}
    assert len(ids) == 4
    # Without a device the transaction ID does not deduplicate (nothing to scope it to).
    a = await hs.roomserver.send(room_id, message(alice, "x", device=None, txn="t9"))
    b = await hs.roomserver.send(room_id, message(alice, "x", device=None, txn="t9"))
    assert a.event_id != b.event_id
    # A batch repeating a transaction ID within itself creates one event.
    batch = await hs.roomserver.send_events(room_id, [message(alice, "p", txn="p1"),
                                                     message(alice, "q", txn="p1")])
    assert batch[0].event_id == batch[1].event_id

    # After a restart the transaction is still known (from the database).
    hs2 = await harness.restart()
    after = await hs2.roomserver.send(room_id, message(alice, "y", txn="t1"))
    assert after.event_id == same[0].event_id
    await assert_room_consistent(hs2, room_id)


async def test_repeated_txn_id_answers_only_after_the_commit(
        hs: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    (alice,) = await register(hs, "alice")
    room_id = await make_room(hs, alice)
    gate = asyncio.Event()
    entered = asyncio.Event()
    real = hs.db.events.persist_batch

    async def slow(items: Any) -> None:
        entered.set()
        await gate.wait()
        await real(items)

    monkeypatch.setattr(hs.db.events, "persist_batch", slow)
    first = asyncio.create_task(hs.roomserver.send(room_id, message(alice, "a", txn="slow")))
    await wait(entered)
    second = asyncio.create_task(hs.roomserver.send(room_id, message(alice, "a", txn="slow")))
    await asyncio.sleep(0.05)
    # Neither caller has an answer while the event is not committed.
    answered_early = [t.done() for t in (first, second)]
    gate.set()
    a, b = await asyncio.gather(first, second)
    assert answered_early == [False, False]
    assert a.event_id == b.event_id
    assert await hs.db.events.get_event(a.event_id) is not None


async def test_repeated_txn_id_of_a_failed_write_fails_too(
        hs: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    (alice,) = await register(hs, "alice")
    room_id = await make_room(hs, alice)
    gate, entered = fail_first_write(hs, monkeypatch, "disk on fire")
    first = asyncio.create_task(hs.roomserver.send(room_id, message(alice, "a", txn="x")))
    await wait(entered)
    second = asyncio.create_task(hs.roomserver.send(room_id, message(alice, "a", txn="x")))
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    # The repeated request must not be told about an event that was never stored.
    for result in results:
        assert isinstance(result, MatrixError), result
    retry = await hs.roomserver.send(room_id, message(alice, "a", txn="x"))
    assert await hs.db.events.get_event(retry.event_id) is not None
    await assert_room_consistent(hs, room_id)


async def test_rooms_progress_independently(hs: Services) -> None:
    users = await register(hs, "alice", "bob", "carol")
    rooms = [await make_room(hs, users[0], *users[1:]) for _ in range(5)]

    async def chat(room_id: str, sender: str) -> list[str]:
        return [(await hs.roomserver.send(room_id, message(sender, f"{room_id} {n}",
                                                          txn=f"{room_id}{n}"))).event_id
                for n in range(30)]

    results = await asyncio.gather(*(chat(r, u) for r in rooms for u in users))
    for index, room_id in enumerate(rooms):
        chain = await assert_room_consistent(hs, room_id)
        mine = [e for per in results[index * 3:index * 3 + 3] for e in per]
        assert sorted(e.event_id for e in chain if e.pdu["type"] == "m.room.message") == \
            sorted(mine)
    # The rooms' events interleave in the server-wide stream.
    orderings = await all_stream_orderings(hs)
    assert orderings == list(range(1, len(orderings) + 1))
    assert hs.notifier.position == orderings[-1]

    # A room whose lock is held does not hold up the others.
    blocked, free = rooms[0], rooms[1]
    async with hs.roomserver._writer.lock(blocked):
        stuck = asyncio.create_task(hs.roomserver.send(blocked, message(users[0], "wait")))
        done = await asyncio.wait_for(hs.roomserver.send(free, message(users[0], "go")), 5)
        assert await hs.db.events.get_event(done.event_id) is not None
        assert not stuck.done()
    await asyncio.wait_for(stuck, 5)
    await assert_room_consistent(hs, blocked)


async def test_notifier_position_follows_commits(hs: Services) -> None:
    (alice,) = await register(hs, "alice")
    room_id = await make_room(hs, alice)
    start = hs.notifier.position
    assert start == (await all_stream_orderings(hs))[-1]
    waiter = asyncio.create_task(hs.notifier.wait_for_change(5))
    await asyncio.sleep(0)
    event = await hs.roomserver.send(room_id, message(alice, "hi"))
    assert await waiter is True
    stored = await hs.db.events.get_event(event.event_id)
    assert stored is not None
    assert hs.notifier.position == stored.stream_ordering == start + 1


# -- authorization --------------------------------------------------------------------------


async def test_auth_failures_raise_forbidden_and_persist_nothing(hs: Services) -> None:
    alice, mallory, bob = await register(hs, "alice", "mallory", "bob")
    room_id = await make_room(hs, alice, bob)
    before = await count_events(hs)
    position = hs.notifier.position

    with pytest.raises(Forbidden):
        await hs.roomserver.send(room_id, message(mallory, "let me in", txn="m1"))
    # A member without the power level for a state event.
    with pytest.raises(Forbidden):
        await hs.roomserver.send(room_id, NewEvent("m.room.power_levels", bob,
                                                  {"users": {bob: 100}}, state_key=""))
    with pytest.raises(Forbidden):
        await asyncio.gather(*(hs.roomserver.send(room_id, message(mallory, str(n)))
                               for n in range(5)))
    await asyncio.sleep(0.05)
    assert await count_events(hs) == before
    assert hs.notifier.position == position
    assert await hs.db.events.event_for_txn(room_id, mallory, "DEV", "m1") is None
    # In a batch, the events before the refused one are created, the rest are not.
    with pytest.raises(Forbidden):
        await hs.roomserver.send_events(room_id, [message(bob, "ok"), message(mallory, "no"),
                                                 message(bob, "never")])
    chain = await assert_room_consistent(hs, room_id)
    assert chain[-1].pdu["content"]["body"] == "ok"
    assert await count_events(hs) == before + 1
    # Nothing was allocated for the refused events: the stream stays gap-free.
    orderings = await all_stream_orderings(hs)
    assert orderings == list(range(1, len(orderings) + 1))
    with pytest.raises(NotFound):
        await hs.roomserver.send("!nowhere:test.local", message(alice, "hi"))


# -- restart --------------------------------------------------------------------------------


async def test_restart_reloads_the_snapshot_and_continues_the_chain(harness: Harness,
                                                                    hs: Services) -> None:
    alice, bob = await register(hs, "alice", "bob")
    room_id = await make_room(hs, alice, bob, name="before", topic="t")
    for n in range(20):
        await hs.roomserver.send(room_id, message(alice if n % 2 else bob, str(n)))
        if n % 5 == 0:
            await hs.roomserver.send(room_id, NewEvent("m.room.name", alice,
                                                      {"name": f"name {n}"}, state_key=""))
    before_chain = await assert_room_consistent(hs, room_id)
    snap = hs.roomserver._writer._rooms[room_id]
    saved = (dict(snap.state), dict(snap.state_nids), snap.state_group,
             [layer.group_id for layer in snap.chain], list(snap.extremities), snap.depth,
             snap.room_version.identifier)
    position = hs.notifier.position

    hs2 = await harness.restart()
    assert hs2.notifier.position == position
    assert await hs2.roomserver.current_state(room_id) == saved[0]
    snap2 = hs2.roomserver._writer._rooms[room_id]
    assert (dict(snap2.state), dict(snap2.state_nids), snap2.state_group,
            [layer.group_id for layer in snap2.chain], list(snap2.extremities), snap2.depth,
            snap2.room_version.identifier) == saved

    msg = await hs2.roomserver.send(room_id, message(bob, "after restart"))
    assert msg.prev_event_ids == [before_chain[-1].event_id]
    assert msg.depth == before_chain[-1].depth + 1
    name = await hs2.roomserver.send(room_id, NewEvent("m.room.name", alice, {"name": "after"},
                                                      state_key=""))
    stored = await hs2.db.events.get_event(name.event_id)
    assert stored is not None
    assert stored.stream_ordering == position + 2
    assert stored.state_group_before == saved[2]
    assert stored.state_group_after != saved[2]
    chain = await assert_room_consistent(hs2, room_id)
    assert [e.event_id for e in chain[:len(before_chain)]] == \
        [e.event_id for e in before_chain]
    assert hs2.notifier.position == position + 2
    # State groups stay compact across the restart: one per state event, chains short.
    for event in chain:
        assert len(await hs2.db.state.chain(event.state_group_after)) <= 4


async def test_restart_then_state_keys_known_from_other_rooms(harness: Harness,
                                                              hs: Services) -> None:
    """After a restart, state keys interned for other rooms (not loaded yet) are reused."""
    alice, bob = await register(hs, "alice", "bob")
    topic_room = await make_room(hs, alice, bob, topic="has a topic")
    plain_room = await make_room(hs, alice)

    hs2 = await harness.restart()
    # A new room: its create event's key exists from the other rooms.
    new_room = await make_room(hs2, alice, bob)
    # A key only the (unloaded) topic room has.
    await hs2.roomserver.send(plain_room, NewEvent("m.room.topic", alice, {"topic": "new"},
                                                  state_key=""))
    # A member key from other rooms.
    await hs2.membership.join(bob, plain_room)
    for room_id in (topic_room, plain_room, new_room):
        await assert_room_consistent(hs2, room_id)


# -- write failures -------------------------------------------------------------------------


async def test_write_failure_fails_waiters_and_next_send_reloads(
        hs: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    users = await register(hs, *[f"user{n}" for n in range(5)])
    room_id = await make_room(hs, users[0], *users[1:])
    good = await hs.roomserver.send(room_id, message(users[0], "before"))
    gate, entered = fail_first_write(hs, monkeypatch, "connection lost")
    queued: list[str] = []
    real_enqueue = hs.roomserver._writer.enqueue

    def recording_enqueue(item: Any) -> Any:
        queued.append(item.event_id)
        return real_enqueue(item)

    monkeypatch.setattr(hs.roomserver._writer, "enqueue", recording_enqueue)
    first = asyncio.create_task(hs.roomserver.send(room_id, message(users[0], "lost 0",
                                                                   txn="lost0")))
    await wait(entered)
    # More senders queue up behind the failing write (built on the lost event).
    rest = [asyncio.create_task(hs.roomserver.send(room_id, message(u, "lost", txn="lost")))
            for u in users[1:]]
    state_change = asyncio.create_task(hs.roomserver.send(room_id, NewEvent(
        "m.room.name", users[0], {"name": "lost"}, state_key="")))
    for _ in range(500):  # every sender has queued its event behind the failing write
        if len(queued) == 6:
            break
        await asyncio.sleep(0.01)
    position = hs.notifier.position
    gate.set()
    results = await asyncio.gather(first, *rest, state_change, return_exceptions=True)
    assert all(isinstance(r, MatrixError) and r.status == 500 for r in results), results
    assert hs.notifier.position == position
    assert await hs.db.events.room_extremities(room_id) == [good.event_id]
    assert await count_events(hs, room_id=room_id, type="m.room.message") == 1
    # The lost events (the failed batch and those queued behind it) are gone everywhere,
    # the persister's cache included.
    assert len(queued) == 6
    assert await hs.db.events.get_events(queued) == {}
    assert await hs.roomserver.get_events(queued) == {}

    # The next send builds on what is stored, not on the lost events.
    after = await hs.roomserver.send(room_id, message(users[1], "after"))
    assert after.prev_event_ids == [good.event_id]
    assert after.depth == (await hs.db.events.get_event(good.event_id)).depth + 1
    # The lost transaction IDs are free again.
    retry = await hs.roomserver.send(room_id, message(users[0], "lost 0", txn="lost0"))
    assert retry.prev_event_ids == [after.event_id]
    name = await hs.roomserver.send(room_id, NewEvent("m.room.name", users[0],
                                                     {"name": "kept"}, state_key=""))
    chain = await assert_room_consistent(hs, room_id)
    assert chain[-1].event_id == name.event_id
    assert hs.notifier.position == chain[-1].stream_ordering


async def test_database_constraint_failure_rolls_back_and_recovers(hs: Services) -> None:
    """A real failure inside the database (a stream ordering already taken) rolls the batch
    back; the room's next event builds on what is stored."""
    alice, bob = await register(hs, "alice", "bob")
    room_id = await make_room(hs, alice, bob)
    other_room = await make_room(hs, bob)
    good = await hs.roomserver.send(room_id, message(alice, "before"))
    taken = hs.roomserver._writer.store._stream.last + 1
    async with hs.db.engine.write() as conn:
        await conn.execute(insert(events_table).values(
            nid=10**9, event_id="$squatter", room_id="!elsewhere:test.local",
            stream_ordering=taken,
            depth=1, type="m.room.message", sender=alice, origin_server_ts=0, received_ts=0,
            json="{}", outlier=True))
    with pytest.raises(MatrixError) as err:
        await hs.roomserver.send_events(room_id, [
            NewEvent("m.room.topic", alice, {"topic": "lost"}, state_key=""),
            message(alice, "lost", txn="lost")])
    assert err.value.status == 500
    assert await hs.db.events.room_extremities(room_id) == [good.event_id]
    assert await hs.db.events.event_for_txn(room_id, alice, "DEV", "lost") is None

    after = await hs.roomserver.send(room_id, NewEvent("m.room.topic", alice,
                                                      {"topic": "kept"}, state_key=""))
    assert after.prev_event_ids == [good.event_id]
    again = await hs.roomserver.send(room_id, message(alice, "kept", txn="lost"))
    assert again.prev_event_ids == [after.event_id]
    await assert_room_consistent(hs, room_id)
    await hs.roomserver.send(other_room, message(bob, "unaffected"))
    await assert_room_consistent(hs, other_room)


async def test_event_built_during_a_failing_write_is_not_stored_on_lost_events(
        hs: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender that took the room's snapshot before a write failed must not build on the
    lost events after it."""
    alice, bob = await register(hs, "alice", "bob")
    room_id = await make_room(hs, alice, bob)
    good = await hs.roomserver.send(room_id, message(alice, "before"))
    fail_gate, txn_gate = asyncio.Event(), asyncio.Event()
    in_write, in_txn_lookup = asyncio.Event(), asyncio.Event()
    real_persist = hs.db.events.persist_batch
    real_txn = hs.db.events.event_for_txn
    real_recent = hs.db.events.recent_txns
    calls = 0

    async def fail_first(items: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            in_write.set()
            await fail_gate.wait()
            raise RuntimeError("connection lost")
        await real_persist(items)

    async def slow_txn(room: str, sender: str, device: str, txn: str) -> str | None:
        if txn == "slow":
            in_txn_lookup.set()
            await txn_gate.wait()
        return await real_txn(room, sender, device, txn)

    async def slow_recent(room: str, sender: str, device: str, limit: int) -> Any:
        if sender == bob:
            in_txn_lookup.set()
            await txn_gate.wait()
        return await real_recent(room, sender, device, limit=limit)

    monkeypatch.setattr(hs.db.events, "persist_batch", fail_first)
    monkeypatch.setattr(hs.db.events, "event_for_txn", slow_txn)
    monkeypatch.setattr(hs.db.events, "recent_txns", slow_recent)
    lost = asyncio.create_task(hs.roomserver.send(room_id, message(alice, "lost")))
    await wait(in_write)
    # Bob's send holds the room's snapshot (with the soon-lost event) while it looks up its
    # transaction ID ...
    late = asyncio.create_task(hs.roomserver.send(room_id, message(bob, "late", txn="slow")))
    await wait(in_txn_lookup)
    # ... the write fails ...
    fail_gate.set()
    with pytest.raises(MatrixError):
        await lost
    # ... and then Bob's event is built.
    txn_gate.set()
    try:
        event = await late
    except MatrixError:
        event = None
    if event is not None:
        stored = await hs.db.events.get_event(event.event_id)
        assert stored is not None
        assert event.prev_event_ids == [good.event_id]
    after = await hs.roomserver.send(room_id, message(alice, "after"))
    chain = await assert_room_consistent(hs, room_id)
    assert chain[-1].event_id == after.event_id


async def test_state_key_first_used_by_a_failed_write_in_another_room(
        harness: Harness, hs: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Room A interns a new state key in a write that fails; room B used the same key in a
    later write meanwhile. B's state must stay readable (now and after a restart)."""
    alice, bob = await register(hs, "alice", "bob")
    room_a = await make_room(hs, alice)
    room_b = await make_room(hs, bob)
    gate, entered = fail_first_write(hs, monkeypatch, "connection lost")
    key = "org.example.new_key"
    lost = asyncio.create_task(hs.roomserver.send(room_a, NewEvent(key, alice, {"v": 1},
                                                                  state_key="")))
    await wait(entered)
    kept = asyncio.create_task(hs.roomserver.send(room_b, NewEvent(key, bob, {"v": 2},
                                                                  state_key="")))
    await asyncio.sleep(0.01)
    gate.set()
    with pytest.raises(MatrixError):
        await lost
    event = await kept
    assert (await hs.db.events.get_event(event.event_id)) is not None
    state = await hs.db.state.state_at_group((await hs.db.events.room_info(room_b))[1])
    assert state[(key, "")] == event.event_id
    await assert_room_consistent(hs, room_b)
    again = await hs.roomserver.send(room_a, NewEvent(key, alice, {"v": 3}, state_key=""))
    await assert_room_consistent(hs, room_a)
    hs2 = await harness.restart()
    for room_id in (room_a, room_b):
        await assert_room_consistent(hs2, room_id)
    assert (await hs2.roomserver.current_state(room_a))[(key, "")] == again.event_id


async def test_evicting_room_snapshots_keeps_queued_events(
        hs: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more rooms than the snapshot cache holds, a room whose events are still being
    written keeps its snapshot: a reload from the database would miss them."""
    from roomserver import writer

    users = await register(hs, "alice", "bob")
    rooms = [await make_room(hs, users[0], users[1]) for _ in range(3)]
    monkeypatch.setattr(writer, "_ROOM_CACHE_SIZE", 1)
    for room_id in rooms[1:]:  # idle rooms that left the cache earlier
        hs.roomserver._writer._rooms.pop(room_id)
    gate = asyncio.Event()
    real = hs.db.events.persist_batch
    entered = asyncio.Event()

    async def slow(items: Any) -> None:
        entered.set()
        await gate.wait()
        await real(items)

    monkeypatch.setattr(hs.db.events, "persist_batch", slow)
    tasks = [asyncio.create_task(hs.roomserver.send(rooms[0], NewEvent(
        "m.room.name", users[0], {"name": "queued"}, state_key="")))]
    await wait(entered)
    tasks.append(asyncio.create_task(hs.roomserver.send(rooms[0], message(users[1], "1"))))
    await asyncio.sleep(0.01)
    # Other rooms are touched meanwhile (each pushes the others out of a 1-room cache).
    for room_id in rooms[1:]:
        tasks.append(asyncio.create_task(hs.roomserver.send(room_id, message(users[0], "x"))))
        await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(hs.roomserver.send(rooms[0], message(users[0], "2"))))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    for room_id in rooms:
        await assert_room_consistent(hs, room_id)
    state = await hs.roomserver.current_state(rooms[0])
    name_id = state[("m.room.name", "")]
    assert (await hs.roomserver.get_events([name_id]))[name_id].content == {"name": "queued"}


async def test_stop_waits_for_queued_events(harness: Harness, hs: Services) -> None:
    (alice,) = await register(hs, "alice")
    room_id = await make_room(hs, alice)
    tasks = [asyncio.create_task(hs.roomserver.send(room_id, message(alice, str(n))))
             for n in range(30)]
    await asyncio.sleep(0)
    hs2 = await harness.restart()
    events = await asyncio.gather(*tasks, return_exceptions=True)
    stored = await hs2.db.events.get_events(e.event_id for e in events
                                            if not isinstance(e, BaseException))
    # Whatever was acknowledged is stored.
    assert len(stored) == sum(1 for e in events if not isinstance(e, BaseException))
    await assert_room_consistent(hs2, room_id)


# -- on the plain `services` fixture (SQLite) -----------------------------------------------


async def test_create_room_and_send_with_services_fixture(services: Services) -> None:
    alice, bob = await register(services, "alice", "bob")
    room_id = await make_room(services, alice, bob)
    events = await asyncio.gather(*(services.rooms.send_message(room_id, message(
        alice if n % 2 else bob, str(n), txn=f"s{n}")) for n in range(40)))
    chain = await assert_room_consistent(services, room_id)
    assert [e.event_id for e in chain[-40:]] == [e.event_id for e in events]
    with pytest.raises(MatrixError):
        await services.rooms.create_room(CreateRoomRequest(creator=alice,
                                                           room_version="nope"))


# -- durability of a killed process ---------------------------------------------------------


async def _login(session: aiohttp.ClientSession, base: str, password: str) -> str:
    async with session.post(f"{base}/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


async def test_acknowledged_events_survive_kill_9(tmp_path: Path) -> None:
    password = "a long enough password"
    port, federation_port = free_port(), free_port()
    data = tmp_path / "data"
    ktchat("generate-config", "--server-name", "localhost", "--data-dir", str(data),
           "--client-port", str(port), "--federation-port", str(federation_port))
    config_path = data / "homeserver.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["rate_limits"] = {"enabled": False}
    config_path.write_text(yaml.safe_dump(config))
    ktchat("register-user", "-c", str(config_path), "--user", "alice", "--password", password)
    base = f"http://127.0.0.1:{port}"

    server = ServerProcess(config_path, tmp_path / "server1.log")
    acknowledged: list[str] = []
    try:
        wait_for_port(port, server.proc)
        async with aiohttp.ClientSession() as session:
            token = await _login(session, base, password)
            auth = {"Authorization": f"Bearer {token}"}
            async with session.post(f"{base}/_matrix/client/v3/createRoom", headers=auth,
                                    json={"name": "durable"}) as resp:
                assert resp.status == 200, await resp.text()
                room_id = (await resp.json())["room_id"]

            async def send(n: int) -> str:
                async with session.put(
                        f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/k{n}",
                        headers=auth, json={"msgtype": "m.text", "body": str(n)}) as resp:
                    assert resp.status == 200, await resp.text()
                    return str((await resp.json())["event_id"])

            acknowledged = list(await asyncio.gather(*(send(n) for n in range(60))))
            # No clean shutdown: the process dies right after the last 200.
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
    finally:
        server.stop()
    assert len(set(acknowledged)) == 60

    server = ServerProcess(config_path, tmp_path / "server2.log")
    try:
        wait_for_port(port, server.proc)
        async with aiohttp.ClientSession() as session:
            # The same access token (so the same device: transaction IDs are per device).
            for event_id in acknowledged:
                async with session.get(
                        f"{base}/_matrix/client/v3/rooms/{room_id}/event/{event_id}",
                        headers=auth) as resp:
                    assert resp.status == 200, (event_id, await resp.text())
                    assert (await resp.json())["event_id"] == event_id
            # The repeated transaction IDs still answer with the same events, and the room
            # goes on after the crash.
            async with session.put(
                    f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/k7",
                    headers=auth, json={"msgtype": "m.text", "body": "7"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["event_id"] == acknowledged[7]
            async with session.put(
                    f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/new",
                    headers=auth, json={"msgtype": "m.text", "body": "new"}) as resp:
                assert resp.status == 200
            async with session.get(
                    f"{base}/_matrix/client/v3/rooms/{room_id}/messages",
                    params={"dir": "b", "limit": "100"}, headers=auth) as resp:
                assert resp.status == 200
                chunk = (await resp.json())["chunk"]
            ids = [e["event_id"] for e in chunk]
            assert set(acknowledged) <= set(ids)
            assert len(ids) == len(set(ids))
    finally:
        server.stop()
    assert "Traceback" not in server.log()
