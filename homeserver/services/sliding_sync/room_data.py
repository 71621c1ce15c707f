"""The ``rooms`` section of a sliding sync response, built for the chosen rooms together:
their timelines in one query per window, their state in one query, their events in one
load, summaries and unread counts in one call each — a handful of queries for 20 rooms or
200. What each room carries follows Synapse's ``get_room_sync_data``: a room new to the
connection (or newly joined) comes whole (``initial``), a room it has comes as what changed
since the position it has (its timeline, the state deltas its ``required_state`` asks
for, the lazy members it has not sent yet).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.clock import Clock
from core.events.stripped import STRIPPED_STATE_TYPES, stripped
from homeserver.services.ignored_users import hidden_by
from homeserver.services.messages import make_token
from homeserver.services.push import PushEvaluator, UnreadCounts
from homeserver.services.receipts import ReceiptService
from homeserver.services.serialize import EventSerializer
from homeserver.services.sliding_sync.cache import SlidingSyncCache
from homeserver.services.sliding_sync.connection import (
    LIVE,
    PREVIOUSLY,
    ConnectionState,
)
from homeserver.services.sliding_sync.request import LAZY, ME, WILDCARD, RoomConfig
from homeserver.services.sliding_sync.room_list import Membership
from homeserver.services.visibility import VisibilityService
from storage.stores.events import EventStore, StoredEvent
from storage.stores.sliding_sync import BUMP_TYPES, SlidingSyncStore
from storage.stores.state import StateStore
from storage.stores.sync import SyncStore

MAX_HEROES = 5
UNREAD_WAIT_S = 0.05
MEMBER = "m.room.member"
NAME = ("m.room.name", "")
AVATAR = ("m.room.avatar", "")
StateKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RoomDataSources:
    sync: SyncStore
    store: SlidingSyncStore
    events: EventStore
    state: StateStore
    visibility: VisibilityService
    serializer: EventSerializer
    unread: UnreadCounts
    push: PushEvaluator
    receipts: ReceiptService
    clock: Clock
    cache: SlidingSyncCache


@dataclass(slots=True)
class _Room:
    """One room's plan while the response is built."""

    room_id: str
    config: RoomConfig
    member: Membership
    initial: bool
    # Events after this position are new to the connection (None: all are).
    since: int | None
    up_to: int
    expanded: bool = False
    newly_left: bool = False
    timeline: list[StoredEvent] = field(default_factory=list)
    limited: bool | None = None
    deltas: dict[StateKey, str] = field(default_factory=dict)
    state: dict[StateKey, str] = field(default_factory=dict)
    lazy_users: set[str] = field(default_factory=set)


def _wanted(config: RoomConfig, user_id: str) -> tuple[bool, set[str], set[StateKey], bool]:
    """``required_state`` as (every state event?, types with any key, exact keys, lazy
    members?) — ``*`` as a type means everything, as in Synapse."""
    types: set[str] = set()
    pairs: set[StateKey] = set()
    lazy = False
    everything = False
    for type_, key in config.required_state:
        if type_ == WILDCARD:
            everything = True
        elif key == WILDCARD:
            types.add(type_)
        elif type_ == MEMBER and key == LAZY:
            lazy = True
        else:
            pairs.add((type_, user_id if key == ME else key))
    return everything, types, pairs, lazy


def _matches(key: StateKey, everything: bool, types: set[str], pairs: set[StateKey],
             lazy_users: set[str]) -> bool:
    return everything or key[0] in types or key in pairs or (
        key[0] == MEMBER and key[1] in lazy_users)


