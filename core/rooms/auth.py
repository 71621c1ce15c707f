"""The authorization rules of room versions 10, 11 and 12.

Spec: https://spec.matrix.org/v1.19/rooms/v12/#authorization-rules (and ``rooms/v10``,
``rooms/v11``); auth events selection:
https://spec.matrix.org/v1.19/server-server-api/#auth-events-selection; handling
redactions: https://spec.matrix.org/v1.19/rooms/v12/#handling-redactions. v12 adds MSC4289
(privileged creators), MSC4291 (the room ID is the create event's ID) and MSC4307 (auth events
must be in the event's room).

**Rule numbers** in this module are v12's. v12 inserted rule 2, so from rule 3 on a v10/v11
rule is numbered one lower (v12 rule 5.3.1 is v10/v11 rule 4.3.1):

====  =======  =====================================================
v12   v10/11   rule
====  =======  =====================================================
1     1        ``m.room.create``
2     --       the room ID names an accepted create event
3     2        the ``auth_events`` (:func:`check_auth_events`)
4     3        ``m.federate``
5     4        ``m.room.member``
6     5        the sender must be joined
7     6        ``m.room.third_party_invite``
8     7        the event type's required power level
9     8        a ``state_key`` starting with ``@`` must be the sender
10    9        ``m.room.power_levels``
11    10       otherwise, allow
====  =======  =====================================================

**Use** (server-server "Checks performed on receipt of a PDU"):

- check 4, against the event's own auth events::

      auth_map = check_auth_events(event, fetched_auth_events, rejected_event_ids=rejected)
      check_auth_rules(event, auth_map, create_event=create)   # create: needed in v12 only

- checks 5 and 6 (state before the event; current state, for soft failure), and the
  iterative auth checks of state resolution::

      check_auth_rules(event, state)   # a state map holds the create event in every version

The signatures on an event are verified before any of this (receipt check 2, see
``core.events.signing.required_signers``); rule 5.2 here only checks that the
authorising server's signature is among them, so a resident server must add its own signature
to a restricted join before checking it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeAlias

from nacl.exceptions import BadSignatureError
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.events.unpadded_base64 import decode_base64
from core.rooms.power_levels import (
    CREATE,
    INTEGER_FIELDS,
    POWER_LEVELS,
    PowerLevels,
    check_power_levels_content,
    parse_level,
    room_creators,
)
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


# -- Auth events --------------------------------------------------------------------------------


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
) -> set[tuple[str, str]]:
    """The ``(type, state_key)`` pairs an event's ``auth_events`` are selected from.

    Server-server "Auth events selection": the create event (not in v12, MSC4291), the power
    levels, the sender's membership; for ``m.room.member`` also the target's membership, the
    join rules (``join``, ``invite`` and ``knock``: rule 5.7.1 reads them for knocks, as
    Synapse does), the ``m.room.third_party_invite`` named by
    ``third_party_invite.signed.token`` (invites) and the membership of
    ``join_authorised_via_users_server`` (joins, room versions with restricted joins).

    Args:
        room_version: The room's version.
        event_type: The event's ``type``.
        state_key: The event's ``state_key``, or None.
        sender: The event's ``sender``.
        content: The event's ``content``.

    Returns:
        The pairs; empty for ``m.room.create``. Malformed content adds nothing.
    """
    if event_type == CREATE:
        return set()
    types = {(POWER_LEVELS, ""), (MEMBER, sender)}
    if not room_version.room_id_is_create_event_hash:
        types.add((CREATE, ""))
    if event_type != MEMBER or state_key is None:
        return types
    membership = content.get("membership")
    types.add((MEMBER, state_key))
    if membership in (JOIN, INVITE, KNOCK):
        types.add((JOIN_RULES, ""))
    if membership == INVITE:
        token = _third_party_invite_token(content)
        if token is not None:
            types.add((THIRD_PARTY_INVITE, token))
    if membership == JOIN and room_version.restricted_join_rule:
        authoriser = content.get(AUTHORISING_USER)
        if isinstance(authoriser, str):
            types.add((MEMBER, authoriser))
    return types


def check_auth_events(
    event: Event,
    auth_events: Iterable[Event],
    *,
    rejected_event_ids: Collection[str] = frozenset(),
) -> dict[tuple[str, str], Event]:
    """Apply rule 3 (v10/v11: 2) to an event's ``auth_events`` and key them by state.

    - 3.1: no two entries for one ``(type, state_key)``;
    - 3.2: every entry is one the auth events selection picks (so no create event in v12);
    - 3.3: no entry was itself rejected;
    - 3.5 (v12, MSC4307; applied to every version, as Synapse does): every entry is in the
      event's room;
    - 2.4 (v10/v11 only): the create event is among them.

    Args:
        event: The event being authorised (not ``m.room.create``: rule 1 ignores
            ``auth_events``, and this returns an empty map for it).
        auth_events: The events named by ``event.auth_event_ids`` (others are ignored).
        rejected_event_ids: The IDs of events known to have been rejected.

    Returns:
        The auth events keyed by ``(type, state_key)``, for :func:`check_auth_rules`.

    Raises:
        AuthError: A rule fails, or one of ``event.auth_event_ids`` is not in
            ``auth_events`` (fetch missing auth events first, or reject the event).
    """
    if event.type == CREATE:
        return {}
    version = event.room_version
    by_id = {auth_event.event_id: auth_event for auth_event in auth_events}
    expected = auth_types_for_event(
        version, event.type, event.state_key, event.sender, event.content
    )
    selected: dict[tuple[str, str], Event] = {}
    for auth_event_id in event.auth_event_ids:
        auth_event = by_id.get(auth_event_id)
        if auth_event is None:
            raise AuthError(f"Auth event {auth_event_id} is unknown")
        key = auth_event.state_tuple
        # 3.1
        if key is not None and key in selected:
            raise AuthError(f"Duplicate auth events for {key}")
        # 3.2
        if key is None or key not in expected:
            raise AuthError(f"Auth event {auth_event_id} ({key}) is not one the event needs")
        # 3.3
        if auth_event_id in rejected_event_ids:
            raise AuthError(f"Auth event {auth_event_id} was rejected")
        # 3.5
        if auth_event.room_id != event.room_id:
            raise AuthError(f"Auth event {auth_event_id} is in another room")
        selected[key] = auth_event
    # 2.4 (v10/v11)
    if not version.room_id_is_create_event_hash and (CREATE, "") not in selected:
        raise AuthError("No m.room.create event among the auth events")
    return selected


def create_event_id_for_room(room_id: str) -> str:
    """The create event's ID for a v12 room ID (MSC4291: ``!`` swapped for ``$``)."""
    return "$" + room_id[1:]


