"""The room versions this server supports and the rules each one switches on
(https://spec.matrix.org/v1.19/rooms/).

Only versions 10, 11 and 12 are supported; all three use the v4+ event ID format (the
URL-safe reference hash), state resolution v2 and strict canonical JSON.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    # v11 (MSC2175): the create event has no `creator`; its sender is the creator.
    implicit_room_creator: bool
    # v11 (MSC2176, MSC3821, MSC3989): the newer redaction algorithm; `redacts` moves into
    # the content of m.room.redaction.
    updated_redaction_rules: bool
    # v12 (MSC4291): the room ID is the create event's reference hash with a `!` sigil; the
    # create event has no room_id and is never listed in auth_events.
    room_id_is_create_event_hash: bool
    # v12 (MSC4289): creators (the create event's sender and `additional_creators`) have
    # unlimited power and are not listed in m.room.power_levels.
    privileged_creators: bool
    # v12 (MSC4297): state resolution v2.1.
    state_res_v2_1: bool
    # Always true in v10+: power level values must be integers, not strings.
    enforce_int_power_levels: bool = True
    knock_join_rule: bool = True
    restricted_join_rule: bool = True
    knock_restricted_join_rule: bool = True


V10 = RoomVersion("10", implicit_room_creator=False, updated_redaction_rules=False,
                  room_id_is_create_event_hash=False, privileged_creators=False,
                  state_res_v2_1=False)
V11 = RoomVersion("11", implicit_room_creator=True, updated_redaction_rules=True,
                  room_id_is_create_event_hash=False, privileged_creators=False,
                  state_res_v2_1=False)
V12 = RoomVersion("12", implicit_room_creator=True, updated_redaction_rules=True,
                  room_id_is_create_event_hash=True, privileged_creators=True,
                  state_res_v2_1=True)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {v.identifier: v for v in (V10, V11, V12)}
DEFAULT_ROOM_VERSION = V12
