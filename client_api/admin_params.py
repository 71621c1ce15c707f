"""Query parameters of the admin API, refused with the messages Synapse's admin API gives
(operators' scripts and the synapse-admin UI show them)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from aiohttp import web

from core.errors import InvalidParam
from core.events.canonical import CANONICALJSON_MAX_INT

ADMIN_V1 = ("/_synapse/admin/v1",)
ADMIN_V2 = ("/_synapse/admin/v2",)
MAX_LIMIT = 1000  # a page never holds more, whatever is asked
_INTEGER = re.compile(r"-?[0-9]{1,16}")


def integer(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if _INTEGER.fullmatch(text) is None:
        raise InvalidParam(f"Query parameter {name} must be an integer")
    value = int(text)
    if value < 0:
        raise InvalidParam(f"Query parameter {name} must be a positive integer.")
    return min(value, CANONICALJSON_MAX_INT)


def page(request: web.Request) -> tuple[int, int]:
    """``from`` and ``limit`` (default 100, at most ``MAX_LIMIT``)."""
    return integer(request, "from", 0), min(integer(request, "limit", 100), MAX_LIMIT)


def boolean(request: web.Request, name: str, default: bool | None = None) -> bool | None:
    text = request.query.get(name)
    if text is None:
        return default
    if text not in ("true", "false"):
        raise InvalidParam(f"Boolean query parameter {name!r} must be one of "
                           "['true', 'false']")
    return text == "true"


def choice(request: web.Request, name: str, allowed: Sequence[str], default: str) -> str:
    value = request.query.get(name, default)
    if value not in allowed:
        raise InvalidParam(f"Query parameter {name!r} must be one of "
                           f"[{', '.join(repr(v) for v in allowed)}]")
    return value


def backwards(request: web.Request, default: str = "f") -> bool:
    """``dir``: ``b`` (True) or ``f``."""
    return choice(request, "dir", ("b", "f"), default) == "b"


def string(request: web.Request, name: str) -> str | None:
    return request.query.get(name)
