"""Event writes from workers, to the persister (the main process) over its replication
listener: ``POST /_ktchat/replication/v1/send_events``, authenticated with the shared
secret. The persister answers with the events as built, signed and committed, or with the
Matrix error its roomserver raised, which the worker raises again for its client.

``PersisterClient`` is what a worker's services hold as their roomserver: reads from its
own (read-only) roomserver, which the bus keeps current, and writes over HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web

from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.replication.internal_http import InternalClient, add_internal_route
from roomserver.api import LocalRooms, NewEvent, RoomHead, StateKey

T = TypeVar("T")

SEND_EVENTS = "/_ktchat/replication/v1/send_events"
# A send waits for the commit; the persister's queue can be long under load.
_TIMEOUT_S = 60.0


def _event_json(event: Event) -> dict[str, Any]:
    return {"event_id": event.event_id, "room_version": event.room_version.identifier,
            "pdu": event.pdu}


def _event_from_json(data: Mapping[str, Any]) -> Event:
    return Event(data["event_id"], KNOWN_ROOM_VERSIONS[data["room_version"]], data["pdu"])


def _new_event_json(new: NewEvent) -> dict[str, Any]:
    return {"type": new.type, "sender": new.sender, "content": new.content,
            "state_key": new.state_key, "redacts": new.redacts, "device_id": new.device_id,
            "txn_id": new.txn_id}


def _new_event_from_json(data: Mapping[str, Any]) -> NewEvent:
    return NewEvent(str(data["type"]), str(data["sender"]), dict(data["content"]),
                    data.get("state_key"), data.get("redacts"), data.get("device_id"),
                    data.get("txn_id"))


def add_persister_routes(app: web.Application, rooms: LocalRooms, secret: str) -> None:
    """The replication resource: what workers ask of this process's roomserver."""

    async def send_events(body: Any) -> Any:
        room_id = str(body["room_id"])
        news = [_new_event_from_json(n) for n in body["events"]]
        events = await rooms.send_events(room_id, news)
        return {"events": [_event_json(e) for e in events]}

    add_internal_route(app, SEND_EVENTS, secret, send_events)


class PersisterClient:
    """A worker's roomserver: reads here, writes at the persister (``LocalRooms``)."""

    def __init__(self, local: LocalRooms, persister_url: str, secret: str) -> None:
        self._local = local
        self._client = InternalClient(persister_url, SEND_EVENTS, secret, _TIMEOUT_S)

    async def close(self) -> None:
        await self._client.close()

    async def send_events(self, room_id: str, news: list[NewEvent]) -> list[Event]:
        data = await self._client.post(
            {"room_id": room_id, "events": [_new_event_json(n) for n in news]})
        return [_event_from_json(e) for e in data["events"]]

    async def send(self, room_id: str, new: NewEvent) -> Event:
        return (await self.send_events(room_id, [new]))[0]

    # Writes a worker does not make (their routes are relayed to the main process).

    async def create_room(self, room_version: RoomVersion, creator: str,
                          create_content: Mapping[str, Any], *, room_id: str | None = None,
                          initial: Sequence[NewEvent] = ()) -> Event:
        raise NotImplementedError("rooms are created by the main process")

    async def build(self, room_id: str, new: NewEvent) -> Event:
        raise NotImplementedError("remote memberships are made by the main process")

    async def store_built(self, event: Event) -> None:
        raise NotImplementedError("remote memberships are made by the main process")

    async def remove_room(self, room_id: str, delete: Callable[[], Awaitable[T]]) -> T:
        raise NotImplementedError("rooms are removed by the main process")

    # Reads: the worker's own roomserver.

    async def get_events(self, event_ids: list[str]) -> dict[str, Event]:
        return await self._local.get_events(event_ids)

    async def current_state(self, room_id: str) -> dict[StateKey, str] | None:
        return await self._local.current_state(room_id)

    async def room_version(self, room_id: str) -> RoomVersion | None:
        return await self._local.room_version(room_id)

    async def room_head(self, room_id: str) -> RoomHead | None:
        return await self._local.room_head(room_id)

    async def state_content(self, room_id: str, key: StateKey) -> Mapping[str, Any] | None:
        return await self._local.state_content(room_id, key)

    async def server_allowed(self, room_id: str, server_name: str) -> bool:
        return await self._local.server_allowed(room_id, server_name)

    async def joined_servers(self, room_id: str) -> set[str]:
        return await self._local.joined_servers(room_id)

    async def check_against_current(self, event: Event) -> None:
        await self._local.check_against_current(event)

    async def auth_chain(self, event_ids: list[str]) -> list[Event]:
        return await self._local.auth_chain(event_ids)

    async def is_stored(self, event_ids: list[str]) -> set[str]:
        return await self._local.is_stored(event_ids)

    async def stored_pdus(self, event_ids: Iterable[str]) -> Any:
        return await self._local.stored_pdus(event_ids)

    async def state_before(self, event_ids: Iterable[str], *,
                           only: Sequence[StateKey] | None = None
                           ) -> dict[str, Mapping[StateKey, str]]:
        return await self._local.state_before(event_ids, only=only)

    async def members_before(self, event_ids: Iterable[str], server_name: str
                             ) -> dict[str, Mapping[str, str]]:
        return await self._local.members_before(event_ids, server_name)

    async def backfill_points(self, room_id: str) -> tuple[list[str], int | None]:
        return await self._local.backfill_points(room_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return await self._local.joined_rooms(user_id)
