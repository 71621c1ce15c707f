"""Uploaded /sync filters, and resolving the ``filter`` parameter of /sync."""

from __future__ import annotations

import json
from typing import Any

from homeserver.errors import InvalidParam, NotFound, NotJson
from homeserver.services.filtering import SyncFilter
from storage.stores.filters import FilterStore


class FilterService:
    def __init__(self, store: FilterStore) -> None:
        self._store = store

    async def upload(self, user_id: str, body: dict[str, Any]) -> str:
        SyncFilter.from_json(body)  # 400 M_BAD_JSON when it is not a valid filter
        return str(await self._store.add(user_id, body))

    async def get(self, user_id: str, filter_id: str) -> dict[str, Any]:
        if not filter_id.isdigit():
            raise NotFound("No such filter")
        found = await self._store.get(user_id, int(filter_id))
        if found is None:
            raise NotFound("No such filter")
        return found

    async def resolve(self, user_id: str, value: str | None) -> SyncFilter:
        """The ``filter`` query parameter: inline JSON or an uploaded filter's ID."""
        if value is None:
            return SyncFilter()
        if value.lstrip().startswith("{"):
            try:
                body = json.loads(value)
            except ValueError:
                raise NotJson("Invalid filter JSON") from None
            return SyncFilter.from_json(body)
        if not value.isdigit():
            raise InvalidParam("'filter' must be a filter ID or a JSON filter")
        return SyncFilter.from_json(await self.get(user_id, value))
