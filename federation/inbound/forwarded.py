"""Transactions received by a ``federation_inbound`` worker: it authenticates the request and
checks the PDUs (format, signatures, content hashes: the CPU and the key fetches), then hands
the checked events and the EDUs to the persister (the main process) over its replication
listener, ``POST /_ktchat/replication/v1/federation_send``, authenticated with the shared
secret. The persister authorises and stores the events, applies the EDUs, remembers the
answer, and the worker sends that answer to the origin.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from core.errors import MatrixError
from federation.inbound.transaction import CheckedRoom, TransactionHandler
from homeserver.replication.secret import HEADER, SCHEME, authorized

FEDERATION_SEND = "/_ktchat/replication/v1/federation_send"
# The persister may fetch missing events from other servers before it answers; the origin
# waits about as long for us (and sends the transaction again if we time out).
_TIMEOUT_S = 120.0


class TransactionForwarder:
    """A federation_inbound worker's ``ForwardTransaction``: to the persister over HTTP."""

    def __init__(self, persister_url: str, secret: str) -> None:
        self._url = persister_url.rstrip("/") + FEDERATION_SEND
        self._auth = SCHEME + secret
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, origin: str, txn_id: str, rooms: list[CheckedRoom],
                       edus: list[Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S))
        body = orjson.dumps({"origin": origin, "txn_id": txn_id,
                             "rooms": [room.to_json() for room in rooms], "edus": edus})
        try:
            async with self._session.post(self._url, data=body, headers={
                    HEADER: self._auth, "Content-Type": "application/json"}) as response:
                data = orjson.loads(await response.read())
                status = response.status
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as e:
            raise MatrixError("The event persister cannot be reached", status=503,
                              errcode="M_UNKNOWN") from e
        if status != 200:
            raise MatrixError(str(data.get("error", "Error")), status=status,
                              errcode=str(data.get("errcode", "M_UNKNOWN")))
        return dict(data)


def add_forwarded_transactions_route(app: web.Application, transactions: TransactionHandler,
                                     secret: str) -> None:
    """The persister's side (on its replication listener)."""

    async def federation_send(request: web.Request) -> web.Response:
        if not authorized(request.headers.get(HEADER), secret):
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "Not a worker"},
                                     status=403)
        try:
            body = orjson.loads(await request.read())
            origin, txn_id = str(body["origin"]), str(body["txn_id"])
            rooms = [CheckedRoom.from_json(room) for room in body["rooms"]]
            edus = list(body["edus"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return web.json_response({"errcode": "M_BAD_JSON", "error": "Bad request"},
                                     status=400)
        try:
            answer = await transactions.apply_checked(origin, txn_id, rooms, edus)
        except MatrixError as e:
            return web.Response(body=orjson.dumps(e.to_json()), status=e.status,
                                content_type="application/json")
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app.router.add_post(FEDERATION_SEND, federation_send)
