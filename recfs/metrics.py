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

from recfs.asgi import serve_on

log = logging.getLogger("recfs.metrics")

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

    def watch(self, sources: Any) -> None:
        """Publish the counters of a StatusSources at every scrape."""
        self.registry.register(_StateCollector(sources))


class _StateCollector(Collector):
    def __init__(self, sources: Any):
        self.sources = sources

    def collect(self):
        s = self.sources
        counters = s.ingest.counters
        reports = CounterMetricFamily("recfs_reports", "Reports pushed by the PBX",
                                      labels=["outcome"])
        for outcome in ("added", "duplicates", "unrecorded", "ignored", "rejected"):
            reports.add_metric([outcome], getattr(counters, outcome, 0))
        yield reports
        yield CounterMetricFamily("recfs_reports_received", "Reports received",
                                  value=counters.received)
        yield CounterMetricFamily("recfs_pbx_logins", "Successful PBX logins", value=s.client.logins)
        yield CounterMetricFamily("recfs_pbx_handshakes", "get_random handshakes for recordings",
                                  value=getattr(s.client, "handshakes", 0))
        yield GaugeMetricFamily("recfs_pbx_logged_in", "1 while a PBX session is live",
                                value=1 if s.client.logged_in else 0)
        content = s.content
        downloads = CounterMetricFamily("recfs_downloads", "Recording downloads", labels=["result"])
        downloads.add_metric(["completed"], content.downloads_completed)
        downloads.add_metric(["failed"], content.downloads_failed)
        yield downloads
        yield CounterMetricFamily("recfs_download_bytes", "Bytes received from the PBX",
                                  value=getattr(content, "bytes_downloaded", 0))
        yield GaugeMetricFamily("recfs_downloads_running", "Transfers at the PBX now",
                                value=content.slots.in_use)
        yield GaugeMetricFamily("recfs_downloads_queued", "Transfers waiting for a slot",
                                value=content.slots.queued)
        yield CounterMetricFamily("recfs_cache_hits", "Opens served from the cache",
                                  value=getattr(content, "cache_hits", 0))
        yield CounterMetricFamily("recfs_cache_misses", "Opens that needed the PBX",
                                  value=getattr(content, "cache_misses", 0))
        cache = content.cache
        yield CounterMetricFamily("recfs_cache_evictions", "Files evicted from the cache",
                                  value=getattr(cache, "evictions", 0))
        yield GaugeMetricFamily("recfs_cache_bytes", "Bytes of complete files in the cache",
                                value=getattr(cache, "complete_bytes", 0))
        yield GaugeMetricFamily("recfs_cache_files", "Complete files in the cache",
                                value=getattr(cache, "complete_files", 0))
        if getattr(cache, "max_bytes", None):
            yield GaugeMetricFamily("recfs_cache_limit_bytes", "The cache's size cap",
                                    value=cache.max_bytes)
        yield GaugeMetricFamily("recfs_recordings", "Recordings in the catalog",
                                value=s.catalog.count())


async def serve_metrics(metrics: Metrics, sock: socket.socket, stop: trio.Event, *,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    host, port = sock.getsockname()[:2]
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    await serve_on(make_asgi_app(metrics.registry), sock, stop, "recfs.metrics.server",
                   task_status=task_status)