# -- The rules ----------------------------------------------------------------------------------


def check_auth_rules(
    event: Event,
    auth_events: StateMap,
    *,
    create_event: Event | None = None,
    verify_third_party_invite: ThirdPartyInviteVerifier | None = None,
) -> None:
    """Check ``event`` against the authorization rules of its room version.

    Rule 3 (the auth events themselves) is :func:`check_auth_events`; the event's signatures
    and hashes are checked before this. Rule numbers are v12's (module docstring).

    Args:
        event: The event to authorise.
        auth_events: The state to check against, keyed by ``(type, state_key)``: the event's
            auth events (from :func:`check_auth_events`) or a room state. Only the entries
            the rules read are used.
        create_event: The room's ``m.room.create`` event. In v12 the event's auth events do
            not contain it (MSC4291): pass it here (its ID is
            ``create_event_id_for_room(event.room_id)``), unless ``auth_events`` is a state
            map holding it. In v10/v11 it must be in ``auth_events`` (rule 2.4); if also
            given here it must be the same event. The caller vouches that it was accepted.
        verify_third_party_invite: Checks the signatures of a third-party invite's ``signed``
            object (rule 5.4.1.7); defaults to :func:`verify_third_party_invite_signature`.

    Raises:
        AuthError: The event is not allowed.
    """
    if event.type == CREATE:
        _check_create_event(event)
        return
    create = _find_create_event(event, auth_events, create_event)  # 2 (v12), 2.4 (v10/v11)
    _check_federation(event, create)  # 4
    levels = _power_levels(event.room_version, auth_events, create)
    if event.type == MEMBER:
        _check_member_event(
            event,
            auth_events,
            create,
            levels,
            verify_third_party_invite or verify_third_party_invite_signature,
        )
        return
    # 6: the sender must be joined.
    if _membership(auth_events, event.sender) != JOIN:
        raise AuthError(f"{event.sender} is not in the room")
    sender_level = levels.user_level(event.sender)
    # 7: m.room.third_party_invite needs the invite level (and nothing else).
    if event.type == THIRD_PARTY_INVITE:
        if sender_level < levels.invite_level:
            raise AuthError(f"{event.sender} may not invite users")
        return
    # 8: the event type's required power level.
    required = levels.send_level(event.type, is_state=event.is_state)
    if sender_level < required:
        raise AuthError(
            f"{event.sender} needs power level {required} to send {event.type} (has {sender_level})"
        )
    # 9: a state_key starting with @ must be the sender's own.
    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != event.sender:
        raise AuthError(f"{event.sender} may not set state keyed by another user ({state_key})")
    # 10: m.room.power_levels.
    if event.type == POWER_LEVELS:
        _check_power_levels_event(event, levels)
    # 11: otherwise, allow.


