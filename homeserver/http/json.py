"""Reading JSON request bodies and writing JSON responses.

Every body is held to what canonical JSON can carry
(https://spec.matrix.org/v1.19/appendices/#canonical-json), so that whatever is stored can
be signed, served and read back:
- no key twice in one object (canonical JSON has none, and "the last one wins" would let a
  body mean one thing to us and another to whoever checked it): ``400 M_NOT_JSON``;
- strings are Unicode: an escaped UTF-16 surrogate that is not half of a pair
  (``"\\ud800"``) cannot be encoded as UTF-8, so it could be neither signed nor served:
  ``400 M_BAD_JSON`` (Synapse's encoder refuses it too);
- integers in [-(2**53)+1, 2**53-1] (the range of room versions 6 and later, taken for
  every body, events or not): ``400 M_BAD_JSON``;
- objects and arrays nested at most ``MAX_JSON_NESTING`` levels deep: ``400 M_NOT_JSON``.
  Python walks nested values recursively (copying, encoding), and nothing a client needs
  comes close.
Bodies that carry other servers' events (federation PUTs) take integers of any size and
nesting up to ``MAX_FEDERATION_NESTING``: each PDU is held to the rules on its own
(``federation.inbound.pdus``), so that one bad PDU does not cost the others.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from aiohttp import web

from core.errors import BadJson, NotJson
from core.events.canonical import CANONICALJSON_MAX_INT, CANONICALJSON_MIN_INT
from homeserver.http.nul import contains_nul

MAX_JSON_NESTING = 100
MAX_FEDERATION_NESTING = 512

# An escaped UTF-16 surrogate: only these can put one in a decoded string (the UTF-8 decoder
# refuses encoded ones), so bodies without them skip the search for lone ones. A pair
# matches too (and ``\\\\ud800``, an escaped backslash): the search then finds nothing.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _DuplicateKey(ValueError):
    pass


class _IntegerOutOfRange(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _canonical_int(text: str) -> int:
    value = int(text)  # ValueError (not JSON we read) beyond Python's 4300 digits
    if not CANONICALJSON_MIN_INT <= value <= CANONICALJSON_MAX_INT:
        raise _IntegerOutOfRange(text if len(text) <= 30 else f"{text[:27]}...")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                            parse_int=_canonical_int, object_pairs_hook=_object)
_pdus_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                                 object_pairs_hook=_object)
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ascii_encoder = json.JSONEncoder(separators=(",", ":"))


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests objects and arrays more than ``limit`` levels deep
    (``{}`` is one level, a scalar none). Iterative: ``value`` may be deeper than Python's
    recursion limit."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            below.extend(c for c in (item.values() if isinstance(item, dict) else item)
                         if isinstance(c, dict | list))
        level = below
    return False


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string of decoded JSON (object keys included) holds a UTF-16 surrogate
    that is not part of a pair, which UTF-8, and so canonical JSON, cannot encode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: list[str] = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return True
    return False


def decode_json_object(raw: bytes, *, allow_nul: bool = False, carries_pdus: bool = False
                       ) -> dict[str, Any]:
    """A request body as a JSON object, held to the rules of this module's docstring.

    Args:
        allow_nul: strings may hold U+0000 (see ``read_json_object``).
        carries_pdus: the body carries other servers' events, each checked on its own:
            integers of any size, nesting up to ``MAX_FEDERATION_NESTING``.

    Raises:
        NotJson: not valid UTF-8 JSON (NaN and Infinity included), a key twice in one
            object, or nested too deep.
        BadJson: not an object; a lone surrogate, an integer out of range, or U+0000 where
            not allowed.
    """
    limit = MAX_FEDERATION_NESTING if carries_pdus else MAX_JSON_NESTING
    too_deep = NotJson(f"JSON nested more than {limit} levels deep")
    try:
        text = raw.decode("utf-8")
        value = (_pdus_decoder if carries_pdus else _decoder).decode(text)
    except _DuplicateKey as e:
        raise NotJson(f"Duplicate key {str(e)[:100]!r} in a JSON object") from None
    except _IntegerOutOfRange as e:
        raise BadJson(f"JSON integer out of range: {e}") from None
    except RecursionError:
        raise too_deep from None
    except (UnicodeDecodeError, ValueError):
        raise NotJson("Content not JSON.") from None
    if not isinstance(value, dict):
        raise BadJson("Content must be a JSON object.")
    # Counting brackets (strings' too) is quick and bounds the nesting from above.
    if text.count("{") + text.count("[") > limit and nesting_exceeds(value, limit):
        raise too_deep
    if _SURROGATE_ESCAPE.search(text) and has_lone_surrogate(value):
        raise BadJson("Strings must not contain a lone UTF-16 surrogate")
    # Only an escape can put U+0000 in a string (raw control characters are not JSON).
    if not allow_nul and "\\u0000" in text and contains_nul(value):
        raise BadJson("Strings must not contain U+0000")
    return value


async def read_json_object(request: web.Request, *, allow_empty: bool = False,
                           allow_nul: bool = False, carries_pdus: bool = False
                           ) -> dict[str, Any]:
    """The request body as a JSON object (``decode_json_object``).

    Args:
        allow_empty: an empty body is ``{}`` (else it is not JSON).
        allow_nul: strings may hold U+0000 (bodies carrying other servers' events, whose
            canonical JSON may have it); otherwise it is refused (``homeserver.http.nul``).
        carries_pdus: the body carries other servers' events (``decode_json_object``).

    Raises:
        NotJson, BadJson: see ``decode_json_object``.
        TooLarge: (from aiohttp, turned into 413 by the middleware) over the size limit.
    """
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    return decode_json_object(raw, allow_nul=allow_nul, carries_pdus=carries_pdus)


def encode_json(body: Any) -> bytes:
    """Compact UTF-8 JSON: orjson (sync responses are megabytes), with the standard encoder
    for what orjson refuses (integers beyond 64 bits, nesting beyond 255 levels), and
    escapes for a lone surrogate stored before bodies were checked (it goes out as it came
    in, ``"\\ud800"``, rather than failing every response that holds it)."""
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        return _encoder.encode(body).encode("utf-8")
    except UnicodeEncodeError:
        return _ascii_encoder.encode(body).encode("ascii")


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(
        body=encode_json(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )
