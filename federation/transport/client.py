"""Sending requests to other servers: HTTPS, signed with X-Matrix, through server discovery.

https://spec.matrix.org/v1.16/server-server-api/ ("Resolving server names", "Request
Authentication", "TLS"). Synapse's ``synapse/http/matrixfederationclient.py`` is the reference
for error handling and limits.

Every connection this client opens, for federation requests and well-known lookups alike,
goes through one socket factory that refuses addresses in ``federation.ip_range_denylist``
(unless in ``ip_range_allowlist``). It sees the address actually connected to, after DNS, for
IP literals and redirects too, so no code path can reach a denied address (SSRF).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import dns.asyncresolver
from aiohappyeyeballs import AddrInfoType, SocketFactoryType
from aiohttp import hdrs
from signedjson.types import SigningKey
from yarl import URL

from federation.transport.resolver import BodyTooLarge, ServerResolver, read_body_limited
from federation.transport.x_matrix import sign_request
from homeserver.config import FederationConfig
from homeserver.http.json import encode_json

logger = logging.getLogger(__name__)

Query = Mapping[str, str | list[str]]
# Reads a 2xx answer's body as it comes (see ``FederationClient.request``).
Consumer = Callable[[aiohttp.ClientResponse], Awaitable[Any]]

DEFAULT_TIMEOUT_S = 60.0
# Per connection attempt (TCP and TLS handshake); a request may try several SRV targets.
CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# The error answer of a request whose 2xx body is streamed (see ``request``'s ``consume``).
ERROR_BODY_BYTES = 64 * 1024


class FederationClientError(Exception):
    """A request to another server failed."""


class RemoteUnreachable(FederationClientError):
    """No usable answer: DNS, connection or TLS failure, an address refused by the IP range
    policy, a timeout, or a response that is too large or not JSON."""


class FederationRequestError(FederationClientError):
    """The remote server answered with a non-2xx status.

    Attributes:
        status: the HTTP status.
        errcode: the Matrix ``errcode`` of the response, if it had one.
        error: the Matrix ``error`` text, if any.
        body: the response body parsed as JSON, or None when it was not JSON.
    """

    def __init__(self, status: int, errcode: str | None, error: str | None, body: Any) -> None:
        super().__init__(f"HTTP {status} {errcode or ''}: {error or ''}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


class ResponseTooLarge(RemoteUnreachable):
    """The answer was over the size accepted."""


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A 2xx answer that is not JSON (media)."""

    content_type: str | None
    body: bytes


class AddressRefused(OSError):
    """Raised by the socket factory for an address the IP range policy denies."""


def is_ip_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  config: FederationConfig) -> bool:
    """Whether outbound federation may connect to ``address``: it is in the allowlist, or not
    in the denylist."""
    if any(address in network for network in config.ip_range_allowlist):
        return True
    return not any(address in network for network in config.ip_range_denylist)


