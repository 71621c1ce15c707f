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
from roomserver.api import RoomReader, StoredPdu

HISTORY_VISIBILITY = ("m.room.history_visibility", "")
# Most open first.
_VISIBILITY_ORDER = ("world_readable", "shared", "invited", "joined")


def server_of(user_id: str) -> str:
    """The server part of a user ID (localparts never contain ``:``)."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def redacted_pdu(event: StoredPdu) -> dict[str, Any]:
    return redact(event.pdu, KNOWN_ROOM_VERSIONS[event.room_version])


def federation_pdu(event: StoredPdu) -> dict[str, Any]:
    """The event as sent to other servers: its stored PDU, pruned if it was redacted (the
    stored JSON is pruned only once the redaction retention period is over)."""
    return redacted_pdu(event) if event.redacted else dict(event.pdu)


def _content(event: StoredPdu | None) -> Mapping[str, Any]:
    content = event.pdu.get("content") if event is not None else None
    return content if isinstance(content, Mapping) else {}


def _more_open(a: str, b: str) -> str:
    rank = {v: i for i, v in enumerate(_VISIBILITY_ORDER)}
    return a if rank.get(a, len(rank)) <= rank.get(b, len(rank)) else b


class ServerVisibility:
    """History visibility for servers (see the module docstring)."""

    def __init__(self, rooms: RoomReader) -> None:
        self._rooms = rooms

    async def server_in_room(self, server_name: str, room_id: str) -> bool:
        """Whether a user of ``server_name`` is joined to the room (current state)."""
        return server_name in await self._rooms.joined_servers(room_id)

    async def visible_ids(self, server_name: str, events: Sequence[StoredPdu]) -> set[str]:
        """The IDs of the events ``server_name`` may see unredacted."""
        before = await self._state_before(server_name, [e.event_id for e in events])
        visible = set()
        for event in events:
            visibility, memberships = before.get(event.event_id, ("shared", set()))
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

    async def pdus_for_server(self, server_name: str, events: Sequence[StoredPdu]
                              ) -> list[dict[str, Any]]:
        """The events in federation form, in the given order: redacted copies of those the
        server may not see."""
        visible = await self.visible_ids(server_name, events)
        return [federation_pdu(e) if e.event_id in visible else redacted_pdu(e)
                for e in events]

    async def _state_before(self, server_name: str, event_ids: Iterable[str]
                            ) -> dict[str, tuple[str, set[str]]]:
        """Per event with a known state before it: the history visibility there, and the
        memberships of the server's users (looked up only where the visibility restricts,
        as Synapse does). A few reads whatever the number of events."""
        hv_ids = {e: state.get(HISTORY_VISIBILITY) for e, state in
                  (await self._rooms.state_before(event_ids, only=[HISTORY_VISIBILITY]))
                  .items()}
        loaded = await self._rooms.stored_pdus(e for e in hv_ids.values() if e is not None)
        out: dict[str, tuple[str, set[str]]] = {}
        for event_id, hv_id in hv_ids.items():
            value = _content(loaded.get(hv_id or "")).get("history_visibility")
            out[event_id] = (value if isinstance(value, str) else "shared", set())
        restricted = [e for e, (v, _) in out.items() if v not in ("world_readable", "shared")]
        if not restricted:
            return out
        member_ids = await self._rooms.members_before(restricted, server_name)
        members = await self._rooms.stored_pdus(
            {e for ids in member_ids.values() for e in ids.values()})
        for event_id, ids in member_ids.items():
            for member_id in ids.values():
                membership = _content(members.get(member_id)).get("membership")
                if isinstance(membership, str):
                    out[event_id][1].add(membership)
        return out
