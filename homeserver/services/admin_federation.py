"""The admin API's view of other servers (Synapse's ``/_synapse/admin/v1/federation/
destinations``): which servers this one knows, how it is backing off from them, the rooms it
shares with each, and retrying one at once."""

from __future__ import annotations

from typing import Any

from core.clock import Clock
from core.errors import BadRequest, NotFound
from homeserver.services.ports import DestinationRetry
from storage.stores.destinations import DESTINATION_ORDERINGS as DESTINATION_ORDERINGS
from storage.stores.destinations import Destination, DestinationStore
from storage.stores.federation import FederationStore


def destination_json(d: Destination) -> dict[str, Any]:
    return {"destination": d.destination, "retry_last_ts": d.retry_last_ts,
            "retry_interval": d.retry_interval, "failure_ts": d.failure_ts,
            "last_successful_stream_ordering": None}


class AdminFederationService:
    def __init__(self, store: DestinationStore, federation: FederationStore, clock: Clock,
                 retry: DestinationRetry | None) -> None:
        self._store = store
        self._federation = federation
        self._clock = clock
        self._retry = retry

    async def list_destinations(self, *, offset: int, limit: int, search: str | None,
                                order_by: str, backwards: bool) -> dict[str, Any]:
        page, total = await self._store.page(offset=offset, limit=limit, search=search,
                                             order_by=order_by, backwards=backwards)
        body: dict[str, Any] = {"destinations": [destination_json(d) for d in page],
                                "total": total}
        if offset + limit < total:
            body["next_token"] = str(offset + len(page))
        return body

    async def _known(self, destination: str) -> Destination:
        known = await self._store.get(destination)
        if known is None:
            raise NotFound("Unknown destination")
        return known

    async def destination(self, destination: str) -> dict[str, Any]:
        return destination_json(await self._known(destination))

    async def rooms(self, destination: str, *, offset: int, limit: int, backwards: bool
                    ) -> dict[str, Any]:
        await self._known(destination)
        rooms, total = await self._store.rooms(destination, offset=offset, limit=limit,
                                               backwards=backwards)
        body: dict[str, Any] = {
            "rooms": [{"room_id": r, "stream_ordering": s} for r, s in rooms], "total": total}
        if offset + limit < total:
            body["next_token"] = str(offset + len(rooms))
        return body

    async def reset_connection(self, destination: str) -> None:
        """Forget the backoff and, when federation runs here, send to it now."""
        known = await self._known(destination)
        if not known.retry_last_ts:
            raise BadRequest("The retry timing does not need to be reset for this "
                             "destination.")
        await self._federation.set_backoff(destination, None, self._clock.time_ms())
        if self._retry is not None:
            self._retry.peer_is_up(destination)
