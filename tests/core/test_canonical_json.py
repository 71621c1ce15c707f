"""Canonical JSON and unpadded Base64, against the spec's examples
(https://spec.matrix.org/v1.19/appendices/#canonical-json,
https://spec.matrix.org/v1.19/appendices/#unpadded-base64)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from core.events.canonical import check_canonical_json, encode_canonical
from core.events.unpadded_base64 import decode_base64, encode_base64

# -- unpadded Base64 --------------------------------------------------------------------------

BASE64_VECTORS = [
    ("", ""),
    ("f", "Zg"),
    ("fo", "Zm8"),
    ("foo", "Zm9v"),
    ("foob", "Zm9vYg"),
    ("fooba", "Zm9vYmE"),
    ("foobar", "Zm9vYmFy"),
]


@pytest.mark.parametrize(("plain", "encoded"), BASE64_VECTORS)
def test_unpadded_base64_spec_vectors(plain: str, encoded: str) -> None:
    assert encode_base64(plain.encode()) == encoded
    assert encode_base64(plain.encode(), urlsafe=True) == encoded
    assert decode_base64(encoded) == plain.encode()


def test_urlsafe_alphabet() -> None:
    data = bytes([0xFB, 0xFF, 0xBF])
    assert encode_base64(data) == "+/+/"
    assert encode_base64(data, urlsafe=True) == "-_-_"
    assert decode_base64("+/+/") == data
    assert decode_base64("-_-_") == data


@pytest.mark.parametrize("bad", ["Zg==", "Zm8=", "Z", "Zm9v!", "Zm 9v", "+/-_", "Zm9v\n", 5])
def test_decode_rejects_what_is_not_unpadded_base64(bad: Any) -> None:
    with pytest.raises(ValueError):
        decode_base64(bad)


# -- canonical JSON: the spec's examples, byte for byte ---------------------------------------

CANONICAL_VECTORS = [
    ("{}", "{}"),
    (
        """{
    "one": 1,
    "two": "Two"
}""",
        '{"one":1,"two":"Two"}',
    ),
    (
        """{
    "b": "2",
    "a": "1"
}""",
        '{"a":"1","b":"2"}',
    ),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    (
        """{
    "a": "日本語"
}""",
        '{"a":"日本語"}',
    ),
    (
        """{
    "本": 2,
    "日": 1
}""",
        '{"日":1,"本":2}',
    ),
    (
        """{
    "a": "\\u65E5"
}""",
        '{"a":"日"}',
    ),
    (
        """{
    "a": null
}""",
        '{"a":null}',
    ),
    (
        """{
    "a": -0,
    "b": 1e10
}""",
        '{"a":0,"b":10000000000}',
    ),
]


def _parse_numbers_as_json_numbers(text: str) -> Any:
    """Parse JSON the way the spec reads its number grammar: ``1e10`` *is* the integer
    10000000000. (Python's ``json`` makes it a float; strict canonical JSON never lets a
    float into an event, see ``test_exponent_number_is_rejected_in_events``.)"""

    def parse_float(literal: str) -> int | float:
        value = Decimal(literal)
        return int(value) if value == value.to_integral_value() else float(literal)

    return json.loads(text, parse_float=parse_float)


@pytest.mark.parametrize(("given", "expected"), CANONICAL_VECTORS)
def test_canonical_json_spec_vectors(given: str, expected: str) -> None:
    assert encode_canonical(_parse_numbers_as_json_numbers(given)) == expected.encode("utf-8")


def test_exponent_number_is_rejected_in_events() -> None:
    # The last spec example read by a plain JSON parser holds a float; v6+ rooms reject it.
    with pytest.raises(ValueError, match="not an integer"):
        check_canonical_json(json.loads('{"a": -0, "b": 1e10}'))


def test_floats_encode_as_synapse_does() -> None:
    # Outside events (request bodies, key responses) floats pass through unchanged, so
    # signatures agree with Synapse/signedjson byte for byte.
    assert encode_canonical({"b": 1e10, "c": 1.5}) == b'{"b":10000000000.0,"c":1.5}'


def test_canonical_json_is_utf8_without_escapes() -> None:
    assert encode_canonical({"a": "é\u2028\x7f"}) == '{"a":"é\u2028\x7f"}'.encode()
    assert encode_canonical({"a": "\x00\n\"\\"}) == b'{"a":"\\u0000\\n\\"\\\\"}'


def test_keys_sort_by_code_point() -> None:
    assert encode_canonical({"b": 1, "B": 2, "a": 3, "é": 4, "😀": 5, "\uffff": 6}) == (
        '{"B":2,"a":3,"b":1,"é":4,"\uffff":6,"😀":5}'.encode()
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"a": "\ud800"}])
def test_encode_rejects_values_json_cannot_hold(bad: Any) -> None:
    with pytest.raises(ValueError):
        encode_canonical(bad)


# -- strict canonical JSON (room versions 6+) -------------------------------------------------

MAX = 2**53 - 1


@pytest.mark.parametrize(
    "good",
    [
        {},
        {"a": [1, "x", None, True, False, {"b": []}]},
        {"n": MAX, "m": -MAX, "z": 0},
        [MAX, -MAX],
        "日本語",
        None,
    ],
)
def test_strict_canonical_json_accepts(good: Any) -> None:
    check_canonical_json(good)


@pytest.mark.parametrize(
    "bad",
    [
        {"n": MAX + 1},
        {"n": -MAX - 1},
        {"n": 2**64},
        {"f": 1.0},
        {"f": 0.5},
        {"f": float("nan")},
        {"f": float("inf")},
        {"f": float("-inf")},
        {"deep": [{"x": [1, 2, {"y": 1.5}]}]},
        {"deep": [[[[MAX + 1]]]]},
        {1: "non-string key"},
        {"s": "\udc00"},
        {"\ud800": 1},
        {"b": b"bytes"},
        {"s": {1, 2}},
        {"o": object()},
    ],
)
def test_strict_canonical_json_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        check_canonical_json(bad)


def test_strict_check_survives_deep_nesting() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    check_canonical_json(value)
    value = [value, 0.5]
    with pytest.raises(ValueError):
        check_canonical_json(value)
