"""The calls a worker makes to the persister (the main process's ``replication`` listener):
JSON in, JSON out, authenticated with the secret every process of the server derives
(``secret.py``). A Matrix error raised at the persister comes back as the same error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from core.errors import MatrixError
from homeserver.replication.secret import HEADER, SCHEME, authorized


class InternalClient:
    """POSTs to one endpoint of the persister."""

    def __init__(self, persister_url: str, path: str, secret: str, timeout_s: float) -> None:
        self._url = persister_url.rstrip("/") + path
        self._auth = SCHEME + secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, body: Any) -> Any:
        """The persister's answer to ``body``; its Matrix error raised again here, 503 when
        it cannot be reached."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, data=orjson.dumps(body), headers={
                    HEADER: self._auth, "Content-Type": "application/json"}) as response:
                data = orjson.loads(await response.read())
                status = response.status
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as e:
            raise MatrixError("The event persister cannot be reached", status=503,
                              errcode="M_UNKNOWN") from e
        if status != 200:
            raise MatrixError(str(data.get("error", "Error")), status=status,
                              errcode=str(data.get("errcode", "M_UNKNOWN")),
                              **{k: v for k, v in data.items() if k not in ("errcode", "error")})
        return data


def add_internal_route(app: web.Application, path: str, secret: str,
                       handle: Callable[[Any], Awaitable[Any]]) -> None:
    """``POST path`` on the persister: ``handle``s the JSON body of an authenticated call
    (a body it cannot read, a ``KeyError``/``TypeError``/``ValueError``, is a 400)."""

    async def route(request: web.Request) -> web.Response:
        if not authorized(request.headers.get(HEADER), secret):
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "Not a worker"},
                                     status=403)
        try:
            answer = await handle(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return web.json_response({"errcode": "M_BAD_JSON", "error": "Bad request"},
                                     status=400)
        except MatrixError as e:
            return web.Response(body=orjson.dumps(e.to_json()), status=e.status,
                                content_type="application/json")
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app.router.add_post(path, route)
