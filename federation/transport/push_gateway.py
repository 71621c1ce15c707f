"""The HTTP client for push gateways (https://spec.matrix.org/v1.19/push-gateway-api/):
POST /_matrix/push/v1/notify, through the same socket factory as federation, so
``federation.ip_range_denylist``/``ip_range_allowlist`` govern it too."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import hdrs

from federation.transport.client import CONNECT_TIMEOUT_S, _policy_socket_factory
from homeserver.config import FederationConfig
from homeserver.http.json import encode_json
from homeserver.services.pushers import PushGatewayError

TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 64 * 1024


class PushGatewayClient:
    """Implements :class:`homeserver.services.pushers.PushGateway`."""

    def __init__(self, config: FederationConfig, *, user_agent: str = "KT-Chat") -> None:
        self._config = config
        self._user_agent = user_agent
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            tls: ssl.SSLContext | bool = (ssl.create_default_context()
                                          if self._config.verify_tls else False)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=tls, socket_factory=_policy_socket_factory(self._config)),
                headers={hdrs.USER_AGENT: self._user_agent},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
                cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def notify(self, url: str, body: Mapping[str, Any]) -> list[str]:
        try:
            async with self._session().post(
                    url, data=encode_json(body), allow_redirects=False,
                    headers={hdrs.CONTENT_TYPE: "application/json"}) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise PushGatewayError(type(e).__name__) from None
        if status != 200:
            raise PushGatewayError(f"HTTP {status}")
        try:
            answer = json.loads(raw) if len(raw) <= MAX_RESPONSE_BYTES else None
        except ValueError:
            answer = None
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        return [k for k in rejected if isinstance(k, str)] if isinstance(rejected, list) else []
