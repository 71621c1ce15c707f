"""Events other servers send (and events built here that another server signed): the checks
on receipt that need the room (spec, server-server API, "Checks performed on receipt of a
PDU", 4 to 6), then their place in the room.

4. against its own auth events; 5. against the state before it (state resolution of its prev
events' states); 6. against the room's current state: an event that fails only this one is
soft-failed, stored but neither in the timeline nor in the state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from core.errors import NotFound
from core.events.model import Event
from core.rooms.auth import (
    AuthError,
    auth_types_for_event,
    check_auth_events,
    check_auth_rules,
    create_event_id_for_room,
)
from core.rooms.power_levels import PowerLevels
from roomserver.api import MissingEvents, Outcome, StateKey
from roomserver.placement import Placer
from roomserver.state import ForkState
from roomserver.writer import Writer

logger = logging.getLogger(__name__)


class ReceivedEvents:
    def __init__(self, writer: Writer, placer: Placer, forks: ForkState) -> None:
        self._writer = writer
        self._store = writer.store
        self._placer = placer
        self._forks = forks

    async def receive(self, event: Event, *, relay_except: str | None = None) -> Outcome:
        """``receive_queued``, answering once the event is committed."""
        outcome, future = await self.receive_queued(event, relay_except=relay_except)
        if future is not None:
            await self._writer.committed(future, event.room_id)
        return outcome

    async def receive_queued(self, event: Event, *, relay_except: str | None = None,
                             known_absent: bool = False,
                             prev_states: Mapping[str, Mapping[StateKey, str]] | None = None
                             ) -> tuple[Outcome, asyncio.Future[None] | None]:
        """Store an event another server sent; returns what became of it and, when it is
        queued, the future of its commit (so a transaction of many events waits for one
        commit, not one each).

        Its auth events must be stored already (fetch them first, see ``store_outliers``).
        ``known_absent``: the caller has just found the event not stored (one query for a
        whole transaction); only what this process queued or cached since is checked.
        ``prev_states``: the state after prev events not in the graph here (from another
        server's ``/state_ids``), for the state before the event.

        Returns:
            ``"accepted"``, ``"soft_failed"`` or ``"duplicate"``, and the commit's future.

        Raises:
            NotFound: the room is unknown here.
            MissingEvents: some of its auth events are not stored.
            AuthError: it fails the authorization rules (nothing is stored).
        """
        async with self._writer.lock(event.room_id):
            snapshot = await self._writer.snapshot(event.room_id)
            if snapshot is None or not snapshot.state:
                raise NotFound("Unknown room")
            queued = self._writer.queued(event.event_id)
            if self._store.cached(event.event_id) or queued is not None or (
                    not known_absent and await self.is_stored([event.event_id])):
                return "duplicate", queued
            create = await self.auth_against_auth_events(event)
            before = await self._forks.before(snapshot, event, prev_states or {})
            auth_state = await self.state_events(before.state, event)
            check_auth_rules(event, auth_state, create_event=create)
            soft_failed = False
            if not before.is_current:
                try:
                    check_auth_rules(event, await self.state_events(snapshot.state, event),
                                     create_event=create)
                except AuthError as e:
                    logger.info("Soft-failing %s: %s", event.event_id, e)
                    soft_failed = True
            now = self._writer.clock.time_ms()
            if soft_failed:
                item = self._store.outlier_item(event, now)
            else:
                try:
                    item = await self._placer.received(snapshot, event, before, now,
                                                       relay_except=relay_except)
                except BaseException:
                    self._store.forget_events([event.event_id])  # cached for resolving
                    raise
                if event.redacts is not None and create is not None:
                    item.redacts, item.redaction_requires = await self.redaction_scope(
                        event, auth_state, create)
            future = self._writer.enqueue(item)
        return ("soft_failed" if soft_failed else "accepted"), future

    async def is_stored(self, event_ids: list[str]) -> set[str]:
        """Which of the events are stored or queued here (accepted, outlier or soft-failed)."""
        known = {e for e in event_ids
                 if self._store.cached(e) or self._writer.queued(e) is not None}
        rest = [e for e in event_ids if e not in known]
        if rest:
            known |= set(await self._store.db.events.get_events(rest))
        return known

    async def redaction_scope(self, event: Event, auth_state: Mapping[StateKey, Event],
                              create: Event) -> tuple[str | None, str | None]:
        """What a received redaction redacts, and what applying it still requires
        (``PersistItem.redaction_requires``). Spec (rooms v3+, "Handling redactions"): it
        applies to an event of its room if its sender has the redact power level or is on
        the same server as the event's sender; otherwise it stays in the timeline but
        redacts nothing (``(None, None)``)."""
        levels = PowerLevels.from_state(auth_state, create)
        may_redact_any = levels.user_level(event.sender) >= levels.redact_level
        redacts = event.redacts
        target = (await self._store.get_events([redacts])).get(redacts) if redacts else None
        if target is None:
            return redacts, "*" if may_redact_any else event.sender.split(":", 1)[1]
        same_server = target.sender.split(":", 1)[1] == event.sender.split(":", 1)[1]
        if target.room_id == event.room_id and (may_redact_any or same_server):
            return redacts, None
        logger.info("Redaction %s may not redact %s: kept, not applied", event.event_id,
                    redacts)
        return None, None

    async def auth_against_auth_events(self, event: Event) -> Event | None:
        """Check 4: the rules against the event's own auth events; returns the create
        event."""
        wanted = list(event.auth_event_ids)
        create_id = create_event_id_for_room(event.room_id) \
            if event.room_version.room_id_is_create_event_hash else None
        if create_id is not None:
            wanted.append(create_id)
        loaded = await self._store.get_events(wanted)
        missing = [e for e in wanted if e not in loaded]
        if missing:
            raise MissingEvents(missing)
        auth_map = check_auth_events(event, [loaded[e] for e in event.auth_event_ids])
        create = loaded[create_id] if create_id is not None else auth_map.get(("m.room.create",
                                                                                ""))
        check_auth_rules(event, auth_map, create_event=create)
        return create

    async def state_events(self, state: Mapping[StateKey, str], event: Event
                           ) -> dict[StateKey, Event]:
        """The state entries the rules read for ``event``, loaded."""
        keys = auth_types_for_event(event.room_version, event.type, event.state_key,
                                    event.sender, event.content)
        keys.add(("m.room.create", ""))
        ids = {k: state[k] for k in keys if k in state}
        loaded = await self._store.get_events(list(ids.values()))
        return {k: loaded[e] for k, e in ids.items() if e in loaded}