def _check_create_event(event: Event) -> None:
    """Rule 1: ``m.room.create``.

    1.1 no ``prev_events``; 1.2 v10/v11: the ``room_id``'s server is the ``sender``'s, v12:
    no ``room_id`` at all (MSC4291); 1.3 a present ``content.room_version`` is known;
    1.4 v10: ``content.creator`` is present, v12: ``content.additional_creators``, if present,
    is an array of valid user IDs (MSC4289).
    """
    version = event.room_version
    content = event.content
    # 1.1
    if event.prev_event_ids:
        raise AuthError("The create event has prev_events")
    # 1.2
    if version.room_id_is_create_event_hash:
        if "room_id" in event.pdu:
            raise AuthError("The create event has a room_id")
    else:
        room_id = event.pdu.get("room_id")
        if not isinstance(room_id, str) or _server_of(room_id) != _server_of(event.sender):
            raise AuthError("The create event's room_id is not on the sender's server")
    # 1.3
    if "room_version" in content:
        room_version = content["room_version"]
        if not isinstance(room_version, str) or room_version not in KNOWN_ROOM_VERSIONS:
            raise AuthError(f"Unknown room version {room_version!r}")
    # 1.4 (v10)
    if not version.implicit_room_creator and "creator" not in content:
        raise AuthError("The create event has no creator")
    # 1.4 (v12)
    if version.privileged_creators and "additional_creators" in content:
        additional = content["additional_creators"]
        if not isinstance(additional, list) or not all(_is_user_id(u) for u in additional):
            raise AuthError("additional_creators must be an array of user IDs")
    # 1.5: otherwise, allow.


def _find_create_event(event: Event, auth_events: StateMap, given: Event | None) -> Event:
    """Rule 2 (v12) and rule 2.4 (v10/v11): find the room's create event."""
    in_map = auth_events.get((CREATE, ""))
    if in_map is not None and given is not None and in_map.event_id != given.event_id:
        raise AuthError("Two different create events were given")
    if not event.room_version.room_id_is_create_event_hash:
        # 2.4 (v10/v11)
        if in_map is None:
            raise AuthError("No m.room.create event among the auth events")
        if in_map.room_id != event.room_id:
            raise AuthError("The create event is in another room")
        return in_map
    # 2 (v12)
    create = given if given is not None else in_map
    if create is None:
        raise AuthError("The room's create event is unknown")
    if (
        create.type != CREATE
        or create.state_key != ""
        or not create.event_id.startswith("$")
        or event.room_id != "!" + create.event_id[1:]
    ):
        raise AuthError(f"Room ID {event.room_id} is not that of create event {create.event_id}")
    return create


