"""Composition root: one aiohttp application per listener, sharing one ``Services``.

The only module (with ``cli``) that imports both ``client_api`` and ``federation``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from client_api import add_client_routes, add_media_routes
from core.clock import SystemClock
from core.crypto.signing_keys import load_signing_key
from federation import (
    Federation,
    Served,
    add_federation_routes,
    apply_relayed,
    build_federation,
    build_outbound,
    build_sender_worker,
)
from federation.inbound.forwarded import TransactionForwarder, add_forwarded_transactions_route
from federation.inbound.transaction import InboundEdus
from federation.sender.queue import FederationSender, Shard
from federation.transport.client import FederationClient
from federation.transport.push_gateway import PushGatewayClient
from federation.transport.url_fetch import UrlFetchClient
from homeserver.appkeys import SERVICES
from homeserver.config import HomeserverConfig
from homeserver.config_workers import ListenerConfig, WorkerConfig
from homeserver.http.access_log import AccessLogger
from homeserver.http.client_ip import x_forwarded_middleware
from homeserver.http.disconnect import disconnect_middleware
from homeserver.http.middleware import add_cors_headers, cors_middleware, error_middleware
from homeserver.http.nul import reject_nul_middleware
from homeserver.http.request_body import request_body_middleware
from homeserver.http.request_stats import request_stats_middleware
from homeserver.metrics import ServerMetrics, add_metrics_routes
from homeserver.replication.bus import RedisBus
from homeserver.replication.persister import PersisterClient, add_persister_routes
from homeserver.replication.relay import Relay, WorkerRoutes
from homeserver.replication.secret import replication_secret
from homeserver.replication.worker import follow_writer, serve_workers
from homeserver.services.container import Services, build_services, open_database
from homeserver.services.ports import ALONE
from homeserver.services.server_visibility import ServerVisibility
from roomserver.server import RoomServer

logger = logging.getLogger(__name__)

ACCESS_LOGGER = "ktchat.access"
# In-flight requests get this long to finish after SIGTERM.
SHUTDOWN_GRACE_S = 10.0
# After answering a request whose body it did not read (refused as too large or too slow),
# the server reads and drops what keeps coming for at most this long before it closes the
# connection, so the client can read the answer rather than meet a reset (aiohttp: 10 s).
LINGERING_S = 1.0
# Connections the kernel holds for us while the loop is busy (aiohttp's default is 128: a
# burst of new connections beyond it was reset under load).
LISTEN_BACKLOG = 1024


async def health(_request: web.Request) -> web.Response:
    """GET /health on every listener (as Synapse): the process is up and serving."""
    return web.Response(text="OK")


def build_app(services: Services, resources: Iterable[str] = ("client", "federation"),
              federation: Federation | None = None, *, x_forwarded: bool = False,
              metrics: ServerMetrics | None = None, relay: Relay | None = None
              ) -> web.Application:
    """The web application serving ``resources`` (client, federation, media, metrics,
    replication); ``x_forwarded``: it is behind a reverse proxy whose X-Forwarded-For it
    trusts; ``metrics``: requests are counted there (and served, with the metrics resource);
    ``relay``: a worker's, which passes what it does not serve to the main process."""
    http = services.config.http
    app = web.Application(
        middlewares=[disconnect_middleware(logging.getLogger(ACCESS_LOGGER)), cors_middleware,
                     error_middleware, reject_nul_middleware,
                     request_body_middleware(
                         max_bytes=http.max_request_body_bytes,
                         timeout_s=http.request_body_timeout_ms / 1000,
                         min_bytes_per_second=http.request_body_min_bytes_per_second)],
        client_max_size=http.max_request_body_bytes,
        handler_args={"max_field_size": 16384},
    )
    app.on_response_prepare.append(add_cors_headers)
    if x_forwarded:
        # First of all: every other middleware and the access log see the forwarded address.
        app.middlewares.insert(0, x_forwarded_middleware)
    if relay is not None:
        # Before the body limits and error handling: the main process applies its own.
        app.middlewares.insert(0, relay.middleware)
    if metrics is not None:
        # Outermost: every answer is counted with the status the client gets.
        app.middlewares.insert(0, request_stats_middleware(metrics.requests))
    app[SERVICES] = services
    resources = set(resources)
    if "replication" in resources:
        secret = replication_secret(services.signing_key, services.config.server_name)
        add_persister_routes(app, services.roomserver, secret)
        if federation is not None:
            add_forwarded_transactions_route(app, federation.transactions, secret)
    app.router.add_get("/health", health)
    if "metrics" in resources and metrics is not None:
        add_metrics_routes(app, metrics)
    if "client" in resources:
        add_client_routes(app)
    if "client" in resources or "media" in resources:
        add_media_routes(app)
    if "federation" in resources and services.config.federation.enabled:
        add_federation_routes(app, federation)
    return app