class RoomDataBuilder:
    def __init__(self, sources: RoomDataSources, user_id: str, device_id: str | None,
                 since: int | None, up_to: int, previous: ConnectionState,
                 new: ConnectionState, ignored: frozenset[str], bump_stamps: dict[str, int],
                 counts_changed: set[str]) -> None:
        self.s = sources
        self.user_id = user_id
        self.device_id = device_id
        self.since = since
        self.up_to = up_to
        self.previous = previous
        self.new = new
        self.ignored = ignored
        # Room -> bump stamp (worked out with the room list).
        self.bump_stamps = bump_stamps
        # Rooms whose unread counts changed with nothing else (the user read on).
        self.counts_changed = counts_changed

    async def build(self, configs: dict[str, RoomConfig], members: dict[str, Membership],
                    dms: frozenset[str], changed: set[str]) -> dict[str, dict[str, Any]]:
        """Room -> its entry, for the rooms that have something for the client (all of them
        on a new connection). ``changed``: rooms that may have news since ``since``."""
        plans = await self._plans(configs, members, changed)
        if not plans:
            return {}
        await self._timelines(plans)
        await self._state(plans)
        return await self._render(plans, dms)

    # -- what each room needs ---------------------------------------------------------------

    async def _plans(self, configs: dict[str, RoomConfig], members: dict[str, Membership],
                     changed: set[str]) -> list[_Room]:
        newly_joined = await self._newly_joined(
            [m for r, m in members.items() if r in configs and m.membership == "join"])
        plans = []
        for room_id, config in configs.items():
            member = members[room_id]
            up_to = self.up_to if member.membership not in ("leave", "ban") \
                else min(member.position, self.up_to)
            status, last = self.previous.rooms.status(room_id)
            previous_config = self.previous.room_configs.get(room_id)
            initial, since = True, None
            if self.since is not None and room_id not in newly_joined:
                if status == LIVE:
                    initial, since = False, self.since
                elif status == PREVIOUSLY:
                    initial, since = False, last
            plan = _Room(room_id, config, member, initial, since, up_to)
            plan.newly_left = member.membership in ("leave", "ban") and \
                self.since is not None and member.position > self.since
            if not initial and previous_config is not None and \
                    previous_config.timeline_limit < config.timeline_limit:
                plan.expanded = True
            same = previous_config == config
            if not initial and same and status == LIVE and room_id not in changed \
                    and not plan.newly_left:
                # Nothing new, asked for as before: nothing to build.
                self._keep_config(plan, previous_config)
                continue
            plans.append(plan)
        return plans

    async def _newly_joined(self, joined: list[Membership]) -> set[str]:
        """Rooms the user joined after ``since`` (a profile change is not a join)."""
        if self.since is None:
            return set()
        recent = [m for m in joined if m.position > self.since]
        before = await self.s.events.get_events(
            m.event.replaces_state for m in recent if m.event and m.event.replaces_state)
        out = set()
        for m in recent:
            prev = before.get((m.event.replaces_state if m.event else None) or "")
            if prev is None or (prev.pdu.get("content") or {}).get("membership") != "join" \
                    or (prev.stream_ordering or 0) > self.since:
                out.add(m.room_id)
        return out

    async def _timelines(self, plans: list[_Room]) -> None:
        windows: dict[tuple[int, int, int], list[_Room]] = {}
        for plan in plans:
            if plan.config.timeline_limit <= 0 or plan.member.membership in ("invite", "knock"):
                continue
            after = 0 if plan.since is None or plan.expanded else plan.since
            windows.setdefault((after, plan.up_to, plan.config.timeline_limit), []).append(plan)
        ids: dict[str, list[str]] = {}
        for (after, up_to, limit), group in windows.items():
            ids.update(await self.s.cache.latest_event_ids(
                [p.room_id for p in group], after=after, up_to=up_to, limit=limit + 1))
        loaded = await self.s.events.get_events(e for v in ids.values() for e in v)
        for (_, _, limit), group in windows.items():
            for plan in group:
                events = [loaded[e] for e in ids.get(plan.room_id, []) if e in loaded]
                plan.limited = len(events) > limit
                events = events[-limit:]
                plan.timeline = await self._visible(plan, events)

    async def _visible(self, plan: _Room, events: list[StoredEvent]) -> list[StoredEvent]:
        """What the user may see of the timeline: everything after their current membership
        event when joined; the history visibility rules for the rest."""
        visibility = self.s.visibility
        events = await visibility.not_cleared(self.user_id, plan.room_id, events)
        if plan.member.membership == "join":
            start = plan.member.position
            before = [e for e in events if (e.stream_ordering or 0) < start]
            allowed = {e.event_id for e in await visibility.filter_for_user(
                self.user_id, before)} if before else set()
            events = [e for e in events if (e.stream_ordering or 0) >= start
                      or e.event_id in allowed]
        else:
            events = await visibility.filter_for_user(self.user_id, events)
        return [e for e in events if not hidden_by(self.ignored, e.pdu)]

    async def _state(self, plans: list[_Room]) -> None:
        """Each room's state IDs: the whole ``required_state`` for initial rooms (and for
        rooms whose ``required_state`` changed), the deltas it asks for and the lazy
        members not sent yet for the others; the name and avatar for initial rooms."""
        incremental = {p.room_id: (p.since or 0, p.up_to) for p in plans
                       if not p.initial and p.member.membership not in ("invite", "knock")}
        deltas = await self.s.store.state_changes(incremental) if incremental else {}
        fetch: list[tuple[_Room, bool, set[str], set[StateKey]]] = []
        for plan in plans:
            if plan.member.membership in ("invite", "knock"):
                continue
            everything, types, pairs, lazy = _wanted(plan.config, self.user_id)
            senders: set[str] = set()
            if lazy:
                for event in plan.timeline:
                    senders.add(str(event.pdu.get("sender")))
                    if event.pdu.get("type") == MEMBER:
                        senders.add(str(event.pdu.get("state_key")))
            plan.deltas = deltas.get(plan.room_id, {})
            previous_config = self.previous.room_configs.get(plan.room_id)
            whole = plan.initial or (previous_config is not None
                                     and previous_config.required_state
                                     != plan.config.required_state)
            if whole:
                plan.lazy_users = senders
                pairs = pairs | {(MEMBER, u) for u in senders}
                if plan.initial:
                    pairs |= {NAME, AVATAR}
                fetch.append((plan, everything, types, pairs))
                continue
            # What changed that it asks for (every member change when lazy loading), and
            # the timeline senders' member events it has not had yet.
            for key, event_id in plan.deltas.items():
                if _matches(key, everything, types, pairs, senders) or (
                        lazy and key[0] == MEMBER):
                    plan.state[key] = event_id
            sent = self.previous.lazy_members.get(plan.room_id, frozenset())
            plan.lazy_users = senders - sent
            missing = {(MEMBER, u) for u in plan.lazy_users} - plan.state.keys()
            if missing:
                fetch.append((plan, False, set(), missing))
        joined = [f for f in fetch if f[0].member.membership not in ("leave", "ban")]
        if joined:
            current = await self.s.cache.current_state_ids(
                [f[0].room_id for f in joined], all_types=any(f[1] for f in joined),
                types=sorted({t for f in joined for t in f[2]}),
                pairs=sorted({k for f in joined for k in f[3]}))
            for plan, everything, types, pairs in joined:
                self._take(plan, current[plan.room_id], everything, types, pairs)
        for plan, everything, types, pairs in fetch:
            if plan.member.membership in ("leave", "ban"):
                # A room left: its state as it was at the leave.
                group = plan.member.event.state_group_after if plan.member.event else None
                state = await self.s.state.state_at_group(group) if group is not None else {}
                self._take(plan, dict(state), everything, types, pairs)

    @staticmethod
    def _take(plan: _Room, state: dict[StateKey, str], everything: bool, types: set[str],
              pairs: set[StateKey]) -> None:
        for key, event_id in state.items():
            if plan.initial and key in (NAME, AVATAR):
                plan.deltas.setdefault(key, event_id)
            meta = key in (NAME, AVATAR) and not _asked(plan, key)
            if everything or key[0] in types or (key in pairs and not meta):
                plan.state[key] = event_id


    # -- the wire form -------------------------------------------------------------------

    async def _render(self, plans: list[_Room], dms: frozenset[str]
                      ) -> dict[str, dict[str, Any]]:
        summaries = await self.s.cache.room_summaries(
            [p.room_id for p in plans if p.member.membership == "join" and (
                p.initial or any(k[0] == MEMBER for k in p.deltas))],
            self.user_id, heroes=MAX_HEROES)
        meta_ids = [e for p in plans for k, e in p.deltas.items() if k in (NAME, AVATAR)]
        hero_ids = await self._hero_members(plans, summaries)
        state_events = await self.s.events.get_events(
            [*(e for p in plans for e in p.state.values()), *meta_ids, *hero_ids.values()])
        unread = await self._unread([p for p in plans if p.member.membership == "join"])
        timeline_json = await self._serialize(e for p in plans for e in p.timeline)
        state_json = await self._serialize(state_events[e] for p in plans
                                           for e in p.state.values() if e in state_events)
        out: dict[str, dict[str, Any]] = {}
        for plan in plans:
            room: dict[str, Any] = {}
            counts = unread.get(plan.room_id, (0, 0))
            room["notification_count"], room["highlight_count"] = counts
            bump = self._bump_stamp(plan)
            if bump is not None:
                room["bump_stamp"] = bump
            summary = summaries.get(plan.room_id)
            if summary is not None:
                room["joined_count"] = summary.joined
                room["invited_count"] = summary.invited
            name = self._content(state_events, plan.deltas.get(NAME), "name")
            if name:
                room["name"] = name
            avatar = self._content(state_events, plan.deltas.get(AVATAR), "url")
            if avatar:
                room["avatar"] = avatar
            if not name and summary is not None and summary.heroes:
                room["heroes"] = [self._hero(u, state_events.get(hero_ids.get((plan.room_id,
                                                                                u), "")))
                                  for u in summary.heroes]
            if plan.initial:
                room["initial"] = True
            if plan.expanded:
                room["unstable_expanded_timeline"] = True
            state = [state_json[e] for e in plan.state.values() if e in state_json]
            if state:
                room["required_state"] = state
            timeline = [timeline_json[e.event_id] for e in plan.timeline
                        if e.event_id in timeline_json]
            if timeline:
                room["timeline"] = timeline
            if plan.limited is not None:
                room["limited"] = plan.limited
                room["prev_batch"] = self._prev_batch(plan)
                room["num_live"] = 0 if self.since is None else sum(
                    1 for _ in _live(plan.timeline, self.since))
            if plan.room_id in dms:
                room["is_dm"] = True
            if plan.member.membership in ("invite", "knock"):
                room["invite_state"] = await self._stripped_state(plan)
                if plan.initial:
                    _name_from_stripped(room)
            self._record(plan)
            if plan.initial or self.since is None or timeline or state or name or avatar \
                    or summary is not None or plan.expanded or "invite_state" in room \
                    or plan.room_id in self.counts_changed:
                out[plan.room_id] = room
        return out

    async def _serialize(self, events: Iterable[StoredEvent]) -> dict[str, dict[str, Any]]:
        events = list(events)
        if not events:
            return {}
        serialized = await self.s.serializer.serialize(
            events, requester_device=self.device_id, requester_user=self.user_id,
            now=self.s.clock.time_ms())
        out = {}
        for event in serialized:
            event.pop("room_id", None)
            out[event["event_id"]] = event
        return out

    async def _hero_members(self, plans: list[_Room], summaries: dict[str, Any]
                            ) -> dict[tuple[str, str], str]:
        pairs = [(MEMBER, u) for p in plans if p.room_id in summaries
                 for u in summaries[p.room_id].heroes]
        rooms = [p.room_id for p in plans if p.room_id in summaries
                 and summaries[p.room_id].heroes]
        if not rooms:
            return {}
        current = await self.s.cache.current_state_ids(rooms, all_types=False, types=[],
                                                       pairs=pairs)
        return {(r, k[1]): e for r, state in current.items() for k, e in state.items()}

    @staticmethod
    def _hero(user_id: str, event: StoredEvent | None) -> dict[str, Any]:
        hero: dict[str, Any] = {"user_id": user_id}
        content = (event.pdu.get("content") or {}) if event is not None else {}
        if isinstance(content.get("displayname"), str):
            hero["displayname"] = content["displayname"]
        if isinstance(content.get("avatar_url"), str):
            hero["avatar_url"] = content["avatar_url"]
        return hero

    @staticmethod
    def _content(events: dict[str, StoredEvent], event_id: str | None, key: str
                 ) -> str | None:
        event = events.get(event_id or "")
        value = (event.pdu.get("content") or {}).get(key) if event is not None else None
        return value if isinstance(value, str) else None

    def _bump_stamp(self, plan: _Room) -> int | None:
        """Synapse's rule: the latest bump event in the timeline; else, when the room is new,
        limited or not joined, the room's bump stamp (the list's, or the membership's
        position); else none (nothing moved it)."""
        for event in reversed(plan.timeline):
            if event.pdu.get("type") in BUMP_TYPES and (event.stream_ordering or 0) > 0:
                return event.stream_ordering
        if plan.member.membership != "join" or plan.limited is not False or plan.initial:
            return self.bump_stamps.get(plan.room_id) or plan.member.position
        return None

    def _prev_batch(self, plan: _Room) -> str:
        if plan.timeline:
            first = plan.timeline[0]
            return make_token(first.depth, (first.stream_ordering or 0) - 1)
        return make_token(2**62, plan.up_to)

    async def _unread(self, plans: list[_Room]) -> dict[str, tuple[int, int]]:
        if not plans:
            return {}
        rooms = [p.room_id for p in plans]
        read = await self.s.receipts.read_positions(self.user_id, rooms)
        starts = {p.room_id: max(read.get(p.room_id, 0), p.member.position) for p in plans}
        # Counts wait a moment for push rule evaluation to reach these rooms' newest events
        # (evaluation goes in stream order: the counts of a room are final once it has
        # passed the room's newest event, whatever other rooms' events it is still on), not
        # the seconds a catch-up after a restart can take (the room list must be fast).
        await self.s.push.wait_for(self.s.cache.newest_positions(rooms, self.up_to),
                                   UNREAD_WAIT_S, quiet=True)
        counts, _ = await self.s.unread.counts(self.user_id, starts, threads=False)
        return counts

    async def _stripped_state(self, plan: _Room) -> list[dict[str, Any]]:
        member = plan.member.event
        assert member is not None
        remote = await self.s.sync.invite_state(member.event_id)
        if remote is not None:  # a room on another server: what its invite came with
            return [*remote, stripped(member.pdu)]
        info = await self.s.events.room_info(plan.room_id)
        # The inviter's member event too, as Synapse's stripped state has it.
        state = await self.s.state.state_at_group(
            (info or ("", None))[1], only=[*((t, "") for t in STRIPPED_STATE_TYPES),
                                           (MEMBER, str(member.pdu.get("sender")))])
        loaded = await self.s.events.get_events(state.values())
        return [*(stripped(loaded[e].pdu) for e in state.values() if e in loaded),
                stripped(member.pdu)]

    def _record(self, plan: _Room) -> None:
        """What the connection now has of the room: its config and lazy members."""
        previous = self.previous.room_configs.get(plan.room_id)
        self._keep_config(plan, previous)
        if plan.lazy_users or plan.initial:
            had = frozenset() if plan.initial else \
                self.previous.lazy_members.get(plan.room_id, frozenset())
            self.new.lazy_members[plan.room_id] = had | plan.lazy_users

    def _keep_config(self, plan: _Room, previous: RoomConfig | None) -> None:
        """Synapse's rule: a larger timeline limit is remembered at once, a smaller one
        only once a limited timeline was sent with it; required_state as asked."""
        config = plan.config
        if previous is not None and config.timeline_limit < previous.timeline_limit \
                and not plan.limited:
            config = RoomConfig(previous.timeline_limit, config.required_state)
        self.new.room_configs[plan.room_id] = config


def _live(timeline: list[StoredEvent], since: int) -> Iterable[StoredEvent]:
    """The timeline's events after ``since``, newest first, up to the first older one."""
    for event in reversed(timeline):
        if (event.stream_ordering or 0) > since:
            yield event
        else:
            return


def _asked(plan: _Room, key: StateKey) -> bool:
    """Whether the room's ``required_state`` asks for this name/avatar key itself (they are
    also read for the room's ``name`` and ``avatar``)."""
    return key in plan.config.required_state or (key[0], WILDCARD) in \
        plan.config.required_state or any(t == WILDCARD for t, _ in plan.config.required_state)


def _name_from_stripped(room: dict[str, Any]) -> None:
    """An invite's name and avatar, from the stripped state it came with."""
    for event in room["invite_state"]:
        content = event.get("content") if isinstance(event, dict) else None
        if not isinstance(content, dict) or event.get("state_key") != "":
            continue
        if event.get("type") == "m.room.name" and isinstance(content.get("name"), str) \
                and content["name"]:
            room["name"] = content["name"]
        if event.get("type") == "m.room.avatar" and isinstance(content.get("url"), str) \
                and content["url"]:
            room["avatar"] = content["url"]