def _check_federation(event: Event, create: Event) -> None:
    """Rule 4: ``m.federate: false`` keeps out senders from other servers than the creator's."""
    federates = create.content.get("m.federate") is not False
    if not federates and _server_of(event.sender) != _server_of(create.sender):
        raise AuthError("The room does not federate")


def _power_levels(room_version: RoomVersion, state: StateMap, create: Event) -> PowerLevels:
    power_levels_event = state.get((POWER_LEVELS, ""))
    return PowerLevels(
        room_version=room_version,
        content=power_levels_event.content if power_levels_event is not None else None,
        creators=room_creators(create),
    )


# -- Rule 5: m.room.member ----------------------------------------------------------------------


def _check_member_event(
    event: Event,
    state: StateMap,
    create: Event,
    levels: PowerLevels,
    verify_third_party_invite: ThirdPartyInviteVerifier,
) -> None:
    """Rule 5: ``m.room.member``; allows or raises, never falls through to rule 6."""
    target = event.state_key
    membership = event.membership
    # 5.1
    if target is None or membership is None:
        raise AuthError("A membership event needs a state_key and content.membership")
    # Not a numbered rule, but the m.room.member schema's, and Synapse and ruma reject such
    # events while authorising them: the state_key is a user ID.
    if not target.startswith("@") or ":" not in target:
        raise AuthError(f"Membership state_key {target!r} is not a user ID")
    # 5.2
    if event.room_version.restricted_join_rule and AUTHORISING_USER in event.content:
        authoriser = event.content[AUTHORISING_USER]
        if not _is_user_id(authoriser) or not _has_signature_from(event, _server_of(authoriser)):
            raise AuthError(f"The event is not signed by the server of {authoriser!r}")
    if membership == JOIN:
        _check_join(event, state, create, levels)  # 5.3
    elif membership == INVITE:
        _check_invite(event, state, levels, verify_third_party_invite)  # 5.4
    elif membership == LEAVE:
        _check_leave(event, state, levels)  # 5.5
    elif membership == BAN:
        _check_ban(event, state, levels)  # 5.6
    elif membership == KNOCK and event.room_version.knock_join_rule:
        _check_knock(event, state)  # 5.7
    else:
        # 5.8
        raise AuthError(f"Unknown membership {membership!r}")


def _check_join(event: Event, state: StateMap, create: Event, levels: PowerLevels) -> None:
    """Rule 5.3: ``membership: join``."""
    sender, target = event.sender, event.state_key
    # 5.3.1: the creator's own first join (v10: content.creator; v11+: the create's sender).
    if event.prev_event_ids == [create.event_id] and target == _original_creator(create):
        return
    # 5.3.2
    if sender != target:
        raise AuthError(f"{sender} may not join {target} to the room")
    membership = _membership(state, sender)
    # 5.3.3
    if membership == BAN:
        raise AuthError(f"{sender} is banned from the room")
    join_rule = _join_rule(event.room_version, state)
    # 5.3.4
    if join_rule in (INVITE, KNOCK):
        if membership in (INVITE, JOIN):
            return
        raise AuthError(f"{sender} is not invited to the room")
    # 5.3.5
    if join_rule in (RESTRICTED, KNOCK_RESTRICTED):
        if membership in (JOIN, INVITE):
            return
        authoriser = event.content.get(AUTHORISING_USER)
        if not isinstance(authoriser, str):
            raise AuthError("A restricted join needs join_authorised_via_users_server")
        # "A user with sufficient permission to invite": joined (5.4.2), invite level (5.4.4).
        if _membership(state, authoriser) != JOIN:
            raise AuthError(f"Authorising user {authoriser} is not in the room")
        if levels.user_level(authoriser) < levels.invite_level:
            raise AuthError(f"Authorising user {authoriser} may not invite users")
        return
    # 5.3.6
    if join_rule == PUBLIC:
        return
    # 5.3.7
    raise AuthError(f"Join rule {join_rule!r} does not let {sender} join")


