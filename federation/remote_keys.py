"""Asking other servers for their users' end-to-end keys, for our clients' ``/keys/query``
and ``/keys/claim`` (https://spec.matrix.org/v1.16/server-server-api/#end-to-end-encryption),
and for a user's whole device list (``/user/devices/{userId}``) to cache it.

One request per server, within the client's timeout; what comes back is handed over as it
came (``E2EKeyService`` keeps only the users and devices it asked about). A failure becomes
``RemoteKeysFailed`` with what the client's ``failures`` says of that server, as Synapse:
the remote status for an error answer, 503 when there was none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from federation.transport.client import (
    FederationClient,
    FederationClientError,
    FederationRequestError,
)
from homeserver.services.ports import RemoteKeysFailed

logger = logging.getLogger(__name__)

QUERY_PATH = "/_matrix/federation/v1/user/keys/query"
CLAIM_PATH = "/_matrix/federation/v1/user/keys/claim"
DEVICES_PATH = "/_matrix/federation/v1/user/devices/"
# Keys of thousands of devices fit well within this.
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class RemoteKeysClient:
    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def query(self, server: str, body: Mapping[str, Any], timeout_s: float) -> Any:
        return await self._post(server, QUERY_PATH, body, timeout_s)

    async def claim(self, server: str, body: Mapping[str, Any], timeout_s: float) -> Any:
        return await self._post(server, CLAIM_PATH, body, timeout_s)

    async def devices(self, server: str, user_id: str, timeout_s: float) -> Any:
        return await self._request(server, "GET", DEVICES_PATH + quote(user_id, safe=""),
                                   None, timeout_s)

    async def _post(self, server: str, path: str, body: Mapping[str, Any], timeout_s: float
                    ) -> Any:
        return await self._request(server, "POST", path, dict(body), timeout_s)

    async def _request(self, server: str, method: str, path: str, body: Any, timeout_s: float
                       ) -> Any:
        try:
            return await self._client.request(server, method, path, body=body,
                                              timeout_s=timeout_s,
                                              max_response_bytes=MAX_ANSWER_BYTES)
        except FederationRequestError as e:
            logger.info("%s answered %s with %s", server, path, e)
            status = e.status if 400 <= e.status <= 599 else 502
            raise RemoteKeysFailed(status, f"{server} answered with HTTP {e.status}") from None
        except FederationClientError as e:
            logger.info("No answer from %s to %s: %s", server, path, e)
            raise RemoteKeysFailed(503, f"{server} could not be reached") from None
