"""Send-to-device messages waiting in each device's inbox (``device_inbox``).

Every stored message is one position in the to-device stream; a device's sync reads its inbox
after the position its ``since`` token holds, and deletes what is at or before it (the device
has acknowledged that). A message is kept only for a device that exists when it arrives, and
only while that device does (deleting a device deletes its messages, ``DeviceStore``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, delete, select

from storage.engine import DatabaseEngine
from storage.ids import StreamStore
from storage.schema import device_inbox, devices

_CHUNK = 500
WILDCARD = "*"


class ToDeviceStore(StreamStore):
    def __init__(self, engine: DatabaseEngine) -> None:
        super().__init__(engine, device_inbox.c.stream_id)

    async def add(self, messages: Mapping[str, Mapping[str, dict[str, Any]]], now: int
                  ) -> dict[str, int]:
        """Store ``{user_id: {device_id or "*": {"type", "sender", "content"}}}``: one row per
        existing target device (``*``: each of the user's devices not named on its own),
        in the order given. Returns user -> the stream position of their last new row
        (users with no row left out)."""
        user_ids = [u for u, by_device in messages.items() if by_device]
        if not user_ids:
            return {}
        last: dict[str, int] = {}
        async with self._ordered, self._db.write() as conn:
            known: dict[str, list[str]] = {}
            for i in range(0, len(user_ids), _CHUNK):
                rows = await conn.execute(
                    select(devices.c.user_id, devices.c.device_id)
                    .where(devices.c.user_id.in_(user_ids[i:i + _CHUNK]))
                    .order_by(devices.c.user_id, devices.c.device_id))
                for user_id, device_id in rows:
                    known.setdefault(user_id, []).append(device_id)
            values: list[dict[str, Any]] = []
            for user_id in user_ids:
                existing = known.get(user_id, [])
                existing_set = set(existing)
                by_device = messages[user_id]
                targets = [(d, m) for d, m in by_device.items()
                           if d != WILDCARD and d in existing_set]
                wildcard = by_device.get(WILDCARD)
                if wildcard is not None:
                    targets += [(d, wildcard) for d in existing if d not in by_device]
                for device_id, message in targets:
                    stream_id = self._stream.next()
                    values.append(dict(stream_id=stream_id, user_id=user_id,
                                       device_id=device_id, message_json=json.dumps(message),
                                       received_ts=now))
                    last[user_id] = stream_id
            if values:
                await conn.execute(device_inbox.insert(), values)
        if last:
            self._committed(max(last.values()))
        return last

    async def for_device(self, user_id: str, device_id: str, *, after: int, up_to: int,
                         limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The device's messages with ``after < stream_id <= up_to``, oldest first, at most
        ``limit``: ``(stream_id, {"type", "sender", "content"})``."""
        query = (select(device_inbox.c.stream_id, device_inbox.c.message_json)
                 .where(and_(device_inbox.c.user_id == user_id,
                             device_inbox.c.device_id == device_id,
                             device_inbox.c.stream_id > after,
                             device_inbox.c.stream_id <= up_to))
                 .order_by(device_inbox.c.stream_id).limit(limit))
        async with self._db.read() as conn:
            rows = await conn.execute(query)
            return [(int(r.stream_id), json.loads(r.message_json)) for r in rows]

    async def delete_up_to(self, user_id: str, device_id: str, up_to: int) -> int:
        """Delete the device's messages at or before ``up_to`` (it has them); returns how
        many."""
        async with self._db.write() as conn:
            result = await conn.execute(delete(device_inbox).where(and_(
                device_inbox.c.user_id == user_id, device_inbox.c.device_id == device_id,
                device_inbox.c.stream_id <= up_to)))
            return int(result.rowcount or 0)
