"""The ``listeners`` and ``workers`` config keys: where each process listens and what it
serves, and which worker processes the server has (``ktchat run --worker NAME``)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from homeserver.config_reader import ConfigReader

RESOURCES = ("client", "federation", "media", "metrics", "replication")
# What a worker process can be given (``workers.NAME.roles``). ``client``: the client API's
# syncs (long-poll, SSE, sliding sync) and event sends, their writes reaching the event
# persister over the replication listener; every other client request it relays to the main
# process. ``media``: uploads, and this server's media (downloads, thumbnails, in the same
# media store: a directory every process of the server sees). ``push``: delivers the queued
# pushes to the push gateways (one such worker). ``federation_sender``: sends what the main
# process queues for other servers (sharded by destination). ``federation_inbound``: the
# server-server API's reads and transactions (checked there, stored by the persister). The
# main process keeps every other role.
WORKER_ROLES = ("client", "media", "push", "federation_sender", "federation_inbound")
# Roles of the design (DESIGN.md, issue #19) not built yet: named so the error says so.
_PLANNED_ROLES = ("persister", "background")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    port: int
    bind: str = "127.0.0.1"
    tls: bool = False
    resources: tuple[str, ...] = ("client",)
    # Behind a reverse proxy: trust its X-Forwarded-For for the client's address (Synapse's
    # x_forwarded); only on this listener.
    x_forwarded: bool = False

    @property
    def url(self) -> str:
        """Where it listens: ``http://127.0.0.1:8008``, ``https://[::1]:8448``."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """One worker process of ``workers``: ``ktchat run --worker NAME``."""

    name: str
    roles: tuple[str, ...]
    listeners: tuple[ListenerConfig, ...]

    def client_urls(self) -> list[str]:
        return [lst.url for lst in self.listeners if "client" in lst.resources]


def parse_listeners(reader: ConfigReader) -> tuple[ListenerConfig, ...]:
    listeners = []
    for sub in reader.items("listeners"):
        port = sub.get("port", int, 0)
        if not 0 < port < 65536:
            sub.problem("port", "must be a port number between 1 and 65535")
        bind = sub.get("bind", str, "127.0.0.1")
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            if bind not in ("localhost", "*"):
                sub.problem("bind", f"not an IP address: {bind!r}")
        tls = sub.get("tls", bool, False)
        resources = sub.get("resources", list, ["client"])
        for res in resources:
            if res not in RESOURCES:
                known_resources = ", ".join(RESOURCES)
                sub.problem("resources", f"unknown resource {res!r} (known: {known_resources})")
        x_forwarded = sub.get("x_forwarded", bool, False)
        listeners.append(ListenerConfig(port, bind, tls, tuple(str(r) for r in resources),
                                        x_forwarded))
    return tuple(listeners)


def parse_workers(reader: ConfigReader, listeners: tuple[ListenerConfig, ...]
             ) -> tuple[WorkerConfig, ...]:
    """``workers``: name -> ``{roles: [...], listeners: [...]}``."""
    workers = []
    ports = {lst.port: "listeners" for lst in listeners}
    for name in reader.keys():
        sub = reader.section(str(name))
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            reader.problem(str(name), "a worker's name is letters, digits, '_', '.' or '-'")
            continue
        roles = sub.get("roles", list, [])
        if not roles:
            sub.problem("roles", f"needs at least one role (known: {', '.join(WORKER_ROLES)})")
        for role in roles:
            if role in _PLANNED_ROLES:
                sub.problem("roles", f"role {role!r} cannot run in a worker yet (the main "
                                     "process has it); available: " + ", ".join(WORKER_ROLES))
            elif role not in WORKER_ROLES:
                sub.problem("roles", f"unknown role {role!r} (known: {', '.join(WORKER_ROLES)})")
        worker_listeners = parse_listeners(sub)
        if not worker_listeners:
            sub.problem("listeners", "needs at least one listener")
        for i, lst in enumerate(worker_listeners):
            if lst.port in ports:
                sub.problem(f"listeners[{i}].port",
                            f"port {lst.port} is also used by {ports[lst.port]}")
            ports[lst.port] = f"workers.{name}"
            if "federation" in lst.resources and "federation_inbound" not in roles:
                sub.problem(f"listeners[{i}].resources",
                            "only a worker with the federation_inbound role serves federation")
        workers.append(WorkerConfig(name, tuple(str(r) for r in roles), worker_listeners))
    for role in ("push",):
        having = [w.name for w in workers if role in w.roles]
        if len(having) > 1:
            reader.problem(having[1], f"only one worker may have the {role} role (each "
                                      f"message must be sent once; {having[0]} has it)")
    return tuple(workers)


def check_workers(r: ConfigReader, workers: tuple[WorkerConfig, ...],
                  listeners: tuple[ListenerConfig, ...], database_url: str,
                  redis_url: str | None) -> None:
    """What workers need of the rest of the config."""
    if workers:
        if database_url.startswith("sqlite"):
            r.problem("workers", "workers need PostgreSQL (database.url postgresql+asyncpg://"
                                 "...): SQLite has one writer per file")
        if redis_url is None:
            r.problem("workers", "workers need Redis between the processes (redis.url)")
        if not any("replication" in lst.resources for lst in listeners):
            r.problem("workers", "workers need a main-process listener with the "
                                 "replication resource (their internal calls go there)")
        if not any("client" in lst.resources for lst in listeners):
            r.problem("workers", "workers need a main-process listener with the client "
                                 "resource (they relay to it what they do not serve)")
        if any("federation_inbound" in w.roles for w in workers) and not any(
                "federation" in lst.resources for lst in listeners):
            r.problem("workers", "federation_inbound workers need a main-process listener "
                                 "with the federation resource (they relay joins, invites "
                                 "and key claims to it)")

