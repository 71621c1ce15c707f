"""Several processes of one server (``workers``): a main process and two ``client`` workers
as real processes on one PostgreSQL database (created for the test) and the test Redis.

Clients talk to the workers only: what a worker does not serve it relays to the main
process; its event sends reach the persister (the main process) over the replication
listener; what the main process writes reaches the workers' syncs over Redis."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest
import yaml

from tests.conftest import postgres_url
from tests.helpers.federation import PostgresDatabase
from tests.helpers.processes import ServerProcess, free_port, ktchat, proxy_binary, wait_for_port

PASSWORD = "a long enough password"
REDIS_ENV = "KTCHAT_TEST_REDIS_URL"


def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REDIS_ENV} must be set under CI=true")
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A new PostgreSQL database (asyncpg URL), dropped afterwards."""
    base = postgres_url()
    assert base is not None
    created = PostgresDatabase(base)
    await created.create()
    try:
        yield created.url
    finally:
        await created.drop()


class Cluster:
    """A generated config with two workers, and the three processes run from it."""

    WORKERS = ("w1", "w2")

    def __init__(self, root: Path, database: str) -> None:
        self.root = root
        data = root / "data"
        self.main_port, self.replication_port = free_port(), free_port()
        # A server name of its own: parallel tests share the Redis server.
        self.server_name = f"w{secrets.token_hex(4)}.test"
        ktchat("generate-config", "--server-name", self.server_name, "--data-dir", str(data),
               "--client-port", str(self.main_port), "--federation-port", str(free_port()))
        self.config_path = data / "homeserver.yaml"
        config = yaml.safe_load(self.config_path.read_text())
        self.ports = {name: free_port() for name in self.WORKERS}
        config.update({
            "registration": {"enabled": True, "require_token": False},
            "rate_limits": {"enabled": False},
            # The access log says which process answered what.
            "logging": {"level": "WARNING", "loggers": {"ktchat.access": "INFO"}},
            # (push gateways on loopback)
            "federation": {"enabled": False, "ip_range_allowlist": ["127.0.0.0/8"]},
            "database": {"url": database},
            "redis": {"url": redis_url()},
            "listeners": [
                {"port": self.main_port, "resources": ["client"], "x_forwarded": True},
                {"port": self.replication_port, "resources": ["replication"]},
            ],
            # w1 also delivers pushes, w2 also serves media.
            "workers": {name: {"roles": ["client", "media"] if name == "w2"
                               else ["client", "push"],
                               "listeners": [{"port": port, "resources": ["client"]}]}
                        for name, port in self.ports.items()},
        })
        self.config_path.write_text(yaml.safe_dump(config))
        self.processes: dict[str, ServerProcess] = {}

    def url(self, name: str) -> str:
        port = self.main_port if name == "main" else self.ports[name]
        return f"http://127.0.0.1:{port}"

    def start(self, name: str, log: str | None = None) -> None:
        process = ServerProcess(self.config_path, self.root / (log or f"{name}.log"),
                                worker=None if name == "main" else name)
        self.processes[name] = process
        wait_for_port(self.main_port if name == "main" else self.ports[name], process.proc)

    def stop_all(self) -> dict[str, int]:
        """The workers first, then the main process (as an operator would)."""
        order = [n for n in self.processes if n != "main"] + ["main"]
        return {name: self.processes[name].stop() for name in order
                if name in self.processes}

    def logs(self) -> str:
        return "\n".join(f"== {n}\n{p.log()}" for n, p in self.processes.items())


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str = "",
                 user_id: str = "", device_id: str = "") -> None:
        self.http = http
        self.base = base
        self.token = token
        self.user_id = user_id
        self.device_id = device_id

    def at(self, base: str) -> Client:
        """The same session, talking to another process."""
        return Client(self.http, base, self.token, self.user_id, self.device_id)

    async def call(self, method: str, path: str, body: Any = None, status: int = 200,
                   **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.base + "/_matrix/client/v3" + path,
                                     json=body, headers=headers, **kwargs) as resp:
            text = await resp.text()
            assert resp.status == status, f"{method} {path}: {resp.status} {text}"
            return json.loads(text) if text else None

    async def sync(self, since: str | None = None, timeout_ms: int = 0,
                   **params: str) -> dict[str, Any]:
        query = {"timeout": str(timeout_ms), **params}
        if since is not None:
            query["since"] = since
        result: dict[str, Any] = await self.call("GET", "/sync", params=query)
        return result


