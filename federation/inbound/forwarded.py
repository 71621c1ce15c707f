"""Transactions received by a ``federation_inbound`` worker: it authenticates the request and
checks the PDUs (format, signatures, content hashes: the CPU and the key fetches), then hands
the checked events and the EDUs to the persister (the main process) over its replication
listener, ``POST /_ktchat/replication/v1/federation_send``, authenticated with the shared
secret. The persister authorises and stores the events, applies the EDUs, remembers the
answer, and the worker sends that answer to the origin.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from federation.inbound.transaction import CheckedRoom, TransactionHandler
from homeserver.replication.internal_http import InternalClient, add_internal_route

FEDERATION_SEND = "/_ktchat/replication/v1/federation_send"
# The persister may fetch missing events from other servers before it answers; the origin
# waits about as long for us (and sends the transaction again if we time out).
_TIMEOUT_S = 120.0


class TransactionForwarder:
    """A federation_inbound worker's ``ForwardTransaction``: to the persister over HTTP."""

    def __init__(self, persister_url: str, secret: str) -> None:
        self._client = InternalClient(persister_url, FEDERATION_SEND, secret, _TIMEOUT_S)

    async def close(self) -> None:
        await self._client.close()

    async def __call__(self, origin: str, txn_id: str, rooms: list[CheckedRoom],
                       edus: list[Any]) -> dict[str, Any]:
        return dict(await self._client.post({
            "origin": origin, "txn_id": txn_id, "rooms": [room.to_json() for room in rooms],
            "edus": edus}))


def add_forwarded_transactions_route(app: web.Application, transactions: TransactionHandler,
                                     secret: str) -> None:
    """The persister's side (on its replication listener)."""

    async def federation_send(body: Any) -> Any:
        rooms = [CheckedRoom.from_json(room) for room in body["rooms"]]
        return await transactions.apply_checked(str(body["origin"]), str(body["txn_id"]),
                                                rooms, list(body["edus"]))

    add_internal_route(app, FEDERATION_SEND, secret, federation_send)
