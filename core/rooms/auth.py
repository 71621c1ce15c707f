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

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.rooms.auth_common import (
    AUTHORISING_USER,
    BAN,
    INVITE,
    JOIN,
    JOIN_RULES,
    KNOCK,
    LEAVE,
    MEMBER,
    REDACTION,
    THIRD_PARTY_INVITE,
    AuthError,
    StateMap,
    ThirdPartyInviteVerifier,
    is_user_id,
    membership_of,
    server_of,
    third_party_invite_token,
)
from core.rooms.member_rules import check_member_event
from core.rooms.power_levels import (
    CREATE,
    INTEGER_FIELDS,
    POWER_LEVELS,
    PowerLevels,
    check_power_levels_content,
    parse_level,
    room_creators,
)
from core.rooms.third_party_invites import (
    third_party_invite_public_keys,
    verify_third_party_invite_signature,
)

__all__ = [
    "BAN",
    "INVITE",
    "JOIN",
    "JOIN_RULES",
    "KNOCK",
    "LEAVE",
    "MEMBER",
    "REDACTION",
    "THIRD_PARTY_INVITE",
    "AuthError",
    "StateMap",
    "ThirdPartyInviteVerifier",
    "auth_types_for_event",
    "check_auth_events",
    "check_auth_rules",
    "create_event_id_for_room",
    "redaction_is_allowed",
    "third_party_invite_public_keys",
    "verify_third_party_invite_signature",
]


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
        token = third_party_invite_token(content)
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
        check_member_event(
            event,
            auth_events,
            create,
            levels,
            verify_third_party_invite or verify_third_party_invite_signature,
        )
        return
    # 6: the sender must be joined.
    if membership_of(auth_events, event.sender) != JOIN:
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
        if not isinstance(room_id, str) or server_of(room_id) != server_of(event.sender):
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
        if not isinstance(additional, list) or not all(is_user_id(u) for u in additional):
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
    if not federates and server_of(event.sender) != server_of(create.sender):
        raise AuthError("The room does not federate")


def _power_levels(room_version: RoomVersion, state: StateMap, create: Event) -> PowerLevels:
    power_levels_event = state.get((POWER_LEVELS, ""))
    return PowerLevels(
        room_version=room_version,
        content=power_levels_event.content if power_levels_event is not None else None,
        creators=room_creators(create),
    )


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
    return redacted is not None and server_of(redacted.sender) == server_of(redaction.sender)


