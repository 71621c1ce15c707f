"""What code outside the roomserver may know of it: the input types, the limits of a PDU, and
narrow Protocols for writing rooms, reading them and hearing of commits.

The roomserver is the one owner of every room's event graph and state. Services and
federation hold these Protocols (given to their constructors by the composition root), never
the roomserver's own classes, and never its tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.stats import Histogram, HitCounter

T = TypeVar("T")

StateKey = tuple[str, str]
"""``(type, state_key)``"""

MAX_PREV_EVENTS = 10
MAX_PDU_BYTES = 65536
# The greatest depth (canonical JSON's greatest integer): a received event may claim it, so
# new events stop growing there instead of becoming unsendable.
MAX_DEPTH = 2**53 - 1

Outcome = Literal["accepted", "soft_failed", "duplicate"]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event a service asks the roomserver to create."""

    type: str
    sender: str
    content: Mapping[str, Any]
    state_key: str | None = None
    redacts: str | None = None
    device_id: str | None = None
    txn_id: str | None = None


class MissingEvents(Exception):
    """Events an event refers to are not stored here (fetch them, then try again)."""

    def __init__(self, event_ids: list[str]) -> None:
        super().__init__(f"missing events: {', '.join(event_ids[:5])}")
        self.event_ids = event_ids


@dataclass(frozen=True, slots=True)
class RoomHead:
    """A copy of a room's current state and head: what a new event would build on."""

    room_id: str
    room_version: RoomVersion
    state: Mapping[StateKey, str]
    extremities: Sequence[str]
    depth: int
    joined: frozenset[str]

    def servers(self) -> set[str]:
        return {user_id.split(":", 1)[1] for user_id in self.joined}


@dataclass(frozen=True, slots=True)
class StoredPdu:
    """An event as stored here (an outlier or a rejected event too), in the form other
    servers are sent it, and where it stands in the room."""

    event_id: str
    room_id: str
    room_version: str
    # As stored: a redacted event's content is pruned only once the redaction's retention
    # period is over (send ``redacted`` events pruned).
    pdu: Mapping[str, Any]
    depth: int
    # None for an outlier, negative for backfilled history.
    stream_ordering: int | None
    redacted: bool
    rejected: bool
    outlier: bool


@dataclass(frozen=True, slots=True)
class CommittedEvent:
    room_id: str
    event_id: str
    type: str
    sender: str
    # Stream position; None for an outlier, negative for backfilled history.
    stream_ordering: int | None
    redacts: str | None
    # (type, state_key, event_id, membership) of the room's current state it changed.
    state_delta: Sequence[tuple[str, str, str, str | None]]
    # The servers it is queued for (the durable outbox rows written with it).
    destinations: Sequence[str]
    # (type, state_key) of the room's current state it removed (a state resolution can drop
    # a key; storage applies these before ``state_delta``).
    state_removed: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """Events that one commit made durable, in the order they were queued."""

    events: Sequence[CommittedEvent] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What the write path has done since start-up (read by the metrics at scrape time)."""

    events_persisted: int
    batch_sizes: Histogram
    commit_seconds: Histogram
    event_cache: HitCounter


class CommitListener(Protocol):
    """Told of every commit, on the event loop, right after it (must not block)."""

    def events_committed(self, batch: CommittedBatch) -> None: ...


class RoomReader(Protocol):
    """Rooms as they stand: events, current state, head, membership across servers."""

    async def get_events(self, event_ids: list[str]) -> dict[str, Event]:
        """Accepted events by ID (rejected and unknown ones left out)."""
        ...

    async def current_state(self, room_id: str) -> dict[StateKey, str] | None:
        """The room's current state; None for an unknown room."""
        ...

    async def room_version(self, room_id: str) -> RoomVersion | None: ...

    async def room_head(self, room_id: str) -> RoomHead | None: ...

    async def state_content(self, room_id: str, key: StateKey) -> Mapping[str, Any] | None:
        """The content of one entry of the room's current state."""
        ...

    async def server_allowed(self, room_id: str, server_name: str) -> bool:
        """Whether the room's server ACL lets ``server_name`` take part."""
        ...

    async def joined_servers(self, room_id: str) -> set[str]: ...

    async def check_against_current(self, event: Event) -> None:
        """Raises ``AuthError`` unless ``event`` passes the rules on the current state."""
        ...

    async def auth_chain(self, event_ids: list[str]) -> list[Event]:
        """The events' auth chain, oldest first."""
        ...

    async def is_stored(self, event_ids: list[str]) -> set[str]:
        """Which of the events are stored or queued here (accepted, outlier, soft-failed)."""
        ...

    async def stored_pdus(self, event_ids: Iterable[str]) -> dict[str, StoredPdu]:
        """Events by ID as stored, outliers and rejected ones too (unknown ones left out)."""
        ...

    async def state_before(self, event_ids: Iterable[str], *,
                           only: Sequence[StateKey] | None = None
                           ) -> dict[str, Mapping[StateKey, str]]:
        """The state before each of the events, or only its keys ``only``; events with no
        state known before them (outliers) and unknown events are left out."""
        ...

    async def members_before(self, event_ids: Iterable[str], server_name: str
                             ) -> dict[str, Mapping[str, str]]:
        """The member events (user ID -> event ID) of ``server_name``'s users in the state
        before each of the events; outliers and unknown events are left out."""
        ...

    async def backfill_points(self, room_id: str) -> tuple[list[str], int | None]:
        """Where the room's history here begins: the prev events of its earliest timeline
        events that are not in its timeline (to ask other servers for), and the state group
        before the earliest (for ``RemoteEventWriter.backfill_queued``)."""
        ...

    async def joined_rooms(self, user_id: str) -> list[str]:
        """The rooms the user is joined to (current state)."""
        ...


