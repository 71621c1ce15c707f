"""Two (or more) real ``ktchat`` processes federating over TLS on loopback, and a small Matrix
client for driving them.

``FedServer`` is one server: its own data directory, a server name with an explicit port
(``127.0.0.1:<federation port>``, so other servers connect straight to it, no discovery), a
plain-HTTP client listener and a TLS federation listener. ``User`` is a logged-in account
speaking the client-server API over plain HTTP with aiohttp; ``User.wait_for`` long-polls
``/sync`` until a predicate on a sync response holds.

``User`` holds no connection or event-loop state (each request opens and closes its own
session), so users made by a module-scoped fixture serve tests running on any event loop, and
a server restarted under them never leaves a stale pooled connection behind.
"""

# A `timeout` argument here is /sync's own parameter or the bound of a wait that tests state
# inline (`wait_for(..., timeout=30)`), which reads better than wrapping each call.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import yaml

from tests.helpers.processes import (
    KTCHAT,
    REPO,
    HarnessProcess,
    free_port,
    ktchat,
    wait_for_port,
)

T = TypeVar("T")
JsonDict = dict[str, Any]
Predicate = Callable[[JsonDict], Any]

PASSWORD = "federation test password"
CLIENT_V3 = "/_matrix/client/v3"
FRIENDS = "/_matrix/client/unstable/org.ktchat.friends"
# The filter every sync of ``wait_for`` uses: room timelines long enough that a burst of
# messages arrives without a gap, and rooms left since the last sync.
WAIT_FILTER = {"room": {"timeline": {"limit": 200}, "include_leave": True}}
LOG_TAIL_LINES = 400


def q(value: str) -> str:
    """A path segment: room IDs, aliases, event IDs and user IDs all need escaping."""
    return quote(value, safe="")


