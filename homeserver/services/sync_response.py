"""Building one /sync response
(https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync) from stream
positions: ``since`` (what the client has) and ``now`` (what is committed). Rooms are read in
batches — the latest events of every room in one query — so a sync over many rooms costs a
handful of queries; the recent events, receipts, unread counts and memberships come from
memory where they can.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cachetools import LRUCache

from core.clock import Clock
from core.events.stripped import STRIPPED_STATE_TYPES, stripped
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.filtering import SyncFilter
from homeserver.services.ignored_users import (
    IGNORED_USER_LIST,
    NOBODY,
    IgnoredUsers,
    hidden_by,
)
from homeserver.services.member_cache import MembershipCache
from homeserver.services.messages import make_token
from homeserver.services.notifier import Notifier
from homeserver.services.presence import PresenceService
from homeserver.services.push import UnreadCounts
from homeserver.services.receipts import ReceiptService
from homeserver.services.serialize import EventSerializer
from homeserver.services.sync_token import SyncToken
from homeserver.services.to_device import ToDeviceService
from homeserver.services.typing import TypingService
from homeserver.services.visibility import VisibilityService
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import RoomStore
from storage.stores.state import StateMap, StateStore
from storage.stores.sync import MembershipChange, RoomSummary, SyncStore

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 500
MAX_HEROES = 5


class SentMembers:
    """Which member events each device has been sent, so lazy-loading incremental syncs do not
    repeat them (the spec lets a server resend; it should not). Bounded: forgetting only means
    a member event is sent again."""

    DEVICES = 4096
    PER_DEVICE = 20_000

    def __init__(self) -> None:
        self._by_device: LRUCache[tuple[str, str | None],
                                  dict[tuple[str, str], tuple[str, int]]] = \
            LRUCache(self.DEVICES)

    def reset(self, user_id: str, device_id: str | None) -> None:
        self._by_device.pop((user_id, device_id), None)

    def sent(self, user_id: str, device_id: str | None
             ) -> dict[tuple[str, str], tuple[str, int]]:
        """(room, member) -> (member event ID, next_batch position of the response that
        carried it) for the device (live: add to it)."""
        key = (user_id, device_id)
        entry = self._by_device.get(key)
        if entry is None or len(entry) > self.PER_DEVICE:
            entry = self._by_device[key] = {}
        return entry


@dataclass(frozen=True, slots=True)
class SyncSources:
    """What a response is built from: the stores and services a sync reads, and the state
    the sync service keeps between requests."""

    store: SyncStore
    events: EventStore
    state: StateStore
    account_data: AccountDataStore
    rooms: RoomStore
    notifier: Notifier
    serializer: EventSerializer
    visibility: VisibilityService
    members: MembershipCache
    typing: TypingService
    receipts: ReceiptService
    presence: PresenceService
    clock: Clock
    to_device: ToDeviceService
    keys: E2EKeyService
    unread: UnreadCounts
    sent_members: SentMembers
    # Member event -> position of the join it continues (a profile change is a join event).
    join_starts: LRUCache[str, int]
    ignored: IgnoredUsers

    def followed(self, memberships: dict[str, tuple[str, str]], sync_filter: SyncFilter
                 ) -> tuple[list[str], list[str]]:
        """The rooms whose events a sync with this filter follows, and those whose members'
        presence it follows (what its long poll waits on)."""
        joined = [r for r, (m, _) in memberships.items() if m == "join"]
        presence_rooms = joined if self.presence.enabled and \
            sync_filter.presence.allows_type("m.presence") else []
        return [r for r in joined if sync_filter.room_allowed(r)], presence_rooms


class ResponseBuilder:
    """Builds one response; holds the request's parameters so helpers stay small."""

    def __init__(self, sources: SyncSources, user_id: str, device_id: str | None,
                 since: SyncToken | None, now: SyncToken, full_state: bool,
                 sync_filter: SyncFilter, complete: bool = False) -> None:
        self.s = sources
        self.complete = complete
        self.user_id = user_id
        self.device_id = device_id
        self.since = since
        self.now = now
        self.full_state = full_state
        self.filter = sync_filter
        # An explicit limit of 0 means no timeline events (state only), not the default.
        self.limit = min(DEFAULT_TIMELINE_LIMIT if sync_filter.timeline.limit is None
                         else sync_filter.timeline.limit, MAX_TIMELINE_LIMIT)
        # Room -> stream position of the user's current join there.
        self.joined_at: dict[str, int] = {}
        # Joined rooms the client gets whole in this response (new to it).
        self.initial_rooms: set[str] = set()
        # Whom the user ignores, and whether that changed since ``since``.
        self.ignored = NOBODY
        self.ignore_changed = False

    async def build(self) -> tuple[dict[str, Any], list[str], list[str]]:
        if self.since is None or self.full_state:
            # The client starts over: whatever it was sent before is gone with its cache.
            self.s.sent_members.reset(self.user_id, self.device_id)
        memberships = await self.s.members.memberships(self.user_id)
        self.ignored = await self.s.ignored.of(self.user_id)
        if self.complete and self.since is not None and self.limit:
            memberships = await self._cut_where_complete(memberships)
        changes: list[MembershipChange] = []
        if self.since is not None and self.s.notifier.membership_changed_since(
                self.user_id, self.since.events):
            changes = await self.s.store.membership_changes(self.user_id, self.since.events,
                                                             self.now.events)
        changed = {c.room_id: c for c in changes}
        forgotten = await self.s.rooms.forgotten_rooms(self.user_id) if any(
            m in ("leave", "ban") for m, _ in memberships.values()) else set()
        account = await self._account_data()

        joined = [r for r, (m, _) in memberships.items()
                  if m == "join" and self.filter.room_allowed(r)]
        rooms: dict[str, Any] = {"join": {}, "invite": {}, "leave": {}, "knock": {}}
        joins = await self.s.events.get_events([memberships[r][1] for r in joined])
        self.joined_at = await self._join_starts(
            {r: joins[memberships[r][1]] for r in joined if memberships[r][1] in joins})
        rooms["join"] = await self._joined_rooms(joined, changes, account["rooms"])
        inviters = await self._ignored_inviters(memberships, changed)
        for room_id, (membership, event_id) in memberships.items():
            if not self.filter.room_allowed(room_id):
                continue
            is_new = self.since is None or room_id in changed
            if membership == "invite" and is_new and event_id not in inviters:
                rooms["invite"][room_id] = {"invite_state": {
                    "events": await self._stripped_state(room_id, event_id)}}
            elif membership == "knock" and is_new:
                rooms["knock"][room_id] = {"knock_state": {
                    "events": await self._stripped_state(room_id, event_id)}}
            elif membership in ("leave", "ban") and room_id not in forgotten:
                if (self.since is None and self.filter.include_leave) or \
                        (self.since is not None and room_id in changed):
                    rooms["leave"][room_id] = await self._left_room(room_id, event_id)
        to_device, to_device_position = await self._to_device()
        changed_users, left_users = await self.s.keys.device_list_changes(
            self.user_id, self.since, self.now) if self.since is not None else ([], [])
        response = {
            "next_batch": (self.now if to_device_position == self.now.to_device else
                           replace(self.now, to_device=to_device_position)).encode(),
            "rooms": rooms,
            "account_data": {"events": account["global"]},
            "presence": {"events": await self._presence(joined)},
            "to_device": {"events": to_device},
            "device_lists": {"changed": changed_users, "left": left_users},
            # Filled in by the sync service for every response.
            "device_one_time_keys_count": {},
            "device_unused_fallback_key_types": [],
        }
        return response, *self.s.followed(memberships, self.filter)

    async def _ignored_inviters(self, memberships: dict[str, tuple[str, str]],
                                changed: dict[str, MembershipChange]) -> set[str]:
        """The invites this response would carry that come from users this one ignores
        (left out, as in Synapse)."""
        if not self.ignored:
            return set()
        invites = await self.s.events.get_events(
            e for r, (m, e) in memberships.items()
            if m == "invite" and (self.since is None or r in changed))
        return {e for e, event in invites.items() if event.pdu.get("sender") in self.ignored}

    async def _cut_where_complete(self, memberships: dict[str, tuple[str, str]]
                                  ) -> dict[str, tuple[str, str]]:
        """Complete mode: end this response's event window where no room has more events
        in it than the timeline limit (at the limit-th event after ``since`` of the busiest
        room); returns the memberships as they were there."""
        assert self.since is not None
        since, up_to = self.since.events, self.now.events
        # The rooms whose events this response may carry: those the user is in, and those
        # whose membership of theirs changed since `since`.
        moved: set[str] = set()
        if self.s.notifier.membership_changed_since(self.user_id, since):
            moved = {c.room_id for c in await self.s.store.membership_changes(
                self.user_id, since, up_to)}
        rooms = [r for r, (m, _) in memberships.items() if self.filter.room_allowed(r)
                 and (m == "join" or r in moved)
                 and self.s.notifier.room_changed_since(r, since)]
        if not rooms:
            return memberships
        cut = up_to
        recent = self.s.notifier.recent
        missing = []
        for room_id in rooms:
            position = recent.overflow_position(room_id, since, up_to, self.limit)
            if position is False:
                missing.append(room_id)
            elif position is not None:
                cut = min(cut, position)
        if missing:
            cut = min([cut, *(await self.s.store.overflow_positions(
                missing, after=since, up_to=up_to, limit=self.limit)).values()])
        if cut == up_to:
            return memberships
        self.now = replace(self.now, events=cut)
        if not self.s.notifier.membership_changed_since(self.user_id, cut):
            return memberships
        # The user's own membership changed after the cut: what it was there is what the
        # first change after it replaced.
        later = await self.s.store.membership_changes(self.user_id, cut, up_to)
        first_after: dict[str, str] = {}
        for change in later:
            first_after.setdefault(change.room_id, change.event_id)
        changed = await self.s.events.get_events(first_after.values())
        replaced = await self.s.events.get_events(
            e.replaces_state for e in changed.values() if e.replaces_state)
        at_cut = dict(memberships)
        for room_id, event_id in first_after.items():
            event = changed.get(event_id)
            before = replaced.get(event.replaces_state or "") if event is not None else None
            if before is None:
                at_cut.pop(room_id, None)
            else:
                at_cut[room_id] = (str((before.pdu.get("content") or {}).get("membership")),
                                   before.event_id)
        return at_cut

    # -- to-device messages -----------------------------------------------------------------

    async def _to_device(self) -> tuple[list[dict[str, Any]], int]:
        """The device's send-to-device messages (acknowledging those up to ``since``) and the
        to-device position of next_batch (short of ``now`` when more are waiting)."""
        if self.device_id is None:
            return [], self.now.to_device
        return await self.s.to_device.for_sync(
            self.user_id, self.device_id,
            since=self.since.to_device if self.since is not None else None,
            up_to=self.now.to_device)

    # -- account data ---------------------------------------------------------------------

    async def _account_data(self) -> dict[str, Any]:
        after = self.since.account_data if self.since and not self.full_state else 0
        if self.since is not None and not self.full_state and \
                not self.s.notifier.account_data_changed_since(self.user_id, after):
            return {"global": [], "rooms": {}}
        entries = await self.s.account_data.since(self.user_id, after)
        self.ignore_changed = any(not r and t == IGNORED_USER_LIST for r, t, _ in entries)
        global_events = [{"type": t, "content": c} for r, t, c in entries
                         if not r and self.filter.account_data.matches({"type": t})]
        per_room: dict[str, list[dict[str, Any]]] = {}
        for room_id, type_, content in entries:
            if room_id and self.filter.room_account_data.matches({"type": type_,
                                                                  "room_id": room_id}):
                per_room.setdefault(room_id, []).append({"type": type_, "content": content})
        return {"global": global_events, "rooms": per_room}

    # -- joined rooms -----------------------------------------------------------------------

    async def _joined_rooms(self, joined: list[str], changes: list[MembershipChange],
                            room_account_data: dict[str, list[dict[str, Any]]]
                            ) -> dict[str, Any]:
        newly_joined = {c.room_id for c in changes if c.membership == "join"}
        if self.since is None:
            initial = set(joined)
            incremental: list[str] = []
        else:
            initial = {r for r in joined if r in newly_joined
                       and not await self._was_joined_at_since(r)}
            if self.ignore_changed and not self.complete:
                initial |= await self._rooms_of_changed_ignores(joined)
            # full_state: every room's whole state, but the timeline still starts at since.
            incremental = [r for r in joined if r not in initial and (
                self.full_state or self.s.notifier.room_changed_since(r, self.since.events))]
        self.initial_rooms = initial
        ephemeral = await self._ephemeral(joined, initial)
        latest = await self.s.store.latest_event_ids(
            sorted(initial), after=0, up_to=self.now.events, limit=self.limit + 1)
        if incremental and self.since is not None:
            # Most rooms' recent events are in memory; the rest come from one query.
            recent = self.s.notifier.recent
            missing = []
            for room_id in incremental:
                ids = recent.events_between(room_id, self.since.events, self.now.events,
                                            self.limit + 1)
                if ids is None:
                    missing.append(room_id)
                else:
                    latest[room_id] = ids
            if missing:
                latest.update(await self.s.store.latest_event_ids(
                    missing, after=self.since.events, up_to=self.now.events,
                    limit=self.limit + 1))
        loaded = await self.s.events.get_events(e for ids in latest.values() for e in ids)
        # Summaries where they can have changed: new rooms, gaps, and new member events.
        summaries = await self.s.store.room_summaries(
            [r for r in joined if r in initial or self.full_state
             or len(latest.get(r, ())) > self.limit
             or any(e in loaded and loaded[e].pdu.get("type") == "m.room.member"
                    for e in latest.get(r, ()))], self.user_id, heroes=MAX_HEROES)
        # Work out every room's timeline and state first, then load all the state events in
        # one query, so a sync over many rooms costs a handful of queries, not a few per room.
        await self.s.state.prefetch_chains(
            _start_group([loaded[e] for e in ids[-self.limit:] if e in loaded])
            for ids in latest.values() if ids and self.limit)
        plans = []
        for room_id in joined:
            ids = latest.get(room_id, [])
            account = room_account_data.get(room_id, [])
            if room_id not in initial and not ids and not account and not self.full_state \
                    and room_id not in ephemeral:
                continue
            timeline_events = [loaded[e] for e in ids if e in loaded]
            limited = len(timeline_events) > self.limit
            timeline_events = timeline_events[-self.limit:] if self.limit else []
            timeline_events, limited = await self._cut_cleared(room_id, timeline_events,
                                                               limited)
            summary = summaries.get(room_id)
            state_ids = await self._room_state_ids(
                room_id, timeline_events, room_id in initial or self.full_state, limited,
                heroes=summary.heroes if summary else ())
            plans.append((room_id, timeline_events, limited, summary, state_ids, account))
        state_events = await self.s.events.get_events(
            [e for plan in plans for e in plan[4]])
        unread, unread_threads = await self._unread_counts([plan[0] for plan in plans])
        out: dict[str, Any] = {}
        for room_id, timeline_events, limited, summary, state_ids, account in plans:
            visible = await self._visible(room_id, timeline_events)
            timeline = [e for e in visible if self.filter.timeline.matches(e.pdu)
                        and not hidden_by(self.ignored, e.pdu)]
            state = [state_events[e] for e in state_ids if e in state_events
                     and self.filter.state.matches(state_events[e].pdu)]
            if not timeline and not state and not account and room_id not in initial \
                    and not self.full_state and room_id not in ephemeral and visible and \
                    all(hidden_by(self.ignored, e.pdu) for e in visible):
                continue  # only events of ignored users: nothing to tell the client
            self._sent_members(room_id, state, timeline)
            out[room_id] = {
                "timeline": {
                    "events": await self._client_events(timeline),
                    "limited": limited,
                    "prev_batch": self._prev_batch(timeline_events),
                },
                "state": {"events": await self._client_events(state)},
                "ephemeral": {"events": ephemeral.get(room_id, [])},
                "account_data": {"events": account},
                "unread_notifications": {"notification_count": unread[room_id][0],
                                         "highlight_count": unread[room_id][1]},
            }
            if self.filter.unread_thread_notifications:
                out[room_id]["unread_thread_notifications"] = {
                    thread: {"notification_count": n, "highlight_count": h}
                    for thread, (n, h) in unread_threads.get(room_id, {}).items()}
            if summary is not None:
                out[room_id]["summary"] = _summary(summary)
        return out

    async def _ephemeral(self, joined: list[str], initial: set[str]
                         ) -> dict[str, list[dict[str, Any]]]:
        """Room -> its ephemeral events for this response: who is typing (when that changed,
        or the room is new to the client) and the receipts it has not seen."""
        typing, receipts = self.s.typing, self.s.receipts
        if self.since is None:
            typing_rooms = [r for r in joined if typing.typing_users(r)]
            receipt_content = await receipts.ephemeral(self.user_id, joined, 0,
                                                       self.now.receipts)
        else:
            since = self.since
            typing_rooms = [r for r in joined if typing.room_changed_since(r, since.typing)
                            or (r in initial and typing.typing_users(r))]
            changed = receipts.rooms_changed_since(
                self.user_id, [r for r in joined if r not in initial], since.receipts)
            receipt_content = await receipts.ephemeral(self.user_id, sorted(changed),
                                                       since.receipts, self.now.receipts)
            if initial:
                receipt_content.update(await receipts.ephemeral(
                    self.user_id, sorted(initial), 0, self.now.receipts))
        out: dict[str, list[dict[str, Any]]] = {}
        wanted = self.filter.ephemeral
        for room_id in typing_rooms:
            if wanted.matches({"type": "m.typing", "room_id": room_id}):
                out.setdefault(room_id, []).append(
                    {"type": "m.typing", "content": {"user_ids": typing.typing_users(room_id)}})
        for room_id, content in receipt_content.items():
            if wanted.matches({"type": "m.receipt", "room_id": room_id}):
                out.setdefault(room_id, []).append({"type": "m.receipt", "content": content})
        return out

    async def _unread_counts(self, room_ids: list[str]
                             ) -> tuple[dict[str, tuple[int, int]],
                                        dict[str, dict[str, tuple[int, int]]]]:
        """Room -> (notifications, highlights), and per thread when the filter asks."""
        read = await self.s.receipts.read_positions(self.user_id, room_ids)
        starts = {r: max(read.get(r, 0), self.joined_at.get(r, 0)) for r in room_ids}
        return await self.s.unread.counts(self.user_id, starts, up_to=self.now.events,
                                          threads=self.filter.unread_thread_notifications)

    async def _presence(self, joined: list[str]) -> list[dict[str, Any]]:
        """Presence of the users who share a room with this one: everyone's on an initial
        sync, then whoever changed (and the members of rooms new to the client)."""
        presence = self.s.presence
        if not presence.enabled or not self.filter.presence.allows_type("m.presence"):
            return []
        users: list[str]
        if self.since is None:
            users = presence.known(
                await self.s.store.co_members(self.user_id, joined) | {self.user_id})
        else:
            mine = await self.s.members.joined_rooms(self.user_id)
            users = [u for u in presence.changed_since(self.since.presence)
                     if u == self.user_id
                     or not mine.isdisjoint(await self.s.members.joined_rooms(u))]
            if self.initial_rooms:
                seen = set(users)
                users += [u for u in presence.known(await self.s.store.co_members(
                    self.user_id, sorted(self.initial_rooms))) if u not in seen]
        return [presence.event(u) for u in users
                if self.filter.presence.matches({"type": "m.presence", "sender": u})]

    def _sent_members(self, room_id: str, *sections: list[StoredEvent]) -> None:
        """Remember the member events this response carries (for lazy loading)."""
        if not self.filter.state.lazy_load_members:
            return
        sent = self.s.sent_members.sent(self.user_id, self.device_id)
        for section in sections:
            for event in section:
                if event.pdu.get("type") == "m.room.member":
                    key = (room_id, str(event.pdu.get("state_key")))
                    previous = sent.get(key)
                    if previous is None or previous[0] != event.event_id:
                        sent[key] = (event.event_id, self.now.events)

    async def _cut_cleared(self, room_id: str, timeline: list[StoredEvent], limited: bool
                           ) -> tuple[list[StoredEvent], bool]:
        """The timeline less what the user cleared (history.py), cut before the state section
        is worked out so that it is the state at the first event the user still sees (the
        room's whole state when they cleared it all), not the state before cleared events.
        A cut leaves a gap before the timeline, so it is ``limited`` (the state section then
        carries what changed in the gap, as for any gap)."""
        kept = await self.s.visibility.not_cleared(self.user_id, room_id, timeline)
        return kept, limited or len(kept) < len(timeline)

    async def _visible(self, room_id: str, events: list[StoredEvent]) -> list[StoredEvent]:
        """History visibility, with a shortcut: everything after the user's current join
        is visible to them (unless they cleared it)."""
        events = await self.s.visibility.not_cleared(self.user_id, room_id, events)
        joined_at = self.joined_at.get(room_id)
        if joined_at is None:
            return await self.s.visibility.filter_for_user(self.user_id, events)
        before = [e for e in events if (e.stream_ordering or 0) < joined_at]
        if not before:
            return events
        allowed = {e.event_id for e in
                   await self.s.visibility.filter_for_user(self.user_id, before)}
        return [e for e in events if (e.stream_ordering or 0) >= joined_at
                or e.event_id in allowed]

    async def _join_starts(self, members: dict[str, StoredEvent]) -> dict[str, int]:
        """Room -> position of the join that began the user's current membership: a new name
        or avatar is a new join event, not a new join (it must not reset unread counts)."""
        cache = self.s.join_starts
        out = {r: cache[e.event_id] for r, e in members.items() if e.event_id in cache}
        walking = {r: e for r, e in members.items() if r not in out}
        while walking:
            previous = await self.s.events.get_events(
                e.replaces_state for e in walking.values() if e.replaces_state)
            for room_id, event in list(walking.items()):
                before = previous.get(event.replaces_state or "")
                if before is not None and before.event_id in cache:
                    start = cache[before.event_id]
                elif before is not None and (before.pdu.get("content") or {}).get(
                        "membership") == "join":
                    walking[room_id] = before
                    continue
                else:
                    start = event.stream_ordering or 0
                out[room_id] = cache[members[room_id].event_id] = start
                del walking[room_id]
        return out

    async def _rooms_of_changed_ignores(self, joined: list[str]) -> set[str]:
        """Whom the user ignores changed since ``since``: the joined rooms of those who
        were ignored or un-ignored come again whole, so the client sees what was hidden
        (or stops seeing what now is); every joined room when who changed is not known
        (a ``since`` from before this process started). Synapse sends nothing again (its
        clients start over after an un-ignore); this spares them that."""
        assert self.since is not None
        changed = await self.s.ignored.changed_since(self.user_id, self.since.account_data)
        if changed is None:
            return set(joined)
        rooms: set[str] = set()
        for found in (await self.s.members.joined_rooms_of(sorted(changed))).values():
            rooms |= found
        return rooms.intersection(joined)

    async def _was_joined_at_since(self, room_id: str) -> bool:
        assert self.since is not None
        before = await self.s.store.last_event_at(room_id, self.since.events)
        if before is None:
            return False
        key = ("m.room.member", self.user_id)
        state = await self.s.state.state_at_group(before[0], only=[key])
        if key not in state:
            return False
        event = await self.s.events.get_event(state[key])
        return event is not None and (event.pdu.get("content") or {}).get(
            "membership") == "join"

    def _prev_batch(self, timeline: list[StoredEvent]) -> str:
        if timeline:
            # The place just before the timeline's first event (a token is the place just
            # after its position), so paging back from it does not repeat that event.
            first = timeline[0]
            return make_token(first.depth, (first.stream_ordering or 0) - 1)
        return make_token(2**62, 2**62)

    async def _room_state_ids(self, room_id: str, timeline: list[StoredEvent],
                              initial: bool, limited: bool, heroes: Iterable[str] = ()
                              ) -> list[str]:
        """The IDs of the state section: what the client needs besides the timeline."""
        lazy = self.filter.state.lazy_load_members
        if not initial and not limited and not lazy:
            return []
        # Lazy loading: the member events of the timeline's senders (and, when the client
        # gets the room's whole state, the user's own and the heroes', as the spec says),
        # less those this device has acknowledged (it synced from a token at or after the
        # response that carried them) unless the filter asks for redundant ones.
        senders = {str(e.pdu.get("sender")) for e in timeline}
        # Sender -> the member event this device has acknowledged; left out below only if it
        # is still the one to send (one the device never got, say a rename its timeline
        # filter dropped, must come).
        acknowledged: dict[str, str] = {}
        if initial:
            senders.add(self.user_id)
            senders.update(heroes)
        elif lazy and self.since is not None and \
                not self.filter.state.include_redundant_members:
            sent = self.s.sent_members.sent(self.user_id, self.device_id)
            acknowledged = {u: had[0] for u in senders if (
                (had := sent.get((room_id, u))) is not None and had[1] <= self.since.events)}
        if not initial and not limited and not senders:
            return []  # nothing new from anyone (typing, receipts): no members to send
        if timeline:
            start_group = _start_group(timeline)
        else:
            last = await self.s.store.last_event_at(room_id, self.now.events)
            start_group = last[0] if last else None
        if not initial and not limited:
            # The timeline holds everything since `since`: only the senders' members.
            state_map: StateMap = await self.s.state.state_at_group(
                start_group, only=[("m.room.member", u) for u in sorted(senders)])
        else:
            state_map = await self.s.state.state_at_group(start_group)
        if not initial and limited and self.since is not None:
            # What changed between since and the timeline's start (the gap).
            before = await self.s.store.last_event_at(room_id, self.since.events)
            old = await self.s.state.state_at_group(before[0]) if before else {}
            state_map = {k: v for k, v in state_map.items() if old.get(k) != v or (
                lazy and k[0] == "m.room.member" and k[1] in senders)}
        elif lazy:
            state_map = {k: v for k, v in state_map.items()
                         if k[0] != "m.room.member" or k[1] in senders}
        in_timeline = {e.event_id for e in timeline}
        return [e for k, e in state_map.items() if e not in in_timeline and not (
            k[0] == "m.room.member" and acknowledged.get(k[1]) == e)]

    async def _room_state(self, room_id: str, timeline: list[StoredEvent], initial: bool,
                          limited: bool, heroes: Iterable[str] = ()) -> list[StoredEvent]:
        """The state section as events (one room; joined rooms batch their loads)."""
        ids = await self._room_state_ids(room_id, timeline, initial, limited, heroes=heroes)
        loaded = await self.s.events.get_events(ids)
        return [loaded[e] for e in ids if e in loaded and self.filter.state.matches(
            loaded[e].pdu)]

    async def _client_events(self, events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
        events = list(events)
        if not events:
            return []
        if self.filter.event_format == "federation":
            return [dict(e.pdu, event_id=e.event_id) for e in events]
        serialized = await self.s.serializer.serialize(
            events, requester_device=self.device_id, requester_user=self.user_id,
            now=self.s.clock.time_ms())
        for event in serialized:
            event.pop("room_id", None)  # sync events are "client events without room ID"
        return [self.filter.pick_fields(e) for e in serialized]

    # -- invites, knocks, leaves ------------------------------------------------------------

    async def _stripped_state(self, room_id: str, member_event_id: str) -> list[dict[str, Any]]:
        remote = await self.s.store.invite_state(member_event_id)
        if remote is not None:  # a room on another server: what its invite came with
            member = await self.s.events.get_event(member_event_id)
            return [*remote, *([stripped(member.pdu)] if member is not None else [])]
        state = await self.s.state.state_at_group(
            (await self.s.events.room_info(room_id) or ("", None))[1],
            only=[(t, "") for t in STRIPPED_STATE_TYPES])
        loaded = await self.s.events.get_events([*state.values(), member_event_id])
        out: list[dict[str, Any]] = []
        for event_id in [*state.values(), member_event_id]:
            event = loaded.get(event_id)
            if event is not None:
                out.append(stripped(event.pdu))
        return out

    async def _left_room(self, room_id: str, leave_event_id: str) -> dict[str, Any]:
        leave = await self.s.events.get_event(leave_event_id)
        up_to = leave.stream_ordering if leave and leave.stream_ordering else self.now.events
        after = self.since.events if self.since is not None else 0
        ids = (await self.s.store.latest_event_ids([room_id], after=after, up_to=up_to,
                                                    limit=self.limit + 1))[room_id]
        loaded = await self.s.events.get_events(ids)
        timeline_events = [loaded[e] for e in ids if e in loaded]
        limited = len(timeline_events) > self.limit
        timeline_events = timeline_events[-self.limit:] if self.limit else []
        timeline_events, limited = await self._cut_cleared(room_id, timeline_events, limited)
        visible = await self.s.visibility.filter_for_user(self.user_id, timeline_events)
        state = await self._room_state(room_id, timeline_events, self.since is None, limited)
        return {
            "timeline": {"events": await self._client_events(
                [e for e in visible if self.filter.timeline.matches(e.pdu)
                 and not hidden_by(self.ignored, e.pdu)]),
                "limited": limited, "prev_batch": self._prev_batch(timeline_events)},
            "state": {"events": await self._client_events(state)},
            "account_data": {"events": []},
        }


def _summary(summary: RoomSummary | None) -> dict[str, Any]:
    summary = summary or RoomSummary(0, 0, [])
    return {"m.heroes": summary.heroes, "m.joined_member_count": summary.joined,
            "m.invited_member_count": summary.invited}


def _start_group(timeline: Sequence[StoredEvent]) -> int | None:
    """The state group at the start of a timeline: before its first event whose state is
    known here. An invite to a room on another server arrives before this server is in the
    room: stored without the state before it, it must not leave the joined room stateless."""
    return next((e.state_group_before for e in timeline if e.state_group_before is not None),
                None)
