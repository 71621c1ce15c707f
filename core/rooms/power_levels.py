"""Power levels: who may do what in a room (``m.room.power_levels`` and the room creators).

Spec:
- https://spec.matrix.org/v1.19/client-server-api/#mroompower_levels (defaults)
- https://spec.matrix.org/v1.19/server-server-api/#definitions (required power level,
  invite/kick/ban/redact level)
- https://spec.matrix.org/v1.19/rooms/v12/#authorization-rules (v12, MSC4289: room creators
  have infinite power; rule 10.1-10.3 on the shape of ``m.room.power_levels``)

Defaults, when the key (or the whole event) is absent: ``users_default`` 0,
``events_default`` 0, ``state_default`` 50, ``ban`` 50, ``kick`` 50, ``redact`` 50,
``invite`` 0, ``notifications.room`` 50. In v10 and v11 a room without an
``m.room.power_levels`` event gives its creator 100 and everyone else 0; in v12 the creators
(the create event's ``sender`` plus ``content.additional_creators``) always have infinite
power, whether or not the event exists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.types import parse_user_id

CREATE: Final = "m.room.create"
POWER_LEVELS: Final = "m.room.power_levels"

CREATOR_POWER_LEVEL: Final[float] = math.inf
"""A v12 creator's level: above every integer (MSC4289)."""

CREATOR_LEVEL_WITHOUT_POWER_LEVELS: Final = 100
"""A v10/v11 creator's level while the room has no ``m.room.power_levels`` event."""

INTEGER_FIELDS: Final = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)
"""The top-level integer properties (auth rules 10.1 and 10.6)."""

LEVEL_DEFAULTS: Final[Mapping[str, int]] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    # The server-server "Definitions" say 50 for all four named levels, but the
    # m.room.power_levels schema and Synapse say 0 for `invite`; 0 is what every room uses.
    "invite": 0,
}

NOTIFICATION_DEFAULT: Final = 50
"""The level for a notification key (``room``, i.e. ``@room``) that is not listed."""

# Room versions 1-9 accept levels as strings ("stringy power levels", rooms/v1): optional
# whitespace, an optional sign, decimal digits. Kept for completeness; v10+ enforce ints.
_STRINGY_LEVEL = re.compile(r"^[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*$")

PowerLevel: TypeAlias = int | float
"""A user's level: an ``int``, or :data:`CREATOR_POWER_LEVEL` for a v12 creator."""


