"""Integer query parameters: one parser, so every endpoint answers alike.

A value is ASCII decimal digits, with a ``-`` where negative values are allowed, inside
``[minimum, maximum]`` (by default ``[0, 2**53-1]``, the integers of canonical JSON, which
every column holding them can take); anything else is ``400 M_INVALID_PARAM``, as Synapse's
``parse_integer`` answers. An endpoint caps a valid value at its own maximum page size.
"""

from __future__ import annotations

import re
from typing import overload

from aiohttp import web

from core.errors import InvalidParam
from core.events.canonical import CANONICALJSON_MAX_INT

_INTEGER = re.compile(r"-?[0-9]{1,16}")


def parse_int(text: str, name: str, *, minimum: int = 0,
              maximum: int = CANONICALJSON_MAX_INT) -> int:
    """``text`` as an integer in ``[minimum, maximum]``; ``name`` is for the error."""
    if _INTEGER.fullmatch(text) is None:
        raise InvalidParam(f"'{name}' must be an integer")
    value = int(text)
    if not minimum <= value <= maximum:
        raise InvalidParam(f"'{name}' must be between {minimum} and {maximum}")
    return value


@overload
def query_int(request: web.Request, name: str, default: int, *, minimum: int = 0,
              maximum: int = CANONICALJSON_MAX_INT) -> int: ...


@overload
def query_int(request: web.Request, name: str, default: None = None, *, minimum: int = 0,
              maximum: int = CANONICALJSON_MAX_INT) -> int | None: ...


def query_int(request: web.Request, name: str, default: int | None = None, *,
              minimum: int = 0, maximum: int = CANONICALJSON_MAX_INT) -> int | None:
    """The query parameter ``name`` as an integer (``parse_int``); ``default`` when absent."""
    text = request.query.get(name)
    if text is None:
        return default
    return parse_int(text, name, minimum=minimum, maximum=maximum)
