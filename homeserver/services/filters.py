"""Uploaded /sync filters, and resolving the ``filter`` parameter of /sync."""

from __future__ import annotations

import json
from typing import Any

from homeserver.errors import InvalidParam, NotFound, NotJson
from homeserver.services.filtering import SyncFilter
from storage.stores.filters import FilterStore

_INLINE_CACHE = 1_000
_UPLOADED_CACHE = 10_000


class FilterService:
    """Filters never change once made, so parsed ones are kept (bounded)."""

    def __init__(self, store: FilterStore) -> None:
        self._store = store
        self._inline: dict[str, SyncFilter] = {}
        self._uploaded: dict[tuple[str, str], SyncFilter] = {}

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
            # Clients repeat the same inline filter on every request: parse it once.
            cached = self._inline.get(value)
            if cached is not None:
                return cached
            try:
                body = json.loads(value)
            except ValueError:
                raise NotJson("Invalid filter JSON") from None
            parsed = SyncFilter.from_json(body)
            self._inline[value] = parsed
            if len(self._inline) > _INLINE_CACHE:
                self._inline.pop(next(iter(self._inline)))
            return parsed
        if not value.isdigit():
            raise InvalidParam("'filter' must be a filter ID or a JSON filter")
        key = (user_id, value)
        found = self._uploaded.get(key)
        if found is None:
            found = self._uploaded[key] = SyncFilter.from_json(await self.get(user_id, value))
            if len(self._uploaded) > _UPLOADED_CACHE:
                self._uploaded.pop(next(iter(self._uploaded)))
        return found
