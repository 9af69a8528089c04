"""Prometheus metrics (`-o metrics=HOST:PORT`), with the official client library.

Counts recfs keeps anyway (reports, logins, downloads, cache) are read at scrape
time by a collector, so the code that counts does not need to know about
Prometheus; only the two latency histograms are observed as things happen. The
endpoint is served by hypercorn in the mount's own trio nursery.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from recfs.http.asgi import not_http, serve_on

log = logging.getLogger("recfs.service.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10, 30, 60)


class Metrics:
    """One per mount: its own registry, so two mounts in one process never mix."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.read_seconds = Histogram(
            "recfs_read_seconds", "Time to answer one read() from the kernel",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.download_seconds = Histogram(
            "recfs_download_seconds", "Duration of completed downloads (handshake to verified file)",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self._collector: _StateCollector | None = None

    def watch(self, sources: Any, pbx: str = "") -> None:
        """Publish the counters of a StatusSources at every scrape; *pbx* names it in
        a mount of several PBXs (the `pbx` label)."""
        if self._collector is None:
            self._collector = _StateCollector()
            self.registry.register(self._collector)
        self._collector.sources.append((pbx, sources))


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[tuple[str, Any]] = []

    def collect(self):
        labelled = any(name for name, _s in self.sources)
        families: dict[str, Any] = {}

        def add(family_type, name: str, doc: str, value: float, pbx: str, **labels: str) -> None:
            family = families.get(name)
            if family is None:
                names = (["pbx"] if labelled else []) + list(labels)
                family = families[name] = family_type(name, doc, labels=names)
            family.add_metric(([pbx] if labelled else []) + list(labels.values()), value)

        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        for pbx, s in self.sources:
            counters, content = s.ingest.counters, s.content
            cache = content.cache
            add(counter, "recfs_reports_received", "Reports received", counters.received, pbx)
            for outcome in ("added", "duplicates", "unrecorded", "ignored", "rejected"):
                add(counter, "recfs_reports", "Reports pushed by the PBX, by outcome",
                    getattr(counters, outcome, 0), pbx, outcome=outcome)
            add(counter, "recfs_pbx_logins", "Successful PBX logins", s.client.logins, pbx)
            add(counter, "recfs_pbx_handshakes", "get_random handshakes for recordings",
                getattr(s.client, "handshakes", 0), pbx)
            tls = s.client.tls
            if tls is not None:
                add(counter, "recfs_pbx_tls_handshakes", "TLS handshakes with the PBX, by kind",
                    tls.handshakes - tls.resumed, pbx, kind="full")
                add(counter, "recfs_pbx_tls_handshakes", "TLS handshakes with the PBX, by kind",
                    tls.resumed, pbx, kind="resumed")
            add(gauge, "recfs_pbx_logged_in", "1 while a PBX session is live",
                1 if s.client.logged_in else 0, pbx)
            add(counter, "recfs_downloads", "Recording downloads", content.downloads_completed,
                pbx, result="completed")
            add(counter, "recfs_downloads", "Recording downloads", content.downloads_failed,
                pbx, result="failed")
            add(counter, "recfs_download_bytes", "Bytes received from the PBX",
                getattr(content, "bytes_downloaded", 0), pbx)
            add(gauge, "recfs_downloads_running", "Transfers at the PBX now",
                content.slots.in_use, pbx)
            add(gauge, "recfs_downloads_queued", "Transfers waiting for a slot",
                content.slots.queued, pbx)
            add(counter, "recfs_cache_hits", "Opens served from the cache",
                getattr(content, "cache_hits", 0), pbx)
            add(counter, "recfs_cache_misses", "Opens that needed the PBX",
                getattr(content, "cache_misses", 0), pbx)
            add(counter, "recfs_cache_evictions", "Files evicted from the cache",
                getattr(cache, "evictions", 0), pbx)
            add(gauge, "recfs_cache_bytes", "Bytes of complete files in the cache",
                getattr(cache, "complete_bytes", 0), pbx)
            add(gauge, "recfs_cache_files", "Complete files in the cache",
                getattr(cache, "complete_files", 0), pbx)
            add(gauge, "recfs_cache_limit_bytes", "The cache's size cap (0: none)",
                getattr(cache, "max_bytes", None) or 0, pbx)
            add(gauge, "recfs_recordings", "Recordings in the catalog", s.catalog.count(), pbx)
        yield from families.values()


async def serve_metrics(metrics: Metrics, sock: socket.socket, stop: trio.Event, *,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    host, port = sock.getsockname()[:2]
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    prometheus = make_asgi_app(metrics.registry)

    async def app(scope, receive, send) -> None:
        # prometheus_client's app knows no lifespan: hypercorn would warn at every start.
        if not await not_http(scope, receive, send):
            await prometheus(scope, receive, send)

    await serve_on(app, sock, stop, "recfs.service.metrics.server", task_status=task_status)
