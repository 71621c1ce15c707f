"""The authorization rules of room versions 10, 11 and 12 (core.rooms.auth).

Rule numbers are v12's (v10/v11: one lower from rule 3 on). Most tables run on every version;
where the versions differ (create event, creators, room IDs) the tests say which.

Every allowed/rejected expectation is checked twice by :func:`expect`: against the whole room
state, and against the event's own auth events (selected by ``check_auth_events``, with the
create event passed separately as v12 requires).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from core.events.model import Event
from core.events.room_versions import V10, V11, V12, RoomVersion
from core.rooms.auth import (
    AuthError,
    auth_types_for_event,
    check_auth_events,
    check_auth_rules,
    create_event_id_for_room,
    redaction_is_allowed,
    third_party_invite_public_keys,
    verify_third_party_invite_signature,
)
from core.rooms.power_levels import (
    CREATOR_POWER_LEVEL,
    PowerLevels,
    check_power_levels_content,
    parse_level,
    room_creators,
)
from tests.helpers.auth_room import (
    ADMIN,
    ALICE,
    BOB,
    CREATOR,
    EVE,
    MOD,
    MOD2,
    AuthRoom,
)

VERSIONS = [pytest.param(v, id=f"v{v.identifier}") for v in (V10, V11, V12)]
PRE_V12 = [pytest.param(v, id=f"v{v.identifier}") for v in (V10, V11)]
AUTH = "join_authorised_via_users_server"


def expect(room: AuthRoom, event: Event, error: str | None, **kwargs: Any) -> None:
    """Check ``event`` against the room state and against its own auth events.

    Args:
        room: The room.
        event: The event to authorise.
        error: None if it must be allowed, else a regex the AuthError message must match.
        **kwargs: Passed to ``check_auth_rules``.
    """
    auth_map = check_auth_events(event, room.state.values())
    for state, create in ((room.state, None), (auth_map, room.create)):
        if error is None:
            check_auth_rules(event, state, create_event=create, **kwargs)
        else:
            with pytest.raises(AuthError, match=error):
                check_auth_rules(event, state, create_event=create, **kwargs)


# -- Rule 1: m.room.create ----------------------------------------------------------------------


def _create_event(version: RoomVersion, content: Mapping[str, Any], **pdu: Any) -> Event:
    create = AuthRoom(version).create
    new_pdu = {**create.pdu, "content": {**create.content, **content}, **pdu}
    for key in [k for k, v in new_pdu.items() if v is _DROP]:
        del new_pdu[key]
    new_pdu["content"] = {k: v for k, v in new_pdu["content"].items() if v is not _DROP}
    return Event(create.event_id, version, new_pdu)


_DROP = object()


@dataclass(frozen=True)
class CreateCase:
    name: str
    versions: Sequence[RoomVersion]
    error: str | None
    content: Mapping[str, Any] = field(default_factory=dict)
    pdu: Mapping[str, Any] = field(default_factory=dict)


ALL = (V10, V11, V12)
CREATE_CASES = [
    CreateCase("plain", ALL, None),
    # 1.1
    CreateCase("prev_events", ALL, "has prev_events", pdu={"prev_events": ["$x"]}),
    # 1.2
    CreateCase("room on another server", (V10, V11), "not on the sender's server",
               pdu={"room_id": "!room:b.test"}),
    CreateCase("no room_id", (V10, V11), "not on the sender's server", pdu={"room_id": _DROP}),
    CreateCase("v12: a room_id", (V12,), "has a room_id", pdu={"room_id": "!create"}),
    # 1.3
    CreateCase("unknown room version", ALL, "Unknown room version", {"room_version": "99"}),
    CreateCase("room version not a string", ALL, "Unknown room version", {"room_version": 12}),
    CreateCase("room version absent", ALL, None, {"room_version": _DROP}),
    CreateCase("another known room version", ALL, None, {"room_version": "11"}),
    # 1.4 (v10)
    CreateCase("v10: no creator", (V10,), "no creator", {"creator": _DROP}),
    CreateCase("v11+: no creator needed", (V11, V12), None, {"creator": _DROP}),
    # 1.4 (v12)
    CreateCase("v12: additional creators", (V12,), None, {"additional_creators": [ALICE, BOB]}),
    CreateCase("v12: no additional creators", (V12,), None, {"additional_creators": []}),
    CreateCase("v12: additional_creators not an array", (V12,), "additional_creators",
               {"additional_creators": ALICE}),
    CreateCase("v12: an invalid user ID", (V12,), "additional_creators",
               {"additional_creators": [ALICE, "bob"]}),
    CreateCase("v12: a non-string", (V12,), "additional_creators",
               {"additional_creators": [ALICE, 5]}),
    CreateCase("pre-v12: additional_creators is not validated", (V10, V11), None,
               {"additional_creators": "whatever"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "case"),
    [pytest.param(v, c, id=f"v{v.identifier}-{c.name}") for c in CREATE_CASES for v in c.versions],
)
def test_create_event_rules(version: RoomVersion, case: CreateCase) -> None:
    event = _create_event(version, case.content, **case.pdu)
    if case.error is None:
        check_auth_rules(event, {})
    else:
        with pytest.raises(AuthError, match=case.error):
            check_auth_rules(event, {})


@pytest.mark.parametrize("version", VERSIONS)
def test_create_event_ignores_auth_events(version: RoomVersion) -> None:
    create = AuthRoom(version).create
    check_auth_rules(create, AuthRoom.standard(version).state)
    assert check_auth_events(create, []) == {}


# -- Rule 2 (v12) / 2.4 (v10, v11): the room's create event -------------------------------------


def test_v12_room_id_is_the_create_event_id() -> None:
    room = AuthRoom.standard(V12)
    assert room.room_id == "!create"
    assert create_event_id_for_room(room.room_id) == room.create.event_id
    expect(room, room.message(ALICE), None)


def test_v12_event_with_another_room_id_is_rejected() -> None:
    room = AuthRoom.standard(V12)
    event = room.new("m.room.message", ALICE, {"body": "x"}, extra={"room_id": "!other"})
    with pytest.raises(AuthError, match="is not that of create event"):
        check_auth_rules(event, room.state)


def test_v12_create_event_comes_from_argument_when_not_in_auth_events() -> None:
    room = AuthRoom.standard(V12)
    event = room.message(ALICE)
    auth_map = room.auth_map(event)
    assert ("m.room.create", "") not in auth_map
    check_auth_rules(event, auth_map, create_event=room.create)
    with pytest.raises(AuthError, match="create event is unknown"):
        check_auth_rules(event, auth_map)


def test_v12_create_event_of_another_room_is_rejected() -> None:
    room = AuthRoom.standard(V12)
    other = AuthRoom(V12, tag="2").create
    event = room.message(ALICE)
    with pytest.raises(AuthError, match="is not that of create event"):
        check_auth_rules(event, room.auth_map(event), create_event=other)


@pytest.mark.parametrize("version", VERSIONS)
def test_two_different_create_events_are_rejected(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    other = AuthRoom(version, tag="2").create
    with pytest.raises(AuthError, match="Two different create events"):
        check_auth_rules(room.message(ALICE), room.state, create_event=other)


@pytest.mark.parametrize("version", PRE_V12)
def test_pre_v12_create_event_must_be_among_auth_events(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    state = {k: v for k, v in room.state.items() if k != ("m.room.create", "")}
    with pytest.raises(AuthError, match=r"No m\.room\.create event"):
        check_auth_rules(event, state, create_event=room.create)


@pytest.mark.parametrize("version", PRE_V12)
def test_pre_v12_create_event_of_another_room_is_rejected(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    state = {**room.state, ("m.room.create", ""): AuthRoom(version, tag="2").create}
    with pytest.raises(AuthError, match="create event is in another room"):
        check_auth_rules(room.message(ALICE), state)


# -- Rule 3: the auth events --------------------------------------------------------------------

BASE_KEYS = {("m.room.power_levels", ""), ("m.room.member", ALICE)}
CREATE_KEY = ("m.room.create", "")
JOIN_RULES_KEY = ("m.room.join_rules", "")
SIGNED_3PID = {"third_party_invite": {"signed": {"mxid": BOB, "token": "tok"}}}


@pytest.mark.parametrize(
    ("event_type", "state_key", "content", "extra_keys"),
    [
        pytest.param("m.room.message", None, {}, set(), id="message"),
        pytest.param("m.room.name", "", {}, set(), id="state"),
        pytest.param("m.room.member", BOB, {"membership": "join"},
                     {("m.room.member", BOB), JOIN_RULES_KEY}, id="join"),
        pytest.param("m.room.member", BOB, {"membership": "invite"},
                     {("m.room.member", BOB), JOIN_RULES_KEY}, id="invite"),
        pytest.param("m.room.member", BOB, {"membership": "knock"},
                     {("m.room.member", BOB), JOIN_RULES_KEY}, id="knock"),
        pytest.param("m.room.member", BOB, {"membership": "leave"},
                     {("m.room.member", BOB)}, id="leave"),
        pytest.param("m.room.member", BOB, {"membership": "ban"},
                     {("m.room.member", BOB)}, id="ban"),
        pytest.param("m.room.member", BOB, {"membership": "invite", **SIGNED_3PID},
                     {("m.room.member", BOB), JOIN_RULES_KEY,
                      ("m.room.third_party_invite", "tok")}, id="third-party-invite"),
        pytest.param("m.room.member", BOB,
                     {"membership": "invite", "third_party_invite": {"signed": "x"}},
                     {("m.room.member", BOB), JOIN_RULES_KEY}, id="malformed-third-party-invite"),
        pytest.param("m.room.member", BOB, {"membership": "join", AUTH: MOD},
                     {("m.room.member", BOB), JOIN_RULES_KEY, ("m.room.member", MOD)},
                     id="restricted-join"),
        pytest.param("m.room.member", BOB, {"membership": "invite", AUTH: MOD},
                     {("m.room.member", BOB), JOIN_RULES_KEY}, id="authoriser-only-for-joins"),
        pytest.param("m.room.member", BOB, {}, {("m.room.member", BOB)}, id="no-membership"),
        pytest.param("m.room.member", None, {"membership": "join"}, set(), id="no-state-key"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("version", VERSIONS)
def test_auth_types_for_event(
    version: RoomVersion,
    event_type: str,
    state_key: str | None,
    content: Mapping[str, Any],
    extra_keys: set[tuple[str, str]],
) -> None:
    expected = BASE_KEYS | extra_keys
    if not version.room_id_is_create_event_hash:
        expected.add(CREATE_KEY)
    assert auth_types_for_event(version, event_type, state_key, ALICE, content) == expected


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_types_for_create_event_is_empty(version: RoomVersion) -> None:
    assert auth_types_for_event(version, "m.room.create", "", ALICE, {}) == set()


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_events_keys_the_selected_events(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    auth_map = check_auth_events(event, room.state.values())
    assert auth_map == room.auth_map(event)
    assert (CREATE_KEY in auth_map) is (version is not V12)


def _with_auth_events(event: Event, auth_event_ids: list[str]) -> Event:
    return Event(event.event_id, event.room_version, {**event.pdu, "auth_events": auth_event_ids})


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_events_rejects_duplicates(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    old_member = room.state[("m.room.member", ALICE)]
    new_member = room.set_membership(ALICE, "join")
    assert old_member.event_id in event.auth_event_ids
    event = _with_auth_events(event, [*event.auth_event_ids, new_member.event_id])
    with pytest.raises(AuthError, match="Duplicate auth events"):  # 3.1
        check_auth_events(event, [*room.state.values(), old_member, new_member])


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_events_rejects_unselected_events(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    join_rules = room.state[JOIN_RULES_KEY]
    event = _with_auth_events(event, [*event.auth_event_ids, join_rules.event_id])
    with pytest.raises(AuthError, match="not one the event needs"):  # 3.2
        check_auth_events(event, room.state.values())


def test_check_auth_events_rejects_create_event_in_v12() -> None:
    room = AuthRoom.standard(V12)
    event = room.message(ALICE)
    event = _with_auth_events(event, [*event.auth_event_ids, room.create.event_id])
    with pytest.raises(AuthError, match="not one the event needs"):  # 3.2
        check_auth_events(event, room.state.values())


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_events_rejects_non_state_events(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    message = room.add(room.message(ALICE))
    event = room.message(ALICE)
    event = _with_auth_events(event, [*event.auth_event_ids, message.event_id])
    with pytest.raises(AuthError, match="not one the event needs"):  # 3.2
        check_auth_events(event, [*room.state.values(), message])


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_events_rejects_rejected_events(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    power_levels = room.state[("m.room.power_levels", "")]
    with pytest.raises(AuthError, match="was rejected"):  # 3.3
        check_auth_events(event, room.state.values(), rejected_event_ids={power_levels.event_id})


def _in_other_room(event: Event, event_id: str) -> Event:
    """A copy of ``event`` with another ID, in another room."""
    room_id = "!elsewhere" if event.room_version.room_id_is_create_event_hash else "!x:a.test"
    return Event(event_id, event.room_version, {**event.pdu, "room_id": room_id})


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_events_rejects_events_of_another_room(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    power_levels = room.state[("m.room.power_levels", "")]
    foreign = _in_other_room(power_levels, "$foreign")
    event = _with_auth_events(
        event, [foreign.event_id if i == power_levels.event_id else i for i in event.auth_event_ids]
    )
    with pytest.raises(AuthError, match="in another room"):  # 3.5
        check_auth_events(event, [*room.state.values(), foreign])


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_events_rejects_unknown_auth_events(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    with pytest.raises(AuthError, match="is unknown"):
        check_auth_events(event, [])


@pytest.mark.parametrize("version", PRE_V12)
def test_check_auth_events_needs_the_create_event_before_v12(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    event = room.message(ALICE)
    event = _with_auth_events(event, [i for i in event.auth_event_ids if i != room.create.event_id])
    with pytest.raises(AuthError, match=r"No m\.room\.create event"):  # 2.4
        check_auth_events(event, room.state.values())


# -- Rule 4: m.federate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("federate", "sender", "error"),
    [
        (False, BOB, "does not federate"),
        (False, ALICE, None),
        (True, BOB, None),
        (_DROP, BOB, None),
        # "set to false": only the JSON value false stops federation.
        ("false", BOB, None),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_m_federate(version: RoomVersion, federate: object, sender: str, error: str | None) -> None:
    create_content = {} if federate is _DROP else {"m.federate": federate}
    room = AuthRoom.standard(
        version, join_rule="public", create_content=create_content, members={BOB: "join"}
    )
    expect(room, room.message(sender), error)
    expect(room, room.member(sender, "join"), error)


# -- Rule 5: m.room.member ----------------------------------------------------------------------


@dataclass(frozen=True)
class MemberCase:
    """``sender`` sends ``membership`` for ``target`` into a standard room."""

    name: str
    sender: str
    target: str
    membership: str
    error: str | None = None
    members: Mapping[str, str] = field(default_factory=dict)
    join_rule: str | None = "invite"
    levels: Mapping[str, Any] = field(default_factory=dict)
    content: Mapping[str, Any] = field(default_factory=dict)
    signed_by: tuple[str, ...] = ()


C = MemberCase
SIGNED_BY_A = ("a.test",)

JOIN_CASES = [
    # 5.3.2, 5.3.3, 5.3.6
    C("public: anyone may join", BOB, BOB, "join", join_rule="public"),
    C("public: not the banned", BOB, BOB, "join", "banned", join_rule="public",
      members={BOB: "ban"}),
    C("public: nobody joins someone else", ALICE, BOB, "join", "may not join",
      join_rule="public"),
    # 5.3.4
    C("invite: not the uninvited", BOB, BOB, "join", "not invited"),
    C("invite: the invited", BOB, BOB, "join", members={BOB: "invite"}),
    C("invite: a member again (profile change)", ALICE, ALICE, "join"),
    C("invite: not after leaving", BOB, BOB, "join", "not invited", members={BOB: "leave"}),
    C("invite: not the banned", BOB, BOB, "join", "banned", members={BOB: "ban"}),
    C("knock: the invited", BOB, BOB, "join", join_rule="knock", members={BOB: "invite"}),
    C("knock: knocking is not enough", BOB, BOB, "join", "not invited", join_rule="knock",
      members={BOB: "knock"}),
    # 5.3.5
    C("restricted: the invited need no authoriser", BOB, BOB, "join", join_rule="restricted",
      members={BOB: "invite"}),
    C("restricted: a member again", ALICE, ALICE, "join", join_rule="restricted"),
    C("restricted: no authoriser", BOB, BOB, "join", "needs join_authorised",
      join_rule="restricted"),
    C("restricted: authorised by a member who may invite", BOB, BOB, "join",
      join_rule="restricted", content={AUTH: MOD}, signed_by=SIGNED_BY_A),
    C("restricted: the authoriser's server did not sign", BOB, BOB, "join",
      "not signed by the server", join_rule="restricted", content={AUTH: MOD}),
    C("restricted: the authoriser is not joined", BOB, BOB, "join", "not in the room",
      join_rule="restricted", content={AUTH: MOD}, signed_by=SIGNED_BY_A,
      members={MOD: "leave"}),
    C("restricted: the authoriser is below the invite level", BOB, BOB, "join",
      "may not invite", join_rule="restricted", levels={"invite": 50}, content={AUTH: ALICE},
      signed_by=SIGNED_BY_A),
    C("restricted: the authoriser is at the invite level", BOB, BOB, "join",
      join_rule="restricted", levels={"invite": 50}, content={AUTH: MOD},
      signed_by=SIGNED_BY_A),
    C("restricted: not the banned, even authorised", BOB, BOB, "join", "banned",
      join_rule="restricted", members={BOB: "ban"}, content={AUTH: MOD},
      signed_by=SIGNED_BY_A),
    C("knock_restricted: authorised", BOB, BOB, "join", join_rule="knock_restricted",
      content={AUTH: MOD}, signed_by=SIGNED_BY_A),
    C("knock_restricted: the invited", BOB, BOB, "join", join_rule="knock_restricted",
      members={BOB: "invite"}),
    C("knock_restricted: knocking, no authoriser", BOB, BOB, "join", "needs join_authorised",
      join_rule="knock_restricted", members={BOB: "knock"}),
    # 5.3.7
    C("private: reserved, nobody joins", BOB, BOB, "join", "Join rule 'private'",
      join_rule="private", members={BOB: "invite"}),
    C("unknown join rule", BOB, BOB, "join", "Join rule 'secret'", join_rule="secret"),
    # No m.room.join_rules event: treated as "invite" (Synapse).
    C("no join rules: the invited", BOB, BOB, "join", join_rule=None, members={BOB: "invite"}),
    C("no join rules: not the uninvited", BOB, BOB, "join", "not invited", join_rule=None),
    # 5.2
    C("authoriser on a public join must have signed", BOB, BOB, "join", "not signed",
      join_rule="public", content={AUTH: MOD}),
    C("authoriser on a public join that signed", BOB, BOB, "join", join_rule="public",
      content={AUTH: MOD}, signed_by=SIGNED_BY_A),
    C("authoriser must be a user ID", BOB, BOB, "join", "not signed", join_rule="public",
      content={AUTH: "mod"}),
    C("authoriser on an invite must have signed", MOD, BOB, "invite", "not signed",
      content={AUTH: EVE}),
]  # fmt: skip

INVITE_CASES = [
    # 5.4.2 - 5.4.5
    C("a member at the invite level (default 0)", ALICE, BOB, "invite"),
    C("below the invite level", ALICE, BOB, "invite", "may not invite", levels={"invite": 50}),
    C("at the invite level", MOD, BOB, "invite", levels={"invite": 50}),
    C("the sender is not joined", EVE, BOB, "invite", "not in the room"),
    C("the sender is only invited", BOB, EVE, "invite", "not in the room",
      members={BOB: "invite"}),
    C("the target is joined", MOD, ALICE, "invite", "already in the room"),
    C("the target is banned", MOD, BOB, "invite", "banned", members={BOB: "ban"}),
    C("the target is already invited", MOD, BOB, "invite", members={BOB: "invite"}),
    C("the target knocked (accepting the knock)", MOD, BOB, "invite", join_rule="knock",
      members={BOB: "knock"}),
    C("the target left", MOD, BOB, "invite", members={BOB: "leave"}),
]  # fmt: skip

LEAVE_CASES = [
    # 5.5.1
    C("a member leaves", ALICE, ALICE, "leave"),
    C("an invitee rejects", BOB, BOB, "leave", members={BOB: "invite"}),
    C("a knocker retracts", BOB, BOB, "leave", join_rule="knock", members={BOB: "knock"}),
    C("not twice", BOB, BOB, "leave", "not in, invited", members={BOB: "leave"}),
    C("not a stranger", EVE, EVE, "leave", "not in, invited"),
    C("the banned cannot unban themselves", BOB, BOB, "leave", "not in, invited",
      members={BOB: "ban"}),
    # 5.5.2
    C("kick from outside the room", EVE, ALICE, "leave", "not in the room"),
    C("kick while invited", BOB, ALICE, "leave", "not in the room", members={BOB: "invite"}),
    # 5.5.4, 5.5.5
    C("kick a lower level", MOD, ALICE, "leave"),
    C("kick below the kick level", ALICE, BOB, "leave", "may not kick", members={BOB: "join"}),
    C("kick an equal", MOD, MOD2, "leave", "may not kick"),
    C("kick a higher level", MOD, ADMIN, "leave", "may not kick"),
    C("kick with the kick level raised", MOD, ALICE, "leave", "may not kick",
      levels={"kick": 75}),
    C("kick with the kick level lowered", MOD, ALICE, "leave", levels={"kick": 10}),
    C("revoke an invite", MOD, BOB, "leave", members={BOB: "invite"}),
    C("kick someone who is not there", MOD, EVE, "leave"),
    # 5.5.3
    C("unban", MOD, BOB, "leave", members={BOB: "ban"}),
    C("unban below the ban level", MOD, BOB, "leave", "may not unban", levels={"ban": 75},
      members={BOB: "ban"}),
    C("unban below the kick level", MOD, BOB, "leave", "may not kick", levels={"kick": 75},
      members={BOB: "ban"}),
]  # fmt: skip

BAN_CASES = [
    # 5.6
    C("a lower level", MOD, ALICE, "ban"),
    C("someone not in the room", MOD, EVE, "ban"),
    C("the banned again", MOD, BOB, "ban", members={BOB: "ban"}),
    C("an invitee", MOD, BOB, "ban", members={BOB: "invite"}),
    C("below the ban level", ALICE, BOB, "ban", "may not ban"),
    C("an equal", MOD, MOD2, "ban", "may not ban"),
    C("a higher level", MOD, ADMIN, "ban", "may not ban"),
    C("oneself", MOD, MOD, "ban", "may not ban"),
    C("with the ban level raised", MOD, ALICE, "ban", "may not ban", levels={"ban": 75}),
    C("from outside the room", EVE, ALICE, "ban", "not in the room"),
    C("while banned", BOB, ALICE, "ban", "not in the room", members={BOB: "ban"}),
]  # fmt: skip

KNOCK_CASES = [
    # 5.7
    C("knock rule", BOB, BOB, "knock", join_rule="knock"),
    C("knock_restricted rule", BOB, BOB, "knock", join_rule="knock_restricted"),
    C("invite rule", BOB, BOB, "knock", "does not allow knocking"),
    C("public rule", BOB, BOB, "knock", "does not allow knocking", join_rule="public"),
    C("restricted rule", BOB, BOB, "knock", "does not allow knocking", join_rule="restricted"),
    C("no join rules", BOB, BOB, "knock", "does not allow knocking", join_rule=None),
    C("for someone else", ALICE, BOB, "knock", "another user", join_rule="knock"),
    C("while banned", BOB, BOB, "knock", "membership is ban", join_rule="knock",
      members={BOB: "ban"}),
    C("while invited", BOB, BOB, "knock", "membership is invite", join_rule="knock",
      members={BOB: "invite"}),
    C("while joined", ALICE, ALICE, "knock", "membership is join", join_rule="knock"),
    C("again", BOB, BOB, "knock", join_rule="knock", members={BOB: "knock"}),
    C("after leaving", BOB, BOB, "knock", join_rule="knock", members={BOB: "leave"}),
    # 5.8
    C("unknown membership", ALICE, ALICE, "dance", "Unknown membership"),
    C("membership not a string", ALICE, ALICE, "join", "needs a state_key",
      content={"membership": 1}),
]  # fmt: skip


def _member_params(cases: list[MemberCase]) -> list[Any]:
    return [
        pytest.param(v, c, id=f"v{v.identifier}-{c.name}") for c in cases for v in (V10, V11, V12)
    ]


def _run_member_case(version: RoomVersion, case: MemberCase) -> None:
    room = AuthRoom.standard(
        version, join_rule=case.join_rule, levels=case.levels, members=case.members
    )
    event = room.member(
        case.target,
        case.membership,
        sender=case.sender,
        content=case.content,
        signed_by=case.signed_by,
    )
    expect(room, event, case.error)


@pytest.mark.parametrize(("version", "case"), _member_params(JOIN_CASES))
def test_join(version: RoomVersion, case: MemberCase) -> None:
    _run_member_case(version, case)


@pytest.mark.parametrize(("version", "case"), _member_params(INVITE_CASES))
def test_invite(version: RoomVersion, case: MemberCase) -> None:
    _run_member_case(version, case)


@pytest.mark.parametrize(("version", "case"), _member_params(LEAVE_CASES))
def test_leave_and_kick(version: RoomVersion, case: MemberCase) -> None:
    _run_member_case(version, case)


@pytest.mark.parametrize(("version", "case"), _member_params(BAN_CASES))
def test_ban(version: RoomVersion, case: MemberCase) -> None:
    _run_member_case(version, case)


@pytest.mark.parametrize(("version", "case"), _member_params(KNOCK_CASES))
def test_knock_and_unknown_memberships(version: RoomVersion, case: MemberCase) -> None:
    _run_member_case(version, case)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_event_needs_state_key_and_membership(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    # 5.1
    no_state_key = room.new("m.room.member", ALICE, {"membership": "join"})
    expect(room, no_state_key, "needs a state_key")
    no_membership = room.new("m.room.member", ALICE, {"displayname": "A"}, state_key=ALICE)
    expect(room, no_membership, "needs a state_key")


@pytest.mark.parametrize("state_key", ["bob", "@bob", "", "!room:a.test"])
@pytest.mark.parametrize("version", VERSIONS)
def test_member_state_key_must_be_a_user_id(version: RoomVersion, state_key: str) -> None:
    room = AuthRoom.standard(version)
    expect(room, room.member(state_key, "invite", sender=MOD), "is not a user ID")


# 5.3.1: the creator's first join.


@pytest.mark.parametrize("version", VERSIONS)
def test_creator_first_join_directly_after_create(version: RoomVersion) -> None:
    room = AuthRoom(version)
    expect(room, room.member(CREATOR, "join"), None)


@pytest.mark.parametrize("version", VERSIONS)
def test_creator_join_not_directly_after_create_follows_join_rules(version: RoomVersion) -> None:
    room = AuthRoom(version)
    event = room.member(CREATOR, "join", prev_events=[room.create.event_id, "$other"])
    expect(room, event, "not invited")


@pytest.mark.parametrize("version", VERSIONS)
def test_nobody_else_joins_first(version: RoomVersion) -> None:
    room = AuthRoom(version)
    expect(room, room.member(ALICE, "join"), "not invited")


@pytest.mark.parametrize("version", VERSIONS)
def test_creator_first_join_checks_state_key_not_sender(version: RoomVersion) -> None:
    """Spec-literal: 5.3.1 looks at ``state_key`` only (Synapse does the same)."""
    room = AuthRoom(version)
    expect(room, room.member(CREATOR, "join", sender=ALICE), None)


@pytest.mark.parametrize(
    ("version", "joiner", "error"),
    [
        # v10: the creator is content.creator.
        pytest.param(V10, ALICE, None, id="v10-content-creator"),
        pytest.param(V10, CREATOR, "not invited", id="v10-sender"),
        # v11, v12: the creator is the sender; content.creator means nothing.
        pytest.param(V11, ALICE, "not invited", id="v11-content-creator"),
        pytest.param(V11, CREATOR, None, id="v11-sender"),
        pytest.param(V12, ALICE, "not invited", id="v12-content-creator"),
        pytest.param(V12, CREATOR, None, id="v12-sender"),
    ],
)
def test_first_join_creator_per_version(
    version: RoomVersion, joiner: str, error: str | None
) -> None:
    room = AuthRoom(version, create_content={"creator": ALICE})
    expect(room, room.member(joiner, "join"), error)


def test_v12_additional_creator_does_not_join_first() -> None:
    room = AuthRoom(V12, create_content={"additional_creators": [ALICE]})
    expect(room, room.member(ALICE, "join"), "not invited")


# 5.4.1: invites from a third-party invite.


@dataclass
class ThirdPartySetup:
    room: AuthRoom
    signed: dict[str, Any]
    public_key: str


def _third_party_setup(
    version: RoomVersion, *, mxid: str = BOB, key_field: str = "public_key"
) -> ThirdPartySetup:
    room = AuthRoom.standard(version)
    signing_key = generate_signing_key("0")
    public_key = encode_verify_key_base64(get_verify_key(signing_key))
    keys: dict[str, Any] = (
        {"public_key": public_key}
        if key_field == "public_key"
        else {"public_keys": [{"public_key": public_key, "key_validity_url": "https://id/v"}]}
    )
    room.add(
        room.new(
            "m.room.third_party_invite",
            MOD,
            {"display_name": "b...@example.org", **keys},
            state_key="tok",
        )
    )
    signed = sign_json({"mxid": mxid, "token": "tok", "sender": MOD}, "id.test", signing_key)
    return ThirdPartySetup(room, signed, public_key)


def _third_party_member(
    setup: ThirdPartySetup, third_party_invite: object, *, sender: str = MOD
) -> Event:
    content = {"third_party_invite": third_party_invite}
    return setup.room.member(BOB, "invite", sender=sender, content=content)


@pytest.mark.parametrize("key_field", ["public_key", "public_keys"])
@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_signed_by_the_invite_key(version: RoomVersion, key_field: str) -> None:
    setup = _third_party_setup(version, key_field=key_field)
    event = _third_party_member(setup, {"display_name": "bob", "signed": setup.signed})
    expect(setup.room, event, None)


@pytest.mark.parametrize(
    ("third_party_invite", "error"),
    [
        pytest.param({"display_name": "bob"}, "no signed object", id="no-signed"),
        pytest.param("tok", "no signed object", id="not-an-object"),
        pytest.param({"signed": ["tok"]}, "no signed object", id="signed-not-an-object"),
        pytest.param({"signed": {"mxid": BOB}}, "needs mxid and token", id="no-token"),
        pytest.param({"signed": {"token": "tok"}}, "needs mxid and token", id="no-mxid"),
        pytest.param({"signed": {"mxid": BOB, "token": "nope"}}, "No m.room.third_party",
                     id="unknown-token"),
        pytest.param({"signed": {"mxid": BOB, "token": "tok"}}, "not signed by",
                     id="no-signatures"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_malformed(
    version: RoomVersion, third_party_invite: object, error: str
) -> None:
    # 5.4.1.2, 5.4.1.3, 5.4.1.5, 5.4.1.8
    setup = _third_party_setup(version)
    expect(setup.room, _third_party_member(setup, third_party_invite), error)


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_target_banned(version: RoomVersion) -> None:
    setup = _third_party_setup(version)
    setup.room.set_membership(BOB, "ban")
    event = _third_party_member(setup, {"signed": setup.signed})
    expect(setup.room, event, "banned")  # 5.4.1.1


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_mxid_must_be_the_target(version: RoomVersion) -> None:
    setup = _third_party_setup(version, mxid=EVE)
    event = _third_party_member(setup, {"signed": setup.signed})
    expect(setup.room, event, "mxid is not the invited user")  # 5.4.1.4


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_sender_must_match(version: RoomVersion) -> None:
    setup = _third_party_setup(version)
    event = _third_party_member(setup, {"signed": setup.signed}, sender=ADMIN)
    expect(setup.room, event, "Only the sender")  # 5.4.1.6


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_signed_by_another_key(version: RoomVersion) -> None:
    setup = _third_party_setup(version)
    other_key = generate_signing_key("0")
    signed = sign_json({"mxid": BOB, "token": "tok"}, "id.test", other_key)
    expect(setup.room, _third_party_member(setup, {"signed": signed}), "not signed by")  # 5.4.1.8


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_tampered_signed_object(version: RoomVersion) -> None:
    setup = _third_party_setup(version)
    tampered = {**setup.signed, "sender": ADMIN}
    expect(setup.room, _third_party_member(setup, {"signed": tampered}), "not signed by")


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_does_not_need_a_joined_sender(version: RoomVersion) -> None:
    """Spec-literal: rule 5.4.1 allows before 5.4.2 looks at the sender's membership."""
    setup = _third_party_setup(version)
    setup.room.set_membership(MOD, "leave")
    expect(setup.room, _third_party_member(setup, {"signed": setup.signed}), None)