def _check_invite(
    event: Event,
    state: StateMap,
    levels: PowerLevels,
    verify_third_party_invite: ThirdPartyInviteVerifier,
) -> None:
    """Rule 5.4: ``membership: invite``."""
    sender, target = event.sender, event.state_key
    assert target is not None  # 5.1
    target_membership = _membership(state, target)
    # 5.4.1
    if "third_party_invite" in event.content:
        _check_third_party_signed_invite(event, state, target_membership, verify_third_party_invite)
        return
    # 5.4.2
    if _membership(state, sender) != JOIN:
        raise AuthError(f"{sender} is not in the room")
    # 5.4.3
    if target_membership == JOIN:
        raise AuthError(f"{target} is already in the room")
    if target_membership == BAN:
        raise AuthError(f"{target} is banned from the room")
    # 5.4.4
    if levels.user_level(sender) >= levels.invite_level:
        return
    # 5.4.5
    raise AuthError(f"{sender} may not invite users")


def _check_third_party_signed_invite(
    event: Event,
    state: StateMap,
    target_membership: str | None,
    verify: ThirdPartyInviteVerifier,
) -> None:
    """Rule 5.4.1: an invite made from an ``m.room.third_party_invite``."""
    # 5.4.1.1
    if target_membership == BAN:
        raise AuthError(f"{event.state_key} is banned from the room")
    third_party_invite = event.content["third_party_invite"]
    # 5.4.1.2
    signed = third_party_invite.get("signed") if isinstance(third_party_invite, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError("third_party_invite has no signed object")
    # 5.4.1.3
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs mxid and token")
    # 5.4.1.4
    if mxid != event.state_key:
        raise AuthError("third_party_invite.signed.mxid is not the invited user")
    # 5.4.1.5
    invite = state.get((THIRD_PARTY_INVITE, token))
    if invite is None:
        raise AuthError("No m.room.third_party_invite matches the token")
    # 5.4.1.6
    if invite.sender != event.sender:
        raise AuthError("Only the sender of the third-party invite may use it")
    # 5.4.1.7
    if verify(signed, third_party_invite_public_keys(invite)):
        return
    # 5.4.1.8
    raise AuthError("third_party_invite.signed is not signed by the invite's keys")


def _check_leave(event: Event, state: StateMap, levels: PowerLevels) -> None:
    """Rule 5.5: ``membership: leave`` (leaving, rejecting, retracting, kicking, unbanning)."""
    sender, target = event.sender, event.state_key
    assert target is not None  # 5.1
    sender_membership = _membership(state, sender)
    # 5.5.1
    if sender == target:
        if sender_membership in (INVITE, JOIN, KNOCK):
            return
        raise AuthError(f"{sender} is not in, invited to or knocking on the room")
    # 5.5.2
    if sender_membership != JOIN:
        raise AuthError(f"{sender} is not in the room")
    sender_level = levels.user_level(sender)
    # 5.5.3
    if _membership(state, target) == BAN and sender_level < levels.ban_level:
        raise AuthError(f"{sender} may not unban users")
    # 5.5.4
    if sender_level >= levels.kick_level and levels.user_level(target) < sender_level:
        return
    # 5.5.5
    raise AuthError(f"{sender} may not kick {target}")


def _check_ban(event: Event, state: StateMap, levels: PowerLevels) -> None:
    """Rule 5.6: ``membership: ban``."""
    sender, target = event.sender, event.state_key
    assert target is not None  # 5.1
    # 5.6.1
    if _membership(state, sender) != JOIN:
        raise AuthError(f"{sender} is not in the room")
    sender_level = levels.user_level(sender)
    # 5.6.2
    if sender_level >= levels.ban_level and levels.user_level(target) < sender_level:
        return
    # 5.6.3
    raise AuthError(f"{sender} may not ban {target}")


def _check_knock(event: Event, state: StateMap) -> None:
    """Rule 5.7: ``membership: knock``."""
    sender = event.sender
    # 5.7.1
    if _join_rule(event.room_version, state) not in (KNOCK, KNOCK_RESTRICTED):
        raise AuthError("The room does not allow knocking")
    # 5.7.2
    if sender != event.state_key:
        raise AuthError(f"{sender} may not knock for another user")
    # 5.7.3
    membership = _membership(state, sender)
    if membership not in (BAN, INVITE, JOIN):
        return
    # 5.7.4
    raise AuthError(f"{sender} may not knock while their membership is {membership}")


# -- Rule 10: m.room.power_levels ---------------------------------------------------------------


def _check_power_levels_event(event: Event, current: PowerLevels) -> None:
    """Rule 10: ``m.room.power_levels`` (after rules 8 and 9 have passed).

    Args:
        event: The new power levels event.
        current: The levels in force before it (``current.content`` is None when the room
            has no power levels event yet).
    """
    version = event.room_version
    content = event.content
    # 10.1, 10.2, 10.3
    try:
        check_power_levels_content(content, version)
    except ValueError as e:
        raise AuthError(str(e)) from None
    new_users = _submap(content, "users")
    # 10.4 (v12): creators are never listed.
    if version.privileged_creators:
        listed = sorted(current.creators.intersection(new_users))
        if listed:
            raise AuthError(f"Room creators may not be listed in users: {', '.join(listed)}")
    # 10.5
    if current.content is None:
        return
    old = current.content
    sender_level = current.user_level(event.sender)

    def too_high(what: str, level: int) -> AuthError:
        return AuthError(
            f"{event.sender} (power level {sender_level}) may not change {what} at level {level}"
        )

    # 10.6: added, changed or removed top-level levels.
    old_named = {k: old[k] for k in INTEGER_FIELDS if k in old}
    new_named = {k: content[k] for k in INTEGER_FIELDS if k in content}
    for key, before, after in _changed_levels(old_named, new_named, version):
        for level in (before, after):  # 10.6.1, 10.6.2
            if level is not None and level > sender_level:
                raise too_high(key, level)
    for prop in ("events", "notifications"):
        for key, before, after in _changed_levels(
            _submap(old, prop), _submap(content, prop), version
        ):
            # 10.7: changed or removed.
            if before is not None and before > sender_level:
                raise too_high(f"{prop}[{key!r}]", before)
            # 10.8: added or changed.
            if after is not None and after > sender_level:
                raise too_high(f"{prop}[{key!r}]", after)
    for user_id, before, after in _changed_levels(_submap(old, "users"), new_users, version):
        # 10.9: changed or removed, other than the sender's own entry.
        if user_id != event.sender and before is not None and before >= sender_level:
            raise too_high(f"the level of {user_id}", before)
        # 10.10: added or changed.
        if after is not None and after > sender_level:
            raise too_high(f"the level of {user_id}", after)
    # 10.11: otherwise, allow.


def _changed_levels(
    old: Mapping[str, Any], new: Mapping[str, Any], room_version: RoomVersion
) -> Iterator[tuple[str, int | None, int | None]]:
    """``(key, old level, new level)`` for each key added, changed or removed (None: absent)."""
    for key in sorted(set(old) | set(new)):
        before = parse_level(old[key], room_version) if key in old else None
        after = parse_level(new[key], room_version) if key in new else None
        if key in old and key in new and before == after:
            continue
        yield key, before, after


def _submap(content: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = content.get(key)
    return value if isinstance(value, Mapping) else {}


# -- Redactions ---------------------------------------------------------------------------------


def redaction_is_allowed(
    redaction: Event,
    redacted: Event | None,
    state: StateMap,
    *,
    create_event: Event | None = None,
) -> bool:
    """Whether a server should apply ``redaction`` ("Handling redactions", v3+).

    Redactions are not part of the auth rules (``check_auth_rules`` only applies the event
    type's required power level, rule 8). Once the redaction and the event it redacts are
    both known and valid, it is applied if:

    1. the redaction's sender has at least the *redact level*, or
    2. the redaction's sender is on the same server as the redacted event's sender.

    Args:
        redaction: An accepted ``m.room.redaction`` event.
        redacted: The event it redacts, or None while it has not been received.
        state: The room state to read the power levels from (as in :func:`check_auth_rules`).
        create_event: The room's create event, as in :func:`check_auth_rules`.

    Returns:
        True to apply it now. False when ``redacted`` is None and condition 1 fails (wait for
        the event), or when ``redacted`` is not the event named by ``redaction.redacts`` in
        the same room, or when neither condition holds.

    Raises:
        AuthError: The create event cannot be found (see :func:`check_auth_rules`).
    """
    if redacted is not None and (
        redacted.event_id != redaction.redacts or redacted.room_id != redaction.room_id
    ):
        return False
    create = _find_create_event(redaction, state, create_event)
    levels = _power_levels(redaction.room_version, state, create)
    if levels.user_level(redaction.sender) >= levels.redact_level:
        return True
    return redacted is not None and _server_of(redacted.sender) == _server_of(redaction.sender)


# -- Third-party invites ------------------------------------------------------------------------


def third_party_invite_public_keys(invite_event: Event) -> list[str]:
    """The public keys of an ``m.room.third_party_invite`` (rule 5.4.1.7).

    Returns:
        ``content.public_key`` then each ``content.public_keys[].public_key`` (unpadded
        Base64 strings; malformed entries are skipped).
    """
    content = invite_event.content
    keys: list[str] = []
    public_key = content.get("public_key")
    if isinstance(public_key, str):
        keys.append(public_key)
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        for entry in public_keys:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def verify_third_party_invite_signature(
    signed: Mapping[str, Any], public_keys: Sequence[str]
) -> bool:
    """Rule 5.4.1.7: does any ed25519 signature in ``signed`` verify with any public key?

    The identity server's public keys are in the ``m.room.third_party_invite`` event, so any
    signing server name and key ID in ``signed.signatures`` is accepted if the signature
    verifies (as in Synapse; whether the identity server has since revoked the key is the
    caller's business).

    Args:
        signed: ``content.third_party_invite.signed`` of the invite.
        public_keys: Unpadded-Base64 ed25519 public keys (:func:`third_party_invite_public_keys`).

    Returns:
        True if one signature verifies.
    """
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    for public_key in public_keys:
        try:
            key_bytes = decode_base64(public_key)
        except ValueError:
            continue
        for server_name, server_signatures in signatures.items():
            if not isinstance(server_signatures, Mapping):
                continue
            for key_id in server_signatures:
                if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                    continue
                try:
                    verify_key = decode_verify_key_bytes(key_id, key_bytes)
                    verify_signed_json(dict(signed), server_name, verify_key)
                except (SignatureVerifyException, BadSignatureError, ValueError, TypeError):
                    continue
                return True
    return False


# -- Small helpers ------------------------------------------------------------------------------


def _membership(state: StateMap, user_id: str) -> str | None:
    """The user's current membership (None: no membership event, i.e. effectively leave)."""
    member = state.get((MEMBER, user_id))
    return member.membership if member is not None else None


def _join_rule(room_version: RoomVersion, state: StateMap) -> str:
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


def _original_creator(create: Event) -> str | None:
    """The user whose first join rule 5.3.1 allows: v10 ``content.creator``, v11+ ``sender``."""
    if create.room_version.implicit_room_creator:
        return create.sender
    creator = create.content.get("creator")
    return creator if isinstance(creator, str) else None


def _third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    third_party_invite = content.get("third_party_invite")
    if not isinstance(third_party_invite, Mapping):
        return None
    signed = third_party_invite.get("signed")
    if not isinstance(signed, Mapping):
        return None
    token = signed.get("token")
    return token if isinstance(token, str) else None


def _has_signature_from(event: Event, server_name: str) -> bool:
    signatures = event.pdu.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    server_signatures = signatures.get(server_name)
    return isinstance(server_signatures, Mapping) and len(server_signatures) > 0


def _is_user_id(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_user_id(value)
    except ValueError:
        return False
    return True


def _server_of(identifier: str) -> str:
    """The server name of a user or (pre-v12) room ID: everything after the first ``:``."""
    return identifier.split(":", 1)[1] if ":" in identifier else ""
