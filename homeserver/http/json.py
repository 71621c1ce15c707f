"""Reading JSON request bodies and writing JSON responses."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from aiohttp import web

from homeserver.errors import BadJson, NotJson
from homeserver.http.nul import contains_nul


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


async def read_json_object(request: web.Request, *, allow_empty: bool = False,
                           allow_nul: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    Args:
        allow_empty: an empty body is ``{}`` (else it is not JSON).
        allow_nul: strings may hold U+0000 (bodies carrying other servers' events, whose
            canonical JSON may have it); otherwise it is refused (``homeserver.http.nul``).

    Raises:
        NotJson: the body is not valid UTF-8 JSON (NaN and Infinity included).
        BadJson: it is JSON but not an object, or it holds U+0000 where not allowed.
        TooLarge: (from aiohttp, turned into 413 by the middleware) over the size limit.
    """
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        text = raw.decode("utf-8")
        value = _decoder.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: nesting deeper than the decoder can follow is not JSON we accept.
        raise NotJson("Content not JSON.") from None
    if not isinstance(value, dict):
        raise BadJson("Content must be a JSON object.")
    # Only an escape can put U+0000 in a string (raw control characters are not JSON).
    if not allow_nul and "\\u0000" in text and contains_nul(value):
        raise BadJson("Strings must not contain U+0000")
    return value


def encode_json(body: Any) -> bytes:
    """Compact UTF-8 JSON: orjson (sync responses are megabytes), with the standard encoder
    for what orjson refuses (integers beyond 64 bits that a client stored)."""
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return _encoder.encode(body).encode("utf-8")


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(
        body=encode_json(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )
