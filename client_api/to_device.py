"""Send-to-device messaging (https://spec.matrix.org/v1.19/client-server-api/#send-to-device-messaging);
the messages reach their devices in /sync (``to_device``)."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object

routes = ClientRoutes()


@routes.put("/sendToDevice/{event_type}/{txn_id}")
async def put_send_to_device(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    event_type = params.to_device_type(request.match_info["event_type"])
    txn_id = params.transaction_id(request.match_info["txn_id"])
    body = await read_json_object(request)
    await services.to_device.send(requester.user_id, requester.device_id, event_type, txn_id,
                                  body)
    return json_response({})
