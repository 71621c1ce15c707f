"""A federation network between test servers that a test can cut and heal while every server
keeps running: network partitions on loopback.

Each server's name keeps the port other servers connect to (``127.0.0.1:<port>``), but what
listens there is a proxy of this module; the server's own federation listener moves to another
port behind it. Servers on one machine all connect from 127.0.0.1, so the proxy tells who is
calling by the request itself: it terminates TLS (with the server's own certificate; the test
servers do not verify certificates) and reads the ``origin`` of the X-Matrix ``Authorization``
header. A request between two servers the test has cut apart has its connection dropped
before an answer (the caller sees the connection reset, as across a broken network); anything
else is forwarded to the server's real listener as it came, bytes, path, query and headers
untouched, so signatures still verify. Unsigned requests (``/_matrix/key/v2/server``) have no
origin: they always pass (keys are fetched long before any partition, and cached).

``swallow(server)`` answers ``PUT /send/{txnId}`` transactions addressed to ``server`` with
``200 {"pdus": {}}`` without delivering them (recorded in ``swallowed``): its peers believe it
got them, as when a sender gives up on a backlog (Synapse's catch-up mode sends a returning
server only each room's newest event), so the server must fetch the gap itself.

The second half of the module checks convergence: the room's state as each server has it
(``GET /rooms/{id}/state`` through a user on it, a map ``(type, state_key) -> event``),
``merge`` (rounds of messages from every server, so each server holds both sides of a fork)
and ``converged`` (the states agree, on the expected events; a failure shows each server's
event for every key where they differ).

The proxies run on an event loop in a thread of their own, so they keep serving whatever the
test's event loop is doing (blocking in ``FedServer.start``, or a module-scoped fixture's loop
while a test runs on another). ``Network.add`` must be called before the server's first start
(it rewrites the port of its federation listener in the config).
"""

# A `timeout` argument is the bound of a wait a test states inline, as in federation.py.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import copy
import json
import re
import ssl
import threading
from collections import Counter
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import yaml
from aiohttp import hdrs, web
from yarl import URL

from tests.helpers.federation import User, poll_until, q
from tests.helpers.processes import HarnessProcess, free_port

T = TypeVar("T")

_ORIGIN = re.compile(r'origin\s*=\s*"?([^",\s]+)"?')
# Not forwarded as they came: the connection's own framing.
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}
_SEND_PREFIX = "/_matrix/federation/v1/send/"


def request_origin(authorization: str | None) -> str | None:
    """The ``origin`` of an ``X-Matrix`` Authorization header (None for anything else)."""
    if not authorization or not authorization.startswith("X-Matrix"):
        return None
    match = _ORIGIN.search(authorization)
    return match.group(1) if match else None


@dataclass
class _Route:
    server: HarnessProcess
    public_port: int
    upstream_port: int
    runner: web.AppRunner | None = None


@dataclass
class SwallowedPdu:
    origin: str
    destination: str
    pdu: dict[str, Any]


@dataclass
class _State:
    cuts: frozenset[frozenset[str]] = frozenset()
    swallowing: frozenset[str] = frozenset()
    swallowed: list[SwallowedPdu] = field(default_factory=list)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    forwarded: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: list[tuple[str, str, str, str]] = field(default_factory=list)
    # (origin, destination) -> event ID -> what the destination answered for that PDU of a
    # transaction ({} accepted, {"error": ...} refused); the latest answer.
    pdu_results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


