"""Asking another server for its published room directory, for our clients'
``/publicRooms?server=...`` (https://spec.matrix.org/v1.16/server-server-api/#public-room-directory).

Without a filter the question is ``GET /_matrix/federation/v1/publicRooms``; with one it is
``POST`` (MSC2197, in the spec since v1.1). A server that does not know the ``POST`` form
answers 404, 405 or ``M_UNRECOGNIZED``: that is ``RemoteFilterUnsupported``, and the caller
asks again without the filter. Every other failure becomes an error of our own for the
client, never the remote server's text: 403 ``M_FORBIDDEN`` when the server refuses us, else
502 (as Synapse's ``RoomListHandler.get_remote_public_room_list``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from core.errors import Codes, Forbidden, MatrixError
from federation.transport.client import (
    FederationClient,
    FederationClientError,
    FederationRequestError,
)
from homeserver.services.ports import RemoteFilterUnsupported

logger = logging.getLogger(__name__)

PATH = "/_matrix/federation/v1/publicRooms"
# A client waits for this: shorter than the federation default (60 s).
TIMEOUT_S = 30.0
# Far above an honest answer of 100 rooms; the answer is checked entry by entry anyway.
MAX_ANSWER_BYTES = 2 * 1024 * 1024


class RemoteDirectoryClient:
    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def public_rooms(self, server: str, *, limit: int, since: str | None,
                           include_all_networks: bool, third_party_instance_id: str | None,
                           room_filter: Mapping[str, Any] | None) -> Any:
        try:
            if room_filter is None:
                query: dict[str, str] = {
                    "limit": str(limit),
                    "include_all_networks": "true" if include_all_networks else "false"}
                if since is not None:
                    query["since"] = since
                if third_party_instance_id is not None:
                    query["third_party_instance_id"] = third_party_instance_id
                return await self._client.get_json(
                    server, PATH, query=query, timeout_s=TIMEOUT_S,
                    max_response_bytes=MAX_ANSWER_BYTES)
            body: dict[str, Any] = {"limit": limit, "filter": dict(room_filter),
                                    "include_all_networks": include_all_networks}
            if since is not None:
                body["since"] = since
            if third_party_instance_id is not None:
                body["third_party_instance_id"] = third_party_instance_id
            return await self._client.post_json(
                server, PATH, body, timeout_s=TIMEOUT_S, max_response_bytes=MAX_ANSWER_BYTES)
        except FederationRequestError as e:
            if room_filter is not None and (e.status in (404, 405) or e.errcode in (
                    Codes.UNRECOGNIZED, Codes.NOT_FOUND)):
                raise RemoteFilterUnsupported(server) from None
            logger.info("%s answered our public room list query with %s", server, e)
            if e.status == 403:
                raise Forbidden(
                    f"You are not allowed to view the public rooms list of {server}") from None
            raise _failed(server) from None
        except FederationClientError as e:
            logger.info("Could not fetch the public room list of %s: %s", server, e)
            raise _failed(server) from None


def _failed(server: str) -> MatrixError:
    return MatrixError(f"Failed to fetch the room list of {server}", status=502,
                       errcode=Codes.UNKNOWN)
