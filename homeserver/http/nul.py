"""U+0000 (NUL) at the edges: one policy for every listener, so SQLite and PostgreSQL answer
alike (PostgreSQL's text columns cannot hold NUL, SQLite's can).

- A path segment or query parameter (``%00``) carrying it: ``400 M_INVALID_PARAM``, here,
  before any route runs (room, event, user and device IDs, transaction IDs, state keys,
  aliases, account data types, tags, filter IDs, tokens, search terms all arrive so).
- A JSON body of the client API carrying it in any string, key or value, at any depth:
  ``400 M_BAD_JSON`` (``read_json_object``), as Synapse's PostgreSQL cannot store it either.
- Federation: canonical JSON allows ``\\u0000`` in event content, so bodies that carry
  events take it; events are stored as their canonical JSON, where it stays escaped, so it
  is kept losslessly. Where it would become an identifier the server keeps in a column (an
  event's type, state key, room, the events it refers to) the PDU is refused on its own
  (``federation.inbound.pdus``), and an EDU carrying it is dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from core.errors import InvalidParam

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NUL = "\x00"


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds U+0000 in any string (object keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if isinstance(key, str) and NUL in key:
                    return True
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


@web.middleware
async def reject_nul_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``400 M_INVALID_PARAM`` for a request whose path or query carries U+0000."""
    if NUL in request.path or any(NUL in key or NUL in value
                                  for key, value in request.query.items()):
        raise InvalidParam("Path segments and query parameters must not contain U+0000")
    return await handler(request)
