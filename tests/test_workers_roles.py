"""Workers with roles beyond syncing (``media``, ``push``) and the persister killed under
load: the same three processes as ``test_workers`` (w1: client and push, w2: client and
media), one PostgreSQL database created per test, the test Redis."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiohttp
import aiohttp.web
from aiohttp.test_utils import TestServer

from tests.helpers.processes import ktchat
from tests.test_workers import Client, Cluster, cluster, database, register, sync_until

__all__ = ["cluster", "database"]  # (the fixtures, used by name)


async def test_a_media_worker_stores_what_every_process_serves(cluster: Cluster) -> None:
    """w2 has the media role: uploads there are stored there (in the media store every
    process shares); the others serve them; a download waiting at the main process for an
    upload to a reserved ID goes on when the upload reaches w2."""
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(picture, format="PNG")
    async with aiohttp.ClientSession() as http:
        alice = await register(http, cluster.url("w2"), "alice")
        auth = {"Authorization": f"Bearer {alice.token}"}
        async with http.post(cluster.url("w2") + "/_matrix/media/v3/upload",
                             data=picture.getvalue(),
                             headers={**auth, "Content-Type": "image/png"}) as resp:
            assert resp.status == 200, await resp.text()
            mxc = (await resp.json())["content_uri"]
        server, media_id = mxc[len("mxc://"):].split("/")
        for name in ("main", "w1", "w2"):
            async with http.get(cluster.url(name) + "/_matrix/client/v1/media/download/"
                                f"{server}/{media_id}", headers=auth) as resp:
                assert resp.status == 200
                assert await resp.read() == picture.getvalue()
        async with http.get(cluster.url("w2") + "/_matrix/client/v1/media/thumbnail/"
                            f"{server}/{media_id}", params={"width": "32", "height": "32"},
                            headers=auth) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] in ("image/png", "image/jpeg")

        # Reserved at the main process, downloaded there while the upload goes to w2.
        async with http.post(cluster.url("main") + "/_matrix/media/v1/create",
                             headers=auth) as resp:
            reserved = (await resp.json())["content_uri"][len("mxc://"):]
        started = time.monotonic()

        async def download() -> bytes:
            async with http.get(cluster.url("main") + "/_matrix/client/v1/media/download/"
                                f"{reserved}", params={"timeout_ms": "20000"},
                                headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.read()

        waiting = asyncio.create_task(download())
        await asyncio.sleep(0.5)
        async with http.put(cluster.url("w2") + f"/_matrix/media/v3/upload/{reserved}",
                            data=b"later", headers={**auth, "Content-Type": "text/plain"}
                            ) as resp:
            assert resp.status == 200, await resp.text()
        assert await asyncio.wait_for(waiting, 20) == b"later"
        assert time.monotonic() - started < 10  # woken by the upload, not its timeout
    main_log = cluster.processes["main"].log()
    assert "POST /_matrix/media/v3/upload" not in main_log
    assert "PUT /_matrix/media/v3/upload" not in main_log
    assert "POST /_matrix/media/v3/upload" in cluster.processes["w2"].log()


async def test_the_push_worker_delivers_what_the_main_process_queues(cluster: Cluster) -> None:
    """w1 has the push role: the main process evaluates and queues, w1 sends (the main
    process sends nothing itself, so a push that arrives came from w1)."""
    from tests.test_push_gateway import Gateway

    gateway = Gateway()
    app = aiohttp.web.Application()
    app.router.add_post("/_matrix/push/v1/notify", gateway.notify)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gateway.server = server
    try:
        async with aiohttp.ClientSession() as http:
            alice = await register(http, cluster.url("w2"), "alice")
            bob = await register(http, cluster.url("w2"), "bob")
            await alice.call("POST", "/pushers/set", {
                "kind": "http", "app_id": "org.example.app", "pushkey": "pk",
                "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
                "data": {"url": gateway.url}})
            room_id = (await alice.call("POST", "/createRoom", {
                "preset": "trusted_private_chat", "invite": [bob.user_id],
                "is_direct": True}))["room_id"]
            await bob.call("POST", f"/join/{room_id}", {})
            await asyncio.sleep(0.5)  # (w1 read the pusher again)
            event_id = (await bob.call("PUT", f"/rooms/{room_id}/send/m.room.message/p1",
                                       {"msgtype": "m.text", "body": "push me"}))["event_id"]
            received = await gateway.wait_for(1, timeout_s=15)
            notification = received[0]["notification"]
            assert notification["event_id"] == event_id
            assert notification["devices"][0]["pushkey"] == "pk"

            # `ktchat admin` on the database tells the running processes: a deactivated
            # account's session ends at the workers at once (not after the token recheck).
            # (whoami is relayed to the main process; /sync is answered at the worker)
            paths = ("/account/whoami", "/sync?timeout=0")
            for path in paths:
                await alice.at(cluster.url("w1")).call("GET", path)
            result = ktchat("admin", "-c", str(cluster.config_path), "deactivate", "alice")
            assert result.returncode == 0, result.stderr
            for path in paths:
                for _ in range(40):
                    async with http.get(cluster.url("w1") + "/_matrix/client/v3" + path,
                                        headers={"Authorization": f"Bearer {alice.token}"}
                                        ) as resp:
                        if resp.status != 200:
                            break
                    await asyncio.sleep(0.05)
                assert resp.status in (401, 403), path
    finally:
        await server.close()


async def test_the_persister_killed_mid_load_loses_nothing_acknowledged(
        cluster: Cluster) -> None:
    """Sends through both workers while the main process (every room's persister) is
    killed with SIGKILL and started again: every send a worker acknowledged is in the room
    and reaches the syncs at the workers, and the room goes on."""
    async with aiohttp.ClientSession() as http:
        alice = await register(http, cluster.url("w1"), "alice")
        bob = await register(http, cluster.url("w2"), "bob")
        room_id = (await alice.call("POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
        await bob.call("POST", f"/join/{room_id}", {})
        _, since = await sync_until(bob, "", lambda r: room_id in r["rooms"]["join"])
        acknowledged: list[str] = []
        refused = 0
        killed = asyncio.Event()
        loaded = asyncio.Event()  # 30 sends acknowledged

        async def sender(user: Client, base: str, tag: str) -> None:
            nonlocal refused
            for i in range(400):
                try:
                    async with http.put(
                            f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
                            f"{tag}{i}", json={"msgtype": "m.text", "body": f"{tag}{i}"},
                            headers={"Authorization": f"Bearer {user.token}"}) as resp:
                        if resp.status == 200:
                            acknowledged.append((await resp.json())["event_id"])
                            if len(acknowledged) >= 30:
                                loaded.set()
                        else:
                            refused += 1
                except aiohttp.ClientError:
                    refused += 1
                if killed.is_set() and refused > 3:
                    return

        senders = [asyncio.create_task(sender(alice, cluster.url("w1"), "a")),
                   asyncio.create_task(sender(bob, cluster.url("w2"), "b"))]
        await asyncio.wait_for(loaded.wait(), 60)
        cluster.processes["main"].proc.kill()  # SIGKILL, mid-load
        killed.set()
        await asyncio.wait_for(asyncio.gather(*senders), 60)
        assert refused > 0  # (sends did meet the dead persister)
        cluster.processes["main"].proc.wait()
        cluster.start("main", log="main-after.log")

        # The room goes on, through both workers.
        after = (await alice.call("PUT", f"/rooms/{room_id}/send/m.room.message/after",
                                  {"msgtype": "m.text", "body": "after"}))["event_id"]
        # Bob's syncs at w2, from before the load, bring every acknowledged event.
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while after not in seen and time.monotonic() < deadline:
            response = await bob.sync(since, timeout_ms=5000, filter=json.dumps(
                {"room": {"timeline": {"limit": 1000}}}))
            since = response["next_batch"]
            room = response["rooms"]["join"].get(room_id, {})
            seen |= {e["event_id"] for e in room.get("timeline", {}).get("events", [])}
        assert after in seen
        missing = set(acknowledged) - seen
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged sends missing"
