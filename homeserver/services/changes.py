"""Which keys (rooms, users) changed at which stream position since start-up.

A sync asks "may this room / user have changed after position N?" to skip work whose answer
cannot have changed. Nothing is recorded before start-up, so for a position before it the
answer is always "maybe"."""

from __future__ import annotations


class ChangeLog:
    def __init__(self, start: int = 0) -> None:
        self.start = start
        self._last: dict[str, int] = {}

    def reset(self, start: int) -> None:
        self.start = start
        self._last.clear()

    def mark(self, key: str, position: int) -> None:
        if position > self._last.get(key, 0):
            self._last[key] = position

    def changed_since(self, key: str, position: int) -> bool:
        return position < self.start or self._last.get(key, 0) > position

    def last(self, key: str) -> int:
        """The position of the key's latest change (the start when none since)."""
        return self._last.get(key, self.start)
