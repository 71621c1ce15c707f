"""Content hashes, reference hashes and event IDs
(https://spec.matrix.org/v1.19/server-server-api/#calculating-the-content-hash-for-an-event,
https://spec.matrix.org/v1.19/server-server-api/#calculating-the-reference-hash-for-an-event,
https://spec.matrix.org/v1.19/rooms/v4/#event-ids)."""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import pytest

from core.events.hashing import (
    add_content_hash,
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    reference_hash,
)
from core.events.redaction import redact
from core.events.room_versions import V10, V11, V12, RoomVersion
from core.events.unpadded_base64 import decode_base64, encode_base64
from tests.core import event_vectors as vectors

ALL_VERSIONS = [V10, V11, V12]
EVENT_ID_RE = re.compile(r"^\$[A-Za-z0-9\-_]{43}$")


# -- content hash: the spec's vectors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "signed", "hash_input"),
    [
        (vectors.MINIMAL_EVENT, vectors.MINIMAL_EVENT_SIGNED,
         vectors.MINIMAL_EVENT_CONTENT_HASH_INPUT),
        (vectors.REDACTABLE_EVENT, vectors.REDACTABLE_EVENT_SIGNED,
         vectors.REDACTABLE_EVENT_CONTENT_HASH_INPUT),
    ],
    ids=["minimal", "redactable"],
)
def test_content_hash_spec_vectors(given: str, signed: str, hash_input: str) -> None:
    event = vectors.load(given)
    expected = vectors.load(signed)["hashes"]["sha256"]
    digest = compute_content_hash(event)
    assert digest == hashlib.sha256(hash_input.encode()).digest()
    assert encode_base64(digest) == expected
    hashed = add_content_hash(event)
    assert hashed["hashes"] == {"sha256": expected}
    assert check_content_hash(hashed)
    # The signed vector carries the same hash: signatures and unsigned are not covered.
    assert check_content_hash(vectors.load(signed))


def test_add_content_hash_copies_and_keeps_other_hashes() -> None:
    event = vectors.load(vectors.MINIMAL_EVENT)
    event["hashes"] = {"sha512": "b3RoZXI"}
    before = copy.deepcopy(event)
    hashed = add_content_hash(event)
    assert event == before
    assert hashed["hashes"] == {
        "sha512": "b3RoZXI", "sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    }


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e["content"].update(body="edited"),
        lambda e: e.update(origin_server_ts=1000001),
        lambda e: e.update(sender="@mallory:domain"),
        lambda e: e.update(extra_key=1),
        lambda e: e.pop("origin"),
    ],
    ids=["content", "timestamp", "sender", "new key", "removed key"],
)
def test_content_hash_mismatch_is_detected(change: Any) -> None:
    event = vectors.load(vectors.REDACTABLE_EVENT_SIGNED)
    change(event)
    assert not check_content_hash(event)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e["unsigned"].update(age_ts=5),
        lambda e: e.pop("unsigned"),
        lambda e: e["signatures"].update({"other": {"ed25519:x": "c2ln"}}),
        lambda e: e["hashes"].update(sha512="eA"),
    ],
    ids=["unsigned", "no unsigned", "more signatures", "more hashes"],
)
def test_content_hash_ignores_unsigned_signatures_and_hashes(change: Any) -> None:
    event = vectors.load(vectors.REDACTABLE_EVENT_SIGNED)
    change(event)
    assert check_content_hash(event)


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_redacted_copy_fails_the_content_hash(room_version: RoomVersion) -> None:
    event = vectors.load(vectors.REDACTABLE_EVENT_SIGNED)
    assert not check_content_hash(redact(event, room_version))


@pytest.mark.parametrize(
    "hashes",
    [None, "5jM4", [], {}, {"sha256": 5}, {"sha256": "not base64!"}, {"sha256": "Zg=="}],
)
def test_malformed_hashes_raise(hashes: Any) -> None:
    event = vectors.load(vectors.MINIMAL_EVENT_SIGNED)
    if hashes is None:
        del event["hashes"]
    else:
        event["hashes"] = hashes
    with pytest.raises(ValueError):
        check_content_hash(event)