@pytest.mark.parametrize("verdict", [True, False])
@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_verifier_hook(version: RoomVersion, verdict: bool) -> None:
    setup = _third_party_setup(version)
    calls: list[tuple[Mapping[str, Any], Sequence[str]]] = []

    def verifier(signed: Mapping[str, Any], public_keys: Sequence[str]) -> bool:
        calls.append((signed, public_keys))
        return verdict

    signed = {"mxid": BOB, "token": "tok", "signatures": {"id.test": {"ed25519:0": "bogus"}}}
    event = _third_party_member(setup, {"signed": signed})
    expect(
        setup.room, event, None if verdict else "not signed by", verify_third_party_invite=verifier
    )
    assert calls == [(signed, [setup.public_key])] * 2


def test_verify_third_party_invite_signature_edge_cases() -> None:
    key = generate_signing_key("1")
    public_key = encode_verify_key_base64(get_verify_key(key))
    signed = sign_json({"mxid": BOB, "token": "t"}, "id.test", key)
    assert verify_third_party_invite_signature(signed, [public_key])
    assert verify_third_party_invite_signature(signed, ["not base64!", public_key])
    assert not verify_third_party_invite_signature(signed, [])
    assert not verify_third_party_invite_signature(signed, ["AAAA"])  # too short for ed25519
    assert not verify_third_party_invite_signature({**signed, "signatures": "x"}, [public_key])
    # Only ed25519 key IDs are tried.
    other_alg = {**signed, "signatures": {"id.test": {"curve25519:1": "x"}}}
    assert not verify_third_party_invite_signature(other_alg, [public_key])


