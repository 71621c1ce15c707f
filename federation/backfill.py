"""Backfill: fetching a room's history from before anything this server has of it
(spec: https://spec.matrix.org/v1.19/server-server-api/#backfilling-and-retrieving-missing-events).

A room joined over federation begins here at our join; when a reader pages back past the
beginning (``MessageService``), we ask a server in the room for what precedes it
(``GET /backfill`` from the unknown prev events of the earliest events here), check each
event as on receipt (format, signatures, content hash, authorization against its auth events,
fetching missing ones) and store it before everything else in the timeline. The server's
answer is already filtered by what it lets this server see.

A room whose earliest events have no unknown prev events (created here, or backfilled to its
creation) asks nobody. A backfill that brought nothing is not retried for a minute; one room
backfills once at a time (concurrent readers share it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from urllib.parse import quote

from core.clock import Clock
from core.errors import NotFound
from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.rooms.auth import AuthError
from federation.inbound.pdus import InvalidPdu, PduHandler
from federation.transport.client import FederationClient, FederationClientError
from roomserver.api import FederatedRooms, MissingEvents

logger = logging.getLogger(__name__)

BACKFILL_LIMIT = 100  # events asked for per request (Synapse's cap on what it serves)
MAX_SERVERS = 3  # servers tried in turn
RETRY_AFTER_MS = 60_000  # after a backfill that brought nothing
TIMEOUT_S = 10  # a reader is waiting on it: a server that does not answer is given up


class Backfiller:
    def __init__(self, rooms: FederatedRooms, client: FederationClient, pdus: PduHandler,
                 clock: Clock, server_name: str) -> None:
        self._rooms = rooms
        self._client = client
        self._pdus = pdus
        self._clock = clock
        self._server_name = server_name
        self._running: dict[str, asyncio.Future[bool]] = {}
        self._fruitless: dict[str, tuple[tuple[str, ...], int]] = {}

    async def backfill(self, room_id: str) -> bool:
        """Fetch and store history preceding what is here; whether anything new came."""
        running = self._running.get(room_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._running[room_id] = future
        try:
            result = await self._backfill(room_id)
            future.set_result(result)
            return result
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: concurrent readers get it through the shield
            raise
        finally:
            del self._running[room_id]

    async def _backfill(self, room_id: str) -> bool:
        points, state_group = await self._rooms.backfill_points(room_id)
        if not points:
            return False
        now = self._clock.time_ms()
        fruitless = self._fruitless.get(room_id)
        if fruitless is not None and fruitless[0] == tuple(points) \
                and now - fruitless[1] < RETRY_AFTER_MS:
            return False
        version = await self._rooms.room_version(room_id)
        if version is None:
            return False
        servers = sorted(await self._rooms.joined_servers(room_id)
                         - {self._server_name})
        for server in servers[:MAX_SERVERS]:
            try:
                answer = await self._client.get_json(
                    server, f"/_matrix/federation/v1/backfill/{quote(room_id, safe='')}",
                    query={"v": points, "limit": [str(BACKFILL_LIMIT)]}, timeout_s=TIMEOUT_S)
            except FederationClientError as e:
                logger.info("Backfilling %s from %s failed: %s", room_id, server, e)
                continue
            pdus = answer.get("pdus") if isinstance(answer, Mapping) else None
            if not isinstance(pdus, list):
                continue
            stored = await self._store(server, room_id, pdus[:BACKFILL_LIMIT], version,
                                       state_group)
            if stored:
                self._fruitless.pop(room_id, None)
                return True
        self._fruitless[room_id] = (tuple(points), now)
        return False

    async def _store(self, origin: str, room_id: str, pdus: list[object],
                     version: RoomVersion, state_group: int | None) -> int:
        """Check the PDUs and store those that pass, oldest first; how many were stored."""
        events: dict[str, Event] = {}
        for pdu in pdus:
            try:
                event = await self._pdus.check_pdu(pdu, version)
            except InvalidPdu as e:
                logger.info("A backfilled event from %s was refused: %s", origin, e)
                continue
            if event.room_id == room_id:
                events[event.event_id] = event
        persister = self._rooms
        ordered = sorted(events.values(), key=lambda e: (e.depth, e.event_id))
        positions = persister.reserve_backfill(len(ordered))
        futures = []
        for event, position in zip(ordered, positions, strict=True):
            for attempt in range(2):
                try:
                    future = await persister.backfill_queued(event, position, state_group)
                except MissingEvents:
                    if attempt == 0:
                        await self._pdus.fetch_auth_chain(origin, event)
                        continue
                    logger.info("Backfilled event %s: its auth events are unknown",
                                event.event_id)
                except (AuthError, NotFound) as e:
                    logger.info("Backfilled event %s was refused: %s", event.event_id, e)
                else:
                    if future is not None:
                        futures.append(future)
                break
        for future in futures:
            await persister.committed(future, room_id)
        return len(futures)
