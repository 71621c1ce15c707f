"""Simplified sliding sync (MSC4186), as Synapse serves it: request parsing (``request``),
per-connection state (``connection``), the room lists (``room_list``), the rooms' data
(``room_data``), the extensions (``extensions``) and when to answer (``service``)."""

from homeserver.services.sliding_sync.connection import UnknownPos
from homeserver.services.sliding_sync.request import SlidingSyncRequest, parse_request
from homeserver.services.sliding_sync.service import (
    SlidingSyncDeps,
    SlidingSyncService,
    is_empty,
)

__all__ = ["SlidingSyncDeps", "SlidingSyncRequest", "SlidingSyncService", "UnknownPos",
           "is_empty", "parse_request"]
