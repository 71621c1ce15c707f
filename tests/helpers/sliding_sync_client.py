"""A simplified sliding sync (MSC4186) client that talks as Element X does (matrix-rust-sdk's
``SyncService``): for tests and benchmarks against any homeserver, ours or Synapse.

What the rust-sdk does, and so this client:

* ``GET /_matrix/client/versions`` must advertise
  ``unstable_features["org.matrix.simplified_msc3575"]``, else it will not connect;
* password login (``m.login.password`` with an ``m.id.user`` identifier);
* two connections on ``POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync``,
  each with its own ``conn_id`` and ``pos`` (query parameters ``pos`` and ``timeout``):

  - ``room-list`` (``RoomListService``): one list ``all_rooms`` with ``timeline_limit`` 1 and
    the rust-sdk's ``DEFAULT_REQUIRED_STATE``, first the range 0-19 ("selective"), then a
    range that grows by 100 rooms a request up to the list's ``count`` ("growing"); no long
    poll (``timeout=0``) until the list is fully loaded; the ``account_data``, ``receipts``
    (``rooms: ["*"]``) and ``typing`` extensions; a room opened on screen becomes a
    ``room_subscriptions`` entry with ``timeline_limit`` 20 and the same required state plus
    ``m.room.pinned_events``;
  - ``encryption`` (``EncryptionSyncService``): no lists, the ``to_device`` extension (its
    ``since`` is the previous response's ``next_batch``: that acknowledges the batch) and the
    ``e2ee`` extension;

* every request carries the whole configuration (MSC4186 has no sticky parameters); a
  ``400 M_UNKNOWN_POS`` drops ``pos`` and starts the connection afresh.

The client keeps what it was told: the list's room IDs (from the ``SYNC`` ops, as Synapse
sends them) and its ``count``, each room's fields merged across responses, every timeline
event ID it was handed (``duplicates`` names any event handed twice in live updates), and
the to-device events. It never mocks anything: it is an HTTP client.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

JsonDict = dict[str, Any]

SLIDING_SYNC_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
UNSTABLE_FEATURE = "org.matrix.simplified_msc3575"
CLIENT_V3 = "/_matrix/client/v3"

ROOM_LIST_CONN_ID = "room-list"
ENCRYPTION_CONN_ID = "encryption"
ALL_ROOMS = "all_rooms"
SELECTIVE_RANGE = (0, 19)
GROWING_BATCH_SIZE = 100
LIST_TIMELINE_LIMIT = 1
SUBSCRIPTION_TIMELINE_LIMIT = 20
# matrix-rust-sdk's RoomListService DEFAULT_REQUIRED_STATE, in its order.
DEFAULT_REQUIRED_STATE: list[list[str]] = [
    ["m.room.name", ""],
    ["m.room.encryption", ""],
    ["m.room.member", "$LAZY"],
    ["m.room.member", "$ME"],
    ["m.room.topic", ""],
    ["m.room.avatar", ""],
    ["m.room.canonical_alias", ""],
    ["m.room.power_levels", ""],
    ["org.matrix.msc3401.call.member", "*"],
    ["m.room.join_rules", ""],
    ["m.room.tombstone", ""],
    ["m.room.create", ""],
    ["m.room.history_visibility", ""],
    ["io.element.functional_members", ""],
    ["m.space.parent", "*"],
    ["m.space.child", "*"],
]
SUBSCRIPTION_EXTRA_REQUIRED_STATE: list[list[str]] = [["m.room.pinned_events", ""]]


class SlidingSyncError(Exception):
    """A non-200 answer: its status and Matrix error body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body

    @property
    def errcode(self) -> str | None:
        return self.body.get("errcode") if isinstance(self.body, dict) else None


def q(value: str) -> str:
    return quote(value, safe="")


