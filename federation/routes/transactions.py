"""PUT /_matrix/federation/v1/send/{txnId}
(https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv1sendtxnid)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from federation.routes._base import federation_route
from homeserver.http.json import json_response

if TYPE_CHECKING:
    from federation.container import Federation

routes = web.RouteTableDef()


@routes.put("/_matrix/federation/v1/send/{txn_id}")
@federation_route
async def put_send(request: web.Request, fed: Federation, origin: str, body: Any
                   ) -> web.Response:
    return json_response(await fed.transactions.on_send(origin, request.match_info["txn_id"],
                                                        body))