def _ssl_context(config: HomeserverConfig) -> ssl.SSLContext:
    assert config.tls.certificate_path and config.tls.private_key_path
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls.certificate_path, config.tls.private_key_path)
    return context


async def _start_listener(services: Services, listener: ListenerConfig,
                          federation: Federation | None, metrics: ServerMetrics | None,
                          relay: Relay | None = None) -> web.AppRunner:
    runner = web.AppRunner(build_app(services, listener.resources, federation,
                                     x_forwarded=listener.x_forwarded, metrics=metrics,
                                     relay=relay if {"client", "media", "federation"} &
                                     set(listener.resources) else None),
                           access_log_class=AccessLogger,
                           access_log=logging.getLogger(ACCESS_LOGGER),
                           shutdown_timeout=SHUTDOWN_GRACE_S,
                           # A client that leaves ends its waits at once (see disconnect.py).
                           handler_cancellation=True,
                           # aiohttp starts this timer when a connection opens and after each
                           # answer, and does not restart it as bytes come in: a connection
                           # is closed when it has been idle this long, and also when it has
                           # taken this long to send a request's head (a slowloris).
                           keepalive_timeout=services.config.http.idle_timeout_ms / 1000,
                           lingering_time=LINGERING_S)
    await runner.setup()
    host = None if listener.bind == "*" else listener.bind
    site = web.TCPSite(runner, host, listener.port,
                       ssl_context=_ssl_context(services.config) if listener.tls else None,
                       reuse_address=True, backlog=LISTEN_BACKLOG)
    await site.start()
    scheme = "https" if listener.tls else "http"
    logger.info("Listening on %s://%s:%d (%s)", scheme, listener.bind, listener.port,
                ", ".join(listener.resources))
    return runner


def build_homeserver(config: HomeserverConfig, bus: RedisBus | None = None
                     ) -> tuple[Services, Federation | None]:
    """The composition root: storage and the roomserver, federation's clients, the
    services (given what federation offers them), then the federation API (given the services
    it answers from). Every part gets what it uses through its constructor. ``bus``: the
    workers hear of this process's writes there."""
    # A push worker delivers what is queued here.
    pushed_elsewhere = any("push" in worker.roles for worker in config.workers)
    push_gateway = None if pushed_elsewhere else PushGatewayClient(config.federation)
    url_fetcher = UrlFetchClient(config.federation) if config.media.url_preview.enabled else None
    replication = bus if bus is not None else ALONE
    if not config.federation.enabled:
        return build_services(config, push_gateway=push_gateway, url_fetcher=url_fetcher,
                              replication=replication, pushed_elsewhere=pushed_elsewhere), None
    db = open_database(config)
    clock = SystemClock()
    signing_key = load_signing_key(config.signing_key_path)
    roomserver = RoomServer(db, clock, config.server_name, signing_key)
    sender_worker = bus if any("federation_sender" in w.roles for w in config.workers) \
        else None
    outbound = build_outbound(config, db, clock, signing_key, roomserver, sender_worker)
    roomserver.add_commit_listener(outbound.sender)
    services = build_services(config, clock=clock, db=db, signing_key=signing_key,
                              roomserver=roomserver, remote=outbound.ports(),
                              push_gateway=push_gateway, url_fetcher=url_fetcher,
                              replication=replication, pushed_elsewhere=pushed_elsewhere)
    return services, build_federation(config, db, clock, signing_key, roomserver, outbound,
                                      _served(services, roomserver))