class Http:
    """One account's requests to one server, on a session of its own."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120))

    async def close(self) -> None:
        await self.session.close()

    async def raw(self, method: str, path: str, body: Any = None,
                  params: dict[str, str] | None = None) -> tuple[int, Any]:
        if not path.startswith("/_"):
            path = CLIENT_V3 + path
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(method, self.base + path, json=body, params=params,
                                        headers=headers) as resp:
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, await resp.text()

    async def call(self, method: str, path: str, body: Any = None,
                   params: dict[str, str] | None = None) -> Any:
        status, answer = await self.raw(method, path, body, params)
        if status != 200:
            raise SlidingSyncError(status, answer)
        return answer


async def supports_sliding_sync(base: str) -> bool:
    """What the rust-sdk checks before it connects: the unstable feature flag set to true."""
    http = Http(base)
    try:
        status, versions = await http.raw("GET", "/_matrix/client/versions")
    finally:
        await http.close()
    return status == 200 and bool(
        versions.get("unstable_features", {}).get(UNSTABLE_FEATURE))


async def register(base: str, shared_secret: str, localpart: str, password: str) -> str:
    """An account through the shared-secret admin API (``register_new_matrix_user``'s, which
    both Synapse and KT-Chat serve); returns its user ID."""
    http = Http(base)
    try:
        nonce = (await http.call("GET", "/_synapse/admin/v1/register"))["nonce"]
        mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(f"{nonce}\0{localpart}\0{password}\0notadmin".encode())
        answer = await http.call("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": localpart, "password": password, "admin": False,
            "mac": mac.hexdigest()})
    finally:
        await http.close()
    return str(answer["user_id"])


_txn = itertools.count()


class Peer:
    """Another logged-in device (not sliding sync): the people and devices around the
    Element X user, doing what the tests need done."""

    def __init__(self, http: Http, user_id: str, device_id: str) -> None:
        self.http = http
        self.user_id = user_id
        self.device_id = device_id

    @classmethod
    async def login(cls, base: str, user: str, password: str) -> Peer:
        http = Http(base)
        try:
            answer = await http.call("POST", "/login", {
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                "password": password})
        except BaseException:
            await http.close()
            raise
        http.token = answer["access_token"]
        return cls(http, answer["user_id"], answer["device_id"])

    async def close(self) -> None:
        await self.http.close()

    async def create_room(self, **body: Any) -> str:
        return str((await self.http.call("POST", "/createRoom", body))["room_id"])

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.http.call("POST", f"/rooms/{q(room_id)}/invite", {"user_id": user_id})

    async def join(self, room_id: str) -> None:
        await self.http.call("POST", f"/join/{q(room_id)}", {})

    async def leave(self, room_id: str) -> None:
        await self.http.call("POST", f"/rooms/{q(room_id)}/leave", {})

    async def send_text(self, room_id: str, body: str) -> str:
        answer = await self.http.call(
            "PUT", f"/rooms/{q(room_id)}/send/m.room.message/t{next(_txn)}.{time.time()}",
            {"msgtype": "m.text", "body": body})
        return str(answer["event_id"])

    async def typing(self, room_id: str, on: bool = True) -> None:
        await self.http.call("PUT", f"/rooms/{q(room_id)}/typing/{q(self.user_id)}",
                             {"typing": on, "timeout": 30_000} if on else {"typing": False})

    async def receipt(self, room_id: str, event_id: str) -> None:
        await self.http.call("POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {})

    async def account_data(self, event_type: str, content: JsonDict,
                           room_id: str | None = None) -> None:
        where = f"/rooms/{q(room_id)}" if room_id else ""
        await self.http.call(
            "PUT", f"/user/{q(self.user_id)}{where}/account_data/{q(event_type)}", content)

    async def send_to_device(self, event_type: str, user_id: str, device_id: str,
                             contents: JsonDict) -> None:
        await self.http.call(
            "PUT", f"/sendToDevice/{q(event_type)}/t{next(_txn)}.{time.time()}",
            {"messages": {user_id: {device_id: contents}}})


@dataclass
class RoomView:
    """One room as the client knows it, merged from every response that named it."""

    room_id: str
    fields: JsonDict = field(default_factory=dict)
    required_state: dict[tuple[str, str], JsonDict] = field(default_factory=dict)
    invite_state: list[JsonDict] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)   # event IDs, in arrival order
    events: dict[str, JsonDict] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    updates: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def bump_stamp(self) -> int:
        return int(self.fields.get("bump_stamp", 0))

    def bodies(self) -> list[str]:
        return [self.events[e]["content"].get("body", "") for e in self.timeline
                if self.events[e].get("type") == "m.room.message"]

    def absorb(self, data: JsonDict) -> None:
        """Merge one response's entry for this room. A room sent with ``initial`` (or an
        expanded timeline) starts its timeline afresh; otherwise every timeline event is
        live and must be new: an event already handed over is recorded as a duplicate."""
        self.updates += 1
        fresh = bool(data.get("initial")) or bool(data.get("unstable_expanded_timeline")
                                                     or data.get("expanded_timeline"))
        if data.get("initial"):
            self.required_state.clear()
        for key, value in data.items():
            if key not in ("required_state", "timeline", "invite_state"):
                self.fields[key] = value
        for event in data.get("required_state", []):
            self.required_state[(event["type"], event.get("state_key", ""))] = event
        if "invite_state" in data:
            self.invite_state = list(data["invite_state"])
        timeline = data.get("timeline", [])
        if fresh and timeline:
            self.timeline = []
        for event in timeline:
            event_id = event["event_id"]
            if event_id in self.events and not fresh:
                self.duplicates.append(event_id)
            self.events[event_id] = event
            if event_id not in self.timeline:
                self.timeline.append(event_id)


class Connection:
    """One sliding-sync connection: its ``conn_id``, its ``pos``, every raw response."""

    def __init__(self, http: Http, conn_id: str) -> None:
        self.http = http
        self.conn_id = conn_id
        self.pos: str | None = None
        self.responses: list[JsonDict] = []
        self.restarts = 0

    async def request(self, body: JsonDict, timeout_ms: int = 0, *,
                      pos: str | None = None, use_pos: bool = True,
                      client_timeout: float | None = None) -> JsonDict:
        """One POST; ``pos`` defaults to the connection's own. Raises ``SlidingSyncError``."""
        params = {"timeout": str(timeout_ms)}
        sent_pos = pos if pos is not None else (self.pos if use_pos else None)
        if sent_pos is not None:
            params["pos"] = sent_pos
        request = self.http.call("POST", SLIDING_SYNC_PATH, {"conn_id": self.conn_id, **body},
                                 params)
        answer: JsonDict = await asyncio.wait_for(
            request, client_timeout or timeout_ms / 1000 + 30)
        return answer

    async def sync(self, body: JsonDict, timeout_ms: int = 0) -> JsonDict:
        """A request at the current ``pos``; on ``M_UNKNOWN_POS`` the rust-sdk's recovery:
        forget ``pos`` and start over with an initial request."""
        try:
            answer = await self.request(body, timeout_ms)
        except SlidingSyncError as e:
            if e.status != 400 or e.errcode != "M_UNKNOWN_POS":
                raise
            self.pos = None
            self.restarts += 1
            answer = await self.request(body, 0)
        self.pos = answer["pos"]
        self.responses.append(answer)
        return answer


