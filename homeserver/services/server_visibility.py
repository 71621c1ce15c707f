"""Which events another server may see, and in what form.

The spec's history visibility rules
(https://spec.matrix.org/v1.16/client-server-api/#history-visibility) apply to servers as to
users: a server answering ``/event``, ``/get_missing_events`` or ``/backfill``
(https://spec.matrix.org/v1.16/server-server-api/#backfilling-and-retrieving-missing-events)
gives another server the events it may see, and redacted copies of the others, so the DAG
stays whole. Synapse's ``filter_events_for_server`` (``synapse/visibility.py``) is the model:

- the room's ``history_visibility`` is read from the state before the event (for a change of
  visibility, the more open of the old and new values); none set means ``shared``;
- ``world_readable`` and ``shared``: visible (the endpoints require the server to be in the
  room now, so it joined at some point);
- ``invited``: visible if one of the server's users was joined or invited at the event;
- ``joined`` (and unknown values): visible if one of its users was joined;
- a member event of one of the server's users also counts with its own membership (a server
  sees its users' joins);
- an outlier has no known state: treated as ``shared``, as Synapse does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.events.redaction import redact
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from storage.stores.events import EventStore, StoredEvent
from storage.stores.state import StateStore

HISTORY_VISIBILITY = ("m.room.history_visibility", "")
# Most open first.
_VISIBILITY_ORDER = ("world_readable", "shared", "invited", "joined")


def server_of(user_id: str) -> str:
    """The server part of a user ID (localparts never contain ``:``)."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def redacted_pdu(event: StoredEvent) -> dict[str, Any]:
    return redact(event.pdu, KNOWN_ROOM_VERSIONS[event.room_version])


def federation_pdu(event: StoredEvent) -> dict[str, Any]:
    """The event as sent to other servers: its stored PDU, pruned if it was redacted (the
    stored JSON is pruned only once the redaction retention period is over)."""
    return redacted_pdu(event) if event.redacted_by is not None else dict(event.pdu)


def _content(event: StoredEvent | None) -> Mapping[str, Any]:
    content = event.pdu.get("content") if event is not None else None
    return content if isinstance(content, Mapping) else {}


def _more_open(a: str, b: str) -> str:
    rank = {v: i for i, v in enumerate(_VISIBILITY_ORDER)}
    return a if rank.get(a, len(rank)) <= rank.get(b, len(rank)) else b


class ServerVisibility:
    """History visibility for servers (see the module docstring)."""

    def __init__(self, state: StateStore, events: EventStore) -> None:
        self._state = state
        self._events = events

    async def server_in_room(self, server_name: str, room_id: str) -> bool:
        """Whether a user of ``server_name`` is joined to the room (current state)."""
        members = await self._state.current_state(room_id, types=["m.room.member"])
        return any(m.membership == "join" and server_of(m.state_key) == server_name
                   for m in members)

    async def visible_ids(self, server_name: str, events: Sequence[StoredEvent]) -> set[str]:
        """The IDs of the events ``server_name`` may see unredacted."""
        at_group = await self._state_at_groups(
            server_name, {e.state_group_before for e in events})
        visible = set()
        for event in events:
            visibility, memberships = at_group.get(event.state_group_before, ("shared", set()))
            pdu = event.pdu
            if (pdu.get("type"), pdu.get("state_key")) == HISTORY_VISIBILITY:
                new = _content(event).get("history_visibility")
                if isinstance(new, str):
                    visibility = _more_open(visibility, new)
            if visibility in ("world_readable", "shared"):
                visible.add(event.event_id)
                continue
            state_key = pdu.get("state_key")
            if pdu.get("type") == "m.room.member" and isinstance(state_key, str) \
                    and server_of(state_key) == server_name:
                membership = _content(event).get("membership")
                if isinstance(membership, str):
                    memberships = memberships | {membership}
            if "join" in memberships or (visibility == "invited" and "invite" in memberships):
                visible.add(event.event_id)
        return visible

    async def pdus_for_server(self, server_name: str, events: Sequence[StoredEvent]
                              ) -> list[dict[str, Any]]:
        """The events in federation form, in the given order: redacted copies of those the
        server may not see."""
        visible = await self.visible_ids(server_name, events)
        return [federation_pdu(e) if e.event_id in visible else redacted_pdu(e)
                for e in events]

    async def _state_at_groups(self, server_name: str, groups: Iterable[int | None]
                               ) -> dict[int | None, tuple[str, set[str]]]:
        """Per state group: the history visibility, and the memberships of the server's users
        (looked up only where the visibility restricts, as Synapse does)."""
        hv_ids = {g: (await self._state.state_at_group(g, only=[HISTORY_VISIBILITY]))
                  .get(HISTORY_VISIBILITY) for g in groups if g is not None}
        loaded = await self._events.get_events(e for e in hv_ids.values() if e is not None)
        out: dict[int | None, tuple[str, set[str]]] = {}
        member_ids: dict[int, list[str]] = {}
        for group, hv_id in hv_ids.items():
            value = _content(loaded.get(hv_id or "")).get("history_visibility")
            visibility = value if isinstance(value, str) else "shared"
            out[group] = (visibility, set())
            if visibility not in ("world_readable", "shared"):
                state = await self._state.state_at_group(group)
                member_ids[group] = [e for (t, k), e in state.items()
                                     if t == "m.room.member" and server_of(k) == server_name]
        members = await self._events.get_events(e for ids in member_ids.values() for e in ids)
        for group, ids in member_ids.items():
            for event_id in ids:
                membership = _content(members.get(event_id)).get("membership")
                if isinstance(membership, str):
                    out[group][1].add(membership)
        return out