def _served(services: Services, roomserver: RoomServer) -> Served:
    """The local services the server-server API answers from."""
    return Served(services.profiles, services.rooms, services.directory, services.devices,
                  services.membership, InboundEdus(services.typing, services.receipts,
                                                   services.presence, services.to_device,
                                                   services.keys),
                  ServerVisibility(roomserver), services.keys, services.media,
                  spaces=services.spaces)


@dataclass
class WorkerParts:
    services: Services
    persister: PersisterClient
    # A federation_sender worker's.
    federation_client: FederationClient | None = None
    sender: FederationSender | None = None
    # A federation_inbound worker's.
    federation: Federation | None = None
    forwarder: TransactionForwarder | None = None

    async def start(self) -> None:
        await self.services.start()
        if self.federation_client is not None and self.sender is not None:
            await self.federation_client.start()
            await self.sender.start()
        if self.federation is not None:
            await self.federation.start()

    async def stop(self) -> None:
        if self.federation_client is not None and self.sender is not None:
            await self.sender.stop()
            await self.federation_client.close()
        if self.federation is not None:
            await self.federation.stop()
        if self.forwarder is not None:
            await self.forwarder.close()
        await self.persister.close()
        await self.services.stop()


def build_worker(config: HomeserverConfig, worker: WorkerConfig, bus: RedisBus
                 ) -> WorkerParts:
    """A worker's services: rooms read here and written at the persister (the main
    process's replication listener), every other stream mirrored from the bus; the
    federation sender when it has that role (the rest of federation is the main
    process's)."""
    persister_url = config.replication_url()
    assert persister_url is not None  # (the config reader requires it with workers)
    db = open_database(config)
    clock = SystemClock()
    signing_key = load_signing_key(config.signing_key_path)
    roomserver = RoomServer(db, clock, config.server_name, signing_key)
    secret = replication_secret(signing_key, config.server_name)
    persister = PersisterClient(roomserver, persister_url, secret)
    services = build_services(config, clock=clock, db=db, signing_key=signing_key,
                              roomserver=roomserver, replication=bus, writes=persister,
                              push_gateway=PushGatewayClient(config.federation)
                              if "push" in worker.roles else None)
    parts = WorkerParts(services, persister)
    if "federation_sender" in worker.roles:
        client, sender = build_sender_worker(
            config, db, clock, signing_key, roomserver,
            Shard(*config.shard_of(worker, "federation_sender")))
        parts.federation_client, parts.sender = client, sender
        bus.subscribe("federation_wake", lambda names, _: sender.wake(names))
        bus.subscribe("federation_peer_up", lambda origin, _: sender.peer_is_up(origin))
        bus.subscribe("federation_edu", lambda edu, _: apply_relayed(sender, *edu))
    if "federation_inbound" in worker.roles:
        parts.forwarder = TransactionForwarder(persister_url, secret)
        parts.federation = build_federation(
            config, db, clock, signing_key, roomserver,
            build_outbound(config, db, clock, signing_key, roomserver, bus),
            _served(services, roomserver), parts.forwarder)
    follow_writer(bus, services, [parts.sender] if parts.sender is not None else [])
    return parts


def build_metrics(config: HomeserverConfig, services: Services,
                  federation: Federation | None, bus: RedisBus | None = None
                  ) -> ServerMetrics | None:
    """The metrics, when a listener serves them (otherwise nothing is counted)."""
    if not any("metrics" in listener.resources for listener in config.listeners):
        return None
    if federation is None:
        return ServerMetrics(services, replication=bus)
    return ServerMetrics(services, sender=federation.sender, inbound=federation.transactions,
                         replication=bus)