def _merge(base: JsonDict, extra: JsonDict) -> JsonDict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class MatrixRequestError(AssertionError):
    """A client request answered with a status other than the one expected."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status = status
        self.body = body
        self.errcode = body.get("errcode") if isinstance(body, dict) else None


# -- servers ------------------------------------------------------------------------------


class FedServer(HarnessProcess):
    """One ``ktchat`` process with its own config, keys, certificate and database.

    ``database_url`` (``postgresql+asyncpg://...``) puts it on PostgreSQL; the default is
    SQLite in its data directory. ``config`` is merged into the generated YAML last.
    """

    def __init__(self, root: Path, label: str = "hs", *, database_url: str | None = None,
                 config: JsonDict | None = None, log_level: str = "INFO") -> None:
        self.label = label
        self.dir = root / label
        self.client_port = free_port()
        self.federation_port = free_port()
        while self.federation_port == self.client_port:
            self.federation_port = free_port()
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.federation_url = f"https://127.0.0.1:{self.federation_port}"
        self.config_path = self.dir / "homeserver.yaml"
        self.log_path = self.output_path = self.dir / "server.log"
        super().__init__()

        ktchat("generate-config", "--server-name", self.server_name, "--data-dir", str(self.dir),
               "--client-port", str(self.client_port),
               "--federation-port", str(self.federation_port))
        data = yaml.safe_load(self.config_path.read_text())
        _merge(data, {
            "federation": {
                "enabled": True,
                "verify_tls": False,
                "ip_range_allowlist": ["127.0.0.0/8"],
                "retry_initial_interval": "500ms",
                "retry_max_interval": "5s",
            },
            "rate_limits": {"enabled": False},
            "presence": {"enabled": True},
            "logging": {"level": log_level},
        })
        if database_url is not None:
            data["database"] = {"url": database_url}
        _merge(data, config or {})
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config = data
        self.shared_secret: str = data["registration_shared_secret"]

    def __repr__(self) -> str:
        return f"<FedServer {self.label} {self.server_name} client={self.client_url}>"

    # -- process ------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start ``ktchat run`` and return once both listeners accept connections."""
        timeout = timeout or 30
        proc = self._spawn([*KTCHAT, "run", "-c", str(self.config_path)], REPO)
        try:
            wait_for_port(self.client_port, proc, timeout)
            wait_for_port(self.federation_port, proc, timeout)
        except (RuntimeError, TimeoutError) as e:
            self.kill()
            raise RuntimeError(f"{self.label} did not start: {e}\n{self.log_tail(80)}") from e

    # -- logs -----------------------------------------------------------------------------

    def log(self) -> str:
        """Everything the process wrote, over all its starts."""
        self._flush_output()
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_size(self) -> int:
        return len(self.log())

    def log_tail(self, lines: int = LOG_TAIL_LINES, since: int = 0) -> str:
        text = self.log()[since:]
        kept = text.splitlines()[-lines:]
        return "\n".join(kept)

    # -- HTTP -----------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        """Trusts exactly this server's self-signed certificate (checked, hostname and all)."""
        return ssl.create_default_context(cafile=str(self.dir / "tls.crt"))

    async def server_keys(self) -> JsonDict:
        """``GET /_matrix/key/v2/server`` over TLS, verifying the certificate."""
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.federation_url}/_matrix/key/v2/server", ssl=self.tls_context(),
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()  # type: ignore[no-any-return]

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def alias(self, localpart: str) -> str:
        return f"#{localpart}:{self.server_name}"

    async def register(self, localpart: str, password: str = PASSWORD, *,
                       admin: bool = False) -> User:
        """Create the account with shared-secret registration (``/_synapse/admin/v1/register``,
        as ``register_new_matrix_user`` does), then log in with the password."""
        status, body = await _http("GET", f"{self.client_url}/_synapse/admin/v1/register")
        assert status == 200, f"{self.label}: GET nonce -> {status}: {body}"
        nonce = body["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        status, body = await _http("POST", f"{self.client_url}/_synapse/admin/v1/register",
                                   json_body={"nonce": nonce, "username": localpart,
                                              "password": password, "admin": admin,
                                              "mac": mac.hexdigest()})
        assert status == 200, f"{self.label}: register {localpart} -> {status}: {body}"
        assert body["user_id"] == self.user_id(localpart), body
        return await self.login(localpart, password)

    async def login(self, localpart: str, password: str = PASSWORD) -> User:
        status, body = await _http("POST", f"{self.client_url}{CLIENT_V3}/login", json_body={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": password, "initial_device_display_name": "federation test"})
        assert status == 200, f"{self.label}: login {localpart} -> {status}: {body}"
        return User(self, body["user_id"], body["access_token"], body["device_id"], password)


class PostgresDatabase:
    """A throwaway PostgreSQL database (one per server: the server's URL has no schema
    option, so a database of its own is how a test keeps it apart)."""

    def __init__(self, base_url: str) -> None:
        """``base_url``: any URL of the test cluster (``postgresql://`` or ``+asyncpg``)."""
        parts = urlsplit(base_url.replace("postgresql+asyncpg://", "postgresql://", 1)
                         .replace("postgres://", "postgresql://", 1))
        self.name = "ktfed_" + secrets.token_hex(6)
        self._admin_dsn = urlunsplit(parts)
        self.url = urlunsplit(parts._replace(scheme="postgresql+asyncpg", path="/" + self.name))

    async def create(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


# -- HTTP plumbing --------------------------------------------------------------------------


async def _http(method: str, url: str, *, json_body: Any = None, token: str | None = None,
                params: Iterable[tuple[str, str]] | None = None, timeout: float = 30
                ) -> tuple[int, Any]:
    """One request on a fresh connection; returns (status, parsed JSON or text)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, url, json=json_body, headers=headers, params=list(params or ()),
            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


# -- users ----------------------------------------------------------------------------------


class User:
    """A logged-in account on one ``FedServer``, speaking the client-server API.

    ``wait_for`` keeps every sync response it has fetched; each wait scans them from where the
    previous wait matched (that response included: one batch may hold several things tests
    wait for) before long-polling for more, so nothing that arrived is missed between two
    waits. ``catch_up()`` skips everything so far: later waits see only what is new.
    """

    def __init__(self, server: FedServer, user_id: str, access_token: str, device_id: str,
                 password: str) -> None:
        self.server = server
        self.user_id = user_id
        self.access_token = access_token
        self.device_id = device_id
        self.password = password
        self.next_batch: str | None = None
        self.history: list[JsonDict] = []
        self._cursor = 0

    def __repr__(self) -> str:
        return f"<User {self.user_id}>"

    @property
    def localpart(self) -> str:
        return self.user_id[1:].split(":", 1)[0]

    # -- raw requests ---------------------------------------------------------------------

    async def raw(self, method: str, path: str, body: Any = None, *,
                  params: Iterable[tuple[str, str]] | dict[str, str] | None = None,
                  timeout: float = 30) -> tuple[int, Any]:
        """``path`` is below the server (``/_matrix/...``) or below ``/_matrix/client/v3``."""
        if not path.startswith("/_"):
            path = CLIENT_V3 + path
        items = list(params.items()) if isinstance(params, dict) else list(params or ())
        return await _http(method, self.server.client_url + path, json_body=body,
                           token=self.access_token, params=items, timeout=timeout)

    async def request(self, method: str, path: str, body: Any = None, *, expect: int = 200,
                      params: Iterable[tuple[str, str]] | dict[str, str] | None = None,
                      timeout: float = 30) -> Any:
        status, answer = await self.raw(method, path, body, params=params, timeout=timeout)
        if status != expect:
            raise MatrixRequestError(method, f"{self.user_id} {path}", status, answer)
        return answer

    # -- rooms ----------------------------------------------------------------------------

    async def whoami(self) -> JsonDict:
        return await self.request("GET", "/account/whoami")  # type: ignore[no-any-return]

    async def create_room(self, **body: Any) -> str:
        return (await self.request("POST", "/createRoom", body))["room_id"]  # type: ignore[no-any-return]

    async def join(self, room_id_or_alias: str, via: Iterable[str] = ()) -> str:
        """``POST /join/{roomIdOrAlias}``, naming the servers both as ``via`` (v1.12) and as
        the older ``server_name``; returns the joined room's ID."""
        servers = list(via)
        params = [("via", s) for s in servers] + [("server_name", s) for s in servers]
        answer = await self.request("POST", f"/join/{q(room_id_or_alias)}", {}, params=params)
        return answer["room_id"]  # type: ignore[no-any-return]

    async def join_room_id(self, room_id: str) -> str:
        """``POST /rooms/{roomId}/join`` (no servers: the server finds them, e.g. an invite)."""
        return (await self.request("POST", f"/rooms/{q(room_id)}/join", {}))["room_id"]  # type: ignore[no-any-return]

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request("POST", f"/rooms/{q(room_id)}/invite", {"user_id": user_id})

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        body = {"reason": reason} if reason else {}
        await self.request("POST", f"/rooms/{q(room_id)}/leave", body)

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        body = {"user_id": user_id, **({"reason": reason} if reason else {})}
        await self.request("POST", f"/rooms/{q(room_id)}/kick", body)

    async def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        body = {"user_id": user_id, **({"reason": reason} if reason else {})}
        await self.request("POST", f"/rooms/{q(room_id)}/ban", body)

    async def send(self, room_id: str, event_type: str, content: JsonDict,
                   txn_id: str | None = None) -> str:
        txn_id = txn_id or uuid.uuid4().hex
        path = f"/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn_id)}"
        return (await self.request("PUT", path, content))["event_id"]  # type: ignore[no-any-return]

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})

    async def send_state(self, room_id: str, event_type: str, content: JsonDict,
                         state_key: str = "") -> str:
        path = f"/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}"
        return (await self.request("PUT", path, content))["event_id"]  # type: ignore[no-any-return]

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        path = f"/rooms/{q(room_id)}/redact/{q(event_id)}/{uuid.uuid4().hex}"
        body = {"reason": reason} if reason else {}
        return (await self.request("PUT", path, body))["event_id"]  # type: ignore[no-any-return]

    async def typing(self, room_id: str, on: bool, timeout_ms: int = 30_000) -> None:
        body: JsonDict = {"typing": on, **({"timeout": timeout_ms} if on else {})}
        await self.request("PUT", f"/rooms/{q(room_id)}/typing/{q(self.user_id)}", body)

    async def receipt(self, room_id: str, event_id: str, receipt_type: str = "m.read") -> None:
        path = f"/rooms/{q(room_id)}/receipt/{q(receipt_type)}/{q(event_id)}"
        await self.request("POST", path, {})

    async def messages(self, room_id: str, direction: str = "b", limit: int = 100,
                       from_token: str | None = None) -> JsonDict:
        params = {"dir": direction, "limit": str(limit)}
        if from_token is not None:
            params["from"] = from_token
        return await self.request("GET", f"/rooms/{q(room_id)}/messages", params=params)  # type: ignore[no-any-return]

    async def timeline(self, room_id: str, limit: int = 100) -> list[JsonDict]:
        """The room's latest ``limit`` events from ``/messages``, oldest first."""
        return list(reversed((await self.messages(room_id, "b", limit))["chunk"]))

    async def state(self, room_id: str) -> list[JsonDict]:
        return await self.request("GET", f"/rooms/{q(room_id)}/state")  # type: ignore[no-any-return]

    async def state_event(self, room_id: str, event_type: str, state_key: str = "") -> JsonDict:
        path = f"/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}"
        return await self.request("GET", path)  # type: ignore[no-any-return]

    async def event(self, room_id: str, event_id: str) -> JsonDict:
        return await self.request("GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")  # type: ignore[no-any-return]

    async def joined_members(self, room_id: str) -> dict[str, Any]:
        answer = await self.request("GET", f"/rooms/{q(room_id)}/joined_members")
        return answer["joined"]  # type: ignore[no-any-return]

    async def joined_rooms(self) -> list[str]:
        return (await self.request("GET", "/joined_rooms"))["joined_rooms"]  # type: ignore[no-any-return]

    async def resolve_alias(self, alias: str) -> JsonDict:
        return await self.request("GET", f"/directory/room/{q(alias)}")  # type: ignore[no-any-return]

    async def account_data(self, event_type: str) -> JsonDict:
        path = f"/user/{q(self.user_id)}/account_data/{q(event_type)}"
        return await self.request("GET", path)  # type: ignore[no-any-return]

    # -- presence and friends ---------------------------------------------------------------

    async def set_presence(self, state: str, status_msg: str | None = None) -> None:
        body: JsonDict = {"presence": state}
        if status_msg is not None:
            body["status_msg"] = status_msg
        await self.request("PUT", f"/presence/{q(self.user_id)}/status", body)

    async def get_presence(self, user_id: str) -> JsonDict:
        return await self.request("GET", f"/presence/{q(user_id)}/status")  # type: ignore[no-any-return]

    async def friend_request(self, user_id: str) -> str:
        answer = await self.request("POST", f"{FRIENDS}/requests", {"user_id": user_id})
        return answer["room_id"]  # type: ignore[no-any-return]

    async def friend_requests(self) -> JsonDict:
        return await self.request("GET", f"{FRIENDS}/requests")  # type: ignore[no-any-return]

    async def accept_friend(self, user_id: str) -> str:
        answer = await self.request("POST", f"{FRIENDS}/requests/{q(user_id)}/accept", {})
        return answer["room_id"]  # type: ignore[no-any-return]

    async def reject_friend(self, user_id: str) -> None:
        await self.request("POST", f"{FRIENDS}/requests/{q(user_id)}/reject", {})

    async def friends(self) -> list[JsonDict]:
        return (await self.request("GET", f"{FRIENDS}/friends"))["friends"]  # type: ignore[no-any-return]

    # -- sync -------------------------------------------------------------------------------

    async def sync(self, since: str | None = None, timeout: int = 0, *,
                   filter: JsonDict | str | None = None, set_presence: str | None = None,
                   full_state: bool = False) -> JsonDict:
        """One ``GET /sync``; ``timeout`` in milliseconds. Does not touch ``wait_for``'s
        position."""
        params = {"timeout": str(timeout)}
        if since is not None:
            params["since"] = since
        if filter is not None:
            params["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
        if set_presence is not None:
            params["set_presence"] = set_presence
        if full_state:
            params["full_state"] = "true"
        return await self.request(  # type: ignore[no-any-return]
            "GET", "/sync", params=params, timeout=timeout / 1000 + 15)

    async def _poll(self, timeout_ms: int, set_presence: str | None) -> None:
        response = await self.sync(self.next_batch, timeout_ms, filter=WAIT_FILTER,
                                   set_presence=set_presence)
        self.next_batch = response["next_batch"]
        if _has_content(response):
            self.history.append(response)

    async def catch_up(self, set_presence: str | None = None) -> None:
        """Sync now, and make later waits look only at what arrives after this."""
        await self._poll(0, set_presence)
        self._cursor = len(self.history)

    async def wait_for(self, predicate: Predicate, timeout: float = 20, *,
                       what: str | None = None, set_presence: str | None = None) -> Any:
        """Long-poll ``/sync`` until ``predicate(response)`` returns something truthy, and
        return that. Fails after ``timeout`` seconds, listing what the syncs did bring.

        ``set_presence`` is passed to ``/sync`` (``offline`` keeps a waiting user's own
        presence untouched). Connection errors (the server restarting) are retried.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = self._cursor
        errors: list[str] = []
        while True:
            while index < len(self.history):
                value = predicate(self.history[index])
                if value:
                    self._cursor = index
                    return value
                index += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await self._poll(max(int(min(remaining, 10) * 1000), 1), set_presence)
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(min(0.2, max(deadline - loop.time(), 0)))
        seen = describe_syncs(self.history[self._cursor:])
        failures = f"\nsync errors meanwhile: {errors[-5:]}" if errors else ""
        raise AssertionError(
            f"{self.user_id} waited {timeout}s for {what or _describe(predicate)} in /sync; "
            f"what arrived since the last match:\n{seen}{failures}")

    # -- waits for common things ----------------------------------------------------------

    async def wait_for_event(self, room_id: str, timeout: float = 20, *,
                             parts: tuple[str, ...] = ("timeline",), **match: Any) -> JsonDict:
        """The first event of the room's sync timeline (joined or left room) matching every
        ``match`` (see ``event_matches``); returns it."""
        return await self.wait_for(  # type: ignore[no-any-return]
            lambda r: first(room_events(r, room_id, parts=parts), **match), timeout,
            what=f"an event {match} in {room_id}")

    async def wait_for_membership(self, room_id: str, user_id: str, membership: str,
                                  timeout: float = 20) -> JsonDict:
        """``user_id``'s ``m.room.member`` event with ``membership`` (timeline or state)."""
        return await self.wait_for_event(
            room_id, timeout, parts=("timeline", "state"), type="m.room.member",
            state_key=user_id, membership=membership)

    async def wait_for_invite(self, room_id: str, timeout: float = 20) -> list[JsonDict]:
        """The ``invite_state`` events of an invite to ``room_id``."""
        def invited(r: JsonDict) -> Any:
            room = r.get("rooms", {}).get("invite", {}).get(room_id)
            return room["invite_state"]["events"] if room else None
        return await self.wait_for(invited, timeout,  # type: ignore[no-any-return]
                                   what=f"an invite to {room_id}")

    async def wait_for_left(self, room_id: str, timeout: float = 20) -> JsonDict:
        """The room's entry in ``rooms.leave`` (left, rejected, kicked or banned)."""
        return await self.wait_for(  # type: ignore[no-any-return]
            lambda r: r.get("rooms", {}).get("leave", {}).get(room_id), timeout,
            what=f"{room_id} in rooms.leave")

    async def wait_for_ephemeral(self, room_id: str, event_type: str,
                                 check: Callable[[JsonDict], Any], timeout: float = 20) -> Any:
        """The first ``event_type`` ephemeral event of the room whose content passes ``check``."""
        def found(r: JsonDict) -> Any:
            for ev in room_events(r, room_id, parts=("ephemeral",)):
                if ev.get("type") == event_type and check(ev.get("content", {})):
                    return ev
            return None
        return await self.wait_for(found, timeout, what=f"{event_type} ({_describe(check)}) "
                                                        f"in {room_id}")

    async def wait_for_presence(self, user_id: str, presence: str,
                                status_msg: str | None = None, timeout: float = 20,
                                set_presence: str | None = None) -> JsonDict:
        def found(r: JsonDict) -> Any:
            for ev in reversed(r.get("presence", {}).get("events", [])):
                if ev.get("sender") != user_id:
                    continue
                content = ev.get("content", {})
                if content.get("presence") == presence and (
                        status_msg is None or content.get("status_msg") == status_msg):
                    return ev
            return None
        return await self.wait_for(  # type: ignore[no-any-return]
            found, timeout, set_presence=set_presence,
            what=f"presence {presence!r} (status_msg {status_msg!r}) of {user_id}")

    async def wait_for_timeline(self, room_id: str, count: int, timeout: float = 20,
                                **match: Any) -> list[JsonDict]:
        """Collect the room's timeline events matching ``match`` (in arrival order, each once)
        over as many syncs as it takes, until there are ``count``; returns them."""
        collected: dict[str, JsonDict] = {}

        def enough(r: JsonDict) -> Any:
            for ev in room_events(r, room_id):
                if event_matches(ev, **match):
                    collected.setdefault(ev["event_id"], ev)
            return list(collected.values()) if len(collected) >= count else None
        try:
            return await self.wait_for(enough, timeout,  # type: ignore[no-any-return]
                                       what=f"{count} events {match} in {room_id}")
        except AssertionError as e:
            got = [_one_line(ev) for ev in collected.values()]
            raise AssertionError(f"{e}\ncollected {len(got)} of {count}: {got}") from None


async def send_refused(user: User, room_id: str) -> None:
    """Sending into a room one is not joined to: 403 M_FORBIDDEN (and nothing is created)."""
    status, body = await user.raw(
        "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{uuid.uuid4().hex}",
        {"msgtype": "m.text", "body": "should be refused"})
    assert status == 403, (status, body)
    assert body["errcode"] == "M_FORBIDDEN", body


async def poll_until(fetch: Callable[[], Awaitable[T]], check: Callable[[T], Any],
                     timeout: float = 20, what: str = "condition", interval: float = 0.1
                     ) -> T:
    """For conditions /sync cannot show (another endpoint's answer): fetch until ``check``
    passes; fails with the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = await fetch()
            if check(last):
                return last  # type: ignore[no-any-return]
        except (AssertionError, aiohttp.ClientError, ConnectionError) as e:
            last = e
        if loop.time() >= deadline:
            raise AssertionError(f"waited {timeout}s for {what}; last answer: {last!r}")
        await asyncio.sleep(interval)


# -- reading sync responses -----------------------------------------------------------------


def room_events(response: JsonDict, room_id: str, *, parts: Iterable[str] = ("timeline",),
                sections: Iterable[str] = ("join", "leave")) -> list[JsonDict]:
    """The events of one room in a sync response: ``parts`` among ``timeline``, ``state``,
    ``ephemeral``, ``account_data``; ``sections`` among ``join``, ``leave``."""
    out: list[JsonDict] = []
    rooms = response.get("rooms", {})
    for section in sections:
        room = rooms.get(section, {}).get(room_id)
        if not room:
            continue
        for part in parts:
            out.extend(room.get(part, {}).get("events", []))
    return out


def event_matches(event: JsonDict, **match: Any) -> bool:
    """``match`` keys: any top-level key (``event_id``, ``type``, ``sender``, ``state_key``,
    ``redacts``...), ``content`` (a dict: those keys equal), ``body`` and ``membership``
    (shortcuts into content); a callable value is a check on the field."""
    for key, want in match.items():
        if key == "content":
            got = event.get("content", {})
            if not all(got.get(k) == v for k, v in want.items()):
                return False
            continue
        got = event.get("content", {}).get(key) if key in ("body", "membership") else \
            event.get(key)
        if callable(want):
            if not want(got):
                return False
        elif got != want:
            return False
    return True


def first(events: Iterable[JsonDict], **match: Any) -> JsonDict | None:
    return next((ev for ev in events if event_matches(ev, **match)), None)


def _has_content(response: JsonDict) -> bool:
    rooms = response.get("rooms", {})
    return any(rooms.get(s) for s in ("join", "invite", "leave", "knock")) or bool(
        response.get("presence", {}).get("events")) or bool(
        response.get("account_data", {}).get("events")) or bool(
        response.get("device_lists", {}).get("changed")) or bool(
        response.get("device_lists", {}).get("left"))


def _describe(fn: Any) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _one_line(ev: JsonDict) -> str:
    content = ev.get("content", {})
    text = f"{ev.get('type')} from {ev.get('sender')}"
    if "state_key" in ev:
        text += f" state_key={ev['state_key']!r}"
    for key in ("membership", "body", "name", "topic", "presence", "status_msg", "user_ids"):
        if key in content:
            text += f" {key}={content[key]!r}"
    if ev.get("type") == "m.receipt":
        text += f" {json.dumps(content)[:200]}"
    if "event_id" in ev:
        text += f" {ev['event_id']}"
    return text


def describe_syncs(responses: list[JsonDict], max_lines: int = 80) -> str:
    """A readable summary of sync responses: per room and section, one line per event."""
    lines: list[str] = []
    for n, resp in enumerate(responses):
        lines.append(f"  sync #{n} next_batch={resp.get('next_batch')}")
        for section, rooms in resp.get("rooms", {}).items():
            for room_id, room in rooms.items():
                for part, value in room.items():
                    if isinstance(value, dict) and isinstance(value.get("events"), list):
                        for ev in value["events"]:
                            lines.append(f"    {section} {room_id} {part}: {_one_line(ev)}")
        for ev in resp.get("presence", {}).get("events", []):
            lines.append(f"    presence: {_one_line(ev)}")
    if not lines:
        return "  (no sync response with anything in it)"
    if len(lines) > max_lines:
        lines = [f"  ... {len(lines) - max_lines} earlier lines left out", *lines[-max_lines:]]
    return "\n".join(lines)


# -- two servers ----------------------------------------------------------------------------


class FedPair:
    """Servers A and B, with alice on A and bob on B."""

    def __init__(self, a: FedServer, b: FedServer, alice: User, bob: User) -> None:
        self.a, self.b, self.alice, self.bob = a, b, alice, bob

    @property
    def servers(self) -> list[FedServer]:
        return [self.a, self.b]

    def ensure_running(self) -> None:
        """Start whichever server an earlier test left stopped."""
        for server in self.servers:
            if not server.running:
                server.start()

    async def catch_up(self) -> None:
        """Both users' later waits see only what happens from now on."""
        await self.alice.catch_up()
        await self.bob.catch_up()

    async def shared_room(self, **create: Any) -> str:
        """A public room created by alice on A and joined by bob from B (via A); returns once
        each side has seen bob's join."""
        body = {"preset": "public_chat", **create}
        room_id = await self.alice.create_room(**body)
        joined = await self.bob.join(room_id, via=[self.a.server_name])
        assert joined == room_id
        await self.alice.wait_for_membership(room_id, self.bob.user_id, "join")
        await self.bob.wait_for_membership(room_id, self.bob.user_id, "join")
        return room_id
