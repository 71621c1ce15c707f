"""The redaction algorithm of each supported room version, table-driven.

v10: https://spec.matrix.org/v1.19/rooms/v9/#redactions (v10 keeps the v9 rules).
v11, v12: https://spec.matrix.org/v1.19/rooms/v11/#redactions.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from core.events.canonical import encode_canonical
from core.events.redaction import redact
from core.events.room_versions import V10, V11, V12, RoomVersion
from tests.core import event_vectors as vectors

ALL_VERSIONS = [V10, V11, V12]
UPDATED = [V11, V12]

# Every top-level key an event might carry, including obsolete and made-up ones.
TOP_LEVEL: dict[str, Any] = {
    "event_id": "$abc:example.org",
    "type": "m.room.message",
    "room_id": "!room:example.org",
    "sender": "@alice:example.org",
    "state_key": "",
    "content": {"body": "hello"},
    "hashes": {"sha256": "aGFzaA"},
    "signatures": {"example.org": {"ed25519:1": "c2ln"}},
    "depth": 12,
    "prev_events": ["$prev"],
    "auth_events": ["$auth"],
    "origin_server_ts": 1234,
    "origin": "example.org",
    "membership": "join",
    "prev_state": [],
    "redacts": "$other",
    "unsigned": {"age_ts": 1, "replaces_state": "$x"},
    "age_ts": 1,
    "custom": {"anything": True},
}
KEPT_TOP_LEVEL_V11 = {
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "auth_events", "origin_server_ts",
}
KEPT_TOP_LEVEL_V10 = KEPT_TOP_LEVEL_V11 | {"origin", "membership", "prev_state"}


@pytest.mark.parametrize(
    ("room_version", "kept"),
    [(V10, KEPT_TOP_LEVEL_V10), (V11, KEPT_TOP_LEVEL_V11), (V12, KEPT_TOP_LEVEL_V11)],
    ids=["v10", "v11", "v12"],
)
def test_top_level_keys_that_survive(room_version: RoomVersion, kept: set[str]) -> None:
    redacted = redact(TOP_LEVEL, room_version)
    assert set(redacted) == kept
    for key in kept - {"content"}:
        assert redacted[key] == TOP_LEVEL[key]
    assert redacted["content"] == {}


# Content of each event type with every key the spec mentions plus some that never survive.
CONTENT: dict[str, dict[str, Any]] = {
    "m.room.member": {
        "membership": "join",
        "join_authorised_via_users_server": "@admin:example.org",
        "third_party_invite": {
            "display_name": "a***@e***", "signed": {"mxid": "@b:x", "token": "t"},
        },
        "displayname": "Alice",
        "avatar_url": "mxc://example.org/abc",
        "reason": "hi",
        "is_direct": True,
    },
    "m.room.create": {
        "creator": "@alice:example.org",
        "room_version": "11",
        "m.federate": False,
        "predecessor": {"room_id": "!old:example.org"},
        "type": "m.space",
        "additional_creators": ["@bob:example.org"],
    },
    "m.room.join_rules": {
        "join_rule": "restricted",
        "allow": [{"type": "m.room_membership", "room_id": "!space:example.org"}],
        "extra": 1,
    },
    "m.room.power_levels": {
        "ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 0,
        "kick": 50, "redact": 50, "state_default": 50, "users": {"@alice:example.org": 100},
        "users_default": 0, "notifications": {"room": 50}, "extra": 1,
    },
    "m.room.history_visibility": {"history_visibility": "shared", "extra": 1},
    "m.room.redaction": {"redacts": "$target", "reason": "spam"},
    "m.room.aliases": {"aliases": ["#a:example.org"]},
    "m.room.message": {"msgtype": "m.text", "body": "secret"},
    "m.room.name": {"name": "Room"},
    "m.room.encrypted": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"},
    "m.room.third_party_invite": {"display_name": "x", "public_key": "k", "key_validity_url": "u"},
    "m.room.server_acl": {"allow": ["*"], "deny": []},
    "m.room.canonical_alias": {"alias": "#a:example.org"},
    "m.reaction": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}},
}

KEPT_CONTENT: dict[str, dict[str, set[str]]] = {
    # type: {"v10": keys kept, "v11": keys kept (v12 identical)}
    "m.room.member": {
        "v10": {"membership", "join_authorised_via_users_server"},
        "v11": {"membership", "join_authorised_via_users_server", "third_party_invite"},
    },
    "m.room.create": {
        "v10": {"creator"},
        "v11": set(CONTENT["m.room.create"]),
    },
    "m.room.join_rules": {"v10": {"join_rule", "allow"}, "v11": {"join_rule", "allow"}},
    "m.room.power_levels": {
        "v10": {"ban", "events", "events_default", "kick", "redact", "state_default", "users",
                "users_default"},
        "v11": {"ban", "events", "events_default", "invite", "kick", "redact", "state_default",
                "users", "users_default"},
    },
    "m.room.history_visibility": {"v10": {"history_visibility"}, "v11": {"history_visibility"}},
    "m.room.redaction": {"v10": set(), "v11": {"redacts"}},
    "m.room.aliases": {"v10": set(), "v11": set()},
    "m.room.message": {"v10": set(), "v11": set()},
    "m.room.name": {"v10": set(), "v11": set()},
    "m.room.encrypted": {"v10": set(), "v11": set()},
    "m.room.third_party_invite": {"v10": set(), "v11": set()},
    "m.room.server_acl": {"v10": set(), "v11": set()},
    "m.room.canonical_alias": {"v10": set(), "v11": set()},
    "m.reaction": {"v10": set(), "v11": set()},
}
assert set(KEPT_CONTENT) == set(CONTENT)


def _content_cases() -> list[Any]:
    cases = []
    for event_type, kept in KEPT_CONTENT.items():
        for room_version in ALL_VERSIONS:
            rules = "v10" if room_version is V10 else "v11"
            cases.append(
                pytest.param(event_type, room_version, kept[rules],
                             id=f"{event_type}-v{room_version.identifier}")
            )
    return cases


@pytest.mark.parametrize(("event_type", "room_version", "kept"), _content_cases())
def test_content_keys_that_survive(
    event_type: str, room_version: RoomVersion, kept: set[str]
) -> None:
    pdu = {"type": event_type, "state_key": "", "content": CONTENT[event_type]}
    redacted = redact(pdu, room_version)
    assert set(redacted["content"]) == kept
    for key in kept - {"third_party_invite"}:
        assert redacted["content"][key] == CONTENT[event_type][key]


@pytest.mark.parametrize("room_version", UPDATED, ids=["v11", "v12"])
def test_third_party_invite_keeps_only_signed(room_version: RoomVersion) -> None:
    pdu = {"type": "m.room.member", "content": CONTENT["m.room.member"]}
    assert redact(pdu, room_version)["content"]["third_party_invite"] == {
        "signed": {"mxid": "@b:x", "token": "t"}
    }


@pytest.mark.parametrize("room_version", UPDATED, ids=["v11", "v12"])
@pytest.mark.parametrize(
    ("third_party_invite", "expected"),
    [
        ({"display_name": "x"}, {"third_party_invite": {}}),  # as Synapse: empty object left
        ({}, {"third_party_invite": {}}),
        ("not an object", {}),
        (["signed"], {}),
        (None, {}),
    ],
)
def test_third_party_invite_odd_shapes(
    room_version: RoomVersion, third_party_invite: Any, expected: dict[str, Any]
) -> None:
    pdu = {"type": "m.room.member", "content": {"membership": "invite",
                                                "third_party_invite": third_party_invite}}
    assert redact(pdu, room_version)["content"] == {"membership": "invite", **expected}


def test_create_content_is_kept_whole_from_v11() -> None:
    content = {"room_version": "12", "additional_creators": ["@b:x"], "anything": {"n": 1}}
    pdu = {"type": "m.room.create", "state_key": "", "sender": "@a:x", "content": content}
    assert redact(pdu, V12)["content"] == content
    assert redact(pdu, V11)["content"] == content
    assert redact(pdu, V10)["content"] == {}


def test_v12_create_event_stays_without_room_id() -> None:
    pdu = {"type": "m.room.create", "state_key": "", "sender": "@a:x",
           "content": {"room_version": "12"}, "depth": 1, "prev_events": [], "auth_events": []}
    assert "room_id" not in redact(pdu, V12)


def test_redaction_redacts_moves_into_content_in_v11() -> None:
    v10_event = {"type": "m.room.redaction", "redacts": "$t", "content": {"reason": "r"}}
    v11_event = {"type": "m.room.redaction", "content": {"redacts": "$t", "reason": "r"}}
    # Up to v10 the top-level `redacts` is not protected: a redacted redaction loses it.
    assert redact(v10_event, V10) == {"type": "m.room.redaction", "content": {}}
    for room_version in UPDATED:
        assert redact(v11_event, room_version) == {
            "type": "m.room.redaction", "content": {"redacts": "$t"}
        }


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
@pytest.mark.parametrize(
    "content", [None, "text", [1, 2], 5], ids=["missing", "str", "list", "int"]
)
def test_content_that_is_not_an_object_becomes_empty(
    room_version: RoomVersion, content: Any
) -> None:
    pdu: dict[str, Any] = {"type": "m.room.member", "sender": "@a:x"}
    if content is not None:
        pdu["content"] = content
    assert redact(pdu, room_version) == {"type": "m.room.member", "sender": "@a:x", "content": {}}


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_state_key_is_not_needed_for_content_rules(room_version: RoomVersion) -> None:
    # The spec (and Synapse) key the content rules on the type alone.
    pdu = {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
    assert redact(pdu, room_version)["content"] == {"history_visibility": "joined"}


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
@pytest.mark.parametrize("event_type", sorted(CONTENT))
def test_redact_copies_and_is_idempotent(room_version: RoomVersion, event_type: str) -> None:
    pdu = {**TOP_LEVEL, "type": event_type, "content": CONTENT[event_type]}
    before = copy.deepcopy(pdu)
    redacted = redact(pdu, room_version)
    assert pdu == before
    assert redact(redacted, room_version) == redacted
    # Nothing in the result is shared with the input.
    redacted["signatures"]["example.org"]["ed25519:1"] = "changed"
    redacted["content"].clear()
    assert pdu == before


def test_signing_inputs_of_the_spec_vectors() -> None:
    """The v1-10 redaction of the spec's events gives the signing inputs derived in
    VECTORS.md (the spec's signatures only reproduce with the pre-v11 rules)."""
    for signed, expected in [
        (vectors.MINIMAL_EVENT_SIGNED, vectors.MINIMAL_EVENT_SIGNING_INPUT_V10),
        (vectors.REDACTABLE_EVENT_SIGNED, vectors.REDACTABLE_EVENT_SIGNING_INPUT_V10),
    ]:
        redacted = redact(vectors.load(signed), V10)
        del redacted["signatures"]
        assert encode_canonical(redacted) == expected.encode()
        # From v11 the top-level `origin` goes too.
        assert "origin" not in redact(vectors.load(signed), V11)
