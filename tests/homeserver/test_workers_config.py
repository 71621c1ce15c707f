"""The ``workers`` and ``redis`` config keys: what a worker set-up needs is checked at start,
one line per problem with its key's path, and the proxy configuration follows the workers."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from homeserver.config import ConfigError
from homeserver.proxy_config import haproxy, nginx
from homeserver.replication.relay import served_here
from tests.conftest import make_config
from tests.helpers.processes import proxy_binary

PG = "postgresql+asyncpg://ktchat@127.0.0.1/ktchat"


def _workers(**extra: Any) -> dict[str, Any]:
    return {"sync1": {"roles": ["client"], "listeners": [{"port": 8101,
                                                           "resources": ["client"]}]},
            **extra}


def _good(tmp_path: Path, **overrides: Any) -> Any:
    return make_config(tmp_path, **{
        "database": {"url": PG}, "redis": {"url": "redis://127.0.0.1:6379/0"},
        "listeners": [{"port": 8008, "resources": ["client"]},
                      {"port": 9093, "resources": ["replication"]}],
        "workers": _workers(), **overrides})


def _problems(tmp_path: Path, **overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        _good(tmp_path, **overrides)
    return e.value.problems


def test_a_worker_set_up_is_read(tmp_path: Path) -> None:
    config = _good(tmp_path)
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    worker = config.worker("sync1")
    assert worker is not None and worker.roles == ("client",)
    assert worker.client_urls() == ["http://127.0.0.1:8101"]
    assert config.replication_url() == "http://127.0.0.1:9093"
    assert config.main_client_url() == "http://127.0.0.1:8008"
    assert config.worker("nope") is None


def test_workers_need_postgres_redis_and_the_main_listeners(tmp_path: Path) -> None:
    problems = _problems(tmp_path, database={"url": f"sqlite+aiosqlite:///{tmp_path}/h.db"},
                         redis={"url": None}, listeners=[{"port": 8448,
                                                          "resources": ["federation"]}])
    assert any(p.startswith("workers: workers need PostgreSQL") for p in problems)
    assert any(p.startswith("workers: workers need Redis") for p in problems)
    assert any("replication resource" in p for p in problems)
    assert any("client resource" in p for p in problems)


def test_worker_roles_ports_and_keys_are_checked(tmp_path: Path) -> None:
    problems = _problems(tmp_path, workers=_workers(
        bad={"roles": ["sorcerer"], "listeners": [{"port": 8101}]},
        later={"roles": ["persister"], "listeners": [{"port": 8103, "tsl": True}]},
        pics={"roles": ["media"], "listeners": [{"port": 8104, "resources": ["media"]}]},
        empty={"roles": []}))
    assert any(p.startswith("workers.bad.roles: unknown role 'sorcerer'") for p in problems)
    assert any(p.startswith("workers.bad.listeners[0].port: port 8101 is also used")
               for p in problems)
    assert any(p.startswith("workers.later.roles: role 'persister' cannot run in a worker yet")
               for p in problems)
    assert "workers.later.listeners[0].tsl: unknown key" in problems
    assert any(p.startswith("workers.empty.roles: needs at least one role") for p in problems)
    assert any(p.startswith("workers.empty.listeners: needs at least one listener")
               for p in problems)
    assert any(p.startswith("redis.url") for p in _problems(tmp_path, redis={"url": "http://x"}))
    two_pushers = _problems(tmp_path, workers=_workers(
        p1={"roles": ["push"], "listeners": [{"port": 8105, "resources": ["metrics"]}]},
        p2={"roles": ["push"], "listeners": [{"port": 8106, "resources": ["metrics"]}]}))
    assert any(p.startswith("workers.p2: only one worker may have the push role")
               for p in two_pushers)
    # Federation senders are sharded by destination: any number.
    config = _good(tmp_path, workers=_workers(
        f1={"roles": ["federation_sender"], "listeners": [{"port": 8107,
                                                            "resources": ["metrics"]}]},
        f2={"roles": ["federation_sender"], "listeners": [{"port": 8108,
                                                            "resources": ["metrics"]}]}))
    f1, f2 = config.worker("f1"), config.worker("f2")
    assert f1 is not None and f2 is not None
    assert config.shard_of(f1, "federation_sender") == (0, 2)
    assert config.shard_of(f2, "federation_sender") == (1, 2)
    from federation.sender.queue import Shard

    names = [f"s{i}.example" for i in range(50)]
    owners = [[Shard(i, 2).owns(n) for i in range(2)] for n in names]
    assert all(sum(o) == 1 for o in owners)  # one sender each
    assert 10 < sum(o[0] for o in owners) < 40  # spread


def test_what_a_client_worker_serves_itself() -> None:
    v3 = "/_matrix/client/v3"
    assert served_here("GET", f"{v3}/sync")
    assert served_here("GET", "/_matrix/client/unstable/org.ktchat.sse/sync")
    assert served_here("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync")
    assert served_here("PUT", f"{v3}/rooms/!r:x/send/m.room.message/t1")
    assert served_here("PUT", f"{v3}/rooms/!r:x/state/m.room.name")
    assert served_here("PUT", f"{v3}/rooms/!r:x/state/m.room.name/")
    assert served_here("PUT", f"{v3}/rooms/!r:x/redact/$e/t2")
    assert served_here("OPTIONS", f"{v3}/login")
    # Reads of rooms as they stand.
    for path in ("/rooms/!r:x/state/m.room.name", "/rooms/!r:x/state", "/rooms/!r:x/members",
                 "/rooms/!r:x/joined_members", "/rooms/!r:x/event/$e", "/rooms/!r:x/context/$e",
                 "/joined_rooms"):
        assert served_here("GET", v3 + path), path
    assert served_here("GET", "/_matrix/client/v1/rooms/!r:x/relations/$e/m.thread")
    assert served_here("GET", "/_matrix/client/v1/rooms/!r:x/threads")
    # Membership, /messages (it may backfill) and everything else: the main process.
    assert not served_here("PUT", f"{v3}/rooms/!r:x/state/m.room.member/@a:x")
    assert not served_here("GET", f"{v3}/rooms/!r:x/messages")
    assert not served_here("POST", f"{v3}/sync")
    assert not served_here("POST", f"{v3}/login")
    assert not served_here("POST", f"{v3}/createRoom")


def test_proxy_configs_route_to_the_workers(tmp_path: Path) -> None:
    config = _good(tmp_path, workers=_workers(
        sync2={"roles": ["client"], "listeners": [{"port": 8102, "resources": ["client"]}]}))
    text = nginx(config, "127.0.0.1:8080")
    assert "listen 127.0.0.1:8080;" in text
    assert "server 127.0.0.1:8101;  # sync1" in text and "server 127.0.0.1:8102;  # sync2" in text
    assert "server 127.0.0.1:8008;" in text
    assert "hash $ktchat_session consistent;" in text
    text = haproxy(config, "127.0.0.1:8080")
    assert "server sync1_0 127.0.0.1:8101" in text and "server sync2_1 127.0.0.1:8102" in text
    assert "default_backend ktchat_main" in text


def test_what_a_media_worker_serves_itself(tmp_path: Path) -> None:
    from homeserver.replication.relay import WorkerRoutes

    routes = WorkerRoutes(("media",), "example.test")
    assert routes.served_here("POST", "/_matrix/media/v3/upload")
    assert routes.served_here("POST", "/_matrix/media/v1/create")
    assert routes.served_here("PUT", "/_matrix/media/v3/upload/example.test/abc")
    assert routes.served_here("GET", "/_matrix/client/v1/media/download/example.test/abc")
    assert routes.served_here("HEAD", "/_matrix/client/v1/media/thumbnail/example.test/abc")
    assert routes.served_here("GET", "/_matrix/client/v1/media/config")
    # Other servers' media, previews and syncs: the main process (or a client worker).
    assert not routes.served_here("GET", "/_matrix/client/v1/media/download/other.test/abc")
    assert not routes.served_here("GET", "/_matrix/client/v1/media/download/example.testx/a")
    assert not routes.served_here("GET", "/_matrix/client/v1/media/preview_url")
    assert not routes.served_here("GET", "/_matrix/client/v3/sync")
    config = _good(tmp_path, workers=_workers(
        pics={"roles": ["media"], "listeners": [{"port": 8104, "resources": ["media"]}]}))
    assert "server 127.0.0.1:8104;  # pics" in nginx(config, "127.0.0.1:8080")
    assert "server pics_0 127.0.0.1:8104" in haproxy(config, "127.0.0.1:8080")


def test_what_a_federation_inbound_worker_serves_itself(tmp_path: Path) -> None:
    from homeserver.replication.relay import WorkerRoutes

    routes = WorkerRoutes(("federation_inbound",), "example.test")
    fed = "/_matrix/federation"
    # Transactions (checked here, applied by the persister) and reads.
    assert routes.served_here("PUT", f"{fed}/v1/send/txn1")
    for path in ("/v1/event/$e", "/v1/state/!r:x", "/v1/state_ids/!r:x", "/v1/backfill/!r:x",
                 "/v1/make_join/!r:x/@a:y", "/v1/query/profile", "/v1/user/devices/@a:x",
                 "/v1/publicRooms", "/v1/hierarchy/!r:x", "/v1/version"):
        assert routes.served_here("GET", fed + path), path
    assert routes.served_here("POST", f"{fed}/v1/get_missing_events/!r:x")
    assert routes.served_here("POST", f"{fed}/v1/user/keys/query")
    assert routes.served_here("GET", "/_matrix/key/v2/server")
    assert routes.served_here("POST", "/_matrix/key/v2/query")
    # What writes otherwise: relayed to the main process.
    for path in ("/v2/send_join/!r:x/$e", "/v1/send_join/!r:x/$e", "/v2/send_leave/!r:x/$e",
                 "/v1/send_knock/!r:x/$e", "/v2/invite/!r:x/$e",
                 "/v1/exchange_third_party_invite/!r:x"):
        assert not routes.served_here("PUT", fed + path), path
    assert not routes.served_here("POST", f"{fed}/v1/user/keys/claim")
    # Nothing of the client API.
    assert not routes.served_here("GET", "/_matrix/client/v3/sync")
    config = _good(tmp_path, listeners=[{"port": 8008, "resources": ["client"]},
                                        {"port": 8449, "resources": ["federation"]},
                                        {"port": 9093, "resources": ["replication"]}],
                   workers=_workers(fed={"roles": ["federation_inbound"], "listeners": [
                       {"port": 8448, "resources": ["federation"]}]}))
    assert config.main_federation_url() == "http://127.0.0.1:8449"
    text = nginx(config, "127.0.0.1:8080")
    assert "server 127.0.0.1:8448;  # fed" in text
    assert "location ~ ^/_matrix/(?:federation|key)/ {" in text
    assert "use_backend ktchat_federation if ktchat_federation" in haproxy(config, "*:8080")
    # Its federation listener needs the role; the relays need the main process's listener.
    problems = _problems(tmp_path, workers=_workers(
        fed={"roles": ["federation_inbound"], "listeners": [
            {"port": 8448, "resources": ["federation"]}]},
        nofed={"roles": ["client"], "listeners": [
            {"port": 8450, "resources": ["federation"]}]}))
    assert any(p.startswith("workers.nofed.listeners[0].resources: only a worker with the "
                            "federation_inbound role") for p in problems)
    assert any("federation_inbound workers need a main-process listener with the federation"
               in p for p in problems)


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_the_printed_proxy_configs_are_valid(kind: str, tmp_path: Path) -> None:
    """Every kind of worker at once, checked by the proxy itself (``nginx -t``,
    ``haproxy -c``)."""
    binary = proxy_binary(kind)
    config = _good(tmp_path, listeners=[{"port": 8008, "resources": ["client"]},
                                        {"port": 8449, "resources": ["federation"]},
                                        {"port": 9093, "resources": ["replication"]}],
                   workers=_workers(
                       pics={"roles": ["media"], "listeners": [{"port": 8104,
                                                                "resources": ["media"]}]},
                       fed={"roles": ["federation_inbound"], "listeners": [
                           {"port": 8448, "tls": True, "resources": ["federation"]}]}),
                   tls={"certificate_path": str(tmp_path / "c.pem"),
                        "private_key_path": str(tmp_path / "k.pem")})
    if kind == "nginx":
        (tmp_path / "routes.conf").write_text(nginx(config, "127.0.0.1:8080"))
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  include {tmp_path}/routes.conf;\n}}\n")
        command = [binary, "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    else:
        (tmp_path / "haproxy.cfg").write_text(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 5s\n"
            + haproxy(config, "127.0.0.1:8080"))
        command = [binary, "-c", "-q", "-f", str(tmp_path / "haproxy.cfg")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_refuses_an_unknown_worker(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    import yaml

    from homeserver.cli import main

    _good(tmp_path)  # (writes the signing key)
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump({
        "server_name": "example.test", "signing_key_path": str(tmp_path / "signing.key"),
        "database": {"url": PG}, "redis": {"url": "redis://127.0.0.1:6379/0"},
        "media": {"store_path": str(tmp_path / "media")},
        "listeners": [{"port": 8008, "resources": ["client"]},
                      {"port": 9093, "resources": ["replication"]}],
        "workers": _workers()}))
    assert main(["run", "-c", str(path), "--worker", "sync9"]) == 2
    assert "no worker 'sync9'" in capsys.readouterr().err