def test_wrong_hash_of_right_shape_is_a_mismatch_not_an_error() -> None:
    event = vectors.load(vectors.MINIMAL_EVENT_SIGNED)
    event["hashes"]["sha256"] = encode_base64(b"\0" * 32)
    assert check_content_hash(event) is False


# -- reference hashes and event IDs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("room_version", "expected"),
    [(V10, vectors.MINIMAL_EVENT_ID_V10), (V11, vectors.MINIMAL_EVENT_ID_V11),
     (V12, vectors.MINIMAL_EVENT_ID_V11)],
    ids=["v10", "v11", "v12"],
)
def test_event_id_of_the_spec_minimal_event(room_version: RoomVersion, expected: str) -> None:
    """The IDs derived in VECTORS.md (unofficial: the spec publishes no event-ID vector)."""
    event = vectors.load(vectors.MINIMAL_EVENT_SIGNED)
    assert compute_event_id(event, room_version) == expected
    assert encode_base64(reference_hash(event, room_version), urlsafe=True) == expected[1:]
    assert EVENT_ID_RE.match(expected)


def test_reference_hash_is_sha256_of_the_redacted_event_without_signatures() -> None:
    event = vectors.load(vectors.REDACTABLE_EVENT_SIGNED)
    assert reference_hash(event, V10) == hashlib.sha256(
        vectors.REDACTABLE_EVENT_SIGNING_INPUT_V10.encode()
    ).digest()


def _message(**overrides: Any) -> dict[str, Any]:
    pdu = {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "content": {"msgtype": "m.text", "body": "hello"},
        "prev_events": ["$prev"],
        "auth_events": ["$create", "$power", "$member"],
        "depth": 7,
        "origin_server_ts": 1_700_000_000_000,
        **overrides,
    }
    return add_content_hash(pdu)


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
def test_event_id_is_deterministic(room_version: RoomVersion) -> None:
    event = _message()
    event_id = compute_event_id(event, room_version)
    assert EVENT_ID_RE.match(event_id)
    # Same event, keys in another order.
    assert compute_event_id(dict(reversed(list(event.items()))), room_version) == event_id
    # Not covered: signatures, unsigned.
    signed = {**event, "signatures": {"example.org": {"ed25519:1": "c2ln"}},
              "unsigned": {"age_ts": 5, "transaction_id": "t"}}
    assert compute_event_id(signed, room_version) == event_id
    # A redacted copy keeps its ID (that is the point of hashing the redacted form).
    assert compute_event_id(redact(event, room_version), room_version) == event_id
    # The input is not modified.
    assert event == _message()


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=["v10", "v11", "v12"])
@pytest.mark.parametrize(
    "overrides",
    [
        {"content": {"msgtype": "m.text", "body": "other"}},
        {"origin_server_ts": 1_700_000_000_001},
        {"depth": 8},
        {"prev_events": ["$other"]},
        {"sender": "@bob:example.org"},
    ],
    ids=["content", "ts", "depth", "prev_events", "sender"],
)
def test_event_id_changes_with_covered_fields(
    room_version: RoomVersion, overrides: dict[str, Any]
) -> None:
    assert compute_event_id(_message(**overrides), room_version) != compute_event_id(
        _message(), room_version
    )


def test_content_changes_reach_the_id_through_the_content_hash() -> None:
    # The message body is redacted away, so only `hashes` carries it into the ID.
    without_hash = _message()
    del without_hash["hashes"]
    changed = {**without_hash, "content": {"body": "other"}}
    assert compute_event_id(without_hash, V11) == compute_event_id(changed, V11)


def test_origin_is_covered_up_to_v10_only() -> None:
    with_origin = _message(origin="example.org")
    with_origin["hashes"] = _message()["hashes"]  # same content hash, differing only in origin
    assert compute_event_id(with_origin, V10) != compute_event_id(_message(), V10)
    assert compute_event_id(with_origin, V11) == compute_event_id(_message(), V11)


def test_event_id_uses_the_url_safe_alphabet() -> None:
    assert "_" in vectors.MINIMAL_EVENT_ID_V11 and "-" in vectors.MINIMAL_EVENT_ID_V11
    event = vectors.load(vectors.MINIMAL_EVENT_SIGNED)
    digest = reference_hash(event, V11)
    assert decode_base64(compute_event_id(event, V11)[1:]) == digest
