"""The event (PDU) as the protocol core sees it: immutable, its JSON kept as received.

``pdu`` is the federation form of the event: every key the sender signed, including ``hashes``
and ``signatures``, never ``event_id`` (v4+ IDs are derived from the reference hash) and never
local metadata (``unsigned`` from federation is kept but is not part of any hash). Treat it as
read-only: copy before changing anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.events.room_versions import RoomVersion


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    event_id: str
    room_version: RoomVersion
    pdu: Mapping[str, Any]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)

    @property
    def type(self) -> str:
        return str(self.pdu["type"])

    @property
    def state_key(self) -> str | None:
        value = self.pdu.get("state_key")
        return value if isinstance(value, str) else None

    @property
    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def state_tuple(self) -> tuple[str, str] | None:
        """``(type, state_key)`` of a state event, else None."""
        return (self.type, self.pdu["state_key"]) if self.is_state else None

    @property
    def sender(self) -> str:
        return str(self.pdu["sender"])

    @property
    def room_id(self) -> str:
        if self.room_version.room_id_is_create_event_hash and self.type == "m.room.create" \
                and self.pdu.get("state_key") == "":
            return "!" + self.event_id[1:]
        return str(self.pdu["room_id"])

    @property
    def content(self) -> Mapping[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, Mapping) else {}

    @property
    def prev_event_ids(self) -> list[str]:
        return list(self.pdu.get("prev_events", []))

    @property
    def auth_event_ids(self) -> list[str]:
        return list(self.pdu.get("auth_events", []))

    @property
    def depth(self) -> int:
        return int(self.pdu.get("depth", 0))

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu.get("origin_server_ts", 0))

    @property
    def redacts(self) -> str | None:
        """The event a redaction redacts (top-level before v11, in the content from v11)."""
        if self.type != "m.room.redaction":
            return None
        if self.room_version.updated_redaction_rules:
            value = self.content.get("redacts")
        else:
            value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None

    @property
    def membership(self) -> str | None:
        if self.type != "m.room.member":
            return None
        value = self.content.get("membership")
        return value if isinstance(value, str) else None
