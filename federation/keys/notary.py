"""Serving other servers' keys as a notary: ``/_matrix/key/v2/query``.

Spec: https://spec.matrix.org/v1.16/server-server-api/#querying-keys-through-another-server.
Each answer is the origin server's own signed key response, with our signature added. Stored
responses are served when they are valid long enough; otherwise the origin is asked again (and
the stored ones are served anyway if it cannot be reached). Synapse's
``synapse/rest/key/v2/remote_key_resource.py`` is the model.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from signedjson.sign import sign_json

from core.errors import BadJson
from core.types import is_valid_server_name
from federation.keys.keyring import MAX_KEY_VALIDITY_MS, Keyring
from federation.keys.server import signed_key_response
from homeserver.http.json import json_response, read_json_object
from homeserver.http.params import query_int
from storage.stores.server_keys import ServerKey

routes = web.RouteTableDef()

KEYRING: web.AppKey[Keyring] = web.AppKey("keyring", Keyring)


class _Criteria(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    minimum_valid_until_ts: int | None = None


class _QueryBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    server_keys: dict[str, dict[str, _Criteria]]


@routes.get("/_matrix/key/v2/query/{server_name}")
async def get_query_keys(request: web.Request) -> web.Response:
    """GET /_matrix/key/v2/query/{serverName}"""
    keyring = request.app[KEYRING]
    min_valid_ts = query_int(request, "minimum_valid_until_ts", keyring.clock.time_ms())
    responses = await _responses_for(keyring, request.match_info["server_name"], None,
                                     min_valid_ts)
    return json_response({"server_keys": responses})


@routes.post("/_matrix/key/v2/query")
async def post_query_keys(request: web.Request) -> web.Response:
    """POST /_matrix/key/v2/query"""
    keyring = request.app[KEYRING]
    try:
        body = _QueryBody.model_validate(await read_json_object(request))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise BadJson(f"Invalid parameter {where}: {first['msg']}") from None
    now = keyring.clock.time_ms()
    answers = await asyncio.gather(*(
        _responses_for(
            keyring, server_name,
            {k: c.minimum_valid_until_ts if c.minimum_valid_until_ts is not None else now
             for k, c in criteria.items()} or None,
            now)
        for server_name, criteria in body.server_keys.items()))
    return json_response({"server_keys": [r for responses in answers for r in responses]})


async def _responses_for(keyring: Keyring, server_name: str, wanted: dict[str, int] | None,
                         min_valid: int) -> list[dict[str, Any]]:
    """The key responses we vouch for about one server.

    Args:
        wanted: key ID -> until when it should be valid; None for all the server's keys (at
            least one current key valid until ``min_valid`` is then wanted).
        min_valid: see ``wanted``.
    """
    now = keyring.clock.time_ms()
    if server_name == keyring.server_name:
        return [signed_key_response(server_name, keyring.signing_key, now)]
    if not is_valid_server_name(server_name):
        return []
    # Nothing fetched now is valid past the spec's cap: asking for more cannot help.
    cap = now + MAX_KEY_VALIDITY_MS
    capped = None if wanted is None else {k: min(m, cap) for k, m in wanted.items()}
    stored = await keyring.store.get_server_keys(server_name)
    if (_stale(stored, capped, min(min_valid, cap))
            and await keyring.fetch_from_server(server_name)):
        stored = await keyring.store.get_server_keys(server_name)
    if wanted is not None:
        stored = [k for k in stored if k.key_id in wanted]
    # Several keys usually share one response: serve each response once.
    return [sign_json(json.loads(key_json), keyring.server_name, keyring.signing_key)
            for key_json in dict.fromkeys(k.key_json for k in stored)]


def _stale(stored: list[ServerKey], wanted: dict[str, int] | None, min_valid: int) -> bool:
    """Whether the stored keys fall short of what is wanted (see ``_responses_for``)."""
    if wanted is None:
        return not any(k.expired_ts is None and k.valid_until_ts >= min_valid for k in stored)
    by_id = {k.key_id: k for k in stored}
    return any(key_id not in by_id or by_id[key_id].valid_until_ts < m
               for key_id, m in wanted.items())
