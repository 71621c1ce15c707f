"""Query parameters: one parser per kind (integers, booleans, thumbnail requests), so every
endpoint answers alike.

A value is ASCII decimal digits, with a ``-`` where negative values are allowed, inside
``[minimum, maximum]`` (by default ``[0, 2**53-1]``, the integers of canonical JSON, which
every column holding them can take); anything else is ``400 M_INVALID_PARAM``, as Synapse's
``parse_integer`` answers. An endpoint caps a valid value at its own maximum page size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import overload

from aiohttp import web

from core.errors import InvalidParam, MissingParam
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


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    """The query parameter ``name`` as ``true`` or ``false``; ``default`` when absent."""
    value = request.query.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise InvalidParam(f"'{name}' must be true or false")
    return value == "true"


THUMBNAIL_METHODS = ("crop", "scale")
MAX_THUMBNAIL_SIDE = 100_000


@dataclass(frozen=True, slots=True)
class ThumbnailParams:
    """What a thumbnail request asks for (client and federation endpoints alike)."""

    width: int
    height: int
    method: str
    animated: bool


def thumbnail_params(request: web.Request) -> ThumbnailParams:
    """``width`` and ``height`` (required, 1..100000), ``method`` (``crop``/``scale``, default
    ``scale``) and ``animated`` (default false) of a thumbnail request.

    Raises:
        MissingParam: no ``width`` or ``height``.
        InvalidParam: a value out of its range or set.
    """
    sizes = []
    for name in ("width", "height"):
        text = request.query.get(name)
        if text is None:
            raise MissingParam(f"Missing integer query parameter '{name}'")
        sizes.append(parse_int(text, name, minimum=1, maximum=MAX_THUMBNAIL_SIDE))
    method = request.query.get("method", "scale")
    if method not in THUMBNAIL_METHODS:
        raise InvalidParam("'method' must be crop or scale")
    return ThumbnailParams(sizes[0], sizes[1], method, query_bool(request, "animated", False))