class ElementXClient:
    """An account logged in as Element X is: the room-list and encryption connections."""

    def __init__(self, http: Http, user_id: str, device_id: str) -> None:
        self.http = http
        self.user_id = user_id
        self.device_id = device_id
        self.room_list = Connection(http, ROOM_LIST_CONN_ID)
        self.encryption = Connection(http, ENCRYPTION_CONN_ID)
        self.range: tuple[int, int] = SELECTIVE_RANGE
        self.count: int | None = None
        self.list_room_ids: list[str] = []
        self.rooms: dict[str, RoomView] = {}
        self.subscriptions: set[str] = set()
        self.account_data: dict[str, JsonDict] = {}
        self.room_account_data: dict[str, dict[str, JsonDict]] = {}
        self.receipts: dict[str, JsonDict] = {}
        self.typing: dict[str, list[str]] = {}
        self.to_device_since: str | None = None
        self.to_device: list[JsonDict] = []
        self.e2ee: JsonDict = {}

    @classmethod
    async def login(cls, base: str, user: str, password: str, *,
                    check_versions: bool = True) -> ElementXClient:
        """``/versions`` first (refusing a server without simplified sliding sync, as the
        rust-sdk does), then the login flows, then a password login."""
        http = Http(base)
        try:
            if check_versions and not await supports_sliding_sync(base):
                raise SlidingSyncError(404, f"{base} does not advertise {UNSTABLE_FEATURE}")
            flows = await http.call("GET", "/login")
            if "m.login.password" not in {f.get("type") for f in flows.get("flows", [])}:
                raise SlidingSyncError(400, f"no password login among {flows}")
            answer = await http.call("POST", "/login", {
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                "password": password, "initial_device_display_name": "Element X (test)"})
        except BaseException:
            await http.close()
            raise
        http.token = answer["access_token"]
        return cls(http, answer["user_id"], answer["device_id"])

    async def close(self) -> None:
        await self.http.close()

    def act(self) -> Peer:
        """This same device doing ordinary client-server calls (receipts, typing, keys)."""
        return Peer(self.http, self.user_id, self.device_id)

    # -- the room-list connection -------------------------------------------------------

    @property
    def fully_loaded(self) -> bool:
        return self.count is not None and self.range[1] >= self.count - 1

    def room_list_body(self) -> JsonDict:
        body: JsonDict = {
            "lists": {ALL_ROOMS: {
                "ranges": [list(self.range)],
                "required_state": DEFAULT_REQUIRED_STATE,
                "timeline_limit": LIST_TIMELINE_LIMIT,
            }},
            "extensions": {
                "account_data": {"enabled": True},
                "receipts": {"enabled": True, "rooms": ["*"]},
                "typing": {"enabled": True},
            },
        }
        if self.subscriptions:
            body["room_subscriptions"] = {
                room_id: {"required_state": DEFAULT_REQUIRED_STATE
                          + SUBSCRIPTION_EXTRA_REQUIRED_STATE,
                          "timeline_limit": SUBSCRIPTION_TIMELINE_LIMIT}
                for room_id in sorted(self.subscriptions)}
        return body

    async def sync_room_list(self, timeout_ms: int | None = None) -> JsonDict:
        """One room-list request. Without ``timeout_ms``: no long poll until the list is
        fully loaded, ``timeout_ms`` given to the caller's default after that (30 s)."""
        if timeout_ms is None:
            timeout_ms = 30_000 if self.fully_loaded and self.room_list.pos else 0
        answer = await self.room_list.sync(self.room_list_body(), timeout_ms)
        self._absorb_room_list(answer)
        return answer

    async def load_room_list(self) -> None:
        """What the rust-sdk does at start: the selective range, then grow the range by
        ``GROWING_BATCH_SIZE`` until the whole list is loaded."""
        self.range = SELECTIVE_RANGE
        await self.sync_room_list(0)
        while self.count is not None and self.range[1] < self.count - 1:
            self.range = (0, min(self.range[1] + GROWING_BATCH_SIZE, self.count - 1))
            await self.sync_room_list(0)
        # Growing mode keeps the range at what the count asks.
        if self.count is not None and self.count > 0:
            self.range = (0, max(self.range[1], self.count - 1))

    def _absorb_room_list(self, answer: JsonDict) -> None:
        listed = answer.get("lists", {}).get(ALL_ROOMS)
        if listed is not None:
            self.count = listed["count"]
            ids = list(self.list_room_ids)
            for op in listed.get("ops", []):
                if op.get("op") == "SYNC":
                    start, end = op["range"]
                    got = op.get("room_ids", [])
                    ids[start:end + 1] = got
                elif op.get("op") == "INVALIDATE":
                    start, end = op["range"]
                    del ids[start:end + 1]
            self.list_room_ids = ids[:self.count]
        for room_id, data in answer.get("rooms", {}).items():
            self.rooms.setdefault(room_id, RoomView(room_id)).absorb(data)
        extensions = answer.get("extensions", {})
        account_data = extensions.get("account_data", {})
        for event in account_data.get("global", []):
            self.account_data[event["type"]] = event["content"]
        for room_id, events in account_data.get("rooms", {}).items():
            for event in events:
                self.room_account_data.setdefault(room_id, {})[event["type"]] = event["content"]
        for room_id, event in extensions.get("receipts", {}).get("rooms", {}).items():
            self.receipts[room_id] = event
        for room_id, event in extensions.get("typing", {}).get("rooms", {}).items():
            self.typing[room_id] = list(event.get("content", {}).get("user_ids", []))

    def by_recency(self) -> list[str]:
        """The rust-sdk's order (its recency sorter): the listed rooms by ``bump_stamp``,
        the newest first."""
        return sorted(self.list_room_ids,
                      key=lambda r: -self.rooms[r].bump_stamp if r in self.rooms else 0)

    def subscribe(self, room_id: str) -> None:
        self.subscriptions.add(room_id)

    def unsubscribe(self, room_id: str) -> None:
        self.subscriptions.discard(room_id)

    async def wait_room_list(self, predicate: Any, within: float = 20) -> JsonDict:
        """Long-polls the room-list connection until ``predicate(self)`` holds."""
        deadline = time.monotonic() + within
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"room list: condition not met in {within} s; "
                                   f"last: {self.room_list.responses[-1:]}")
            await self.sync_room_list(int(min(left, 10) * 1000))
        return self.room_list.responses[-1] if self.room_list.responses else {}

    # -- the encryption connection ------------------------------------------------------

    def encryption_body(self) -> JsonDict:
        to_device: JsonDict = {"enabled": True}
        if self.to_device_since is not None:
            to_device["since"] = self.to_device_since
        return {"extensions": {"to_device": to_device, "e2ee": {"enabled": True}}}

    async def sync_encryption(self, timeout_ms: int = 0) -> JsonDict:
        answer = await self.encryption.sync(self.encryption_body(), timeout_ms)
        extensions = answer.get("extensions", {})
        if "to_device" in extensions:
            self.to_device.extend(extensions["to_device"].get("events", []))
            self.to_device_since = extensions["to_device"].get("next_batch",
                                                               self.to_device_since)
        if "e2ee" in extensions:
            self.e2ee = extensions["e2ee"]
        return answer
