"""The HTTP client for URL previews: plain GETs of the URLs users give, through the same socket
factory as federation, so ``federation.ip_range_denylist``/``ip_range_allowlist`` refuse
denied addresses after DNS (and ``media.url_preview.url_blacklist`` refuses URLs), for the URL
and for every redirect (followed here one by one,
at most ``MAX_REDIRECTS``). Bounded: a timeout for the whole fetch, at most ``max_bytes``
read (streamed, stopped past it), bodies read only for the content types asked for.
Errors are the client's (Synapse's): 403 for a denied address, 502 otherwise."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import hdrs
from yarl import URL

from core.errors import Codes, MatrixError
from federation.transport.client import CONNECT_TIMEOUT_S, AddressRefused, _policy_socket_factory
from federation.transport.resolver import BodyTooLarge, read_body_limited
from homeserver.config import FederationConfig
from homeserver.services.url_preview import FetchedUrl

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
USER_AGENT = "KT-Chat (URL preview bot)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _refused(error: BaseException) -> bool:
    """Whether the connection failed because the IP range policy denied the address."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, AddressRefused):
            return True
        if isinstance(seen, aiohttp.ClientConnectorError) and isinstance(
                seen.os_error, AddressRefused):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _bad_gateway(message: str, errcode: str = Codes.UNKNOWN) -> MatrixError:
    return MatrixError(message, status=502, errcode=errcode)


class UrlFetchClient:
    """Implements :class:`homeserver.services.url_preview.UrlFetcher`."""

    def __init__(self, config: FederationConfig) -> None:
        self._config = config
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=ssl.create_default_context(),
                    socket_factory=_policy_socket_factory(self._config)),
                headers={hdrs.USER_AGENT: USER_AGENT,
                         hdrs.ACCEPT: "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5"},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
                cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def fetch(self, url: str, *, max_bytes: int, content_types: Sequence[str],
                    blocked: Callable[[str], bool] | None = None) -> FetchedUrl:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                return await self._fetch(URL(url, encoded=False), max_bytes, content_types,
                                         blocked)
        except MatrixError:
            raise
        except TimeoutError:
            raise _bad_gateway("Timed out fetching the URL") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            if _refused(e):
                raise MatrixError("IP address blocked", status=403) from None
            logger.info("URL preview fetch failed: %s", type(e).__name__)
            raise _bad_gateway(f"Failed to download content: {type(e).__name__}") from None

    async def _fetch(self, url: URL, max_bytes: int, content_types: Sequence[str],
                     blocked: Callable[[str], bool] | None) -> FetchedUrl:
        for _ in range(MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https") or not url.host:
                raise _bad_gateway("Redirected to a URL that is not http(s)")
            if blocked is not None and blocked(str(url)):
                raise MatrixError("URL blocked by url pattern blocklist entry", status=403)
            async with self._session().get(url, allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get(hdrs.LOCATION)
                    if not location:
                        raise _bad_gateway(f"Got a redirect ({response.status}) without Location")
                    url = url.join(URL(location))
                    continue
                if not 200 <= response.status < 300:
                    raise _bad_gateway(f"Got error {response.status}")
                header = response.headers.get(hdrs.CONTENT_TYPE)
                content_type = header.split(";", 1)[0].strip().lower() if header else None
                body = b""
                if content_type and any(content_type.startswith(t) for t in content_types):
                    try:
                        body = await read_body_limited(response, max_bytes)
                    except BodyTooLarge:
                        raise _bad_gateway(f"Requested file is too large > {max_bytes} bytes",
                                           Codes.TOO_LARGE) from None
                return FetchedUrl(str(url), content_type, header, body)
        raise _bad_gateway(f"Too many redirects (over {MAX_REDIRECTS})")
