"""Signing JSON and events, and checking event signatures
(https://spec.matrix.org/v1.19/appendices/#signing-json,
https://spec.matrix.org/v1.19/server-server-api/#signing-events,
https://spec.matrix.org/v1.19/appendices/#cryptographic-test-vectors)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from core.events.canonical import encode_canonical
from core.events.hashing import add_content_hash, check_content_hash
from core.events.redaction import redact
from core.events.room_versions import V10, V11, V12, RoomVersion
from core.events.signing import (
    InvalidEventSignature,
    required_signers,
    sign_event,
    verify_event_signature,
)
from tests.core import event_vectors as vectors

ALL_VERSIONS = [V10, V11, V12]


def test_spec_signing_key() -> None:
    key = vectors.spec_signing_key()
    assert f"{key.alg}:{key.version}" == vectors.KEY_ID
    assert encode_verify_key_base64(vectors.spec_verify_key()) == vectors.VERIFY_KEY_BASE64


@pytest.mark.parametrize(("given", "expected"), vectors.JSON_SIGNING_VECTORS, ids=["empty", "data"])
def test_json_signing_spec_vectors(given: str, expected: str) -> None:
    signed = sign_json(vectors.load(given), vectors.SERVER_NAME, vectors.spec_signing_key())
    assert signed == vectors.load(expected)
    assert encode_canonical(signed) == encode_canonical(vectors.load(expected))


# -- the spec's event signing vectors ---------------------------------------------------------

EVENT_VECTORS = [
    pytest.param(vectors.MINIMAL_EVENT, vectors.MINIMAL_EVENT_SIGNED,
                 vectors.MINIMAL_EVENT_SIGNATURE_V11, id="minimal"),
    pytest.param(vectors.REDACTABLE_EVENT, vectors.REDACTABLE_EVENT_SIGNED,
                 vectors.REDACTABLE_EVENT_SIGNATURE_V11, id="redactable"),
]


@pytest.mark.parametrize(("given", "expected", "v11_signature"), EVENT_VECTORS)
def test_event_signing_spec_vectors(given: str, expected: str, v11_signature: str) -> None:
    """The spec's signatures come from the redaction rules of room versions 1-10 (which keep
    ``origin``); the v11+ signatures are the ones derived in VECTORS.md."""
    event = vectors.load(given)
    before = copy.deepcopy(event)
    signed = sign_event(add_content_hash(event), V10, vectors.SERVER_NAME,
                        vectors.spec_signing_key())
    assert event == before
    assert signed == vectors.load(expected)
    assert encode_canonical(signed) == encode_canonical(vectors.load(expected))
    verify_event_signature(signed, V10, vectors.SERVER_NAME, vectors.spec_verify_key())

    for room_version in (V11, V12):
        signed = sign_event(add_content_hash(event), room_version, vectors.SERVER_NAME,
                            vectors.spec_signing_key())
        assert signed["signatures"] == {vectors.SERVER_NAME: {vectors.KEY_ID: v11_signature}}
        verify_event_signature(signed, room_version, vectors.SERVER_NAME,
                               vectors.spec_verify_key())


@pytest.mark.parametrize(("given", "expected", "v11_signature"), EVENT_VECTORS)
def test_spec_signed_events_verify(given: str, expected: str, v11_signature: str) -> None:
    del given, v11_signature
    signed = vectors.load(expected)
    verify_event_signature(signed, V10, vectors.SERVER_NAME, vectors.spec_verify_key())
    # ... and so does the redacted copy, though its content hash no longer matches.
    redacted = redact(signed, V10)
    verify_event_signature(redacted, V10, vectors.SERVER_NAME, vectors.spec_verify_key())
    # The spec's signatures are not valid under the v11 rules (`origin` is not signed there).
    with pytest.raises(InvalidEventSignature):
        verify_event_signature(signed, V11, vectors.SERVER_NAME, vectors.spec_verify_key())


# -- verification failures --------------------------------------------------------------------


def _signed_message(room_version: RoomVersion) -> dict[str, Any]:
    pdu = {
        "type": "m.room.member",
        "room_id": "!room:domain",
        "sender": "@a:domain",
        "state_key": "@a:domain",
        "content": {"membership": "join", "displayname": "A"},
        "prev_events": ["$prev"],
        "auth_events": ["$auth"],
        "depth": 4,
        "origin_server_ts": 1_000_000,
        "unsigned": {"age_ts": 1},
    }
    return sign_event(add_content_hash(pdu), room_version, vectors.SERVER_NAME,
                      vectors.spec_signing_key())


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: e.update(sender="@mallory:domain"),
        lambda e: e.update(origin_server_ts=1_000_001),
        lambda e: e.update(depth=5),
        lambda e: e.update(prev_events=["$other"]),
        lambda e: e["content"].update(membership="leave"),
        lambda e: e.update(hashes={"sha256": "AAAA"}),
        lambda e: e.update(state_key="@b:domain"),
    ],
    ids=["sender", "ts", "depth", "prev_events", "membership", "hashes", "state_key"],
)
def test_tampering_with_signed_fields_breaks_the_signature(
    room_version: RoomVersion, tamper: Any
) -> None:
    event = _signed_message(room_version)
    verify_event_signature(event, room_version, vectors.SERVER_NAME, vectors.spec_verify_key())
    tamper(event)
    with pytest.raises(InvalidEventSignature):
        verify_event_signature(event, room_version, vectors.SERVER_NAME,
                               vectors.spec_verify_key())


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_tampering_with_redactable_content_is_caught_by_the_content_hash(
    room_version: RoomVersion,
) -> None:
    event = _signed_message(room_version)
    event["content"]["displayname"] = "Mallory"
    # The signature covers only the redacted form, so it still verifies ...
    verify_event_signature(event, room_version, vectors.SERVER_NAME, vectors.spec_verify_key())
    # ... and the content hash tells the receiver to keep only the redacted copy.
    assert not check_content_hash(event)


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_unsigned_is_not_signed(room_version: RoomVersion) -> None:
    event = _signed_message(room_version)
    event["unsigned"] = {"age_ts": 999, "anything": [1]}
    verify_event_signature(event, room_version, vectors.SERVER_NAME, vectors.spec_verify_key())


@pytest.mark.parametrize(
    ("signatures", "match"),
    [
        (None, "not signed by domain"),
        ({}, "not signed by domain"),
        ({"domain": "x"}, "not signed by domain"),
        ({"other": {"ed25519:1": "x"}}, "not signed by domain"),
        ({"domain": {"ed25519:2": "x"}}, "no signature by domain ed25519:1"),
        ({"domain": {"ed25519:1": 5}}, "no signature by domain ed25519:1"),
        ({"domain": {"ed25519:1": "not base64!"}}, "base64"),
        ({"domain": {"ed25519:1": "AAAA"}}, "Unable to verify"),
    ],
)
def test_missing_or_malformed_signatures_raise(signatures: Any, match: str) -> None:
    event = _signed_message(V11)
    if signatures is None:
        del event["signatures"]
    else:
        event["signatures"] = signatures
    with pytest.raises(InvalidEventSignature, match=match):
        verify_event_signature(event, V11, vectors.SERVER_NAME, vectors.spec_verify_key())


def test_wrong_key_fails() -> None:
    event = _signed_message(V11)
    other = get_verify_key(generate_signing_key("1"))  # same key ID, another key
    with pytest.raises(InvalidEventSignature):
        verify_event_signature(event, V11, vectors.SERVER_NAME, other)


def test_signing_keeps_other_signatures_and_does_not_modify_the_input() -> None:
    event = _signed_message(V11)
    before = copy.deepcopy(event)
    other_key = generate_signing_key("abc")
    cosigned = sign_event(event, V11, "other.example", other_key)
    assert event == before
    assert set(cosigned["signatures"]) == {vectors.SERVER_NAME, "other.example"}
    assert cosigned["signatures"][vectors.SERVER_NAME] == event["signatures"][vectors.SERVER_NAME]
    verify_event_signature(cosigned, V11, vectors.SERVER_NAME, vectors.spec_verify_key())
    verify_event_signature(cosigned, V11, "other.example", get_verify_key(other_key))
    # Re-signing with the same key gives the same (deterministic ed25519) signature.
    assert sign_event(event, V11, vectors.SERVER_NAME, vectors.spec_signing_key()) == event


# -- which servers must have signed -----------------------------------------------------------


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        ({"type": "m.room.message", "sender": "@a:one.example", "content": {}},
         {"one.example"}),
        ({"type": "m.room.message", "sender": "@a:one.example:8448", "content": {}},
         {"one.example:8448"}),
        ({"type": "m.room.member", "sender": "@a:one.example", "state_key": "@a:one.example",
          "content": {"membership": "join",
                      "join_authorised_via_users_server": "@admin:two.example"}},
         {"one.example", "two.example"}),
        ({"type": "m.room.member", "sender": "@a:one.example", "state_key": "@a:one.example",
          "content": {"membership": "join",
                      "join_authorised_via_users_server": "@admin:one.example"}},
         {"one.example"}),
        # A third-party-invite invite may be sent by another server than the sender's.
        ({"type": "m.room.member", "sender": "@a:one.example", "state_key": "@b:two.example",
          "content": {"membership": "invite", "third_party_invite": {"signed": {}}}},
         set()),
        ({"type": "m.room.member", "sender": "@a:one.example", "state_key": "@b:two.example",
          "content": {"membership": "invite"}},
         {"one.example"}),
        # The event ID's server does not count from room version 3 on.
        ({"type": "m.room.message", "sender": "@a:one.example", "event_id": "$x:two.example",
          "content": {}},
         {"one.example"}),
    ],
)
def test_required_signers(room_version: RoomVersion, pdu: dict[str, Any],
                          expected: set[str]) -> None:
    assert required_signers(pdu, room_version) == expected


@pytest.mark.parametrize(
    "pdu",
    [
        {"type": "m.room.message", "content": {}},
        {"type": "m.room.message", "sender": "alice", "content": {}},
        {"type": "m.room.message", "sender": "@alice:", "content": {}},
        {"type": "m.room.member", "sender": "@a:x",
         "content": {"membership": "join", "join_authorised_via_users_server": 5}},
    ],
)
def test_required_signers_rejects_bad_user_ids(pdu: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        required_signers(pdu, V11)
