"""What every part of the authorization rules shares: the names they read, the state map
they read them from, the error they raise and the small reads of that state."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.types import parse_user_id

MEMBER: Final = "m.room.member"
JOIN_RULES: Final = "m.room.join_rules"
THIRD_PARTY_INVITE: Final = "m.room.third_party_invite"
REDACTION: Final = "m.room.redaction"

JOIN: Final = "join"
INVITE: Final = "invite"
LEAVE: Final = "leave"
BAN: Final = "ban"
KNOCK: Final = "knock"

PUBLIC: Final = "public"
RESTRICTED: Final = "restricted"
KNOCK_RESTRICTED: Final = "knock_restricted"

AUTHORISING_USER: Final = "join_authorised_via_users_server"

StateMap: TypeAlias = Mapping[tuple[str, str], Event]
"""State keyed by ``(type, state_key)``: an event's auth events, or the room state."""

ThirdPartyInviteVerifier: TypeAlias = Callable[[Mapping[str, Any], Sequence[str]], bool]
"""``(signed, public_keys) -> bool``: whether any signature in the ``signed`` object of a
``third_party_invite`` verifies with any of the unpadded-Base64 ed25519 ``public_keys``."""


class AuthError(Exception):
    """The event fails the authorization rules (the caller maps this to 403 M_FORBIDDEN).

    Attributes:
        message: Why, for logs and for the ``error`` field of a client response.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message



# -- Reading the state ---------------------------------------------------------------------


def membership_of(state: StateMap, user_id: str) -> str | None:
    """The user's current membership (None: no membership event, i.e. effectively leave)."""
    member = state.get((MEMBER, user_id))
    return member.membership if member is not None else None


def current_join_rule(room_version: RoomVersion, state: StateMap) -> str:
    """The current join rule; ``invite`` when there is no join rules event (as in Synapse)."""
    join_rules = state.get((JOIN_RULES, ""))
    rule = join_rules.content.get("join_rule", INVITE) if join_rules is not None else INVITE
    if not isinstance(rule, str):
        return ""
    enabled = {
        KNOCK: room_version.knock_join_rule,
        RESTRICTED: room_version.restricted_join_rule,
        KNOCK_RESTRICTED: room_version.knock_restricted_join_rule,
    }
    return rule if enabled.get(rule, True) else ""


def original_creator(create: Event) -> str | None:
    """The user whose first join rule 5.3.1 allows: v10 ``content.creator``, v11+ ``sender``."""
    if create.room_version.implicit_room_creator:
        return create.sender
    creator = create.content.get("creator")
    return creator if isinstance(creator, str) else None


def third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    third_party_invite = content.get("third_party_invite")
    if not isinstance(third_party_invite, Mapping):
        return None
    signed = third_party_invite.get("signed")
    if not isinstance(signed, Mapping):
        return None
    token = signed.get("token")
    return token if isinstance(token, str) else None


def has_signature_from(event: Event, server_name: str) -> bool:
    signatures = event.pdu.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    server_signatures = signatures.get(server_name)
    return isinstance(server_signatures, Mapping) and len(server_signatures) > 0


def is_user_id(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_user_id(value)
    except ValueError:
        return False
    return True


def server_of(identifier: str) -> str:
    """The server name of a user or (pre-v12) room ID: everything after the first ``:``."""
    return identifier.split(":", 1)[1] if ":" in identifier else ""
