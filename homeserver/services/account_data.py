"""Account data and room tags.

What a user may store is capped, so that neither the database nor their syncs (an initial
sync carries all of it) grow without bound:
- one entry's content (global or per room, ``m.tag`` included): ``MAX_CONTENT_BYTES`` as
  compact UTF-8 JSON, the spec's limit for a whole event;
- a room's tags: ``MAX_TAGS_PER_ROOM``, each one's content ``MAX_TAG_CONTENT_BYTES``;
- all of a user's entries together: ``MAX_TOTAL_BYTES`` (their stored JSON, room IDs and
  types, and ``ENTRY_OVERHEAD`` each, so many small entries count too), the types the server
  manages aside (read markers, push rules: bounded by the rooms a user is in and by the push
  rules service). Enough for tags and settings in some twenty thousand rooms.
Over a cap is ``413 M_TOO_LARGE``, and nothing is stored; a write that does not grow an entry
is always allowed.
"""

from __future__ import annotations

from typing import Any

from core.errors import BadJson, Forbidden, MatrixError, NotFound, TooLarge
from homeserver.services.filters import encoded_size
from homeserver.services.ignored_users import IGNORED_USER_LIST, IgnoredUsers, check_content
from homeserver.services.notifier import Notifier
from homeserver.services.ports import ALONE, Replication
from storage.stores.account_data import GLOBAL, AccountDataStore

# Types the server manages itself; clients may not set them through account data.
SERVER_MANAGED = ("m.fully_read", "m.push_rules")
MAX_TAG_LENGTH = 255
MAX_CONTENT_BYTES = 65536
MAX_TAGS_PER_ROOM = 100
MAX_TAG_CONTENT_BYTES = 4096
MAX_TOTAL_BYTES = 4 * 1024 * 1024


class AccountDataService:
    def __init__(self, store: AccountDataStore, notifier: Notifier,
                 ignored: IgnoredUsers, *, replication: Replication = ALONE) -> None:
        self._store = store
        self._replication = replication
        self._notifier = notifier
        self._ignored = ignored

    def apply_ignored(self, user_id: str, content: dict[str, Any], position: int) -> None:
        """A worker: the writer stored a user's ignore list."""
        self._ignored.changed(user_id, content, position)

    async def _put(self, user_id: str, room_id: str, type_: str, content: dict[str, Any],
                   *, shrinking: bool = False) -> None:
        if not shrinking and encoded_size(content) > MAX_CONTENT_BYTES:
            raise TooLarge(f"Account data is limited to {MAX_CONTENT_BYTES} bytes")
        position = await self._store.put(user_id, room_id, type_, content,
                                         max_total=MAX_TOTAL_BYTES, exempt=SERVER_MANAGED)
        if position is None:
            raise TooLarge(f"A user's account data is limited to {MAX_TOTAL_BYTES} bytes "
                           "in all")
        if room_id == GLOBAL and type_ == IGNORED_USER_LIST:
            self._replication.publish("ignored", [user_id, content, position])
            self._ignored.changed(user_id, content, position)
        self._notifier.on_account_data(user_id, position)

    def _check_type(self, type_: str) -> None:
        if type_ in SERVER_MANAGED:
            raise MatrixError(f"Cannot set {type_} through this API", status=405,
                              errcode="M_BAD_JSON")

    async def set(self, user_id: str, room_id: str | None, type_: str,
                  content: dict[str, Any]) -> None:
        """Set an entry for the user.

        Raises:
            TooLarge: it is over ``MAX_CONTENT_BYTES``, or would take the user's account
                data over ``MAX_TOTAL_BYTES``.
        """
        self._check_type(type_)
        if type_ == IGNORED_USER_LIST and not room_id:
            check_content(content)
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
        """Add or replace a tag.

        Raises:
            BadJson: the tag name is too long or ``order`` is not a number.
            TooLarge: its content is over ``MAX_TAG_CONTENT_BYTES``, the room would have
                more than ``MAX_TAGS_PER_ROOM`` tags, or the ``m.tag`` entry or the user's
                account data would be over their caps.
        """
        if len(tag) > MAX_TAG_LENGTH:
            raise BadJson("Tag is too long")
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or
                                  not isinstance(order, int | float)):
            raise BadJson("'order' must be a number")
        if encoded_size(body) > MAX_TAG_CONTENT_BYTES:
            raise TooLarge(f"A tag's content is limited to {MAX_TAG_CONTENT_BYTES} bytes")
        tags = await self.tags(user_id, room_id)
        if tag not in tags and len(tags) >= MAX_TAGS_PER_ROOM:
            raise TooLarge(f"A room can have at most {MAX_TAGS_PER_ROOM} tags")
        tags[tag] = body
        await self._put(user_id, room_id, "m.tag", {"tags": tags})

    async def delete_tag(self, user_id: str, room_id: str, tag: str) -> None:
        tags = await self.tags(user_id, room_id)
        if tags.pop(tag, None) is not None:
            await self._put(user_id, room_id, "m.tag", {"tags": tags}, shrinking=True)


def require_self(requester: str, user_id: str) -> None:
    if requester != user_id:
        raise Forbidden("Cannot access another user's account data")
