"""Send-to-device messaging
(https://spec.matrix.org/v1.19/client-server-api/#send-to-device-messaging).

``PUT /sendToDevice`` stores one message per target device of this server's users and hands
each other server one ``m.direct_to_device`` EDU (to its durable federation queue) for its
users; ``m.direct_to_device`` EDUs from other servers land in the same inboxes. A device gets
its messages in ``to_device`` of its syncs, in order, at most ``PER_SYNC`` per response, and
they are deleted once a later sync's ``since`` shows it has them (as Synapse does). A new
message wakes its recipient's waiting syncs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache, TTLCache

from core.clock import Clock
from core.errors import BadJson, InvalidParam, MissingParam, TooLarge
from core.types import (
    MAX_IDENTIFIER_BYTES,
    InvalidIdentifier,
    byte_length,
    check_event_type,
    parse_user_id,
)
from homeserver.services.changes import ChangeLog
from homeserver.services.notifier import Notifier
from homeserver.services.ports import ALONE, RemoteQueue, Replication
from storage.stores.to_device import ToDeviceStore

logger = logging.getLogger(__name__)

EDU_TYPE = "m.direct_to_device"
PER_SYNC = 100
MAX_EVENT_TYPE_BYTES = 255
# One message's content, as Synapse bounds it (MAX_TO_DEVICE_CONTENT_SIZE): it must fit in an
# EDU that other servers accept.
MAX_CONTENT_BYTES = 65536
# EDUs to one server are packed up to about this size (Synapse's SOFT_MAX_EDU_SIZE).
SOFT_MAX_EDU_BYTES = 65536
TXN_MEMORY_S = 30 * 60

Messages = dict[str, dict[str, dict[str, Any]]]
"""user ID -> device ID (or ``*``) -> content"""
"""Queues ``(destination, m.direct_to_device content)`` for other servers, durably."""


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


class ToDeviceService:
    SEEN_REMOTE = 20_000
    DEVICES = 50_000

    def __init__(self, store: ToDeviceStore, notifier: Notifier, clock: Clock,
                 server_name: str, *, remote_queue: RemoteQueue | None = None,
                 replication: Replication = ALONE) -> None:
        self._store = store
        self._replication = replication
        self._notifier = notifier
        self._clock = clock
        self._server_name = server_name
        # Since start-up: the position of each user's latest message.
        self._changes = ChangeLog()
        # (sender, sender's device, txn ID) -> the request's outcome, done or in flight.
        self._txns: TTLCache[tuple[str, str, str], asyncio.Future[None]] = TTLCache(
            50_000, TXN_MEMORY_S, timer=clock.monotonic)
        # (origin, message_id) of EDUs already delivered (a peer's retry after a lost answer).
        self._seen_remote: LRUCache[tuple[str, str], bool] = LRUCache(self.SEEN_REMOTE)
        # (user, device) -> position up to which its inbox is known to be deleted.
        self._acknowledged: LRUCache[tuple[str, str], int] = LRUCache(self.DEVICES)
        # Queues EDUs for other servers (None: federation is off).
        self.remote_queue = remote_queue

    def start(self) -> None:
        self._changes.reset(self._store.position)

    @property
    def position(self) -> int:
        return self._store.position

    def changed_since(self, user_id: str, position: int) -> bool:
        """Whether a message for the user may have come after ``position``."""
        return self._changes.changed_since(user_id, position)

    # -- sending ------------------------------------------------------------------------

    async def send(self, sender: str, sender_device: str, event_type: str, txn_id: str,
                   body: Mapping[str, Any]) -> None:
        """PUT /sendToDevice/{eventType}/{txnId}: a repeated transaction ID (per device) is
        answered as the first was, and sends nothing again."""
        key = (sender, sender_device, txn_id)
        previous = self._txns.get(key)
        if previous is not None:
            return await asyncio.shield(previous)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._txns[key] = future
        try:
            await self._send(sender, event_type, body)
        except BaseException as e:
            # Not remembered: the client may correct the request and retry it.
            self._txns.pop(key, None)
            future.set_exception(e)
            future.exception()  # retrieved: there may be no one else waiting
            raise
        future.set_result(None)

    async def _send(self, sender: str, event_type: str, body: Mapping[str, Any]) -> None:
        if not event_type or len(event_type.encode("utf-8")) > MAX_EVENT_TYPE_BYTES:
            raise InvalidParam(f"Event type must be 1 to {MAX_EVENT_TYPE_BYTES} bytes")
        messages = _parse_messages(body)
        local: dict[str, dict[str, dict[str, Any]]] = {}
        remote: dict[str, Messages] = {}
        for user_id, by_device in messages.items():
            server = parse_user_id(user_id).server_name
            if not by_device:
                continue
            if server == self._server_name:
                local[user_id] = {d: {"type": event_type, "sender": sender, "content": c}
                                  for d, c in by_device.items()}
            else:
                remote.setdefault(server, {})[user_id] = by_device
        await self._deliver(local)
        if remote:
            if self.remote_queue is None:
                logger.info("Dropped to-device messages for %d other servers: federation is "
                            "off", len(remote))
                return
            await self.remote_queue([(server, edu) for server, by_user in sorted(remote.items())
                                     for edu in _edus(sender, event_type, by_user)])

    # -- receiving over federation ------------------------------------------------------

    async def receive_remote(self, origin: str, content: Mapping[str, Any]) -> None:
        """An ``m.direct_to_device`` EDU from ``origin``: its messages for this server's users
        (unknown users and devices are skipped; so is an EDU whose sender is not of
        ``origin``, or one already delivered)."""
        sender, event_type = content.get("sender"), content.get("type")
        messages, message_id = content.get("messages"), content.get("message_id")
        if not isinstance(sender, str) or not isinstance(event_type, str) or \
                not isinstance(messages, Mapping):
            logger.info("Ignored a malformed %s EDU from %s", EDU_TYPE, origin)
            return
        try:
            sender_server = parse_user_id(sender).server_name
        except ValueError:
            sender_server = None
        if sender_server != origin:
            logger.warning("Ignored a %s EDU from %s with sender %r", EDU_TYPE, origin, sender)
            return
        try:
            check_event_type(event_type)
        except InvalidIdentifier as e:
            logger.info("Ignored a %s EDU from %s: %s", EDU_TYPE, origin, e)
            return
        if isinstance(message_id, str) and byte_length(message_id) > MAX_IDENTIFIER_BYTES:
            logger.info("Ignored a %s EDU from %s: its message_id is longer than %d bytes",
                        EDU_TYPE, origin, MAX_IDENTIFIER_BYTES)
            return
        seen_key = (origin, message_id) if isinstance(message_id, str) else None
        if seen_key is not None and seen_key in self._seen_remote:
            return
        local: dict[str, dict[str, dict[str, Any]]] = {}
        for user_id, by_device in messages.items():
            if not isinstance(by_device, Mapping) or not self._is_local(user_id):
                continue
            wanted = {str(d): {"type": event_type, "sender": sender, "content": dict(c)}
                      for d, c in by_device.items() if isinstance(c, Mapping)}
            if wanted:
                local[str(user_id)] = wanted
        await self._deliver(local)
        if seen_key is not None:
            self._seen_remote[seen_key] = True

    def _is_local(self, user_id: object) -> bool:
        try:
            return isinstance(user_id, str) and \
                parse_user_id(user_id).server_name == self._server_name
        except ValueError:
            return False

    async def _deliver(self, messages: Mapping[str, Mapping[str, dict[str, Any]]]) -> None:
        if not messages:
            return
        last = await self._store.add(messages, self._clock.time_ms())
        self._replication.publish("to_device", last)
        self.apply_replicated(last)
        if last:
            self._notifier.wake(user_ids=last)

    def apply_replicated(self, last: Mapping[str, int]) -> None:
        """Messages committed (here, or by the process that writes them): user -> the
        position of their latest."""
        for user_id, position in last.items():
            self._changes.mark(user_id, position)

    # -- sync -----------------------------------------------------------------------------

    async def for_sync(self, user_id: str, device_id: str, *, since: int | None, up_to: int
                       ) -> tuple[list[dict[str, Any]], int]:
        """The device's messages for a sync from ``since`` (None: an initial sync) to
        ``up_to``: ``(events, the to-device position of next_batch)``. A ``since`` means the
        device has what came up to it: that is deleted first."""
        after = since or 0
        if since is not None:
            await self.acknowledge(user_id, device_id, since)
        if after >= up_to or not self._changes.changed_since(user_id, after):
            return [], up_to
        rows = await self._store.for_device(user_id, device_id, after=after, up_to=up_to,
                                            limit=PER_SYNC + 1)
        if len(rows) > PER_SYNC:
            rows = rows[:PER_SYNC]
            return [m for _, m in rows], rows[-1][0]  # the rest in the next sync
        return [m for _, m in rows], up_to

    async def page(self, user_id: str, device_id: str, *, after: int, limit: int
                   ) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` of the device's messages after ``after`` (a device that does not
        sync: a dehydrated one), and the position they go up to."""
        up_to = self.position
        rows = await self._store.for_device(user_id, device_id, after=after, up_to=up_to,
                                            limit=limit)
        if len(rows) == limit:
            return [m for _, m in rows], rows[-1][0]
        return [m for _, m in rows], max(up_to, after)

    async def acknowledge(self, user_id: str, device_id: str, up_to: int) -> None:
        """The device has every message up to ``up_to`` (it synced from there): delete
        them (no query when nothing can be left to delete)."""
        if up_to <= 0:
            return
        key = (user_id, device_id)
        done = self._acknowledged.get(key)
        if done is not None and (done >= up_to or not self._changes.changed_since(user_id,
                                                                                  done)):
            return
        await self._store.delete_up_to(user_id, device_id, up_to)
        self._acknowledged[key] = max(up_to, done or 0)