def _policy_socket_factory(config: FederationConfig) -> SocketFactoryType:
    def create_socket(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = ipaddress.ip_address(sockaddr[0])
        if not is_ip_allowed(address, config):
            logger.warning("Refusing to connect to %s: denied by federation.ip_range_denylist",
                           address)
            # One message for every refused address, so that aiohappyeyeballs, when all the
            # addresses of a host are refused, raises this exception rather than a summary.
            raise AddressRefused(errno.EACCES,
                                 "address refused by the federation IP range policy")
        return socket.socket(family, type_, proto)

    return create_socket


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_json(body: bytes) -> Any:
    """Strict JSON (no NaN or Infinity); raises ValueError otherwise."""
    try:
        return _json_decoder.decode(body.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FederationClient:
    """Sends HTTPS requests to other homeservers, signed as ``server_name``.

    Args:
        server_name: our server name, the ``origin`` of signed requests.
        signing_key: our ed25519 signing key.
        config: TLS verification and IP range policy.
        user_agent: the ``User-Agent`` header.
        well_known_port: the port well-known files are fetched from (443; tests change it).
        dns_resolver: for SRV lookups (default: the system's name servers).
    """

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        config: FederationConfig,
        *,
        user_agent: str = "KT-Chat",
        well_known_port: int = 443,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._config = config
        self._user_agent = user_agent
        self._well_known_port = well_known_port
        self._dns_resolver = dns_resolver
        self._http: aiohttp.ClientSession | None = None
        self._resolver: ServerResolver | None = None

    async def start(self) -> None:
        """Open the connection pool (shared by all requests, kept alive between them)."""
        # The system CA store; certificates are checked against each target's TLS server name.
        tls: ssl.SSLContext | bool = (ssl.create_default_context() if self._config.verify_tls
                                      else False)
        connector = aiohttp.TCPConnector(
            ssl=tls, socket_factory=_policy_socket_factory(self._config))
        self._http = aiohttp.ClientSession(
            connector=connector,
            headers={hdrs.USER_AGENT: self._user_agent},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._resolver = ServerResolver(self._http, well_known_port=self._well_known_port,
                                        dns_resolver=self._dns_resolver)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
            self._resolver = None

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        signed: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        raw: bool = False,
        consume: Consumer | None = None,
    ) -> Any:
        """Send one request to ``destination`` and return its parsed JSON response (with
        ``raw``: a ``RawResponse``, the body unparsed).

        Args:
            destination: the server name of the remote server (our own is fine too).
            method: the HTTP method, upper case.
            path: the percent-encoded path (IDs quoted with ``urllib.parse.quote(x, safe="")``).
            query: query parameters; a list value repeats the parameter.
            body: the JSON body, or None for none.
            signed: add the X-Matrix Authorization header (the key API needs none).
            timeout_s: the whole request, from resolution to the last byte of the response.
            max_response_bytes: the largest response body accepted.
            consume: reads a 2xx answer's body as it comes (its result is returned);
                ``max_response_bytes`` then bounds only error answers.

        Raises:
            FederationRequestError: the server answered with a non-2xx status.
            RemoteUnreachable: no usable answer (see the class).
        """
        if self._http is None or self._resolver is None:
            raise RuntimeError("FederationClient.start() has not been called")
        # The signed URI must be exactly the request target sent.
        uri = f"{path}?{urlencode(query, doseq=True)}" if query else path
        headers: dict[str, str] = {}
        data = None
        if body is not None:
            data = encode_json(body)
            headers[hdrs.CONTENT_TYPE] = "application/json"
        if signed:
            headers[hdrs.AUTHORIZATION] = sign_request(
                self._server_name, self._signing_key, method, uri, destination, body)
        started = asyncio.get_running_loop().time()
        outcome = "unreachable"
        try:
            async with asyncio.timeout(timeout_s):
                status, answer = await _send(self._http, self._resolver, destination, method,
                                             uri, headers, data, max_response_bytes, raw,
                                             consume)
            outcome = str(status)
            return answer
        except FederationRequestError as e:
            outcome = str(e.status)
            raise
        except TimeoutError:
            outcome = "timeout"
            raise RemoteUnreachable(
                f"{destination}: no response within {timeout_s:g} s") from None
        finally:
            logger.debug("Sent %s %s to %s: %s in %.0f ms", method, path, destination, outcome,
                         (asyncio.get_running_loop().time() - started) * 1000)

    async def get_json(self, destination: str, path: str, *, query: Query | None = None,
                       signed: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S,
                       max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> Any:
        """GET; see ``request``."""
        return await self.request(destination, "GET", path, query=query, signed=signed,
                                  timeout_s=timeout_s, max_response_bytes=max_response_bytes)

    async def get_raw(self, destination: str, path: str, *, query: Query | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S,
                      max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> RawResponse:
        """GET a response that is not JSON (media); see ``request``."""
        answer = await self.request(destination, "GET", path, query=query, timeout_s=timeout_s,
                                    max_response_bytes=max_response_bytes, raw=True)
        assert isinstance(answer, RawResponse)
        return answer

    async def get_streamed(self, destination: str, path: str, consume: Consumer, *,
                           query: Query | None = None,
                           timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """GET, the 2xx answer read by ``consume`` as it comes (its result is returned);
        non-2xx answers raise as ``request`` does."""
        return await self.request(destination, "GET", path, query=query, timeout_s=timeout_s,
                                  max_response_bytes=ERROR_BODY_BYTES, consume=consume)

    async def get_url(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                      max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                      consume: Consumer | None = None) -> Any:
        """GET a plain URL (no signature, no server discovery) through the same connection
        policy (``federation.ip_range_denylist``): where another server's media answer
        redirects to. A ``RawResponse``, or with ``consume`` what it returns (see
        ``request``).

        Raises:
            FederationRequestError: a non-2xx answer.
            RemoteUnreachable: no usable answer.
        """
        if self._http is None:
            raise RuntimeError("FederationClient.start() has not been called")
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise RemoteUnreachable("not an http(s) URL")
        try:
            async with asyncio.timeout(timeout_s), self._http.get(
                    parsed, allow_redirects=False) as response:
                return (await _read_response(parsed.host, response, max_response_bytes,
                                             True, consume))[1]
        except TimeoutError:
            raise RemoteUnreachable(f"{parsed.host}: no response within {timeout_s:g} s"
                                    ) from None
        except aiohttp.ClientError as e:
            raise RemoteUnreachable(f"{parsed.host}: {type(e).__name__}: {e}") from e

    async def put_json(self, destination: str, path: str, body: Any, *,
                       query: Query | None = None, signed: bool = True,
                       timeout_s: float = DEFAULT_TIMEOUT_S,
                       max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> Any:
        """PUT a JSON body; see ``request``."""
        return await self.request(destination, "PUT", path, query=query, body=body,
                                  signed=signed, timeout_s=timeout_s,
                                  max_response_bytes=max_response_bytes)

    async def post_json(self, destination: str, path: str, body: Any, *,
                        query: Query | None = None, signed: bool = True,
                        timeout_s: float = DEFAULT_TIMEOUT_S,
                        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> Any:
        """POST a JSON body; see ``request``."""
        return await self.request(destination, "POST", path, query=query, body=body,
                                  signed=signed, timeout_s=timeout_s,
                                  max_response_bytes=max_response_bytes)


async def _send(http: aiohttp.ClientSession, resolver: ServerResolver, destination: str,
                method: str, uri: str, headers: dict[str, str], data: bytes | None,
                max_response_bytes: int, raw: bool = False,
                consume: Consumer | None = None) -> tuple[int, Any]:
    """Resolve ``destination`` and send to its targets in turn until one connects; the
    status and JSON of its 2xx answer."""
    try:
        targets = await resolver.resolve(destination)
    except ValueError as e:
        raise RemoteUnreachable(f"{destination}: {e}") from None
    first_error: aiohttp.ClientError | None = None
    for target in targets:
        url = URL(f"https://{_netloc(target.connect_host, target.port)}{uri}", encoded=True)
        try:
            async with http.request(
                method, url, data=data, headers={**headers, hdrs.HOST: target.host_header},
                server_hostname=target.tls_server_name, allow_redirects=False,
            ) as response:
                return await _read_response(destination, response, max_response_bytes, raw,
                                            consume)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            # Not connected (DNS, refused, TLS): the next SRV target may do better.
            logger.info("Could not connect to %s at %s:%d: %s", destination,
                        target.connect_host, target.port, e)
            first_error = first_error or e
        except aiohttp.ClientError as e:
            # str, not repr: the repr of a ClientResponseError holds our request headers.
            raise RemoteUnreachable(f"{destination}: {type(e).__name__}: {e}") from e
    raise RemoteUnreachable(f"{destination}: {first_error}") from first_error


async def _read_response(destination: str, response: aiohttp.ClientResponse,
                         max_bytes: int, unparsed: bool = False,
                         consume: Consumer | None = None) -> tuple[int, Any]:
    """The status and JSON (``unparsed``: a ``RawResponse``; ``consume``: what it makes of
    the response) of a 2xx response; raises for anything else."""
    if 200 <= response.status < 300 and consume is not None:
        return response.status, await consume(response)
    try:
        raw = await read_body_limited(response, max_bytes)
    except BodyTooLarge as e:
        raise ResponseTooLarge(f"{destination}: {e}") from None
    if 200 <= response.status < 300 and unparsed:
        return response.status, RawResponse(response.headers.get(hdrs.CONTENT_TYPE), raw)
    if 200 <= response.status < 300:
        try:
            return response.status, _decode_json(raw)
        except ValueError:
            raise RemoteUnreachable(
                f"{destination}: HTTP {response.status} response is not JSON") from None
    try:
        body = _decode_json(raw)
    except ValueError:
        body = None
    errcode = body.get("errcode") if isinstance(body, dict) else None
    error = body.get("error") if isinstance(body, dict) else None
    raise FederationRequestError(
        response.status,
        errcode if isinstance(errcode, str) else None,
        error if isinstance(error, str) else None,
        body,
    )
