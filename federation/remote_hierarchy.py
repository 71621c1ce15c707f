"""Asking other servers for a space's hierarchy, for our clients' ``/hierarchy`` walks into
rooms this server is not in
(https://spec.matrix.org/v1.16/server-server-api/#get_matrixfederationv1hierarchyroomid).

The servers of a child event's ``via`` are asked in turn until one answers; failures are
logged, never passed on (the room is then left out of the walk, as Synapse does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from core.types import is_valid_server_name
from federation.transport.client import FederationClient, FederationClientError

logger = logging.getLogger(__name__)

# A client waits for the whole walk: each server gets a short time.
TIMEOUT_S = 10.0
# Far above an honest answer (a room and 50 children); checked field by field anyway.
MAX_ANSWER_BYTES = 2 * 1024 * 1024
# Servers of one via list tried at most.
MAX_SERVERS = 3


class RemoteHierarchyClient:
    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def hierarchy(self, servers: Sequence[str], room_id: str,
                        suggested_only: bool) -> Any:
        path = f"/_matrix/federation/v1/hierarchy/{quote(room_id, safe='')}"
        query = {"suggested_only": "true" if suggested_only else "false"}
        tried = 0
        for server in servers:
            if tried >= MAX_SERVERS:
                break
            if not is_valid_server_name(server):
                continue
            tried += 1
            try:
                return await self._client.get_json(server, path, query=query,
                                                   timeout_s=TIMEOUT_S,
                                                   max_response_bytes=MAX_ANSWER_BYTES)
            except FederationClientError as e:
                logger.info("%s gave no hierarchy of %s: %s", server, room_id, e)
        return None
