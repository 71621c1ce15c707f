"""Sync tokens: a position in every stream a sync covers, and the empty response."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidParam

_TOKEN_RE = re.compile(r"^s(\d+)" + r"(?:_(\d+))?" * 6 + "$")
_PARSED_TOKENS = 4096
_parsed: dict[str, SyncToken] = {}
DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 500
MAX_HEROES = 5


@dataclass(frozen=True, slots=True)
class SyncToken:
    """Positions in every stream a sync covers (older, shorter tokens read as zeros)."""

    events: int
    account_data: int = 0
    receipts: int = 0
    presence: int = 0
    typing: int = 0
    to_device: int = 0
    device_lists: int = 0

    def encode(self) -> str:
        return (f"s{self.events}_{self.account_data}_{self.receipts}_{self.presence}_"
                f"{self.typing}_{self.to_device}_{self.device_lists}")

    @classmethod
    def parse(cls, text: str) -> SyncToken:
        # Every member woken by an event asks again with the same next_batch: parse it once.
        token = _parsed.get(text)
        if token is None:
            match = _TOKEN_RE.match(text)
            if match is None:
                raise InvalidParam("Invalid 'since' token")
            token = cls(*(int(g or 0) for g in match.groups()))
            if len(_parsed) >= _PARSED_TOKENS:
                _parsed.clear()
            _parsed[text] = token
        return token

    def at_most(self, other: SyncToken) -> SyncToken:
        """Each position no further than ``other``'s (a token from the future, say from a
        restored backup, means "from now"); itself when it is no further already."""
        if self.events <= other.events and self.account_data <= other.account_data and \
                self.receipts <= other.receipts and self.presence <= other.presence and \
                self.typing <= other.typing and self.to_device <= other.to_device and \
                self.device_lists <= other.device_lists:
            return self
        return SyncToken(min(self.events, other.events),
                         min(self.account_data, other.account_data),
                         min(self.receipts, other.receipts),
                         min(self.presence, other.presence), min(self.typing, other.typing),
                         min(self.to_device, other.to_device),
                         min(self.device_lists, other.device_lists))


def empty_response(token: SyncToken) -> dict[str, Any]:
    """An incremental response with nothing new, up to ``token``."""
    return {"next_batch": token.encode(),
            "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
            "account_data": {"events": []}, "presence": {"events": []},
            "to_device": {"events": []}, "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {}, "device_unused_fallback_key_types": []}


def is_empty(response: dict[str, Any]) -> bool:
    """Whether a sync response carries nothing new (what long-polls and the SSE stream skip)."""
    rooms = response["rooms"]
    return not (rooms["join"] or rooms["invite"] or rooms["leave"] or rooms["knock"]
                or response["account_data"]["events"] or response["presence"]["events"]
                or response["to_device"]["events"] or response["device_lists"]["changed"]
                or response["device_lists"]["left"])
