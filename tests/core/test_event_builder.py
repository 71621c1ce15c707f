"""Building signed events and wrapping received PDUs
(https://spec.matrix.org/v1.19/server-server-api/#signing-events; v12 room IDs:
https://spec.matrix.org/v1.19/rooms/v12/#event-format)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from core.events.builder import build_event, event_from_pdu, room_id_for_create_event
from core.events.hashing import check_content_hash, compute_event_id
from core.events.model import Event
from core.events.redaction import redact
from core.events.room_versions import V10, V11, V12, RoomVersion
from core.events.signing import required_signers, verify_event_signature
from tests.core import event_vectors as vectors

ALL_VERSIONS = [V10, V11, V12]
EVENT_ID_RE = re.compile(r"^\$[A-Za-z0-9\-_]{43}$")
SERVER = "domain"


def _build(room_version: RoomVersion, **overrides: Any) -> Event:
    args: dict[str, Any] = {
        "type": "m.room.message",
        "sender": "@alice:domain",
        "content": {"msgtype": "m.text", "body": "hello"},
        "room_id": "!room:domain",
        "prev_events": ["$prev"],
        "auth_events": ["$power", "$member"],
        "depth": 5,
        "origin_server_ts": 1_700_000_000_000,
        "server_name": SERVER,
        "signing_key": vectors.spec_signing_key(),
        **overrides,
    }
    return build_event(room_version, **args)


def _build_create(room_version: RoomVersion, **overrides: Any) -> Event:
    args: dict[str, Any] = {
        "type": "m.room.create",
        "state_key": "",
        "content": {"room_version": room_version.identifier},
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        **overrides,
    }
    # MSC4291: a v12 create event has no room_id.
    v12 = room_version.room_id_is_create_event_hash
    args.setdefault("room_id", None if v12 else "!room:domain")
    return _build(room_version, **args)


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_built_event_is_hashed_signed_and_identified(room_version: RoomVersion) -> None:
    event = _build(room_version)
    assert event.room_version is room_version
    assert EVENT_ID_RE.match(event.event_id)
    assert event.event_id == compute_event_id(event.pdu, room_version)
    assert check_content_hash(event.pdu)
    for server in required_signers(event.pdu, room_version):
        verify_event_signature(event.pdu, room_version, server, vectors.spec_verify_key())
    assert set(event.pdu) == {
        "type", "sender", "content", "room_id", "prev_events", "auth_events", "depth",
        "origin_server_ts", "hashes", "signatures",
    }
    assert "event_id" not in event.pdu and "origin" not in event.pdu
    assert event.type == "m.room.message"
    assert event.room_id == "!room:domain"
    assert event.state_key is None and not event.is_state


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_building_is_deterministic(room_version: RoomVersion) -> None:
    first, second = _build(room_version), _build(room_version)
    assert first.event_id == second.event_id
    assert first.pdu == second.pdu
    assert _build(room_version, origin_server_ts=1_700_000_000_001).event_id != first.event_id
    assert _build(room_version, content={"body": "x"}).event_id != first.event_id


def test_event_ids_across_versions() -> None:
    # For a plain message without `origin` the v10 and v11 redactions agree, and so do the
    # IDs ...
    assert _build(V10).event_id == _build(V11).event_id == _build(V12).event_id
    # ... but not for a power-levels event, whose `invite` only v11+ keeps.
    content = {"users": {"@alice:domain": 100}, "invite": 50}
    power_levels = {"type": "m.room.power_levels", "state_key": "", "content": content}
    assert _build(V10, **power_levels).event_id != _build(V11, **power_levels).event_id


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_unsigned_is_carried_but_not_covered(room_version: RoomVersion) -> None:
    event = _build(room_version, unsigned={"age_ts": 1})
    assert event.pdu["unsigned"] == {"age_ts": 1}
    assert event.event_id == _build(room_version).event_id


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_state_event(room_version: RoomVersion) -> None:
    event = _build(room_version, type="m.room.member", state_key="@alice:domain",
                   content={"membership": "join"})
    assert event.state_tuple == ("m.room.member", "@alice:domain")
    assert event.membership == "join"


def test_builder_copies_its_inputs() -> None:
    content: dict[str, Any] = {"body": "hello", "nested": {"a": 1}}
    prev_events = ["$prev"]
    event = _build(V11, content=content, prev_events=prev_events)
    content["nested"]["a"] = 2
    prev_events.append("$more")
    assert event.content == {"body": "hello", "nested": {"a": 1}}
    assert event.prev_event_ids == ["$prev"]


@pytest.mark.parametrize("bad", [{"n": 0.5}, {"n": 2**53}, {"n": float("nan")}])
def test_builder_refuses_non_canonical_json(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _build(V11, content=bad)


# -- redactions -------------------------------------------------------------------------------


def test_v10_redaction_has_top_level_redacts() -> None:
    event = _build(V10, type="m.room.redaction", content={"reason": "spam"}, redacts="$target")
    assert event.pdu["redacts"] == "$target"
    assert "redacts" not in event.content
    assert event.redacts == "$target"


@pytest.mark.parametrize("room_version", [V11, V12], ids=["v11", "v12"])
def test_v11_redaction_has_redacts_in_content_only(room_version: RoomVersion) -> None:
    event = _build(room_version, type="m.room.redaction", content={"reason": "spam"},
                   redacts="$target")
    assert event.content == {"reason": "spam", "redacts": "$target"}
    assert "redacts" not in event.pdu
    assert event.redacts == "$target"
    # Given in the content alone, it is the same event.
    same = _build(room_version, type="m.room.redaction",
                  content={"reason": "spam", "redacts": "$target"})
    assert same.event_id == event.event_id
    # A redacted redaction still says what it redacts.
    assert redact(event.pdu, room_version)["content"] == {"redacts": "$target"}


def test_redacts_must_agree_and_only_on_redactions() -> None:
    with pytest.raises(ValueError, match="disagrees"):
        _build(V11, type="m.room.redaction", content={"redacts": "$a"}, redacts="$b")
    with pytest.raises(ValueError, match=r"only m\.room\.redaction"):
        _build(V11, redacts="$target")


# -- room IDs, v12 create events --------------------------------------------------------------


def test_v12_create_event_has_no_room_id_and_defines_it() -> None:
    create = _build_create(V12, content={"room_version": "12",
                                         "additional_creators": ["@bob:other"]})
    assert "room_id" not in create.pdu
    room_id = room_id_for_create_event(create)
    assert room_id == "!" + create.event_id[1:]
    assert re.match(r"^![A-Za-z0-9\-_]{43}$", room_id)
    assert create.room_id == room_id  # the model agrees
    # The room ID survives redaction: the create content is kept whole from v11 on.
    assert compute_event_id(redact(create.pdu, V12), V12) == create.event_id
    # An event in that room.
    member = _build(V12, room_id=room_id, type="m.room.member", state_key="@alice:domain",
                    content={"membership": "join"}, prev_events=[create.event_id],
                    auth_events=[], depth=2)
    assert member.room_id == room_id


def test_v12_create_event_rules() -> None:
    with pytest.raises(ValueError, match="has no room_id"):
        _build_create(V12, room_id="!room:domain")
    create = _build_create(V12)
    with pytest.raises(ValueError, match="auth_events"):
        _build(V12, room_id=room_id_for_create_event(create), auth_events=[create.event_id])


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_room_id_is_required_elsewhere(room_version: RoomVersion) -> None:
    with pytest.raises(ValueError, match="room_id is required"):
        _build(room_version, room_id=None)


@pytest.mark.parametrize("room_version", [V10, V11], ids=["v10", "v11"])
def test_create_events_before_v12_carry_a_room_id(room_version: RoomVersion) -> None:
    create = _build_create(room_version)
    assert create.pdu["room_id"] == "!room:domain"
    with pytest.raises(ValueError, match="does not derive room IDs"):
        room_id_for_create_event(create)
    with pytest.raises(ValueError, match="room_id is required"):
        _build_create(room_version, room_id=None)


def test_room_id_for_create_event_needs_a_create_event() -> None:
    with pytest.raises(ValueError, match=r"not an m\.room\.create"):
        room_id_for_create_event(_build(V12))


# -- received PDUs ----------------------------------------------------------------------------


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_event_from_pdu_round_trip(room_version: RoomVersion) -> None:
    built = _build(room_version)
    received = copy.deepcopy(dict(built.pdu))
    received["unsigned"] = {"age": 10}
    event = event_from_pdu(received, room_version)
    assert event == built and event.event_id == built.event_id
    received["content"]["body"] = "changed later"
    assert event.content["body"] == "hello"


def test_event_from_pdu_spec_vector() -> None:
    event = event_from_pdu(vectors.load(vectors.MINIMAL_EVENT_SIGNED), V11)
    assert event.event_id == vectors.MINIMAL_EVENT_ID_V11
    assert event.depth == 3 and event.room_id == "!x:domain"