class Network:
    """The proxies in front of a set of servers, and which pairs of servers are cut apart."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._state = _State()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="federation-network", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None

    # -- set-up ---------------------------------------------------------------------------

    def add(self, server: HarnessProcess) -> None:
        """Put ``server`` (a ``FedServer`` or ``SynapseServer`` not started yet) behind a proxy:
        its federation listener moves to a new port, the proxy takes the port of its name."""
        assert not server.running, f"{server.label}: add it to the network before starting it"
        public_port = int(server.server_name.rsplit(":", 1)[1])
        upstream_port = free_port()
        config_path = server.config_path  # type: ignore[attr-defined]
        data = yaml.safe_load(config_path.read_text())
        moved = 0
        for listener in data["listeners"]:
            if listener.get("port") == public_port:
                listener["port"] = upstream_port
                moved += 1
        assert moved == 1, f"{server.label}: no single federation listener on {public_port}"
        route = _Route(server, public_port, upstream_port)
        for attempt in range(5):
            try:
                self._call(self._serve(route))
                break
            except OSError:
                # The port of its name was free when the server was made, but something took
                # it since (an outgoing connection's port, another test's server): the server
                # is not started and has no users yet, so it takes another name.
                if attempt == 4:
                    raise
                route.public_port = free_port()
                self._rename(server, data, route.public_port)
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        server.config = data  # type: ignore[attr-defined]
        server.federation_port = upstream_port  # type: ignore[attr-defined]  # start() waits on it
        self._routes[server.server_name] = route

    @staticmethod
    def _rename(server: HarnessProcess, config: dict[str, Any], port: int) -> None:
        server.server_name = f"127.0.0.1:{port}"
        server.federation_url = f"https://127.0.0.1:{port}"  # type: ignore[attr-defined]
        config["server_name"] = server.server_name

    def close(self) -> None:
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    # -- partitions -----------------------------------------------------------------------

    def cut(self, a: HarnessProcess, b: HarnessProcess) -> None:
        """No request gets through between ``a`` and ``b``, either way."""
        with self._lock:
            self._state.cuts |= {frozenset((a.server_name, b.server_name))}

    def isolate(self, server: HarnessProcess) -> None:
        """Cut ``server`` off from every other server of the network; it keeps running."""
        for other in self._servers():
            if other is not server:
                self.cut(server, other)

    def heal(self) -> None:
        """Every cut is mended (swallowing is not: see ``stop_swallowing``)."""
        with self._lock:
            self._state.cuts = frozenset()

    def is_cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._state.cuts

    def swallow(self, server: HarnessProcess) -> None:
        """Transactions sent to ``server`` from now on are answered 200 and dropped."""
        with self._lock:
            self._state.swallowing |= {server.server_name}

    def stop_swallowing(self, server: HarnessProcess) -> None:
        with self._lock:
            self._state.swallowing -= {server.server_name}

    def swallowed(self, destination: HarnessProcess | None = None) -> list[SwallowedPdu]:
        with self._lock:
            return [p for p in self._state.swallowed
                    if destination is None or p.destination == destination.server_name]

    def refused(self, origin: HarnessProcess, destination: HarnessProcess) -> int:
        """How many requests from ``origin`` to ``destination`` a cut has dropped."""
        return self._state.refused[(origin.server_name, destination.server_name)]

    def forwarded(self, origin: HarnessProcess, destination: HarnessProcess) -> int:
        return self._state.forwarded[(origin.server_name, destination.server_name)]

    def mark(self) -> int:
        """Where the log of forwarded requests is now (for ``requests(since=...)``)."""
        with self._lock:
            return len(self._state.requests)

    def requests(self, origin: HarnessProcess, destination: HarnessProcess, since: int = 0
                 ) -> list[str]:
        """``METHOD path`` of every signed request forwarded from ``origin`` to
        ``destination`` (since the ``mark()`` ``since``), in order, transactions included."""
        with self._lock:
            return [f"{method} {path}" for o, d, method, path in self._state.requests[since:]
                    if o == origin.server_name and d == destination.server_name]

    def pdu_results(self, origin: HarnessProcess, destination: HarnessProcess
                    ) -> dict[str, Any]:
        """What ``destination`` answered, PDU by PDU, to the transactions ``origin`` sent it:
        event ID -> ``{}`` (taken) or ``{"error": "..."}`` (refused)."""
        with self._lock:
            return dict(self._state.pdu_results.get(
                (origin.server_name, destination.server_name), {}))

    def reset(self) -> None:
        """No cuts, no swallowing (what a test left behind)."""
        with self._lock:
            self._state.cuts = frozenset()
            self._state.swallowing = frozenset()

    def _servers(self) -> list[HarnessProcess]:
        return [route.server for route in self._routes.values()]

    # -- the proxies (on the network's own loop) ----------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _serve(self, route: _Route) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=False),
                timeout=aiohttp.ClientTimeout(total=300, sock_connect=10),
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        directory = route.server.dir  # type: ignore[attr-defined]
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(directory / "tls.crt"), str(directory / "tls.key"))

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(route, request)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", route.public_port, ssl_context=tls).start()
        except BaseException:
            await runner.cleanup()
            raise
        route.runner = runner

    async def _shutdown(self) -> None:
        for route in self._routes.values():
            if route.runner is not None:
                await route.runner.cleanup()
                route.runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, route: _Route, request: web.Request) -> web.StreamResponse:
        destination = route.server.server_name
        origin = request_origin(request.headers.get(hdrs.AUTHORIZATION))
        body = await request.read()
        if origin is not None and self.is_cut(origin, destination):
            with self._lock:
                self._state.refused[(origin, destination)] += 1
            return _drop(request)
        if (request.method == "PUT" and request.path.startswith(_SEND_PREFIX)
                and destination in self._state.swallowing):
            pdus = json.loads(body or b"{}").get("pdus", [])
            with self._lock:
                self._state.swallowed.extend(
                    SwallowedPdu(origin or "?", destination, pdu) for pdu in pdus)
            return web.json_response({"pdus": {}})
        if origin is not None:
            with self._lock:
                self._state.forwarded[(origin, destination)] += 1
                self._state.requests.append((origin, destination, request.method,
                                             request.path))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = URL(f"https://127.0.0.1:{route.upstream_port}{request.raw_path}", encoded=True)
        assert self._session is not None
        try:
            async with self._session.request(request.method, url, data=body or None,
                                             headers=headers, allow_redirects=False) as answer:
                content = await answer.read()
                kept = {k: v for k, v in answer.headers.items()
                        if k.lower() not in _HOP_BY_HOP}
                if (origin is not None and request.method == "PUT"
                        and request.path.startswith(_SEND_PREFIX) and answer.status == 200):
                    self._record_pdu_results(origin, destination, content,
                                             answer.headers.get(hdrs.CONTENT_ENCODING))
                return web.Response(status=answer.status, body=content, headers=kept)
        except (TimeoutError, aiohttp.ClientError, OSError):
            # The server is down: its callers see what they would see without the proxy.
            return _drop(request)

    def _record_pdu_results(self, origin: str, destination: str, content: bytes,
                            encoding: str | None) -> None:
        if encoding not in (None, "identity"):
            return  # compressed: not read here (our servers and Synapse answer plainly)
        try:
            results = json.loads(content).get("pdus", {})
        except (ValueError, AttributeError):
            return
        if isinstance(results, dict):
            with self._lock:
                self._state.pdu_results.setdefault((origin, destination), {}).update(results)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer (the response returned is never written)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=502)



# -- convergence --------------------------------------------------------------------------

StateKey = tuple[str, str]
State = dict[StateKey, dict[str, Any]]

PL: StateKey = ("m.room.power_levels", "")
NAME: StateKey = ("m.room.name", "")
TOPIC: StateKey = ("m.room.topic", "")


class StateDiverged(AssertionError):
    """The servers' states differ, or agree on another state than the expected one (what a
    test marks as an expected failure raises, unlike a wait of the harness that timed out)."""


def member(user: User | str) -> StateKey:
    return ("m.room.member", user if isinstance(user, str) else user.user_id)


async def put_state(user: User, room_id: str, key: StateKey, content: dict[str, Any]) -> str:
    return await user.send_state(room_id, key[0], content, key[1])


async def state_id(user: User, room_id: str, key: StateKey) -> str:
    """The event ID at ``key`` in the room's current state on ``user``'s server."""
    state = {(ev["type"], ev["state_key"]): ev["event_id"] for ev in await user.state(room_id)}
    return state[key]


async def has_event(user: User, room_id: str, event_id: str) -> bool:
    status, _ = await user.raw("GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
    return status == 200


async def seen(users: Iterable[User], room_id: str, event_ids: Iterable[str],
               timeout: float = 30) -> None:
    """Each of ``users`` can fetch each event (``GET /rooms/{id}/event/{eventId}``): their
    servers have it, accepted into the room."""
    wanted = list(event_ids)

    async def one(user: User) -> None:
        for event_id in wanted:
            await poll_until(lambda e=event_id: has_event(user, room_id, e), bool, timeout,
                             what=f"{event_id} on {user.server.label}")

    await asyncio.gather(*(one(u) for u in users))


async def power_content(user: User, room_id: str, users: dict[User, int] | None = None,
                        events: dict[str, int] | None = None) -> dict[str, Any]:
    """The room's power levels as ``user``'s server has them, with these levels changed."""
    content = copy.deepcopy(await user.state_event(room_id, *PL))
    for who, level in (users or {}).items():
        content.setdefault("users", {})[who.user_id] = level
    if events:
        content.setdefault("events", {}).update(events)
    return content


async def merge(witnesses: Sequence[User], room_id: str, rounds: int = 2,
                timeout: float = 30) -> None:
    """Rounds of one message from each witness (a user on each server), each round seen by
    all before the next: a second round's messages descend from everything any server had,
    so once every server has them, each has fetched both sides of any fork."""
    for n in range(rounds):
        ids = [await u.send_text(room_id, f"merge {n} from {u.server.label}")
               for u in witnesses]
        await seen(witnesses, room_id, ids, timeout)


async def room_states(witnesses: Sequence[User], room_id: str) -> list[State]:
    """The room's current state on each witness's server, keyed by (type, state_key)."""
    answers = await asyncio.gather(*(u.state(room_id) for u in witnesses))
    return [{(ev["type"], ev["state_key"]): ev for ev in state} for state in answers]


def _ids(state: State) -> dict[StateKey, str]:
    return {k: ev["event_id"] for k, ev in state.items()}


async def converged(witnesses: Sequence[User], room_id: str,
                    expected: dict[StateKey, str | None], settle: float = 5) -> State:
    """Wait (at most ``settle`` seconds) for every witness's server to hold the same state,
    then check that each key of ``expected`` holds that event (None: not in the state).
    Returns the state; else raises ``StateDiverged``, listing each server's event for every
    key where they differ or are wrong."""
    labels = [u.server.label for u in witnesses]
    try:
        states = await poll_until(lambda: room_states(witnesses, room_id),
                                  lambda s: all(_ids(x) == _ids(s[0]) for x in s[1:]),
                                  settle, what="the same state on every server")
    except AssertionError:
        states = await room_states(witnesses, room_id)
        raise StateDiverged(f"{', '.join(labels)} disagree on the room's state:\n"
                            + describe_differences(states, expected, labels)) from None
    if any(states[0].get(k, {}).get("event_id") != v for k, v in expected.items()):
        raise StateDiverged(f"{', '.join(labels)} agree, on the wrong state:\n"
                            + describe_differences(states, expected, labels))
    return states[0]


def _short(ev: dict[str, Any] | None) -> str:
    if ev is None:
        return "(absent)"
    content = ev.get("content", {})
    what = {k: content[k] for k in ("membership", "name", "topic", "displayname")
            if k in content}
    if ev["type"] == "m.room.power_levels":
        what = {"users": content.get("users", {}),
                "m.room.power_levels": content.get("events", {}).get("m.room.power_levels")}
    return f"{ev['event_id']} by {ev['sender'].split(':')[0]} {what}"


def describe_differences(states: Sequence[State], expected: dict[StateKey, str | None],
                         labels: Sequence[str]) -> str:
    """One block per key where the servers differ or hold something else than expected."""
    lines = []
    for key in sorted({k for s in states for k in s} | set(expected)):
        values = [s.get(key, {}).get("event_id") for s in states]
        if len(set(values)) == 1 and (key not in expected or expected[key] == values[0]):
            continue
        lines.append(f"  {key}:" + (f" expected {expected[key]}" if key in expected else ""))
        for label, state in zip(labels, states, strict=True):
            lines.append(f"    {label}: {_short(state.get(key))}")
    return "\n".join(lines) or "  (no difference)"
