"""Inviting a user of another server: the invite is built and authorized here, signed by the
invitee's server (``/invite``, which may refuse it), then stored as any received event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.events.stripped import STRIPPED_STATE_TYPES
from homeserver.services.ports import RemoteRooms
from roomserver.api import LocalRooms, NewEvent


class RemoteInvites:
    def __init__(self, rooms: LocalRooms, remote: RemoteRooms) -> None:
        self._rooms = rooms
        self._remote = remote

    async def invite(self, room_id: str, inviter: str, target: str,
                     content: Mapping[str, Any]) -> str:
        """Invite ``target`` (a user of another server); returns the invite's event ID."""
        event = await self._rooms.build(room_id, NewEvent("m.room.member", inviter, content,
                                                          target))
        signed = await self._remote.invite(event, await self._invite_state(room_id, inviter))
        await self._rooms.store_built(signed)
        return signed.event_id

    async def _invite_state(self, room_id: str, inviter: str) -> list[dict[str, Any]]:
        """The state the invitee's server shows (stripped) with the invite: whole events in
        the room version's format, the create event among them (``invite_room_state``,
        Matrix 1.16; servers check it from room version 12 on)."""
        state = await self._rooms.current_state(room_id) or {}
        keys = [*((t, "") for t in STRIPPED_STATE_TYPES), ("m.room.member", inviter)]
        loaded = await self._rooms.get_events([state[k] for k in keys if k in state])
        return [dict(e.pdu) for e in loaded.values()]