def parse_level(value: object, room_version: RoomVersion) -> int | None:
    """Read one power level value.

    Args:
        value: A value taken from ``m.room.power_levels`` content.
        room_version: The room's version; with ``enforce_int_power_levels`` (v10+) only
            JSON integers count.

    Returns:
        The integer, or None when ``value`` is not a valid level (booleans never are).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if (
        not room_version.enforce_int_power_levels
        and isinstance(value, str)
        and _STRINGY_LEVEL.match(value)
    ):
        return int(value)
    return None


def check_power_levels_content(content: Mapping[str, Any], room_version: RoomVersion) -> None:
    """Check the shape of ``m.room.power_levels`` content (auth rules 10.1 to 10.3).

    Rule numbers are v12's; they are 9.1 to 9.3 in v10 and v11.

    Args:
        content: The content of an ``m.room.power_levels`` event.
        room_version: The room's version.

    Raises:
        ValueError: A level is not an integer (10.1, 10.2; v10+), or ``users`` is not an
            object of valid user IDs to integers (10.3).
    """
    enforce_ints = room_version.enforce_int_power_levels
    # 10.1: the named levels must be integers.
    for key in INTEGER_FIELDS:
        if key in content and parse_level(content[key], room_version) is None:
            raise ValueError(f"power levels: {key!r} must be an integer")
    # 10.2: `events` and `notifications` must be objects with integer values.
    for key in ("events", "notifications"):
        if key not in content:
            continue
        value = content[key]
        if not isinstance(value, Mapping):
            raise ValueError(f"power levels: {key!r} must be an object")
        if enforce_ints and any(parse_level(v, room_version) is None for v in value.values()):
            raise ValueError(f"power levels: the values of {key!r} must be integers")
    # 10.3: `users` must map valid user IDs to integers.
    if "users" in content:
        users = content["users"]
        if not isinstance(users, Mapping):
            raise ValueError("power levels: 'users' must be an object")
        for user_id, level in users.items():
            try:
                parse_user_id(user_id)
            except ValueError:
                raise ValueError(f"power levels: {user_id!r} is not a valid user ID") from None
            if parse_level(level, room_version) is None:
                raise ValueError(f"power levels: the level of {user_id} must be an integer")


def room_creators(create_event: Event) -> frozenset[str]:
    """The room's creators, per the create event's room version.

    - v12 (``privileged_creators``): the ``sender`` plus every string in
      ``content.additional_creators`` (rule 1.4 has rejected a create event where they are
      not valid user IDs).
    - v11 (``implicit_room_creator``): the ``sender``.
    - v10: ``content.creator``.

    Args:
        create_event: The room's ``m.room.create`` event.

    Returns:
        The creators' user IDs (empty for a v10 create event without ``creator``).
    """
    version = create_event.room_version
    if version.privileged_creators:
        additional = create_event.content.get("additional_creators")
        extra = additional if isinstance(additional, list) else []
        return frozenset([create_event.sender, *(c for c in extra if isinstance(c, str))])
    if version.implicit_room_creator:
        return frozenset([create_event.sender])
    creator = create_event.content.get("creator")
    return frozenset([creator]) if isinstance(creator, str) else frozenset()


@dataclass(frozen=True, slots=True)
class PowerLevels:
    """The power levels in force at one point of a room.

    Attributes:
        room_version: The room's version.
        content: The current ``m.room.power_levels`` content, or None when the room has none.
        creators: The room's creators (see :func:`room_creators`).
    """

    room_version: RoomVersion
    content: Mapping[str, Any] | None
    creators: frozenset[str]

    @classmethod
    def from_events(cls, create_event: Event, power_levels_event: Event | None) -> PowerLevels:
        """Build from the room's create event and current power levels event (if any)."""
        return cls(
            room_version=create_event.room_version,
            content=power_levels_event.content if power_levels_event is not None else None,
            creators=room_creators(create_event),
        )

    @classmethod
    def from_state(cls, state: Mapping[tuple[str, str], Event], create_event: Event) -> PowerLevels:
        """Build from a state map (only its ``m.room.power_levels`` entry is read)."""
        return cls.from_events(create_event, state.get((POWER_LEVELS, "")))

    def is_privileged_creator(self, user_id: str) -> bool:
        """Whether ``user_id`` is a creator with infinite power (v12 only)."""
        return self.room_version.privileged_creators and user_id in self.creators

    def user_level(self, user_id: str) -> PowerLevel:
        """The power level of ``user_id``.

        Args:
            user_id: A user ID.

        Returns:
            :data:`CREATOR_POWER_LEVEL` for a v12 creator; otherwise ``users[user_id]``,
            else ``users_default``, else 0. Without a power levels event: 100 for the
            v10/v11 creator and 0 for everyone else.
        """
        if self.is_privileged_creator(user_id):
            return CREATOR_POWER_LEVEL
        if self.content is None:
            if not self.room_version.privileged_creators and user_id in self.creators:
                return CREATOR_LEVEL_WITHOUT_POWER_LEVELS
            return 0
        users = self.content.get("users")
        if isinstance(users, Mapping) and user_id in users:
            level = parse_level(users[user_id], self.room_version)
            if level is not None:
                return level
        return self.named_level("users_default")

    def named_level(self, name: str) -> int:
        """A top-level level (one of :data:`INTEGER_FIELDS`), or its default.

        Raises:
            KeyError: ``name`` is not one of :data:`INTEGER_FIELDS`.
        """
        default = LEVEL_DEFAULTS[name]
        if self.content is None:
            return default
        level = parse_level(self.content.get(name), self.room_version)
        return default if level is None else level

    @property
    def users_default(self) -> int:
        return self.named_level("users_default")

    @property
    def events_default(self) -> int:
        return self.named_level("events_default")

    @property
    def state_default(self) -> int:
        return self.named_level("state_default")

    @property
    def invite_level(self) -> int:
        return self.named_level("invite")

    @property
    def kick_level(self) -> int:
        return self.named_level("kick")

    @property
    def ban_level(self) -> int:
        return self.named_level("ban")

    @property
    def redact_level(self) -> int:
        return self.named_level("redact")

    def send_level(self, event_type: str, *, is_state: bool) -> int:
        """The *required power level* to send an event of ``event_type``.

        Args:
            event_type: The event's ``type``.
            is_state: Whether the event has a ``state_key``.

        Returns:
            ``events[event_type]`` if listed, else ``state_default`` for state events and
            ``events_default`` for the rest.
        """
        if self.content is not None:
            events = self.content.get("events")
            if isinstance(events, Mapping) and event_type in events:
                level = parse_level(events[event_type], self.room_version)
                if level is not None:
                    return level
        return self.state_default if is_state else self.events_default

    def notification_level(self, key: str) -> int:
        """The level needed to trigger the notification ``key`` (e.g. ``room`` for @room)."""
        if self.content is not None:
            notifications = self.content.get("notifications")
            if isinstance(notifications, Mapping) and key in notifications:
                level = parse_level(notifications[key], self.room_version)
                if level is not None:
                    return level
        return NOTIFICATION_DEFAULT
