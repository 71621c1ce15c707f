"""What the services need from outside the core, as Protocols (implemented by
``federation``, wired by the composition root)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.events.model import Event


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


class RemoteFilterUnsupported(Exception):
    """The remote server does not take a filtered room directory query (``POST
    /publicRooms``, MSC2197): ask again unfiltered and filter here."""


class RemoteDirectory(Protocol):
    """Another server's published room directory (``/_matrix/federation/v1/publicRooms``)."""

    async def public_rooms(self, server: str, *, limit: int, since: str | None,
                           include_all_networks: bool, third_party_instance_id: str | None,
                           room_filter: Mapping[str, Any] | None) -> Any:
        """The remote server's answer as it came (untrusted JSON): ``GET`` without
        ``room_filter``, ``POST`` with it.

        Raises:
            RemoteFilterUnsupported: ``room_filter`` was given and the server does not know
                the ``POST`` form.
            MatrixError: for the client: 403 when the server refuses us, 502 when it cannot
                be reached or answers with an error.
        """
        ...


class RemoteKeysFailed(Exception):
    """Another server gave no usable answer to a key query or claim: ``status`` and
    ``message`` for the client's ``failures`` (503 when it could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RemoteKeys(Protocol):
    """Other servers' users' end-to-end keys (``/_matrix/federation/v1/user/keys/query``,
    ``/user/keys/claim`` and ``/user/devices/{userId}``). Answers are the remote server's
    JSON as it came (untrusted: the caller keeps only what it asked for).

    Raises:
        RemoteKeysFailed: no answer within ``timeout_s``, or an error answer.
    """

    async def query(self, server: str, body: Mapping[str, Any], timeout_s: float) -> Any: ...

    async def claim(self, server: str, body: Mapping[str, Any], timeout_s: float) -> Any: ...

    async def devices(self, server: str, user_id: str, timeout_s: float) -> Any: ...


RemoteQueue = Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]]
"""Queues ``(destination, m.direct_to_device content)`` durably for other servers."""

Backfill = Callable[[str], Awaitable[bool]]
"""Fetches a room's history from before anything here; whether anything new came."""


class LocalEdus(Protocol):
    """Told what this server's users do that other servers sharing a room with them hear
    of: typing, public read receipts and presence (sent as EDUs)."""

    def typing_changed(self, room_id: str, user_id: str, typing: bool,
                       servers: Sequence[str] | None = None) -> None:
        """``servers``: the room's other servers when the caller knows them (a message that
        ends its sender's typing: the servers it is queued for, so the end of typing goes
        out in the message's transaction)."""
        ...

    def receipt_sent(self, room_id: str, user_id: str, receipt_type: str, event_id: str,
                     thread_id: str, ts: int) -> None: ...

    def presence_changed(self, user_id: str, content: Mapping[str, Any]) -> None:
        """``content``: the user's ``m.presence`` content as of the change."""
        ...


class DeviceListEdus(Protocol):
    """Told when a local user's devices or cross-signing keys changed: queues the EDUs
    (``m.device_list_update``, ``m.signing_key_update``; whole EDUs, built by the caller)
    durably for every other server that shares a room with the user."""

    async def device_list_changed(self, user_id: str,
                                  edus: Sequence[Mapping[str, Any]]) -> None: ...


@dataclass(frozen=True, slots=True)
class RemoteMediaInfo:
    """Labels of media as another server sent it (untrusted: its type and name are only
    labels)."""

    content_type: str | None
    filename: str | None


class MediaSink(Protocol):
    """Where fetched content goes as it comes (a file being written)."""

    async def write(self, chunk: bytes) -> None: ...


class RemoteMedia(Protocol):
    """Other servers' media (``/_matrix/federation/v1/media/download|thumbnail/{mediaId}``),
    streamed into a sink: never held whole in memory."""

    async def download(self, server: str, media_id: str, *, sink: MediaSink, max_bytes: int,
                       timeout_s: float) -> RemoteMediaInfo:
        """Write the content to ``sink``; its labels.

        Raises:
            MatrixError: for the client: 404 when the server has no such media, 502 when it
                cannot be reached or answers badly, 502 ``M_TOO_LARGE`` when it sends more
                than ``max_bytes`` (what ``sink`` got is then to be thrown away).
        """
        ...

    async def thumbnail(self, server: str, media_id: str, *, width: int, height: int,
                        method: str, animated: bool, sink: MediaSink, max_bytes: int,
                        timeout_s: float) -> RemoteMediaInfo:
        """Write a thumbnail the server makes of its media to ``sink``; its labels.

        Raises:
            MatrixError: as :meth:`download` (400 when it cannot thumbnail it).
        """
        ...


class RemoteHierarchy(Protocol):
    """Other servers' space hierarchies (``/_matrix/federation/v1/hierarchy/{roomId}``)."""

    async def hierarchy(self, servers: Sequence[str], room_id: str,
                        suggested_only: bool) -> Any:
        """The answer of the first of ``servers`` that gives one, as it came (untrusted
        JSON); None when none does."""
        ...


class DestinationRetry(Protocol):
    """The federation sender, told to stop backing off from a destination."""

    def peer_is_up(self, origin: str) -> None:
        """Retry ``origin`` at once (its backoff is forgotten)."""


@dataclass(frozen=True)
class FederationPorts:
    """What the services ask of other servers, built by federation before the services."""

    rooms: RemoteRooms
    directory: RemoteDirectory
    to_device: RemoteQueue
    backfill: Backfill
    edus: LocalEdus
    keys: RemoteKeys
    device_lists: DeviceListEdus
    media: RemoteMedia | None = None
    hierarchy: RemoteHierarchy | None = None
    retry: DestinationRetry | None = None


class Replication(Protocol):
    """Tells the server's other processes what this one changed (``homeserver.replication``);
    with one process it tells nobody (``active`` is false: what a message would carry need
    not even be built)."""

    active: bool

    def publish(self, topic: str, payload: Any) -> None: ...


class _Alone:
    active = False

    def publish(self, topic: str, payload: Any) -> None:
        pass


ALONE: Replication = _Alone()
"""One process: nobody to tell."""