class RoomWriter(Protocol):
    """The one write path for room events: local ones built here, remote ones received."""

    async def create_room(self, room_version: RoomVersion, creator: str,
                          create_content: Mapping[str, Any], *, room_id: str | None = None,
                          initial: Sequence[NewEvent] = ()) -> Event: ...

    async def send(self, room_id: str, new: NewEvent) -> Event: ...

    async def send_events(self, room_id: str, news: list[NewEvent]) -> list[Event]: ...

    async def build(self, room_id: str, new: NewEvent) -> Event:
        """Build, sign and authorize without storing (an invite the invitee signs first)."""
        ...

    async def store_built(self, event: Event) -> None:
        """Store an event made by ``build`` once another server has signed it too (an
        invite); it passes the same checks as any received event."""
        ...

    async def remove_room(self, room_id: str, delete: Callable[[], Awaitable[T]]) -> T:
        """Run ``delete`` once the room's queued events are written, nothing new built
        meanwhile; the roomserver forgets what it cached of the room."""
        ...


class RemoteEventWriter(Protocol):
    """What federation stores: received events, remote state, history from elsewhere."""

    async def receive(self, event: Event, *, relay_except: str | None = None) -> Outcome: ...

    async def receive_queued(self, event: Event, *, relay_except: str | None = None,
                             known_absent: bool = False,
                             prev_states: Mapping[str, Mapping[StateKey, str]] | None = None
                             ) -> tuple[Outcome, asyncio.Future[None] | None]:
        """``prev_states``: the state after prev events not in the room's graph here (a gap
        not filled), as another server told it; the state before the event is resolved from
        those and the states after its known prev events."""
        ...

    async def committed(self, future: asyncio.Future[None], room_id: str) -> None: ...

    async def store_outliers(self, events: list[Event]) -> None: ...

    async def join_remote_room(self, join: Event, state: list[Event],
                               auth_chain: list[Event]) -> None: ...

    async def store_remote_membership(self, event: Event,
                                      stripped_state: list[Any] | None) -> None: ...

    def reserve_backfill(self, count: int) -> list[int]: ...

    async def backfill_queued(self, event: Event, position: int, state_group: int | None
                              ) -> asyncio.Future[None] | None: ...


class EventErasure(Protocol):
    """Rewriting and deleting stored events: erasing redacted content, dropping the content of
    history nobody can see, purging. The roomserver writes the event tables and drops what
    it and storage have cached of the events; the caller forgets what it cached itself."""

    async def erase_redacted_content(self, pruned: Mapping[str, str]) -> None:
        """Store redacted events in their pruned form (event ID -> canonical JSON) and mark
        their redactions done."""
        ...

    async def drop_history_content(self, room_id: str, pruned: Mapping[str, str],
                                   up_to: tuple[int, int]) -> None:
        """Store events of the room in their pruned form (event ID -> canonical JSON), take
        them out of the search index, and move the room's dropped point to ``up_to`` (depth,
        stream ordering)."""
        ...

    async def purge_events(self, nids_and_ids: Sequence[tuple[int, str]]) -> None:
        """Delete events (``(nid, event ID)``) with their edges, redaction records and search
        entries (a history purge)."""
        ...

    def deleted_elsewhere(self, room_id: str, event_ids: Iterable[str]) -> None:
        """Another process (the writer) deleted these events of the room (a purge, the room's
        removal): forget what this process cached of them and of the room."""
        ...


class LocalRooms(RoomReader, RoomWriter, Protocol):
    """What the client-facing services use: reading rooms and writing local events."""


class FederatedRooms(RoomReader, RemoteEventWriter, Protocol):
    """What federation uses: reading rooms and storing what other servers send."""