def _freeze_start_up_objects() -> None:
    """Leave what start-up built (modules, routes, configuration, the services: about 110,000
    objects) out of the garbage collector's full collections, which otherwise walk it all on
    every pass: a pause of tens of milliseconds, a hundred on a busy machine, in the middle of
    whatever request was running. Those objects live as long as the process anyway; what is
    created later is collected as before."""
    gc.collect()
    gc.freeze()


async def serve(config: HomeserverConfig, worker_name: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then finish in-flight requests and close the database.
    ``worker_name``: run that worker of the config's ``workers`` (else the main process)."""
    if worker_name is not None:
        worker = config.worker(worker_name)
        assert worker is not None  # (the command line checked)
        await _serve_worker(config, worker)
        return
    if config.registration.enabled and not config.registration.require_token:
        # (Synapse refuses to start so; we say it loudly.)
        logger.warning("Open registration: anyone who can reach %s can create accounts on it "
                       "(registration.enabled is true, registration.require_token false). "
                       "Set require_token: true and hand out tokens (admin API), or turn "
                       "registration off.", config.public_baseurl)
    bus = RedisBus(config.redis.url, config.server_name, "main") \
        if config.workers and config.redis.url else None
    services, federation = build_homeserver(config, bus)
    if bus is not None:
        serve_workers(bus, services)
        if federation is not None and not any("federation_sender" in w.roles
                                              for w in config.workers):
            # (a federation_inbound worker heard from a server we were backing off from)
            sender = federation.sender
            bus.subscribe("federation_peer_up", lambda origin, _: sender.peer_is_up(origin))
        await bus.start()
    await services.start()
    if bus is not None:
        bus.publish("writer_started", None)
    if federation is not None:
        await federation.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    metrics = build_metrics(config, services, federation, bus)
    _freeze_start_up_objects()  # before the first request: a full collection takes a while
    try:
        for listener in config.listeners:
            runners.append(await _start_listener(services, listener, federation, metrics))
        logger.info("KT-Chat %s is serving %s", config.server_name, config.public_baseurl)
        await stop.wait()
        logger.info("Shutting down")
        services.notifier.close()  # long polls answer now, not at their timeout
    finally:
        for runner in runners:
            await runner.cleanup()
        if federation is not None:
            await federation.stop()
        await services.stop()
        if bus is not None:
            await bus.stop()
        logger.info("Stopped")


async def _serve_worker(config: HomeserverConfig, worker: WorkerConfig) -> None:
    assert config.redis.url is not None
    main_url = config.main_client_url()
    assert main_url is not None
    bus = RedisBus(config.redis.url, config.server_name, worker.name)
    parts = build_worker(config, worker, bus)
    services = parts.services
    relay = Relay(main_url, WorkerRoutes(worker.roles, config.server_name),
                  config.main_federation_url())
    # Subscribed before the positions are read: nothing committed in between is missed.
    await bus.start()
    await parts.start()
    bus.publish("worker_started", worker.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    metrics = ServerMetrics(
        services, sender=parts.sender,
        inbound=parts.federation.transactions if parts.federation is not None else None,
        replication=bus, relayed=lambda: relay.relayed,
    ) if any("metrics" in lst.resources for lst in worker.listeners) else None
    _freeze_start_up_objects()
    try:
        for listener in worker.listeners:
            runners.append(await _start_listener(services, listener, parts.federation,
                                                 metrics, relay))
        logger.info("KT-Chat %s worker %s is serving (%s)", config.server_name, worker.name,
                    ", ".join(worker.roles))
        await stop.wait()
        logger.info("Shutting down")
        services.notifier.close()
    finally:
        for runner in runners:
            await runner.cleanup()
        await relay.close()
        await parts.stop()
        await bus.stop()
        logger.info("Stopped")
