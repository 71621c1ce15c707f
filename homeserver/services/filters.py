"""Uploaded /sync filters, and resolving the ``filter`` parameter of /sync."""

from __future__ import annotations

import json
from typing import Any

import orjson

from core.errors import InvalidParam, NotFound, TooLarge
from homeserver.http.json import decode_json_object
from homeserver.services.filtering import MAX_FILTER_BYTES, SyncFilter
from storage.stores.filters import FilterStore

_INLINE_CACHE = 1_000
_UPLOADED_CACHE = 10_000
# How many of a user's uploaded filters are kept, and how much they may take together
# (their stored JSON): past either, the oldest are forgotten (a client whose filter ID is
# gone gets 404 and uploads its filter again, as matrix-js-sdk does). A thousand filters of
# the usual size (under 1 KiB), at least 16 of the largest.
MAX_FILTERS_PER_USER = 1000
MAX_FILTERS_BYTES_PER_USER = 1024 * 1024


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (how the spec measures an event)."""
    try:
        return len(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError):  # integers beyond 64 bits
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _is_id(value: str) -> bool:
    """A filter ID as this server makes them (and one its BIGINT column can hold)."""
    return value.isascii() and value.isdigit() and len(value) <= 18


class FilterService:
    """Filters never change once made, so parsed ones are kept (bounded)."""

    def __init__(self, store: FilterStore) -> None:
        self._store = store
        self._inline: dict[str, SyncFilter] = {}
        self._uploaded: dict[tuple[str, str], SyncFilter] = {}

    async def upload(self, user_id: str, body: dict[str, Any]) -> str:
        """Store a filter.

        Raises:
            BadJson: it is not a valid filter.
            TooLarge: it is over ``MAX_FILTER_BYTES``, or one of its lists is too long.
        """
        SyncFilter.from_json(body)
        if encoded_size(body) > MAX_FILTER_BYTES:
            raise TooLarge(f"Filters are limited to {MAX_FILTER_BYTES} bytes")
        return str(await self._store.add(user_id, body, keep=MAX_FILTERS_PER_USER,
                                         keep_bytes=MAX_FILTERS_BYTES_PER_USER))

    async def get(self, user_id: str, filter_id: str) -> dict[str, Any]:
        if not _is_id(filter_id):
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
            # Held to the rules of request bodies: no duplicate keys, bounded nesting, no
            # lone surrogates or NUL, integers in range.
            parsed = SyncFilter.from_json(decode_json_object(value.encode("utf-8")))
            self._inline[value] = parsed
            if len(self._inline) > _INLINE_CACHE:
                self._inline.pop(next(iter(self._inline)))
            return parsed
        if not _is_id(value):
            raise InvalidParam("'filter' must be a filter ID or a JSON filter")
        key = (user_id, value)
        found = self._uploaded.get(key)
        if found is None:
            found = self._uploaded[key] = SyncFilter.from_json(await self.get(user_id, value))
            if len(self._uploaded) > _UPLOADED_CACHE:
                self._uploaded.pop(next(iter(self._uploaded)))
        return found
