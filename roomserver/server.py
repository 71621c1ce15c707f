"""The roomserver as one object, built by the composition root: it implements the Protocols of
:mod:`roomserver.api` by handing each call to the step that owns it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from signedjson.types import SigningKey

from core.clock import Clock
from core.events.model import Event
from core.events.room_versions import RoomVersion
from roomserver.api import (
    CommitListener,
    CommittedBatch,
    NewEvent,
    Outcome,
    RoomHead,
    StateKey,
    StoredPdu,
    WriteStats,
)
from roomserver.extremities import ExtremityMerger
from roomserver.local import LocalEvents
from roomserver.placement import Placer
from roomserver.reads import RoomReads
from roomserver.receive import ReceivedEvents
from roomserver.remote_state import RemoteState
from roomserver.state import ForkState
from roomserver.store import GraphStore
from roomserver.writer import Writer
from storage import Database

T = TypeVar("T")


class RoomServer:
    def __init__(self, db: Database, clock: Clock, server_name: str,
                 signing_key: SigningKey, *, federates: bool = True) -> None:
        store = self._store = GraphStore(db)
        self._writer = Writer(store, clock)
        forks = ForkState(store)
        placer = Placer(store, forks, server_name, federates=federates)
        self._local = LocalEvents(self._writer, placer, server_name, signing_key)
        self._merger = ExtremityMerger(self._writer, self._local, clock, server_name)
        self._received = ReceivedEvents(self._writer, placer, forks)
        self._remote = RemoteState(self._writer, placer, self._received)
        self._reads = RoomReads(self._writer, self._received)

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._writer.add_listener(listener)

    def write_stats(self) -> WriteStats:
        writer = self._writer
        return WriteStats(writer.events_persisted, writer.batch_sizes, writer.commit_seconds,
                          self._store.cache_stats)

    async def start(self, *, writes: bool = True) -> int:
        """Start the commit loop; returns the last stream position written. ``writes``
        False: this process only reads rooms (a worker: another process writes them, and
        ``forget_rooms`` is called as it commits)."""
        position = await self._writer.start(loop=writes)
        if writes:
            self._merger.start()
        return position

    def forget_all_rooms(self) -> None:
        """Another process may have written any room (a worker that missed messages)."""
        self._writer.forget_rooms(self._writer.cached_rooms())

    def committed_elsewhere(self, batch: CommittedBatch) -> None:
        """Another process (the writer) committed ``batch``: what is cached here of its
        rooms and of the events it redacts is out of date; this process's commit listeners
        hear of it as of a commit here."""
        self._writer.forget_rooms({e.room_id for e in batch.events})
        redacted = [e.redacts for e in batch.events if e.redacts is not None]
        if redacted:
            self._store.forget_events(redacted)
            self._store.db.events.forget_cached(redacted)
        self._writer.announce(batch)

    async def stop(self) -> None:
        await self._merger.stop()
        await self._writer.stop()

    async def merge_wide_rooms(self) -> int:
        """Merge the forward extremities of rooms that forked too wide (done every minute
        while running; tests call it)."""
        return await self._merger.merge_wide_rooms()

    # -- RoomWriter -------------------------------------------------------------------------

    async def create_room(self, room_version: RoomVersion, creator: str,
                          create_content: Mapping[str, Any], *, room_id: str | None = None,
                          initial: Sequence[NewEvent] = ()) -> Event:
        return await self._local.create_room(room_version, creator, create_content,
                                             room_id=room_id, initial=initial)

    async def send(self, room_id: str, new: NewEvent) -> Event:
        return (await self._local.send_events(room_id, [new]))[0]

    async def send_events(self, room_id: str, news: list[NewEvent]) -> list[Event]:
        return await self._local.send_events(room_id, news)

    async def build(self, room_id: str, new: NewEvent) -> Event:
        return await self._local.build(room_id, new)

    async def store_built(self, event: Event) -> None:
        await self._received.receive(event)

    async def remove_room(self, room_id: str, delete: Callable[[], Awaitable[T]]) -> T:
        self._reads.forget_room(room_id)
        return await self._writer.remove_room(room_id, delete)

    # -- EventErasure -----------------------------------------------------------------------

    async def erase_redacted_content(self, pruned: Mapping[str, str]) -> None:
        await self._store.erase_redacted(pruned)

    async def drop_history_content(self, room_id: str, pruned: Mapping[str, str],
                                   up_to: tuple[int, int]) -> None:
        await self._store.drop_content(room_id, pruned, up_to)

    async def purge_events(self, nids_and_ids: Sequence[tuple[int, str]]) -> None:
        await self._store.delete_events(nids_and_ids)

    def deleted_elsewhere(self, room_id: str, event_ids: Iterable[str]) -> None:
        event_ids = list(event_ids)
        self._store.forget_events(event_ids)
        self._store.db.events.forget_cached(event_ids)
        self._writer.forget_rooms({room_id})
        self._reads.forget_room(room_id)

    # -- RemoteEventWriter ------------------------------------------------------------------

    async def receive(self, event: Event, *, relay_except: str | None = None) -> Outcome:
        return await self._received.receive(event, relay_except=relay_except)

    async def receive_queued(self, event: Event, *, relay_except: str | None = None,
                             known_absent: bool = False,
                             prev_states: Mapping[str, Mapping[StateKey, str]] | None = None
                             ) -> tuple[Outcome, asyncio.Future[None] | None]:
        return await self._received.receive_queued(event, relay_except=relay_except,
                                                   known_absent=known_absent,
                                                   prev_states=prev_states)

    async def committed(self, future: asyncio.Future[None], room_id: str) -> None:
        await self._writer.committed(future, room_id)

    async def store_outliers(self, events: list[Event]) -> None:
        await self._remote.store_outliers(events)

    async def join_remote_room(self, join: Event, state: list[Event], auth_chain: list[Event]
                               ) -> None:
        await self._remote.join_remote_room(join, state, auth_chain)

    async def store_remote_membership(self, event: Event, stripped_state: list[Any] | None
                                      ) -> None:
        await self._remote.store_remote_membership(event, stripped_state)

    def reserve_backfill(self, count: int) -> list[int]:
        return self._remote.reserve_backfill(count)

    async def backfill_queued(self, event: Event, position: int, state_group: int | None
                              ) -> asyncio.Future[None] | None:
        return await self._remote.backfill_queued(event, position, state_group)

    # -- RoomReader -------------------------------------------------------------------------

    async def get_events(self, event_ids: list[str]) -> dict[str, Event]:
        return await self._reads.get_events(event_ids)

    async def current_state(self, room_id: str) -> dict[StateKey, str] | None:
        return await self._reads.current_state(room_id)

    async def room_version(self, room_id: str) -> RoomVersion | None:
        return await self._reads.room_version(room_id)

    async def room_head(self, room_id: str) -> RoomHead | None:
        return await self._reads.room_head(room_id)

    async def state_content(self, room_id: str, key: StateKey) -> Mapping[str, Any] | None:
        return await self._reads.state_content(room_id, key)

    async def server_allowed(self, room_id: str, server_name: str) -> bool:
        return await self._reads.server_allowed(room_id, server_name)

    async def joined_servers(self, room_id: str) -> set[str]:
        return await self._reads.joined_servers(room_id)

    async def check_against_current(self, event: Event) -> None:
        await self._reads.check_against_current(event)

    async def auth_chain(self, event_ids: list[str]) -> list[Event]:
        return await self._reads.auth_chain(event_ids)

    async def is_stored(self, event_ids: list[str]) -> set[str]:
        return await self._reads.is_stored(event_ids)

    async def stored_pdus(self, event_ids: Iterable[str]) -> dict[str, StoredPdu]:
        return await self._reads.stored_pdus(event_ids)

    async def state_before(self, event_ids: Iterable[str], *,
                           only: Sequence[StateKey] | None = None
                           ) -> dict[str, Mapping[StateKey, str]]:
        return await self._reads.state_before(event_ids, only=only)

    async def members_before(self, event_ids: Iterable[str], server_name: str
                             ) -> dict[str, Mapping[str, str]]:
        return await self._reads.members_before(event_ids, server_name)

    async def backfill_points(self, room_id: str) -> tuple[list[str], int | None]:
        return await self._reads.backfill_points(room_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return await self._reads.joined_rooms(user_id)
