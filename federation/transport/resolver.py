"""Where to send a server's federation traffic: server discovery.

https://spec.matrix.org/v1.16/server-server-api/#resolving-server-names. Behaviour (timeouts,
cache periods, size limits) follows Synapse's ``matrix_federation_agent.py`` and
``well_known_resolver.py``.

Resolution only decides names and ports. Connecting, including resolving the chosen host to
addresses and refusing denied ones, is the HTTP session's business: the well-known fetch goes
through the same session as every federation request, so the same IP range policy applies.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
from aiohttp import hdrs
from cachetools import TLRUCache
from dns.rdtypes.IN.SRV import SRV
from multidict import CIMultiDictProxy

from core.clock import Clock, SystemClock
from federation.transport.x_matrix import is_ip_literal, is_valid_server_name, split_server_name

logger = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448

WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_TIMEOUT_S = 30.0
WELL_KNOWN_CONNECT_TIMEOUT_S = 10.0
WELL_KNOWN_MAX_REDIRECTS = 5
WELL_KNOWN_MAX_SIZE = 50 * 1024
# Cache periods, in seconds (Synapse's values). A response's Cache-Control max-age is honoured
# within [MIN, MAX]; without one the default applies, with jitter against a stampeding herd.
WELL_KNOWN_DEFAULT_CACHE_S = 24 * 3600
WELL_KNOWN_MIN_CACHE_S = 5 * 60
WELL_KNOWN_MAX_CACHE_S = 48 * 3600
WELL_KNOWN_INVALID_CACHE_S = 3600
# A server that had a valid well-known lately and now fails is retried this soon, and its last
# valid delegation is kept through temporary failures (unreachable, 5xx, too large) meanwhile.
WELL_KNOWN_DOWN_CACHE_S = 2 * 60
WELL_KNOWN_REMEMBER_VALID_S = 2 * 3600
CACHE_JITTER = 0.1
CACHE_SIZE = 10_000

DNS_TIMEOUT_S = 10.0
# SRV services in the order the spec asks for them; _matrix._tcp is deprecated.
SRV_SERVICES = ("_matrix-fed._tcp", "_matrix._tcp")


@dataclass(frozen=True, slots=True)
class Resolved:
    """One place to send requests for a server name.

    Attributes:
        host_header: the HTTP ``Host`` header.
        tls_server_name: the name the certificate must be valid for, also sent as SNI
            (an IP literal's certificate must be valid for the IP; no SNI is sent then).
        connect_host: the hostname or IP address to connect to (an IPv6 address unbracketed).
        port: the TCP port.
    """

    host_header: str
    tls_server_name: str
    connect_host: str
    port: int


class BodyTooLarge(Exception):
    """A response body is larger than the caller accepts."""


async def read_body_limited(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read a response body, refusing one over ``max_bytes`` (decompressed) without reading on.

    Raises:
        BodyTooLarge: Content-Length or the bytes read so far exceed ``max_bytes``.
    """
    if response.content_length is not None and response.content_length > max_bytes:
        raise BodyTooLarge(f"response of {response.content_length} bytes is over the "
                           f"{max_bytes} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"response is over the {max_bytes} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class _WellKnownEntry:
    delegated: str | None
    ttl_s: float


class _WellKnownFailure(Exception):
    """No usable well-known. ``temporary``: the server could not be asked (as opposed to an
    answer saying there is no delegation), so a delegation seen lately still stands."""

    def __init__(self, reason: str, *, temporary: bool) -> None:
        super().__init__(reason)
        self.temporary = temporary


def _entry_expiry(_key: str, entry: _WellKnownEntry, now: float) -> float:
    return now + entry.ttl_s


class ServerResolver:
    """Resolves server names to connection targets, caching well-known and SRV answers.

    Args:
        http: the session to fetch ``/.well-known/matrix/server`` with; it must apply the same
            connection policy (IP ranges, TLS verification) as federation requests.
        well_known_port: the HTTPS port well-known files are fetched from (443; tests change it).
        dns_resolver: for SRV lookups; default: the system's name servers, with a bounded
            answer cache (positive and negative answers, per their DNS TTL).
        clock: times cache entries.
        rng: orders SRV records of equal priority and jitters cache periods.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        well_known_port: int = 443,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._well_known_port_suffix = "" if well_known_port == 443 else f":{well_known_port}"
        if dns_resolver is None:
            try:
                dns_resolver = dns.asyncresolver.Resolver()
                dns_resolver.lifetime = DNS_TIMEOUT_S
                dns_resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
            except dns.exception.DNSException as e:  # no /etc/resolv.conf, say
                logger.warning("No DNS configuration (%s): SRV records are not looked up", e)
        self._dns = dns_resolver
        timer = (clock or SystemClock()).monotonic
        self._rng = rng or random.Random()
        self._well_known_cache: TLRUCache[str, _WellKnownEntry] = TLRUCache(
            CACHE_SIZE, _entry_expiry, timer=timer)
        self._last_valid_well_known: TLRUCache[str, _WellKnownEntry] = TLRUCache(
            CACHE_SIZE, _entry_expiry, timer=timer)

    async def resolve(self, server_name: str) -> list[Resolved]:
        """The targets to try for ``server_name``, in order (several only from SRV records).

        Raises:
            ValueError: ``server_name`` is not a valid server name.
        """
        host, port = split_server_name(server_name)
        if port is None and not is_ip_literal(host):
            # Step 3: a name without port may delegate with a well-known file.
            server_name = await self._delegated_server(server_name) or server_name
        return await self._resolve_without_well_known(server_name)

    async def _resolve_without_well_known(self, name: str) -> list[Resolved]:
        """Steps 1, 2 and 4-6 for a server name, or 3.1-3.5 for a delegated one."""
        host, port = split_server_name(name)
        if port is not None or is_ip_literal(host):
            # IP literal or explicit port: connect there; Host is the name as given.
            return [Resolved(name, host, host, port or DEFAULT_FEDERATION_PORT)]
        # SRV records, else port 8448; Host and certificate name are the hostname either way.
        targets = await self._srv_targets(host) or [(host, DEFAULT_FEDERATION_PORT)]
        return [Resolved(host, host, target, target_port) for target, target_port in targets]

    async def _delegated_server(self, server_name: str) -> str | None:
        """The ``m.server`` of ``server_name``'s well-known file, cached; None: no delegation."""
        cached = self._well_known_cache.get(server_name)
        if cached is not None:
            return cached.delegated
        delegated: str | None
        try:
            delegated, ttl_s = await self._fetch_well_known(server_name)
            self._last_valid_well_known[server_name] = _WellKnownEntry(
                delegated, ttl_s + WELL_KNOWN_REMEMBER_VALID_S)
        except _WellKnownFailure as e:
            logger.info("No server delegation for %s: %s", server_name, e)
            last_valid = self._last_valid_well_known.get(server_name)
            delegated = last_valid.delegated if last_valid is not None and e.temporary else None
            ttl_s = (WELL_KNOWN_DOWN_CACHE_S if last_valid is not None
                     else WELL_KNOWN_INVALID_CACHE_S) * self._jitter()
        self._well_known_cache[server_name] = _WellKnownEntry(delegated, ttl_s)
        return delegated

    async def _fetch_well_known(self, server_name: str) -> tuple[str, float]:
        """GET ``https://<server_name>/.well-known/matrix/server``, following a few redirects.

        Returns:
            The delegated server name and how long to cache it, in seconds.

        Raises:
            _WellKnownFailure: no valid answer.
        """
        url = f"https://{server_name}{self._well_known_port_suffix}{WELL_KNOWN_PATH}"
        timeout = aiohttp.ClientTimeout(total=WELL_KNOWN_TIMEOUT_S,
                                        sock_connect=WELL_KNOWN_CONNECT_TIMEOUT_S)
        try:
            async with self._http.get(url, timeout=timeout,
                                      max_redirects=WELL_KNOWN_MAX_REDIRECTS) as response:
                body = await read_body_limited(response, WELL_KNOWN_MAX_SIZE)
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as e:
            raise _WellKnownFailure(f"{url}: {e!r}", temporary=True) from e
        if response.status >= 500:
            raise _WellKnownFailure(f"{url}: HTTP {response.status}", temporary=True)
        if response.status != 200:
            raise _WellKnownFailure(f"{url}: HTTP {response.status}", temporary=False)
        if response.url.scheme != "https":
            # A redirect to plain HTTP: anyone on the path could delegate the server.
            raise _WellKnownFailure(f"{url}: redirected to {response.url}", temporary=False)
        try:
            delegated = json.loads(body)["m.server"]
        except (ValueError, LookupError, TypeError, RecursionError):
            raise _WellKnownFailure(f"{url}: no m.server in the response",
                                    temporary=False) from None
        if not isinstance(delegated, str) or not is_valid_server_name(delegated):
            raise _WellKnownFailure(f"{url}: m.server is not a server name", temporary=False)
        return delegated, self._cache_period(response.headers)

    def _cache_period(self, headers: CIMultiDictProxy[str]) -> float:
        """Seconds to cache a valid well-known: its max-age within bounds, else the default.
        ``no-store`` counts as max-age 0: refetching for every request costs both sides."""
        directives: dict[str, str] = {}
        for header in headers.getall(hdrs.CACHE_CONTROL, []):
            for directive in header.split(","):
                name, _, value = directive.partition("=")
                directives[name.strip().lower()] = value.strip().strip('"')
        max_age = "0" if "no-store" in directives else directives.get("max-age")
        if max_age is None or not max_age.isdigit():
            return WELL_KNOWN_DEFAULT_CACHE_S * self._jitter()
        return min(max(int(max_age), WELL_KNOWN_MIN_CACHE_S), WELL_KNOWN_MAX_CACHE_S)

    def _jitter(self) -> float:
        return self._rng.uniform(1 - CACHE_JITTER, 1 + CACHE_JITTER)

    async def _srv_targets(self, host: str) -> list[tuple[str, int]]:
        """The (target, port) pairs of ``host``'s SRV records, ordered per RFC 2782; empty when
        there are none or the lookup fails (the caller then uses port 8448)."""
        if self._dns is None:
            return []
        for service in SRV_SERVICES:
            try:
                answer = await self._dns.resolve(f"{service}.{host}", "SRV")
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as e:
                logger.info("SRV lookup for %s.%s failed: %r", service, host, e)
                return []
            # A lone "." target means "no such service here" (RFC 2782).
            records = [r for r in answer if isinstance(r, SRV) and r.target != dns.name.root]
            if records:
                return [(r.target.to_text(omit_final_dot=True), r.port)
                        for r in _order_srv(records, self._rng)]
        return []


def _order_srv(records: list[SRV], rng: random.Random) -> list[SRV]:
    """RFC 2782 order: lowest priority first; within a priority, a weighted random order
    (weight-0 records first in the running sum, so they are picked rarely but can be)."""
    ordered: list[SRV] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running_sum = 0
            for record in group:
                running_sum += record.weight
                if running_sum >= pick:
                    break
            group.remove(record)
            ordered.append(record)
    return ordered