def test_third_party_invite_public_keys() -> None:
    room = AuthRoom.standard(V12)
    invite = room.new(
        "m.room.third_party_invite",
        MOD,
        {"public_key": "k1", "public_keys": [{"public_key": "k2"}, {"nope": 1}, "k3"]},
        state_key="t",
    )
    assert third_party_invite_public_keys(invite) == ["k1", "k2"]


# Creators (v12: infinite power; v10/v11: level 100 in the power levels).


@pytest.mark.parametrize(
    ("version", "error"),
    [
        pytest.param(V10, "may not kick", id="v10"),
        pytest.param(V11, "may not kick", id="v11"),
        pytest.param(V12, None, id="v12"),
    ],
)
def test_creator_kicks_an_admin(version: RoomVersion, error: str | None) -> None:
    room = AuthRoom.standard(version)
    expect(room, room.member(ADMIN, "leave", sender=CREATOR), error)
    expect(room, room.member(ADMIN, "ban", sender=CREATOR), error and "may not ban")


@pytest.mark.parametrize("version", VERSIONS)
def test_admin_cannot_kick_or_ban_the_creator(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    expect(room, room.member(CREATOR, "leave", sender=ADMIN), "may not kick")
    expect(room, room.member(CREATOR, "ban", sender=ADMIN), "may not ban")


@pytest.mark.parametrize(
    ("version", "error"),
    [
        pytest.param(V10, "may not ban", id="v10"),
        pytest.param(V11, "may not ban", id="v11"),
        pytest.param(V12, None, id="v12"),
    ],
)
def test_additional_creator_has_creator_power(version: RoomVersion, error: str | None) -> None:
    room = AuthRoom.standard(version, create_content={"additional_creators": [ALICE]})
    expect(room, room.member(ADMIN, "ban", sender=ALICE), error)


@pytest.mark.parametrize(
    ("version", "sender", "error"),
    [
        pytest.param(V10, CREATOR, None, id="v10-creator"),
        pytest.param(V11, CREATOR, None, id="v11-creator"),
        pytest.param(V12, CREATOR, None, id="v12-creator"),
        pytest.param(V10, ALICE, "needs power level 50", id="v10-other"),
        pytest.param(V11, ALICE, "needs power level 50", id="v11-other"),
        pytest.param(V12, ALICE, "needs power level 50", id="v12-other"),
    ],
)
def test_without_power_levels_only_the_creator_sends_state(
    version: RoomVersion, sender: str, error: str | None
) -> None:
    room = AuthRoom(version)
    room.add(room.member(CREATOR, "join"))
    room.set_membership(ALICE, "join")
    expect(room, room.new("m.room.name", sender, {"name": "n"}, state_key=""), error)
    expect(room, room.message(sender), None)  # events_default is 0


# -- Rules 6 to 9 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("membership", "error"),
    [
        ("join", None),
        (None, "not in the room"),
        ("invite", "not in the room"),
        ("knock", "not in the room"),
        ("leave", "not in the room"),
        ("ban", "not in the room"),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_sender_must_be_joined(
    version: RoomVersion, membership: str | None, error: str | None
) -> None:
    room = AuthRoom.standard(version, join_rule="knock")
    if membership is not None:
        room.set_membership(BOB, membership)
    expect(room, room.message(BOB), error)  # 6
    expect(room, room.new("m.room.third_party_invite", BOB, {}, state_key="t"), error)


@pytest.mark.parametrize(
    ("levels", "sender", "error"),
    [
        ({}, ALICE, None),
        ({"invite": 50}, ALICE, "may not invite"),
        ({"invite": 50}, MOD, None),
        # The required power level of the event type does not apply (rule 7 allows first).
        ({"events": {"m.room.third_party_invite": 100}}, ALICE, None),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_event(
    version: RoomVersion, levels: Mapping[str, Any], sender: str, error: str | None
) -> None:
    room = AuthRoom.standard(version, levels=levels)
    event = room.new("m.room.third_party_invite", sender, {"public_key": "k"}, state_key="t")
    expect(room, event, error)  # 7


@pytest.mark.parametrize(
    ("levels", "sender", "event_type", "state_key", "error"),
    [
        ({}, ALICE, "m.room.message", None, None),
        ({"events_default": 10}, ALICE, "m.room.message", None, "needs power level 10"),
        ({"events": {"m.room.message": 60}}, MOD, "m.room.message", None, "needs power level 60"),
        ({"events": {"m.room.message": 0}, "events_default": 90}, ALICE, "m.room.message",
         None, None),
        ({}, MOD, "m.room.name", "", None),
        ({}, ALICE, "m.room.name", "", "needs power level 50"),
        ({"events": {"m.room.name": 0}}, ALICE, "m.room.name", "", None),
        ({"state_default": 75}, MOD, "m.room.topic", "", "needs power level 75"),
        ({"state_default": 0}, ALICE, "com.example.thing", "x", None),
        # A state event uses state_default even though events_default is lower.
        ({"state_default": 20, "events_default": 0}, ALICE, "com.example.thing", "",
         "needs power level 20"),
        # events_default does not apply to state events, nor state_default to messages.
        ({"events_default": 100}, MOD, "m.room.topic", "", None),
        ({"state_default": 100}, ALICE, "com.example.message", None, None),
        # m.room.redaction: only its required power level (the redact level is not an auth rule).
        ({"redact": 100}, ALICE, "m.room.redaction", None, None),
        ({"events": {"m.room.redaction": 50}}, ALICE, "m.room.redaction", None,
         "needs power level 50"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("version", VERSIONS)
def test_required_power_level(
    version: RoomVersion,
    levels: Mapping[str, Any],
    sender: str,
    event_type: str,
    state_key: str | None,
    error: str | None,
) -> None:
    room = AuthRoom.standard(version, levels=levels)
    expect(room, room.new(event_type, sender, {}, state_key=state_key), error)  # 8


@pytest.mark.parametrize(
    ("sender", "state_key", "error"),
    [
        (ALICE, ALICE, None),
        (ALICE, MOD, "state keyed by another user"),
        (ADMIN, ALICE, "state keyed by another user"),
        (ALICE, ALICE + ".evil", "state keyed by another user"),
        (ALICE, "@", "state keyed by another user"),
        (ALICE, "alice", None),
        (ALICE, "", None),
        (ALICE, "x@a.test", None),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_state_key_starting_with_at_must_be_the_sender(
    version: RoomVersion, sender: str, state_key: str, error: str | None
) -> None:
    room = AuthRoom.standard(version, levels={"state_default": 0})
    expect(room, room.new("com.example.status", sender, {}, state_key=state_key), error)  # 9


# -- Rule 10: m.room.power_levels ---------------------------------------------------------------

DELETE = object()
BASE_LEVELS: dict[str, Any] = {
    "ban": 50,
    "kick": 50,
    "redact": 75,
    "state_default": 50,
    "events_default": 0,
    "users_default": 0,
    "events": {
        "m.room.power_levels": 50,
        "m.room.history_visibility": 100,
        "m.room.name": 50,
    },
    "notifications": {"room": 50},
}
BASE_USERS = {ADMIN: 100, MOD: 50, MOD2: 50, ALICE: 10}


@dataclass(frozen=True)
class PowerCase:
    """``sender`` replaces the base power levels with ``changes`` applied."""

    name: str
    sender: str
    changes: Mapping[tuple[str, ...], Any]
    error: str | None = None


P = PowerCase
POWER_CASES = [
    P("unchanged", MOD, {}),
    # Rule 8 comes first.
    P("below the required level", ALICE, {}, "needs power level 50"),
    # 10.1
    P("string level", ADMIN, {("ban",): "50"}, "'ban' must be an integer"),
    P("float level", ADMIN, {("kick",): 50.5}, "'kick' must be an integer"),
    P("boolean level", ADMIN, {("invite",): True}, "'invite' must be an integer"),
    P("null level", ADMIN, {("users_default",): None}, "'users_default' must be an integer"),
    # 10.2
    P("events not an object", ADMIN, {("events",): []}, "'events' must be an object"),
    P("events value a string", ADMIN, {("events", "m.room.name"): "50"},
      "values of 'events' must be integers"),
    P("notifications not an object", ADMIN, {("notifications",): 5},
      "'notifications' must be an object"),
    P("notifications value a string", ADMIN, {("notifications", "room"): "50"},
      "values of 'notifications' must be integers"),
    # 10.3
    P("users not an object", ADMIN, {("users",): []}, "'users' must be an object"),
    P("users key not a user ID", ADMIN, {("users", "alice"): 10}, "not a valid user ID"),
    P("users value a string", ADMIN, {("users", BOB): "10"}, "must be an integer"),
    P("users value a float", ADMIN, {("users", BOB): 1.0}, "must be an integer"),
    # 10.6
    P("lower a level", MOD, {("kick",): 40}),
    P("raise a level to one's own", MOD, {("kick",): 50}),
    P("raise a level above one's own", MOD, {("kick",): 60}, "kick at level 60"),
    P("change a level above one's own", MOD, {("redact",): 50}, "redact at level 75"),
    P("remove a level above one's own", MOD, {("redact",): DELETE}, "redact at level 75"),
    P("remove a level at one's own", MOD, {("state_default",): DELETE}),
    P("add a level at one's own", MOD, {("invite",): 50}),
    P("add a level above one's own", MOD, {("invite",): 51}, "invite at level 51"),
    P("lower users_default", MOD, {("users_default",): -10}),
    # 10.7, 10.8
    P("lower an event level", MOD, {("events", "m.room.name"): 0}),
    P("change an event level above one's own", MOD,
      {("events", "m.room.history_visibility"): 50}, "at level 100"),
    P("remove an event level above one's own", MOD,
      {("events", "m.room.history_visibility"): DELETE}, "at level 100"),
    P("add an event level at one's own", MOD, {("events", "m.custom"): 50}),
    P("add an event level above one's own", MOD, {("events", "m.custom"): 51},
      "at level 51"),
    P("lower a notification level", MOD, {("notifications", "room"): 20}),
    P("raise a notification level above one's own", MOD, {("notifications", "room"): 60},
      "at level 60"),
    P("remove the notifications", MOD, {("notifications",): DELETE}),
    # 10.9
    P("demote a lower user", MOD, {("users", ALICE): 0}),
    P("remove a lower user", MOD, {("users", ALICE): DELETE}),
    P("demote an equal", MOD, {("users", MOD2): 0}, "level of @mod2:a.test at level 50"),
    P("remove an equal", MOD, {("users", MOD2): DELETE}, "level of @mod2:a.test at level 50"),
    P("demote a higher user", MOD, {("users", ADMIN): 0}, "level of @admin:a.test"),
    P("demote oneself", MOD, {("users", MOD): 10}),
    P("remove oneself", MOD, {("users", MOD): DELETE}),
    P("admin demotes a moderator", ADMIN, {("users", MOD): 0}),
    # 10.10
    P("promote to one's own level", MOD, {("users", BOB): 50}),
    P("promote above one's own level", MOD, {("users", BOB): 51}, "at level 51"),
    P("promote oneself", MOD, {("users", MOD): 60}, "at level 60"),
    P("admin promotes to admin", ADMIN, {("users", BOB): 100}),
]  # fmt: skip


def _apply(content: dict[str, Any], changes: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    result = copy.deepcopy(content)
    for path, value in changes.items():
        target = result
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return result


def _power_room(version: RoomVersion) -> AuthRoom:
    users = dict(BASE_USERS)
    if not version.privileged_creators:
        users[CREATOR] = 100
    return AuthRoom.standard(version, levels=BASE_LEVELS, users=users)


@pytest.mark.parametrize(
    ("version", "case"),
    [pytest.param(v, c, id=f"v{v.identifier}-{c.name}") for c in POWER_CASES for v in ALL],
)
def test_power_levels_changes(version: RoomVersion, case: PowerCase) -> None:
    room = _power_room(version)
    current = room.state[("m.room.power_levels", "")].content
    content = _apply(dict(current), case.changes)
    event = room.new("m.room.power_levels", case.sender, content, state_key="")
    expect(room, event, case.error)


@pytest.mark.parametrize("version", VERSIONS)
def test_first_power_levels_event_is_unconstrained(version: RoomVersion) -> None:
    room = AuthRoom(version)
    room.add(room.member(CREATOR, "join"))
    content = {"users": {BOB: 1000}, "ban": 999, "events": {"m.room.name": 500}}
    expect(room, room.new("m.room.power_levels", CREATOR, content, state_key=""), None)  # 10.5


@pytest.mark.parametrize(
    ("version", "error"),
    [
        pytest.param(V10, "level of @creator:a.test at level 100", id="v10"),
        pytest.param(V11, "level of @creator:a.test at level 100", id="v11"),
        pytest.param(V12, "Room creators may not be listed", id="v12"),
    ],
)
def test_admin_cannot_demote_the_creator(version: RoomVersion, error: str) -> None:
    room = _power_room(version)
    content = _apply(dict(room.state[("m.room.power_levels", "")].content), {})
    content["users"][CREATOR] = 0
    expect(room, room.new("m.room.power_levels", ADMIN, content, state_key=""), error)


@pytest.mark.parametrize(
    ("version", "error"),
    [
        pytest.param(V10, "level of @admin:a.test at level 100", id="v10"),
        pytest.param(V11, "level of @admin:a.test at level 100", id="v11"),
        pytest.param(V12, None, id="v12"),
    ],
)
def test_creator_demotes_an_admin(version: RoomVersion, error: str | None) -> None:
    room = _power_room(version)
    content = _apply(dict(room.state[("m.room.power_levels", "")].content), {})
    content["users"][ADMIN] = 0
    expect(room, room.new("m.room.power_levels", CREATOR, content, state_key=""), error)


def test_v12_creator_may_set_any_level() -> None:
    room = _power_room(V12)
    content = _apply(dict(room.state[("m.room.power_levels", "")].content), {})
    content["users"][BOB] = 2**53 - 1
    content["events"]["m.room.tombstone"] = 2**53 - 1
    expect(room, room.new("m.room.power_levels", CREATOR, content, state_key=""), None)


@pytest.mark.parametrize("listed", [CREATOR, ALICE])
def test_v12_power_levels_may_not_list_creators(listed: str) -> None:
    room = AuthRoom.standard(V12, create_content={"additional_creators": [ALICE]})
    content = {"users": {ADMIN: 100, listed: 100}}
    event = room.new("m.room.power_levels", CREATOR, content, state_key="")
    expect(room, event, f"Room creators may not be listed in users: {listed}")  # 10.4


def test_v12_first_power_levels_may_not_list_creators_either() -> None:
    room = AuthRoom(V12)
    room.add(room.member(CREATOR, "join"))
    event = room.new("m.room.power_levels", CREATOR, {"users": {CREATOR: 100}}, state_key="")
    expect(room, event, "Room creators may not be listed")  # 10.4 comes before 10.5


@pytest.mark.parametrize("version", PRE_V12)
def test_pre_v12_power_levels_list_the_creator(version: RoomVersion) -> None:
    room = AuthRoom.standard(version, create_content={"additional_creators": [ALICE]})
    content = {"users": {CREATOR: 100, ALICE: 0, ADMIN: 100, MOD: 50, MOD2: 50}}
    expect(room, room.new("m.room.power_levels", CREATOR, content, state_key=""), None)


# -- Redactions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redactor", "original_sender", "levels", "allowed"),
    [
        (MOD, ALICE, {}, True),  # redact level 50
        (MOD, BOB, {}, True),
        (ALICE, BOB, {}, False),  # neither condition
        (ALICE, ALICE, {}, True),  # own event: same server
        (ALICE, ADMIN, {}, True),  # same server, as the spec says
        (BOB, ALICE, {}, False),
        (MOD, BOB, {"redact": 75}, False),
        (ALICE, BOB, {"redact": 0}, True),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_redaction_is_allowed(
    version: RoomVersion,
    redactor: str,
    original_sender: str,
    levels: Mapping[str, Any],
    allowed: bool,
) -> None:
    room = AuthRoom.standard(version, levels=levels, members={BOB: "join"})
    original = room.add(room.message(original_sender))
    redaction = room.redaction(redactor, original.event_id)
    assert redaction.redacts == original.event_id
    expect(room, redaction, None)  # The auth rules allow it whatever the redact level.
    assert redaction_is_allowed(redaction, original, room.state) is allowed
    assert (
        redaction_is_allowed(
            redaction, original, room.auth_map(redaction), create_event=room.create
        )
        is allowed
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_redaction_before_the_original_arrives(version: RoomVersion) -> None:
    room = AuthRoom.standard(version, members={BOB: "join"})
    assert redaction_is_allowed(room.redaction(MOD, "$unknown"), None, room.state)
    assert not redaction_is_allowed(room.redaction(ALICE, "$unknown"), None, room.state)


@pytest.mark.parametrize("version", VERSIONS)
def test_redaction_of_another_event_or_room_is_not_applied(version: RoomVersion) -> None:
    room = AuthRoom.standard(version)
    original = room.add(room.message(ALICE))
    foreign = _in_other_room(original, original.event_id)
    assert not redaction_is_allowed(room.redaction(MOD, "$other"), original, room.state)
    assert not redaction_is_allowed(room.redaction(MOD, original.event_id), foreign, room.state)
    assert redaction_is_allowed(room.redaction(MOD, original.event_id), original, room.state)


# -- Power level helpers ------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_power_level_defaults(version: RoomVersion) -> None:
    create = AuthRoom(version).create
    contents: list[Mapping[str, Any] | None] = [None, {}]
    for content in contents:
        levels = PowerLevels(version, content, room_creators(create))
        assert levels.users_default == 0
        assert levels.events_default == 0
        assert levels.state_default == 50
        assert (levels.ban_level, levels.kick_level, levels.redact_level) == (50, 50, 50)
        assert levels.invite_level == 0
        assert levels.notification_level("room") == 50
        assert levels.send_level("m.room.message", is_state=False) == 0
        assert levels.send_level("m.room.name", is_state=True) == 50
        assert levels.user_level(ALICE) == 0


def test_power_levels_read_the_event() -> None:
    content = {
        "users": {ALICE: 30, BOB: "40"},
        "users_default": 5,
        "events": {"m.room.name": 20, "m.bad": "x"},
        "events_default": 1,
        "state_default": 2,
        "notifications": {"room": 10},
        "invite": 3,
    }
    levels = PowerLevels(V11, content, frozenset([CREATOR]))
    assert levels.user_level(ALICE) == 30
    assert levels.user_level(BOB) == 5  # not an int: the default
    assert levels.user_level(EVE) == 5
    assert levels.user_level(CREATOR) == 5  # v11: no creator bonus once the event exists
    assert levels.send_level("m.room.name", is_state=True) == 20
    assert levels.send_level("m.bad", is_state=True) == 2
    assert levels.send_level("m.room.message", is_state=False) == 1
    assert levels.notification_level("room") == 10
    assert levels.notification_level("other") == 50
    assert levels.invite_level == 3


@pytest.mark.parametrize(
    ("version", "with_event", "expected"),
    [
        pytest.param(V10, False, 100, id="v10-no-power-levels"),
        pytest.param(V11, False, 100, id="v11-no-power-levels"),
        pytest.param(V12, False, CREATOR_POWER_LEVEL, id="v12-no-power-levels"),
        pytest.param(V10, True, 7, id="v10-power-levels"),
        pytest.param(V11, True, 7, id="v11-power-levels"),
        pytest.param(V12, True, CREATOR_POWER_LEVEL, id="v12-power-levels"),
    ],
)
def test_creator_level(version: RoomVersion, with_event: bool, expected: float) -> None:
    room = AuthRoom(version, create_content={"additional_creators": [ALICE]})
    power_levels = room.power_levels(users={CREATOR: 7}) if with_event else None
    levels = PowerLevels.from_events(room.create, power_levels)
    assert levels.user_level(CREATOR) == expected
    alice_expected = CREATOR_POWER_LEVEL if version is V12 else 0
    assert levels.user_level(ALICE) == alice_expected
    assert levels.user_level(BOB) == 0
    assert CREATOR_POWER_LEVEL > 2**53


@pytest.mark.parametrize(
    ("version", "create_content", "creators"),
    [
        pytest.param(V10, {"creator": ALICE}, {ALICE}, id="v10"),
        pytest.param(V10, {"creator": 5}, set(), id="v10-malformed"),
        pytest.param(V11, {"creator": ALICE, "additional_creators": [BOB]}, {CREATOR}, id="v11"),
        pytest.param(V12, {"additional_creators": [BOB, 3]}, {CREATOR, BOB}, id="v12"),
        pytest.param(V12, {"additional_creators": "x"}, {CREATOR}, id="v12-malformed"),
    ],
)
def test_room_creators(
    version: RoomVersion, create_content: Mapping[str, Any], creators: set[str]
) -> None:
    assert room_creators(AuthRoom(version, create_content=create_content).create) == creators


@pytest.mark.parametrize(
    ("value", "strict", "lenient"),
    [
        (50, 50, 50),
        (-3, -3, -3),
        (True, None, None),
        (50.0, None, None),
        ("50", None, 50),
        (" -7 ", None, -7),
        ("5x", None, None),
        (None, None, None),
    ],
)
def test_parse_level(value: object, strict: int | None, lenient: int | None) -> None:
    stringy = replace(V10, enforce_int_power_levels=False)
    assert parse_level(value, V10) == strict
    assert parse_level(value, stringy) == lenient


def test_power_levels_content_check_follows_int_enforcement() -> None:
    stringy = replace(V10, enforce_int_power_levels=False)
    content = {"ban": "50", "users": {ALICE: "10"}, "events": {"m.room.name": "5"}}
    check_power_levels_content(content, stringy)
    with pytest.raises(ValueError, match="'ban' must be an integer"):
        check_power_levels_content(content, V10)
