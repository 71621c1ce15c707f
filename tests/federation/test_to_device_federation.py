"""Send-to-device messages between two KT-Chat servers (real processes, TLS on loopback):
alice@A to bob@B's device, and back to all of alice's devices, through ``m.direct_to_device``
EDUs; each arrives once, in order, in the recipient's ``/sync``."""

# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.helpers.federation import FedPair, User, q

# Sync only what these tests look at: no rooms, no presence.
NO_ROOMS = {"room": {"rooms": []}, "presence": {"types": []}, "account_data": {"types": []}}


async def send_to_device(user: User, event_type: str, messages: dict[str, Any]) -> None:
    path = f"/sendToDevice/{q(event_type)}/{uuid.uuid4().hex}"
    assert await user.request("PUT", path, {"messages": messages}) == {}


async def to_device_token(user: User) -> str:
    """A sync position from which only new to-device messages come (the older ones
    acknowledged)."""
    body = await user.sync(filter=NO_ROOMS)
    body = await user.sync(body["next_batch"], filter=NO_ROOMS)
    return str(body["next_batch"])


async def collect(user: User, since: str, count: int, timeout: float = 30
                  ) -> tuple[list[dict[str, Any]], str]:
    """Long-poll ``/sync`` from ``since`` until ``count`` to-device messages came; returns
    them and the position after them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    events: list[dict[str, Any]] = []
    while len(events) < count:
        remaining = deadline - loop.time()
        assert remaining > 0, f"{user.user_id} got {len(events)} of {count}: {events}"
        body = await user.sync(since, int(min(remaining, 5) * 1000), filter=NO_ROOMS)
        events += body["to_device"]["events"]
        since = body["next_batch"]
    return events, since


async def test_to_device_both_ways(fed_pair: FedPair) -> None:
    await both_ways(fed_pair)


async def test_to_device_both_ways_postgres(fed_pair_pg: FedPair) -> None:
    """The same with B on PostgreSQL."""
    await both_ways(fed_pair_pg)


async def both_ways(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    tag = uuid.uuid4().hex[:8]
    bob_since = await to_device_token(bob)
    alice_since = await to_device_token(alice)

    # alice@A -> bob@B, one device, several messages in order.
    for n in range(3):
        await send_to_device(alice, "m.room.encrypted",
                             {bob.user_id: {bob.device_id: {"tag": tag, "n": n}}})
    events, bob_since = await collect(bob, bob_since, 3)
    assert events == [{"sender": alice.user_id, "type": "m.room.encrypted",
                       "content": {"tag": tag, "n": n}} for n in range(3)]

    # bob@B -> every device of alice@A (a second one logged in for it).
    alice2 = await fed_pair.a.login(alice.localpart, alice.password)
    alice2_since = await to_device_token(alice2)
    await send_to_device(bob, "org.example.reply", {alice.user_id: {"*": {"tag": tag}}})
    for user, since in ((alice, alice_since), (alice2, alice2_since)):
        got, _ = await collect(user, since, 1)
        assert got == [{"sender": bob.user_id, "type": "org.example.reply",
                        "content": {"tag": tag}}]

    # Delivered once: nothing more comes for bob after what he has acknowledged.
    body = await bob.sync(bob_since, 1000, filter=NO_ROOMS)
    assert body["to_device"]["events"] == []
