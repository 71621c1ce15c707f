"""Synthetic rooms for authorization-rule tests.

Events here are unsigned and unhashed: IDs are made up (``$member7``), and every event carries
a placeholder signature from its sender's server (plus any ``signed_by`` servers) so that the
rules which look for a server's signature can be exercised. Nothing runs the auth rules while
building; a test builds the state it wants, then checks one event against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.rooms.auth import StateMap, auth_types_for_event, check_auth_rules

CREATOR = "@creator:a.test"
ADMIN = "@admin:a.test"
MOD = "@mod:a.test"
MOD2 = "@mod2:a.test"
ALICE = "@alice:a.test"
BOB = "@bob:b.test"
EVE = "@eve:e.test"

# The cast of `AuthRoom.standard`: joined, with these levels (creators get theirs per version).
STANDARD_MEMBERS = (CREATOR, ADMIN, MOD, MOD2, ALICE)
STANDARD_USERS = {ADMIN: 100, MOD: 50, MOD2: 50}


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1]


class AuthRoom:
    """A room's state, built by hand.

    Args:
        version: The room version.
        creator: The create event's sender (and ``content.creator`` in v10).
        create_content: Extra or overriding create event content.
        tag: Makes the create event ID (so the v12 room ID) differ between rooms.
    """

    def __init__(
        self,
        version: RoomVersion,
        *,
        creator: str = CREATOR,
        create_content: Mapping[str, Any] | None = None,
        tag: str = "",
    ) -> None:
        self.version = version
        self.creator = creator
        self.state: dict[tuple[str, str], Event] = {}
        self._count = 0
        content: dict[str, Any] = {"room_version": version.identifier}
        if not version.implicit_room_creator:
            content["creator"] = creator
        content.update(create_content or {})
        create_id = f"$create{tag}"
        pdu: dict[str, Any] = {
            "type": "m.room.create",
            "state_key": "",
            "sender": creator,
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
            "origin_server_ts": 0,
            "hashes": {"sha256": "unused"},
            "signatures": {server_of(creator): {"ed25519:test": "unused"}},
        }
        if version.room_id_is_create_event_hash:
            self.room_id = "!" + create_id[1:]
        else:
            self.room_id = f"!room{tag}:{server_of(creator)}"
            pdu["room_id"] = self.room_id
        self.create = Event(create_id, version, pdu)
        self.state[("m.room.create", "")] = self.create
        self.last_event_id = create_id

    @classmethod
    def standard(
        cls,
        version: RoomVersion,
        *,
        join_rule: str | None = "invite",
        levels: Mapping[str, Any] | None = None,
        users: Mapping[str, int] | None = None,
        members: Mapping[str, str] | None = None,
        create_content: Mapping[str, Any] | None = None,
    ) -> AuthRoom:
        """A room with power levels, join rules and the standard cast joined.

        Args:
            version: The room version.
            join_rule: The join rule, or None for no ``m.room.join_rules`` event.
            levels: Power levels content overriding the defaults (top-level keys).
            users: The ``users`` map; defaults to :data:`STANDARD_USERS` (plus the creator at
                100 before v12, where creators cannot be listed).
            members: Memberships to set after the standard cast joined (``{user: membership}``).
            create_content: Extra create event content.
        """
        room = cls(version, create_content=create_content)
        room.add(room.member(CREATOR, "join"))
        room.add(room.power_levels(users=users, **(levels or {})))
        if join_rule is not None:
            room.add(room.join_rules(join_rule))
        for user in STANDARD_MEMBERS[1:]:
            room.set_membership(user, "join")
        for user, membership in (members or {}).items():
            room.set_membership(user, membership)
        return room

    # -- building events ------------------------------------------------------------------------

    def new(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        prev_events: Iterable[str] | None = None,
        signed_by: Iterable[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> Event:
        """An event on top of the room (not added to the state).

        Its ``auth_events`` are what the auth events selection picks from the current state.
        """
        self._count += 1
        event_id = f"${event_type.rsplit('.', 1)[-1]}{self._count}"
        signatures = {
            server: {"ed25519:test": "unused"} for server in [server_of(sender), *signed_by]
        }
        pdu: dict[str, Any] = {
            "type": event_type,
            "room_id": self.room_id,
            "sender": sender,
            "content": dict(content),
            "prev_events": list(prev_events) if prev_events is not None else [self.last_event_id],
            "depth": self._count + 1,
            "origin_server_ts": self._count,
            "hashes": {"sha256": "unused"},
            "signatures": signatures,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu["auth_events"] = [
            self.state[key].event_id
            for key in sorted(
                auth_types_for_event(self.version, event_type, state_key, sender, content)
            )
            if key in self.state
        ]
        pdu.update(extra or {})
        return Event(event_id, self.version, pdu)

    def member(
        self,
        target: str,
        membership: str,
        *,
        sender: str | None = None,
        content: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Event:
        """An ``m.room.member`` event (sent by ``target`` unless ``sender`` is given)."""
        return self.new(
            "m.room.member",
            sender or target,
            {"membership": membership, **(content or {})},
            state_key=target,
            **kwargs,
        )

    def power_levels(
        self, *, sender: str = CREATOR, users: Mapping[str, int] | None = None, **fields: Any
    ) -> Event:
        """An ``m.room.power_levels`` event; ``users`` defaults to the standard cast."""
        if users is None:
            users = dict(STANDARD_USERS)
            if not self.version.privileged_creators:
                users[self.creator] = 100
        return self.new(
            "m.room.power_levels", sender, {"users": dict(users), **fields}, state_key=""
        )

    def join_rules(self, join_rule: str, *, sender: str = CREATOR) -> Event:
        return self.new("m.room.join_rules", sender, {"join_rule": join_rule}, state_key="")

    def message(self, sender: str, **kwargs: Any) -> Event:
        return self.new("m.room.message", sender, {"msgtype": "m.text", "body": "hi"}, **kwargs)

    def redaction(self, sender: str, redacts: str) -> Event:
        """An ``m.room.redaction`` (``redacts`` top-level before v11, in the content after)."""
        if self.version.updated_redaction_rules:
            return self.new("m.room.redaction", sender, {"redacts": redacts})
        return self.new("m.room.redaction", sender, {}, extra={"redacts": redacts})

    # -- state ----------------------------------------------------------------------------------

    def add(self, event: Event) -> Event:
        """Accept ``event`` without checking it: it becomes the latest event (and state)."""
        if event.state_tuple is not None:
            self.state[event.state_tuple] = event
        self.last_event_id = event.event_id
        return event

    def set_membership(self, user: str, membership: str) -> Event:
        """Put a membership in the state (bans and invites come from the admin)."""
        sender = ADMIN if membership in ("ban", "invite") and user != ADMIN else user
        return self.add(self.member(user, membership, sender=sender))

    def auth_map(self, event: Event) -> dict[tuple[str, str], Event]:
        """``event``'s auth events keyed by state (v12: without the create event)."""
        by_id = {e.event_id: e for e in self.state.values()}
        result: dict[tuple[str, str], Event] = {}
        for event_id in event.auth_event_ids:
            key = by_id[event_id].state_tuple
            assert key is not None
            result[key] = by_id[event_id]
        return result

    def check(self, event: Event, *, state: StateMap | None = None, **kwargs: Any) -> None:
        """``check_auth_rules`` against the room state (default) or ``state``."""
        check_auth_rules(event, self.state if state is None else state, **kwargs)
