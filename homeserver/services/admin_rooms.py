"""The admin API's room reads (Synapse's ``/_synapse/admin/v1/rooms``...): the room list with
search and ordering, one room's details, members, state, history and media. An admin reads
any room this server knows, member or not."""

from __future__ import annotations

from typing import Any

from core.clock import Clock
from core.errors import NotFound
from homeserver.services.filtering import RoomEventFilter
from homeserver.services.messages import MessageService, Reader
from homeserver.services.serialize import EventSerializer
from storage.stores.admin_rooms import ROOM_ORDERINGS as ROOM_ORDERINGS  # the routes check it
from storage.stores.admin_rooms import AdminRoomStore
from storage.stores.admin_rooms import RoomFilter as RoomFilter  # what routes build
from storage.stores.events import EventStore
from storage.stores.state import StateStore

_MEDIA_SCAN_PAGE = 500


def _mxc_urls(content: Any) -> list[str]:
    """The ``mxc://`` URLs an event's content points at (files, images and thumbnails)."""
    if not isinstance(content, dict):
        return []
    info = content.get("info")
    candidates = [content.get("url"), (content.get("file") or {}).get("url")
                  if isinstance(content.get("file"), dict) else None]
    if isinstance(info, dict):
        candidates += [info.get("thumbnail_url"),
                       (info.get("thumbnail_file") or {}).get("url")
                       if isinstance(info.get("thumbnail_file"), dict) else None]
    return [u for u in candidates if isinstance(u, str) and u.startswith("mxc://")]


class AdminRoomService:
    def __init__(self, store: AdminRoomStore, events: EventStore, state: StateStore,
                 messages: MessageService, serializer: EventSerializer, clock: Clock,
                 server_name: str) -> None:
        self._store = store
        self._events = events
        self._state = state
        self._messages = messages
        self._serializer = serializer
        self._clock = clock
        self._server_name = server_name

    async def list_rooms(self, f: RoomFilter, *, offset: int, limit: int, order_by: str,
                         backwards: bool) -> dict[str, Any]:
        rooms, total = await self._store.page(f, offset=offset, limit=limit,
                                              order_by=order_by, backwards=backwards)
        body: dict[str, Any] = {"rooms": rooms, "offset": offset, "total_rooms": total}
        if offset + limit < total:
            body["next_batch"] = offset + limit
        if offset > 0:
            body["prev_batch"] = offset - limit if offset > limit else 0
        return body

    async def room(self, room_id: str) -> dict[str, Any]:
        room = await self._store.get(room_id)
        if room is None:
            raise NotFound("Room not found")
        local = [u for u in await self._store.joined_members(room_id)
                 if u.endswith(":" + self._server_name)]
        room["joined_local_devices"] = await self._store.count_local_devices(local)
        return room

    async def _known(self, room_id: str) -> None:
        if await self._events.room_info(room_id) is None:
            raise NotFound("Room not found")

    async def members(self, room_id: str) -> dict[str, Any]:
        await self._known(room_id)
        members = await self._store.joined_members(room_id)
        return {"members": members, "total": len(members)}

    async def state(self, admin: str, room_id: str) -> dict[str, Any]:
        await self._known(room_id)
        entries = await self._state.current_state(room_id)
        stored = await self._events.get_events(e.event_id for e in entries)
        ordered = [stored[e.event_id] for e in entries if e.event_id in stored]
        return {"state": await self._serializer.serialize(
            ordered, requester_device=None, requester_user=admin, now=self._clock.time_ms())}

    async def messages(self, admin: str, room_id: str, *, from_token: str | None,
                       to_token: str | None, backwards: bool, limit: int,
                       event_filter: RoomEventFilter) -> dict[str, Any]:
        return await self._messages.messages(
            Reader(admin, None), room_id, from_token=from_token, to_token=to_token,
            backwards=backwards, limit=limit, event_filter=event_filter, as_admin=True)

    async def media(self, room_id: str) -> dict[str, list[str]]:
        """Every ``mxc://`` URL the room's events point at, this server's apart from the
        others' (Synapse's ``/room/{roomId}/media``); a page of events per query."""
        await self._known(room_id)
        local: list[str] = []
        remote: list[str] = []
        seen: set[str] = set()
        cursor: tuple[int, int] | None = None
        while True:
            page = await self._events.paginate(room_id, after=cursor, backwards=False,
                                               limit=_MEDIA_SCAN_PAGE)
            for event in page:
                for url in _mxc_urls(event.pdu.get("content")):
                    if url not in seen:
                        seen.add(url)
                        server = url[len("mxc://"):].split("/", 1)[0]
                        (local if server == self._server_name else remote).append(url)
            if len(page) < _MEDIA_SCAN_PAGE:
                return {"local": local, "remote": remote}
            cursor = (page[-1].depth, page[-1].stream_ordering or 0)
