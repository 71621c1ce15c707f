"""Canonical JSON (https://spec.matrix.org/v1.19/appendices/#canonical-json).

Every hash and signature in Matrix is taken over the canonical encoding of a JSON value:
UTF-8, no insignificant whitespace, object keys sorted by code point, strings unescaped where
JSON allows. Room versions 6 and later are strict about numbers
(https://spec.matrix.org/v1.19/rooms/v6/#canonical-json): an event holding a float, NaN or
an integer outside [-(2**53)+1, (2**53)-1] is rejected, which ``check_canonical_json``
enforces on incoming events.

``encode_canonical`` is ``canonicaljson.encode_canonical_json``, byte for byte what Synapse
and signedjson produce, so signatures over JSON that is not an event (request bodies, key
responses) agree with other servers. In particular it leaves floats alone (``1e10`` encodes as
``10000000000.0``): floats never reach it from events, because ``check_canonical_json`` turns
them away first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canonicaljson import encode_canonical_json

CANONICALJSON_MAX_INT = 2**53 - 1
CANONICALJSON_MIN_INT = -CANONICALJSON_MAX_INT


def encode_canonical(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON.

    Spec: https://spec.matrix.org/v1.19/appendices/#canonical-json

    Args:
        value: Plain JSON data: ``dict`` (string keys), ``list``, ``str``, ``int``,
            ``bool``, ``None`` (and ``float``, encoded as Python's JSON encoder does).

    Returns:
        The UTF-8 bytes of the canonical encoding.

    Raises:
        ValueError: ``value`` holds NaN or an infinity, or a string that is not valid
            Unicode (a lone surrogate).
        TypeError: ``value`` holds something JSON cannot represent.
    """
    return encode_canonical_json(value)


def check_canonical_json(value: Any) -> None:
    """Check ``value`` against the strict canonical JSON rules of room versions 6 and later.

    Spec: https://spec.matrix.org/v1.19/rooms/v6/#canonical-json (the rule every supported
    room version keeps). Synapse: ``synapse.events.utils.validate_canonicaljson``.

    Args:
        value: Decoded JSON, typically an incoming PDU.

    Raises:
        ValueError: ``value`` holds a float (including NaN and infinities), an integer
            outside [-(2**53)+1, (2**53)-1], a non-string object key, a string that cannot be
            encoded as UTF-8, or a value of a type JSON does not have.
    """
    # An explicit stack rather than recursion: the input comes from remote servers and may be
    # nested deeper than Python's recursion limit.
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not CANONICALJSON_MIN_INT <= item <= CANONICALJSON_MAX_INT:
                raise ValueError(f"JSON integer out of range: {item}")
        elif isinstance(item, float):
            raise ValueError(f"JSON number is not an integer: {item!r}")
        elif isinstance(item, str):
            _check_string(item)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"JSON object key is not a string: {key!r}")
                _check_string(key)
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            raise ValueError(f"not a JSON value: {type(item).__name__}")


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("JSON string is not valid Unicode") from None
