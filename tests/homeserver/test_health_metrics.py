"""GET /health on every listener and Prometheus metrics on a listener of their own, against a
real ``ktchat run`` on loopback (client, federation over TLS, and metrics listeners)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.processes import REPO, ServerProcess, free_port, ktchat, wait_for_port

SEND_ROUTE = "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"
STATE_ROUTE = "/_matrix/client/v3/rooms/{room_id}/state"


class Server:
    def __init__(self, root: Path) -> None:
        data = root / "data"
        self.client_port, self.federation_port, self.metrics_port = \
            free_port(), free_port(), free_port()
        ktchat("generate-config", "--server-name", "localhost", "--data-dir", str(data),
               "--client-port", str(self.client_port),
               "--federation-port", str(self.federation_port))
        config_path = data / "homeserver.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["listeners"].append({"port": self.metrics_port, "bind": "127.0.0.1",
                                    "resources": ["metrics"]})
        config["registration"] = {"enabled": True, "require_token": False}
        config["rate_limits"] = {"enabled": False}
        config["logging"] = {"level": "WARNING"}
        config_path.write_text(yaml.safe_dump(config))
        self.process = ServerProcess(config_path, root / "server.log")
        for port in (self.client_port, self.federation_port, self.metrics_port):
            wait_for_port(port, self.process.proc)
        self.client = f"http://127.0.0.1:{self.client_port}"
        self.federation = f"https://127.0.0.1:{self.federation_port}"
        self.metrics = f"http://127.0.0.1:{self.metrics_port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("metrics"))
    try:
        yield running
    finally:
        assert running.process.stop() == 0, running.process.log()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        yield session


async def scrape(http: aiohttp.ClientSession, server: Server, path: str = "/metrics"
                 ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    async with http.get(server.metrics + path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def label_values(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
                 label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels), _ in samples.items()
            if n == name and label in dict(labels)}


async def register(http: aiohttp.ClientSession, server: Server, name: str) -> str:
    body: dict[str, Any] = {"username": name, "password": "metrics password 1"}
    async with http.post(f"{server.client}/_matrix/client/v3/register", json=body) as resp:
        session = (await resp.json())["session"]
    body["auth"] = {"type": "m.login.dummy", "session": session}
    async with http.post(f"{server.client}/_matrix/client/v3/register", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_health_on_every_listener(server: Server, http: aiohttp.ClientSession) -> None:
    for base in (server.client, server.federation, server.metrics):
        async with http.get(base + "/health") as resp:
            assert resp.status == 200, base
            assert await resp.text() == "OK"
            assert resp.headers["Content-Type"].startswith("text/plain")


async def test_metrics_only_on_the_metrics_listener(server: Server,
                                                    http: aiohttp.ClientSession) -> None:
    for path in ("/metrics", "/_synapse/metrics"):
        samples = await scrape(http, server, path)
        # prometheus-client's process collector: CPU and memory.
        assert value(samples, "process_cpu_seconds_total") > 0
        assert value(samples, "process_resident_memory_bytes") > 10_000_000
        assert ("python_info", ()) not in samples  # (labelled: present with labels)
        assert any(name == "python_info" for name, _ in samples)
        for name in ("ktchat_events_persisted_total", "ktchat_sync_waiters",
                     "ktchat_sse_streams_open", "ktchat_persister_batch_size_count",
                     "ktchat_federation_outbound_queue_depth",
                     "ktchat_federation_destinations_pending"):
            assert any(n == name for n, _ in samples), name
        assert label_values(samples, "ktchat_cache_hits_total", "cache") == \
            {"token", "membership", "event"}
        assert label_values(samples, "ktchat_federation_inbound_transactions_total",
                            "outcome") == {"accepted", "some_pdus_refused", "refused", "failed"}
        assert "write" in label_values(samples, "ktchat_db_pool_size", "pool")
    # Not on the client or federation listeners.
    for base in (server.client, server.federation):
        async with http.get(base + "/metrics") as resp:
            assert resp.status == 404
        async with http.get(base + "/_synapse/metrics") as resp:
            assert resp.status == 404
    # And the metrics listener serves nothing else.
    async with http.get(server.metrics + "/_matrix/client/versions") as resp:
        assert resp.status == 404


async def test_counters_move_with_requests_sends_and_syncs(server: Server,
                                                           http: aiohttp.ClientSession) -> None:
    token = await register(http, server, "counted")
    async with http.post(f"{server.client}/_matrix/client/v3/createRoom", json={},
                         headers=auth(token)) as resp:
        room_id = (await resp.json())["room_id"]
    async with http.get(f"{server.client}/_matrix/client/v3/sync",
                        headers=auth(token)) as resp:
        since = (await resp.json())["next_batch"]
    before = await scrape(http, server)

    # A long poll waits (the gauge shows it) until a message wakes it.
    poll = asyncio.create_task(http.get(
        f"{server.client}/_matrix/client/v3/sync",
        params={"since": since, "timeout": "20000"}, headers=auth(token)))
    for _ in range(100):
        if value(await scrape(http, server), "ktchat_sync_waiters") >= 1:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the long poll never showed as a waiter")
    for i in range(3):
        async with http.put(
                f"{server.client}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{i}",
                json={"msgtype": "m.text", "body": f"hello {i}"}, headers=auth(token)) as resp:
            assert resp.status == 200
    async with await poll as resp:
        assert resp.status == 200
        assert (await resp.json())["rooms"]["join"][room_id]
    after = await scrape(http, server)

    sent = ("ktchat_http_request_duration_seconds_count",
            {"route": SEND_ROUTE, "method": "PUT", "status": "200"})
    assert value(after, sent[0], **sent[1]) - value(before, sent[0], **sent[1]) == 3
    assert value(after, "ktchat_http_request_duration_seconds_bucket", le="+Inf",
                 **sent[1]) == value(after, sent[0], **sent[1])
    assert value(after, "ktchat_http_request_duration_seconds_sum", **sent[1]) > 0
    assert value(after, "ktchat_events_persisted_total") - \
        value(before, "ktchat_events_persisted_total") >= 3
    assert value(after, "ktchat_persister_batch_size_count") > \
        value(before, "ktchat_persister_batch_size_count")
    assert value(after, "ktchat_persister_commit_duration_seconds_sum") > \
        value(before, "ktchat_persister_commit_duration_seconds_sum")
    assert value(after, "ktchat_sync_wakeups_total") > value(before, "ktchat_sync_wakeups_total")
    assert value(after, "ktchat_sync_waiters") == 0
    # Every authenticated request after the first checks the token in the cache.
    assert value(after, "ktchat_cache_hits_total", cache="token") - \
        value(before, "ktchat_cache_hits_total", cache="token") >= 4
    assert value(after, "ktchat_cache_hits_total", cache="membership") + \
        value(after, "ktchat_cache_misses_total", cache="membership") > 0
    assert value(after, "ktchat_cache_hits_total", cache="event") + \
        value(after, "ktchat_cache_misses_total", cache="event") > 0
    # An unknown token is a miss, and its 401 is counted under its route.
    async with http.get(f"{server.client}/_matrix/client/v3/sync",
                        headers=auth("nonsense")) as resp:
        assert resp.status == 401
    last = await scrape(http, server)
    assert value(last, "ktchat_cache_misses_total", cache="token") > \
        value(after, "ktchat_cache_misses_total", cache="token")
    assert value(last, "ktchat_http_request_duration_seconds_count",
                 route="/_matrix/client/v3/sync", method="GET", status="401") >= 1


async def test_routes_are_labelled_by_pattern(server: Server,
                                              http: aiohttp.ClientSession) -> None:
    token = await register(http, server, "labels")
    before = await scrape(http, server)
    for i in range(100):
        async with http.get(f"{server.client}/_matrix/client/v3/rooms/!room{i}:localhost/state",
                            headers=auth(token)) as resp:
            assert resp.status in (403, 404)
        async with http.get(f"{server.client}/no/such/path/{i}") as resp:
            assert resp.status == 404
    samples = await scrape(http, server)
    routes = label_values(samples, "ktchat_http_request_duration_seconds_count", "route")
    assert STATE_ROUTE in routes
    assert "unmatched" in routes
    assert not any("!room" in r or "/no/such" in r for r in routes)
    counted = sum(v for (name, labels), v in samples.items()
                  if name == "ktchat_http_request_duration_seconds_count"
                  and dict(labels)["route"] == STATE_ROUTE)
    assert counted == 100
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(samples, "ktchat_http_request_duration_seconds_count", **unmatched) - \
        value(before, "ktchat_http_request_duration_seconds_count", **unmatched) == 100


async def test_sse_streams_are_counted(server: Server, http: aiohttp.ClientSession) -> None:
    token = await register(http, server, "streamer")
    url = f"{server.client}/_matrix/client/unstable/org.ktchat.sse/sync"
    resp = await http.get(url, headers=auth(token))
    try:
        assert resp.status == 200
        while not (await resp.content.readline()).startswith(b"data:"):
            pass  # up to the first message
        samples = await scrape(http, server)
        assert value(samples, "ktchat_sse_streams_open") == 1
    finally:
        resp.close()  # the client goes away
    for _ in range(100):
        if value(await scrape(http, server), "ktchat_sse_streams_open") == 0:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the closed stream is still counted")


async def test_refused_federation_transaction_is_counted(server: Server,
                                                         http: aiohttp.ClientSession) -> None:
    # Unsigned: refused before it is a transaction (401), so no outcome moves; the route
    # is counted under its pattern.
    before = await scrape(http, server)
    async with http.put(f"{server.federation}/_matrix/federation/v1/send/t1",
                        json={"pdus": [], "edus": []}) as resp:
        assert resp.status == 401
    after = await scrape(http, server)
    assert sum(value(after, "ktchat_federation_inbound_transactions_total", outcome=o)
               for o in ("accepted", "some_pdus_refused", "refused", "failed")) == \
        sum(value(before, "ktchat_federation_inbound_transactions_total", outcome=o)
            for o in ("accepted", "some_pdus_refused", "refused", "failed"))
    assert value(after, "ktchat_http_request_duration_seconds_count",
                 route="/_matrix/federation/v1/send/{txn_id}", method="PUT",
                 status="401") == 1


async def test_the_grafana_dashboard_uses_metrics_the_server_serves(
        server: Server, http: aiohttp.ClientSession) -> None:
    dashboard = json.loads((REPO / "docs" / "grafana" / "ktchat.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    used = {m for e in exprs for m in re.findall(r"\b(?:ktchat|process|python)_[a-z_]+", e)}
    async with http.get(server.metrics + "/metrics") as resp:
        served = {f.name for f in text_string_to_metric_families(await resp.text())}
    samples = await scrape(http, server)
    served |= {name for name, _ in samples}
    # Served only with workers (tests/federation/test_federation_*_worker.py scrape them).
    with_workers = {"ktchat_replication_published_total", "ktchat_replication_received_total",
                    "ktchat_replication_backlog", "ktchat_replication_resubscribes_total",
                    "ktchat_worker_relayed_requests_total"}
    assert used - served - with_workers == set()
