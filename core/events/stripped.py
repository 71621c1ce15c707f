"""Stripped state: what a user invited to (or knocking on) a room is shown of it
(https://spec.matrix.org/v1.19/client-server-api/#stripped-state)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The state the spec recommends sharing with invitees and knockers (all with state key "").
STRIPPED_STATE_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
                        "m.room.canonical_alias", "m.room.encryption", "m.room.topic")


def stripped(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """An event reduced to the keys stripped state carries."""
    return {k: pdu[k] for k in ("type", "state_key", "sender", "content") if k in pdu}