def _parse_messages(body: Mapping[str, Any]) -> Messages:
    """``body["messages"]``, checked: user IDs valid, each content an object of at most
    ``MAX_CONTENT_BYTES``."""
    if "messages" not in body:
        raise MissingParam("Missing parameter: messages")
    messages = body["messages"]
    if not isinstance(messages, dict):
        raise BadJson("messages must be an object")
    for user_id, by_device in messages.items():
        try:
            parse_user_id(user_id)
        except ValueError as e:
            raise InvalidParam(f"Invalid user ID {user_id[:300]!r}: {e}") from None
        if not isinstance(by_device, dict):
            raise BadJson(f"messages[{user_id!r}] must be an object of device IDs")
        for device_id, content in by_device.items():
            if not device_id:
                raise InvalidParam("Device IDs may not be empty")
            if not isinstance(content, dict):
                raise BadJson(f"The message for {user_id} {device_id[:300]!r} must be an "
                              "object")
            if _size(content) > MAX_CONTENT_BYTES:
                raise TooLarge(f"The message for {user_id} {device_id[:300]!r} is larger "
                               f"than {MAX_CONTENT_BYTES} bytes")
    return messages


def _edus(sender: str, event_type: str, by_user: Messages) -> list[dict[str, Any]]:
    """``m.direct_to_device`` contents for one server: the messages packed into EDUs of about
    ``SOFT_MAX_EDU_BYTES`` at most (one message alone may exceed it a little), each with a
    unique ``message_id``."""
    out: list[dict[str, Any]] = []
    current: Messages = {}
    size = 0
    base = _size({"sender": sender, "type": event_type, "message_id": "x" * 32,
                  "messages": {}})
    for user_id, by_device in by_user.items():
        for device_id, content in by_device.items():
            item = _size(content) + len(user_id) + len(device_id) + 16
            if current and base + size + item > SOFT_MAX_EDU_BYTES:
                out.append(_edu(sender, event_type, current))
                current, size = {}, 0
            current.setdefault(user_id, {})[device_id] = content
            size += item
    if current:
        out.append(_edu(sender, event_type, current))
    return out


def _edu(sender: str, event_type: str, messages: Messages) -> dict[str, Any]:
    return {"sender": sender, "type": event_type, "message_id": secrets.token_urlsafe(24),
            "messages": messages}