async def register(http: aiohttp.ClientSession, base: str, name: str) -> Client:
    anon = Client(http, base)
    body: dict[str, Any] = {"username": name, "password": PASSWORD, "device_id": "DEV"}
    session = (await anon.call("POST", "/register", body, 401))["session"]
    body["auth"] = {"type": "m.login.dummy", "session": session}
    answer = await anon.call("POST", "/register", body)
    return Client(http, base, answer["access_token"], answer["user_id"], answer["device_id"])


async def sync_until(client: Client, since: str, found: Any, *, timeout_s: float = 10,
                     **params: str) -> tuple[dict[str, Any], str]:
    """Long-poll until ``found(response)`` is true; the response and its next_batch."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await client.sync(since, timeout_ms=5000, **params)
        since = response["next_batch"]
        if found(response):
            return response, since
    raise AssertionError("not seen in time")


def timeline_bodies(response: dict[str, Any], room_id: str) -> list[str]:
    room = response.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e["content"].get("body") for e in room.get("timeline", {}).get("events", [])
            if e["type"] == "m.room.message"]


def ephemeral(response: dict[str, Any], room_id: str, type_: str) -> list[dict[str, Any]]:
    room = response.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == type_]


@pytest.fixture
async def cluster(tmp_path: Path, database: str) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path, database)
    cluster.start("main")
    for name in Cluster.WORKERS:
        cluster.start(name)
    try:
        yield cluster
    finally:
        codes = cluster.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, cluster.logs())
        assert "Traceback" not in cluster.logs(), cluster.logs()


async def test_what_one_worker_writes_reaches_syncs_on_the_other(cluster: Cluster) -> None:
    w1, w2 = cluster.url("w1"), cluster.url("w2")
    async with aiohttp.ClientSession() as http:
        # Registration, room creation and joins are relayed to the main process.
        alice = await register(http, w1, "alice")
        bob = (await register(http, w2, "bob"))
        room_id = (await alice.call("POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
        await bob.call("POST", f"/join/{room_id}", {})
        _, bob_since = await sync_until(bob, "", lambda r: room_id in r["rooms"]["join"])
        _, alice_since = await sync_until(alice, "", lambda r: room_id in r["rooms"]["join"])

        # A message sent through w1 (written by the persister) wakes a long poll on w2 and
        # an SSE stream on w2.
        async with http.get(w2 + "/_matrix/client/unstable/org.ktchat.sse/sync",
                            params={"since": bob_since},
                            headers={"Authorization": f"Bearer {bob.token}"}) as stream:
            assert stream.status == 200
            poll = asyncio.create_task(sync_until(
                bob, bob_since, lambda r: timeline_bodies(r, room_id) != []))
            await asyncio.sleep(0.3)  # the poll waits at w2
            sent_at = time.monotonic()
            event_id = (await alice.call(
                "PUT", f"/rooms/{room_id}/send/m.room.message/t1",
                {"msgtype": "m.text", "body": "across workers"}))["event_id"]
            before = bob_since
            response, bob_since = await asyncio.wait_for(poll, 10)
            waited = time.monotonic() - sent_at
            assert timeline_bodies(response, room_id) == ["across workers"]
            assert waited < 4, waited  # woken by the commit, not the poll's timeout
            # The unread count at w2 counts it (w2 waited for the writer's push results).
            unread = response["rooms"]["join"][room_id]["unread_notifications"]
            assert unread["notification_count"] == 1, unread
            # Once, however many processes heard of it (a worker that passed on what it
            # applied made the other one list it twice).
            await asyncio.sleep(0.5)
            for worker in (w1, w2):
                again = await bob.at(worker).sync(before)
                assert timeline_bodies(again, room_id) == ["across workers"]
            seen = []
            async for line in stream.content:
                if line.startswith(b"data: "):
                    seen += timeline_bodies(json.loads(line[6:]), room_id)
                    if "across workers" in seen:
                        break
        # The same transaction through the other worker is the same event.
        again = await alice.at(w2).call("PUT", f"/rooms/{room_id}/send/m.room.message/t1",
                                         {"msgtype": "m.text", "body": "across workers"})
        assert again["event_id"] == event_id

        # Sliding sync at w2 lists the room with the message as its latest event.
        async with http.post(
                w2 + "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                params={"timeout": "0"}, headers={"Authorization": f"Bearer {bob.token}"},
                json={"conn_id": "main", "lists": {"all": {
                    "ranges": [[0, 10]], "timeline_limit": 1,
                    "required_state": [["m.room.name", ""]]}}}) as resp:
            assert resp.status == 200, await resp.text()
            sliding = await resp.json()
        events = sliding["rooms"][room_id]["timeline"]
        assert [e["event_id"] for e in events] == [event_id]

        # Typing (relayed to the main process, which keeps it) reaches bob's sync on w2.
        await alice.call("PUT", f"/rooms/{room_id}/typing/{alice.user_id}",
                         {"typing": True, "timeout": 20000})
        _, bob_since = await sync_until(
            bob, bob_since, lambda r: any(alice.user_id in e["content"]["user_ids"]
                                          for e in ephemeral(r, room_id, "m.typing")))
        # A worker started while alice types knows it from its first sync.
        assert cluster.processes["w1"].stop() == 0
        cluster.start("w1", "w1-again.log")
        for _ in range(20):  # (its first message from the main process: milliseconds)
            fresh = await bob.at(w1).sync()
            if any(alice.user_id in e["content"]["user_ids"]
                   for e in ephemeral(fresh, room_id, "m.typing")):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no typing at the new worker: {fresh['rooms']['join']}")

        # A read receipt through w2 reaches alice's sync on w1.
        await bob.call("POST", f"/rooms/{room_id}/receipt/m.read/{event_id}", {})
        _, alice_since = await sync_until(
            alice, alice_since,
            lambda r: any(bob.user_id in e["content"].get(event_id, {}).get("m.read", {})
                          for e in ephemeral(r, room_id, "m.receipt")))

        # Bob syncing at w2 is online for alice at w1 (the main process keeps presence).
        def bob_online(r: dict[str, Any]) -> bool:
            return any(e["sender"] == bob.user_id and e["content"]["presence"] == "online"
                       for e in r.get("presence", {}).get("events", []))
        await sync_until(alice, "", bob_online)

        # To-device through w1 reaches bob's device at w2.
        await alice.call("PUT", "/sendToDevice/m.test/td1",
                         {"messages": {bob.user_id: {bob.device_id: {"hello": "bob"}}}})
        _, bob_since = await sync_until(
            bob, bob_since, lambda r: any(e["content"] == {"hello": "bob"}
                                          for e in r.get("to_device", {}).get("events", [])))

        # Bob's new device keys (uploaded through w2) change alice's device lists at w1.
        await bob.call("POST", "/keys/upload", {"device_keys": {
            "user_id": bob.user_id, "device_id": bob.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"ed25519:{bob.device_id}": "AAAA", f"curve25519:{bob.device_id}": "BBBB"},
            "signatures": {}}})
        _, alice_since = await sync_until(
            alice, alice_since,
            lambda r: bob.user_id in r.get("device_lists", {}).get("changed", []))

        # An edit through w2 is bundled with the original in syncs at w1 (its relations
        # cache heard of it).
        def original(r: dict[str, Any]) -> dict[str, Any]:
            events = r["rooms"]["join"][room_id]["timeline"]["events"]
            return next(e for e in events if e["event_id"] == event_id)
        assert "m.relations" not in original(await bob.at(w1).sync(before)).get("unsigned", {})
        await alice.at(w2).call("PUT", f"/rooms/{room_id}/send/m.room.message/edit1", {
            "msgtype": "m.text", "body": "* edited", "m.new_content": {
                "msgtype": "m.text", "body": "edited"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}})
        await asyncio.sleep(0.5)
        relations = original(await bob.at(w1).sync(before)).get("unsigned", {}).get(
            "m.relations", {})
        assert "m.replace" in relations, relations
        # Reads of the room at a worker (answered there) see it all too.
        fetched = await bob.at(w1).call("GET", f"/rooms/{room_id}/event/{event_id}")
        assert "m.replace" in fetched.get("unsigned", {}).get("m.relations", {})
        members = await bob.at(w2).call("GET", f"/rooms/{room_id}/joined_members")
        assert set(members["joined"]) == {alice.user_id, bob.user_id}
        state = await alice.at(w2).call("GET", f"/rooms/{room_id}/state")
        assert any(e["type"] == "m.room.create" for e in state)
        main_log = cluster.processes["main"].log()
        for read in ("/event/", "/joined_members", "/state "):
            assert f"/rooms/{room_id}{read}" not in main_log  # (not relayed)

        # Clearing history through w2 hides it from bob's syncs at w1 (whose cache of the
        # cleared points was warm).
        assert "across workers" in timeline_bodies(await bob.at(w1).sync(), room_id)
        await bob.call("POST", "/../unstable/org.ktchat.history/rooms/"
                       f"{room_id}/clear", {})
        await asyncio.sleep(0.5)
        assert "across workers" not in timeline_bodies(await bob.at(w1).sync(), room_id)

        # An admin's purge at the main process: what w1 had cached of the purged events
        # (the event, the room's recent window its syncs answer from) goes at once.
        purged_id = (await alice.at(w2).call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/purged1",
            {"msgtype": "m.text", "body": "to be purged"}))["event_id"]
        await bob.at(w1).call("GET", f"/rooms/{room_id}/event/{purged_id}")
        assert "to be purged" in timeline_bodies(await bob.at(w1).sync(), room_id)
        await alice.call("PUT", f"/rooms/{room_id}/send/m.room.message/after1",
                         {"msgtype": "m.text", "body": "after the purge point"})
        ktchat("admin", "-c", str(cluster.config_path), "make-admin", alice.user_id)
        admin = "/../../../_synapse/admin/v1"
        purge_id = (await alice.call("POST", f"{admin}/purge_history/{room_id}", {
            "delete_local_events": True,
            "purge_up_to_ts": int(time.time() * 1000)}))["purge_id"]
        for _ in range(100):
            status = (await alice.call("GET", f"{admin}/purge_history_status/{purge_id}"))
            if status["status"] != "active":
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "complete", status
        await asyncio.sleep(0.5)
        await bob.at(w1).call("GET", f"/rooms/{room_id}/event/{purged_id}", status=404)
        assert "to be purged" not in timeline_bodies(await bob.at(w1).sync(), room_id)

        # Logging out at w1 ends the session at w2 at once.
        await bob.at(w1).call("POST", "/logout", {})
        await bob.call("GET", "/account/whoami", status=401)
        with pytest.raises(AssertionError):
            await bob.sync(bob_since)


def start_proxy(kind: str, cluster: Cluster, root: Path, port: int) -> subprocess.Popen[bytes]:
    """nginx or HAProxy (Debian's), on loopback, with what ``ktchat proxy-config`` prints."""
    binary = proxy_binary(kind)
    generated = ktchat("proxy-config", "-c", str(cluster.config_path), "--proxy", kind,
                       "--listen", f"127.0.0.1:{port}").stdout
    if kind == "nginx":
        (root / "logs").mkdir(exist_ok=True)
        (root / "routes.conf").write_text(generated)
        (root / "nginx.conf").write_text(
            f"daemon off;\npid {root}/nginx.pid;\nerror_log {root}/nginx-error.log;\n"
            "events {}\nhttp {\n  access_log off;\n"
            f"  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n"
            f"  include {root}/routes.conf;\n}}\n")
        command = [binary, "-p", str(root), "-c", str(root / "nginx.conf")]
    else:
        (root / "haproxy.cfg").write_text(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 5s\n"
            + generated)
        subprocess.run([binary, "-c", "-q", "-f", str(root / "haproxy.cfg")], check=True)
        command = [binary, "-db", "-f", str(root / "haproxy.cfg")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)  # type: ignore[arg-type]
    return proc


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_a_reverse_proxy_sends_syncs_and_sends_to_the_workers(
        kind: str, cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    proxy = start_proxy(kind, cluster, tmp_path, port)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            alice = await register(http, base, "alice")
            bob = await register(http, base, "bob")
            room_id = (await alice.call("POST", "/createRoom",
                                        {"preset": "public_chat"}))["room_id"]
            await bob.call("POST", f"/join/{room_id}", {})
            _, since = await sync_until(bob, "", lambda r: room_id in r["rooms"]["join"])
            poll = asyncio.create_task(sync_until(
                bob, since, lambda r: timeline_bodies(r, room_id) != []))
            await asyncio.sleep(0.2)
            await alice.call("PUT", f"/rooms/{room_id}/send/m.room.message/p1",
                             {"msgtype": "m.text", "body": "through the proxy"})
            response, _ = await asyncio.wait_for(poll, 10)
            assert timeline_bodies(response, room_id) == ["through the proxy"]
    finally:
        proxy.terminate()
        proxy.wait(10)
    logs = {name: process.log() for name, process in cluster.processes.items()}
    workers_log = logs["w1"] + logs["w2"]
    # Syncs and sends were answered by the workers (the room reads too); registration and
    # room creation by the main process, reached directly (not relayed by a worker).
    assert "GET /_matrix/client/v3/rooms/" not in logs["main"]
    assert "GET /_matrix/client/v3/sync" in workers_log
    assert "PUT /_matrix/client/v3/rooms/" in workers_log
    assert "GET /_matrix/client/v3/sync" not in logs["main"]
    assert "POST /_matrix/client/v3/createRoom" in logs["main"]
    assert "POST /_matrix/client/v3/createRoom" not in workers_log


async def test_a_worker_that_lost_redis_for_a_while_misses_nothing(cluster: Cluster) -> None:
    """Messages published while a worker was not subscribed are lost to it: once back, it
    forgets what it knew of changes and wakes its syncs, which then find the event."""
    import redis.asyncio as aioredis

    async with aiohttp.ClientSession() as http:
        alice = await register(http, cluster.url("main"), "alice")
        bob = await register(http, cluster.url("w2"), "bob")
        room_id = (await alice.call("POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
        await bob.call("POST", f"/join/{room_id}", {})
        _, since = await sync_until(bob, "", lambda r: room_id in r["rooms"]["join"])
        poll = asyncio.create_task(sync_until(
            bob, since, lambda r: "in the gap" in timeline_bodies(r, room_id), timeout_s=20))
        await asyncio.sleep(0.3)
        redis = aioredis.from_url(redis_url())
        try:
            clients = await redis.client_list()
            name = f"ktchat.{cluster.server_name}.w2"
            killed = [c["id"] for c in clients if c.get("name") == name]
            assert killed, clients
            for client_id in killed:
                await redis.client_kill_filter(_id=client_id)
        finally:
            await redis.aclose()
        # Published while w2 is away (it waits half a second before subscribing again).
        await alice.call("PUT", f"/rooms/{room_id}/send/m.room.message/gap",
                         {"msgtype": "m.text", "body": "in the gap"})
        response, _ = await asyncio.wait_for(poll, 25)
        assert "in the gap" in timeline_bodies(response, room_id)
    assert "Resubscribed" in cluster.processes["w2"].log()
