"""What the services need from outside the core, as Protocols (implemented by
``federation``, wired by the composition root)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from homeserver.events.model import Event


class RemoteRooms(Protocol):
    """Membership handshakes with rooms that live on other servers."""

    async def join(self, user_id: str, room_id: str, servers: Sequence[str],
                   content: Mapping[str, Any]) -> None: ...

    async def leave(self, user_id: str, room_id: str, servers: Sequence[str],
                    content: Mapping[str, Any]) -> None: ...

    async def knock(self, user_id: str, room_id: str, servers: Sequence[str],
                    content: Mapping[str, Any]) -> None: ...

    async def invite(self, event: Event, invite_room_state: list[dict[str, Any]]) -> Event: ...

    async def query_alias(self, alias: str) -> tuple[str, list[str]]: ...

    async def query_profile(self, user_id: str) -> dict[str, Any]: ...
