"""Prometheus metrics: what a listener with the ``metrics`` resource serves.

The parts count as they work (plain integers and :class:`core.stats.Histogram`, no locks, no
per-event labels); this collector reads them when Prometheus scrapes, together with gauges
computed from in-memory state (sync waiters, the federation queues, the database pools).
prometheus-client's process, platform and garbage-collector collectors add CPU, memory and
file descriptors. One registry per server, so several servers can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from core.stats import Histogram, HitCounter
from homeserver.http.request_stats import RequestStats
from homeserver.services.container import Services

PATHS = ("/_synapse/metrics", "/metrics")


class FederationSenderStats(Protocol):
    def queue_stats(self) -> list[tuple[str, int, bool, int | None]]: ...


class InboundTransactionStats(Protocol):
    @property
    def outcomes(self) -> Mapping[str, int]: ...


class ReplicationStats(Protocol):
    """The bus between the processes of one server (``homeserver.replication.bus``)."""

    published: int
    received: int
    resubscribes: int

    @property
    def backlog(self) -> int: ...


class ServerMetrics:
    """The registry of one server, and the request counts its listeners add to."""

    def __init__(self, services: Services, *,
                 sender: FederationSenderStats | None = None,
                 inbound: InboundTransactionStats | None = None,
                 replication: ReplicationStats | None = None,
                 relayed: Callable[[], int] | None = None) -> None:
        """``replication``: the bus, with workers; ``relayed``: a worker's count of the
        requests it passed to the main process."""
        self.requests = RequestStats()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(KtchatCollector(services, self.requests, sender, inbound,
                                               replication, relayed))
        # (each registers itself)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def add_metrics_routes(app: web.Application, metrics: ServerMetrics) -> None:
    async def get_metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    for path in PATHS:
        app.router.add_get(path, get_metrics)


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


class KtchatCollector(Collector):
    def __init__(self, services: Services, requests: RequestStats,
                 sender: FederationSenderStats | None,
                 inbound: InboundTransactionStats | None,
                 replication: ReplicationStats | None = None,
                 relayed: Callable[[], int] | None = None) -> None:
        self._services = services
        self._requests = requests
        self._sender = sender
        self._inbound = inbound
        self._replication = replication
        self._relayed = relayed

    def collect(self) -> Iterator[Metric]:
        yield from self._http()
        yield from self._write_path()
        yield from self._sync()
        yield from self._caches()
        yield from self._database()
        yield from self._federation()
        yield from self._workers()

    def _http(self) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "ktchat_http_request_duration_seconds",
            "HTTP requests by route pattern, method and status, and how long they took "
            "(_count: requests)", labels=["route", "method", "status"])
        for (route, method, status), histogram in list(self._requests.requests.items()):
            _histogram(duration, [route, method, str(status)], histogram)
        yield duration

    def _write_path(self) -> Iterator[Metric]:
        stats = self._services.roomserver.write_stats()
        yield CounterMetricFamily("ktchat_events_persisted", "Events committed by the roomserver",
                                  value=stats.events_persisted)
        batches = HistogramMetricFamily("ktchat_persister_batch_size",
                                        "Events per roomserver commit")
        _histogram(batches, [], stats.batch_sizes)
        yield batches
        commits = HistogramMetricFamily("ktchat_persister_commit_duration_seconds",
                                        "Seconds per roomserver commit (one transaction)")
        _histogram(commits, [], stats.commit_seconds)
        yield commits

    def _sync(self) -> Iterator[Metric]:
        notifier = self._services.notifier
        yield GaugeMetricFamily("ktchat_sync_waiters",
                                "Requests waiting for something new (long polls, SSE streams)",
                                value=notifier.waiting)
        yield CounterMetricFamily("ktchat_sync_wakeups", "Waiters woken by a change",
                                  value=notifier.wakeups)
        yield GaugeMetricFamily("ktchat_sse_streams_open", "Server-sent-events sync streams open",
                                value=notifier.streams_open)

    def _caches(self) -> Iterator[Metric]:
        caches: dict[str, HitCounter] = {
            "token": self._services.auth.cache_stats,
            "membership": self._services.members.cache_stats,
            "event": self._services.roomserver.write_stats().event_cache,
        }
        hits = CounterMetricFamily("ktchat_cache_hits", "Lookups answered from the cache",
                                   labels=["cache"])
        misses = CounterMetricFamily("ktchat_cache_misses", "Lookups the cache could not answer",
                                     labels=["cache"])
        for name, counter in caches.items():
            hits.add_metric([name], counter.hits)
            misses.add_metric([name], counter.misses)
        yield hits
        yield misses

    def _database(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("ktchat_db_pool_size", "Connections the pool keeps",
                                 labels=["pool"])
        in_use = GaugeMetricFamily("ktchat_db_pool_in_use", "Connections checked out now",
                                   labels=["pool"])
        for name, pool_size, checked_out in self._services.db.engine.pool_stats():
            size.add_metric([name], pool_size)
            in_use.add_metric([name], checked_out)
        yield size
        yield in_use

    def _federation(self) -> Iterator[Metric]:
        if self._inbound is not None:
            outcomes = CounterMetricFamily(
                "ktchat_federation_inbound_transactions",
                "Transactions received from other servers, by outcome", labels=["outcome"])
            for outcome, count in self._inbound.outcomes.items():
                outcomes.add_metric([outcome], count)
            yield outcomes
        if self._sender is None:
            return
        stats = self._sender.queue_stats()
        yield GaugeMetricFamily(
            "ktchat_federation_outbound_queue_depth",
            "PDUs and EDUs held in memory waiting to be sent, all destinations",
            value=sum(held for _, held, _, _ in stats))
        yield GaugeMetricFamily(
            "ktchat_federation_destinations_pending",
            "Destinations whose durable queue may hold PDUs or EDUs still to send",
            value=sum(1 for _, _, durable, _ in stats if durable))
        backoff = GaugeMetricFamily(
            "ktchat_federation_destination_backoff_seconds",
            "Retry interval of each destination backing off (unreachable)",
            labels=["destination"])
        for name, _, _, interval_ms in stats:
            if interval_ms is not None:
                backoff.add_metric([name], interval_ms / 1000)
        yield backoff

    def _workers(self) -> Iterator[Metric]:
        bus = self._replication
        if bus is not None:
            yield CounterMetricFamily("ktchat_replication_published",
                                      "Messages this process published to the others",
                                      value=bus.published)
            yield CounterMetricFamily("ktchat_replication_received",
                                      "Messages this process received from the others",
                                      value=bus.received)
            yield GaugeMetricFamily("ktchat_replication_backlog",
                                    "Messages waiting to be published (Redis slow or away)",
                                    value=bus.backlog)
            yield CounterMetricFamily(
                "ktchat_replication_resubscribes",
                "Times the subscription was lost and made again (what was published "
                "meanwhile was missed: the process forgot what it knew of changes)",
                value=bus.resubscribes)
        if self._relayed is not None:
            yield CounterMetricFamily("ktchat_worker_relayed_requests",
                                      "Requests this worker passed on to the main process",
                                      value=self._relayed())
