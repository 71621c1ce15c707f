"""Account data and room tags."""

from __future__ import annotations

from typing import Any

from homeserver.errors import BadJson, Forbidden, MatrixError, NotFound
from homeserver.services.notifier import Notifier
from storage.stores.account_data import GLOBAL, AccountDataStore

# Types the server manages itself; clients may not set them through account data.
SERVER_MANAGED = ("m.fully_read", "m.push_rules")
MAX_TAG_LENGTH = 255


class AccountDataService:
    def __init__(self, store: AccountDataStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier

    async def _put(self, user_id: str, room_id: str, type_: str, content: dict[str, Any]
                   ) -> None:
        position = await self._store.put(user_id, room_id, type_, content)
        self._notifier.on_account_data(user_id, position)

    def _check_type(self, type_: str) -> None:
        if type_ in SERVER_MANAGED:
            raise MatrixError(f"Cannot set {type_} through this API", status=405,
                              errcode="M_BAD_JSON")

    async def set(self, user_id: str, room_id: str | None, type_: str,
                  content: dict[str, Any]) -> None:
        self._check_type(type_)
        await self._put(user_id, room_id or GLOBAL, type_, content)

    async def set_managed(self, user_id: str, room_id: str, type_: str,
                          content: dict[str, Any]) -> None:
        """Set a server-managed type (the read marker, push rules) on the server's behalf."""
        await self._put(user_id, room_id, type_, content)

    async def get(self, user_id: str, room_id: str | None, type_: str) -> dict[str, Any]:
        value = await self._store.get(user_id, room_id or GLOBAL, type_)
        if value is None:
            raise NotFound("Account data not found")
        return value

    async def tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        value = await self._store.get(user_id, room_id, "m.tag") or {}
        tags = value.get("tags")
        return tags if isinstance(tags, dict) else {}

    async def put_tag(self, user_id: str, room_id: str, tag: str, body: dict[str, Any]
                      ) -> None:
        if len(tag) > MAX_TAG_LENGTH:
            raise BadJson("Tag is too long")
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or
                                  not isinstance(order, int | float)):
            raise BadJson("'order' must be a number")
        tags = await self.tags(user_id, room_id)
        tags[tag] = body
        await self._put(user_id, room_id, "m.tag", {"tags": tags})

    async def delete_tag(self, user_id: str, room_id: str, tag: str) -> None:
        tags = await self.tags(user_id, room_id)
        if tags.pop(tag, None) is not None:
            await self._put(user_id, room_id, "m.tag", {"tags": tags})


def require_self(requester: str, user_id: str) -> None:
    if requester != user_id:
        raise Forbidden("Cannot access another user's account data")
