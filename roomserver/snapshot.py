"""A room as the writer sees it, and the transaction IDs already used in it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.events.room_versions import RoomVersion
from roomserver.api import RoomHead, StateKey
from storage.delta_map import as_dict
from storage.state_layers import Layer
from storage.stores.events import EventStore


@dataclass(slots=True)
class RoomSnapshot:
    """A room's current state and head as the writer sees them (ahead of the database
    while a batch is being written)."""

    room_id: str
    room_version: RoomVersion
    # Immutable once placed (``DeltaMap``: each state event derives the next from the change).
    state: Mapping[StateKey, str]
    state_nids: Mapping[int, int]
    state_group: int | None
    chain: list[Layer]
    extremities: list[str]
    depth: int
    # Joined members, so each new event knows which servers it goes to.
    joined: set[str] = field(default_factory=set)
    # The state group after each forward extremity (for resolving the state of forks);
    # an extremity missing here is read from the database.
    extremity_groups: dict[str, int | None] = field(default_factory=dict)
    # Joined members per server, kept with ``joined`` (``join``/``leave``), so routing an
    # event costs nothing per member.
    _servers: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for user_id in self.joined:
            server = user_id.partition(":")[2]
            self._servers[server] = self._servers.get(server, 0) + 1

    def join(self, user_id: str) -> None:
        if user_id not in self.joined:
            self.joined.add(user_id)
            server = user_id.partition(":")[2]
            self._servers[server] = self._servers.get(server, 0) + 1

    def leave(self, user_id: str) -> None:
        if user_id in self.joined:
            self.joined.discard(user_id)
            server = user_id.partition(":")[2]
            left = self._servers.pop(server) - 1
            if left:
                self._servers[server] = left

    def servers(self) -> set[str]:
        return set(self._servers)

    def head(self) -> RoomHead:
        return RoomHead(self.room_id, self.room_version, as_dict(self.state),
                        tuple(self.extremities), self.depth, frozenset(self.joined))


TxnKey = tuple[str, str, str, str]
"""(room_id, sender, device_id, txn_id)"""


class TxnIndex:
    """Transaction IDs already used, so a repeated send returns the first event.

    Each (room, sender, device) loads its recent transaction IDs from the database once, then
    is kept in memory (new ones are added as events are queued); only a device with more
    than ``PER_DEVICE`` of them in one room falls back to a database lookup on a miss.
    """

    PER_DEVICE = 5_000
    DEVICES = 20_000

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._devices: OrderedDict[tuple[str, str, str], tuple[OrderedDict[str, str], bool]] = \
            OrderedDict()

    async def lookup(self, key: TxnKey) -> str | None:
        device = key[:3]
        entry = self._devices.get(device)
        if entry is None:
            recent = await self._store.recent_txns(*device, limit=self.PER_DEVICE + 1)
            entry = (OrderedDict(recent), len(recent) <= self.PER_DEVICE)
            self._devices[device] = entry
            if len(self._devices) > self.DEVICES:
                self._devices.popitem(last=False)
        self._devices.move_to_end(device)
        txns, complete = entry
        found = txns.get(key[3])
        if found is not None or complete:
            return found
        return await self._store.event_for_txn(*key)

    def add(self, key: TxnKey, event_id: str) -> None:
        device = key[:3]
        entry = self._devices.get(device)
        if entry is None:
            return  # never looked up: the next lookup loads it from the database
        txns, _complete = entry
        txns[key[3]] = event_id
        if len(txns) > self.PER_DEVICE:
            txns.popitem(last=False)
            self._devices[device] = (txns, False)

    def forget_room(self, room_id: str) -> None:
        for device in [d for d in self._devices if d[0] == room_id]:
            del self._devices[device]
