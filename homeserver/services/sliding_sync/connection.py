"""Per-connection state of simplified sliding sync, as Synapse keeps it
(``PerConnectionState``, ``HaveSentRoomFlag``): for each room, whether the connection has
everything up to the last response (LIVE), everything up to an older position
(PREVIOUSLY), or nothing (NEVER); the timeline limit and required state it was sent with;
the members lazy loading has sent; the same sent/unsent status for receipts and room
account data.

Kept in memory in this process, keyed by (user, device, conn_id): a bounded LRU of
connections, each with its last few positions, forgotten after a day unused. A ``pos``
names a connection position; one that is unknown (never given, expired, evicted, or from
before a restart) is ``400 M_UNKNOWN_POS``, and the client starts the connection again.
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field

from cachetools import LRUCache

from core.errors import MatrixError
from homeserver.services.sliding_sync.request import RoomConfig
from homeserver.services.sync_token import SyncToken

LIVE = "live"
PREVIOUSLY = "previously"
NEVER = "never"


class UnknownPos(MatrixError):
    status = 400
    errcode = "M_UNKNOWN_POS"

    def __init__(self, message: str = "Unknown position") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Pos:
    """``pos``: a connection position and the stream positions the response went up to."""

    connection: int
    stream: SyncToken

    def encode(self) -> str:
        return f"{self.connection}/{self.stream.encode()}"

    @classmethod
    def parse(cls, text: str) -> Pos:
        connection, sep, stream = text.partition("/")
        try:
            if not sep or not connection.isdigit():
                raise ValueError(text)
            return cls(int(connection), SyncToken.parse(stream))
        except (ValueError, MatrixError):
            raise UnknownPos("Unknown or malformed position") from None


@dataclass(slots=True)
class RoomStatuses:
    """Room -> (LIVE | PREVIOUSLY, position): what a connection has of each room's stream
    (NEVER is absence)."""

    statuses: dict[str, tuple[str, int]] = field(default_factory=dict)

    def status(self, room_id: str) -> tuple[str, int]:
        return self.statuses.get(room_id, (NEVER, 0))

    def copy(self) -> RoomStatuses:
        return RoomStatuses(dict(self.statuses))

    def record_sent(self, room_ids: object) -> None:
        for room_id in room_ids:  # type: ignore[attr-defined]
            self.statuses[room_id] = (LIVE, 0)

    def record_unsent(self, room_ids: object, since: int) -> None:
        """These rooms had updates that were not sent: a LIVE room now has everything only
        up to ``since``; PREVIOUSLY and NEVER stay as they are."""
        for room_id in room_ids:  # type: ignore[attr-defined]
            if self.statuses.get(room_id, (NEVER, 0))[0] == LIVE:
                self.statuses[room_id] = (PREVIOUSLY, since)


@dataclass(slots=True)
class ConnectionState:
    """What one position of a connection has been sent."""

    rooms: RoomStatuses = field(default_factory=RoomStatuses)
    receipts: RoomStatuses = field(default_factory=RoomStatuses)
    account_data: RoomStatuses = field(default_factory=RoomStatuses)
    room_configs: dict[str, RoomConfig] = field(default_factory=dict)
    # Room -> the users whose member events lazy loading has sent.
    lazy_members: dict[str, frozenset[str]] = field(default_factory=dict)
    # The room subscriptions in force (until ``unsubscribe_rooms`` names them).
    subscriptions: dict[str, RoomConfig] = field(default_factory=dict)

    def copy(self) -> ConnectionState:
        return ConnectionState(self.rooms.copy(), self.receipts.copy(),
                               self.account_data.copy(), dict(self.room_configs),
                               dict(self.lazy_members), dict(self.subscriptions))


@dataclass(slots=True)
class _Connection:
    positions: dict[int, ConnectionState]
    used: float


class ConnectionStore:
    """The connections of this process (bounded; see the module's docstring)."""

    CONNECTIONS = 5_000
    PER_DEVICE = 10
    POSITIONS = 4
    EXPIRY_S = 24 * 3600

    def __init__(self) -> None:
        self._connections: LRUCache[tuple[str, str, str], _Connection] = \
            LRUCache(self.CONNECTIONS)
        # Position numbers, unique across this process's connections (so no connection
        # takes another's position for its own) and unlikely to repeat after a restart.
        self._numbers = itertools.count(secrets.randbelow(1 << 40) + 1)
        self._by_device: dict[tuple[str, str], list[str]] = {}

    def get(self, user_id: str, device_id: str, conn_id: str, pos: Pos | None
            ) -> ConnectionState:
        """The state the position names (empty for a new connection); drops the positions
        before it (the client has moved on from them)."""
        key = (user_id, device_id, conn_id)
        if pos is None or pos.connection == 0:
            return ConnectionState()
        connection = self._connections.get(key)
        now = time.monotonic()
        if connection is None or now - connection.used > self.EXPIRY_S:
            self._connections.pop(key, None)
            raise UnknownPos()
        state = connection.positions.get(pos.connection)
        if state is None:
            raise UnknownPos()
        for old in [p for p in connection.positions if p < pos.connection]:
            del connection.positions[old]
        connection.used = now
        return state

    def put(self, user_id: str, device_id: str, conn_id: str, previous: Pos | None,
            state: ConnectionState) -> int:
        """Keep a new position of the connection; its number. A request without ``pos``
        starts the connection over."""
        key = (user_id, device_id, conn_id)
        connection = self._connections.get(key)
        if previous is None or previous.connection == 0 or connection is None:
            connection = _Connection({}, time.monotonic())
            self._connections[key] = connection
            self._limit_device(user_id, device_id, conn_id)
        number = next(self._numbers)
        connection.positions[number] = state
        connection.used = time.monotonic()
        while len(connection.positions) > self.POSITIONS:
            del connection.positions[min(connection.positions)]
        return number

    def _limit_device(self, user_id: str, device_id: str, conn_id: str) -> None:
        """At most PER_DEVICE connections per device: the least recently started go."""
        device = (user_id, device_id)
        conns = [c for c in self._by_device.get(device, [])
                 if c != conn_id and (user_id, device_id, c) in self._connections]
        conns.append(conn_id)
        while len(conns) > self.PER_DEVICE:
            self._connections.pop((user_id, device_id, conns.pop(0)), None)
        self._by_device[device] = conns
        if len(self._by_device) > self.CONNECTIONS:
            self._by_device.pop(next(iter(self._by_device)))
