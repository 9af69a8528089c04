"""Prometheus metrics (`-o metrics=HOST:PORT`), with the official client library.

Counts recfs keeps anyway (reports, logins, downloads, cache) are read at scrape
time by a collector, so the code that counts does not need to know about
Prometheus; only the two latency histograms are observed as things happen. The
endpoint is served by recfs.http.server (the report receiver's server too) in the
mount's own trio nursery.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recfs.http.server import serve_asgi
from recfs.pbx.events import SocketState
from recfs.pbx.pseries import PSeriesClient
from recfs.service.status import StatusSources
from recfs.service.supervise import Supervisor

log = logging.getLogger("recfs.service.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10, 30, 60)


@dataclass(frozen=True)
class Observers:
    """What the filesystem and the downloads report as it happens: seconds per
    read() answered and per completed download."""

    read: Callable[[float], None]
    download: Callable[[float], None]


class Metrics:
    """One per mount: its own registry, so two mounts in one process never mix."""

    def __init__(self, mount_tasks: Supervisor) -> None:
        """*mount_tasks*: the mount's own background tasks (its HTTP servers)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.read_seconds = Histogram(
            "recfs_read_seconds", "Time to answer one read() from the kernel",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.download_seconds = Histogram(
            "recfs_download_seconds", "Duration of completed downloads (handshake to verified file)",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.observers = Observers(self.read_seconds.observe, self.download_seconds.observe)
        self._collector = _StateCollector(mount_tasks)
        self.registry.register(self._collector)

    def watch(self, sources: StatusSources, pbx: str = "") -> None:
        """Publish the counters of a PBX's StatusSources at every scrape; *pbx* names
        it in a mount of several PBXs (the `pbx` label)."""
        self._collector.sources.append((pbx, sources))


class _StateCollector(Collector):
    def __init__(self, mount_tasks: Supervisor) -> None:
        self.mount_tasks = mount_tasks
        self.sources: list[tuple[str, StatusSources]] = []

    def collect(self) -> Iterator[Metric]:
        labelled = any(name for name, _s in self.sources)
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

        def add(family_type: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str,
                doc: str, value: float, pbx: str, **labels: str) -> None:
            family = families.get(name)
            if family is None:
                names = (["pbx"] if labelled else []) + list(labels)
                family = families[name] = family_type(name, doc, labels=names)
            family.add_metric(([pbx] if labelled else []) + list(labels.values()), value)

        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        for pbx, s in self.sources:
            content, client = s.content, s.client
            stats, cache = content.stats, content.cache
            if s.ingest is not None:
                counters = s.ingest.counters
                add(counter, "recfs_reports_received", "Reports received", counters.received, pbx)
                outcomes = {"added": counters.added, "duplicates": counters.duplicates,
                            "unrecorded": counters.unrecorded, "ignored": counters.ignored,
                            "rejected": counters.rejected, "not_stored": counters.not_stored}
                for outcome, value in outcomes.items():
                    add(counter, "recfs_reports", "Reports pushed by the PBX, by outcome",
                        value, pbx, outcome=outcome)
            add(counter, "recfs_catalog_transactions", "Catalog transactions committed or failed",
                s.writer.stats.transactions - s.writer.stats.failed_commits, pbx,
                result="committed")
            add(counter, "recfs_catalog_transactions", "Catalog transactions committed or failed",
                s.writer.stats.failed_commits, pbx, result="failed")
            add(gauge, "recfs_catalog_available", "1 while the catalog's database answers",
                1 if s.writer.backend.describe()["available"] else 0, pbx)
            if client is not None:
                add(counter, "recfs_pbx_logins", "Successful PBX logins", client.logins, pbx)
                add(counter, "recfs_pbx_handshakes", "get_random handshakes for recordings",
                    client.handshakes, pbx)
                tls = client.tls
                if tls is not None:  # None: a plain-HTTP PBX
                    add(counter, "recfs_pbx_tls_handshakes", "TLS handshakes with the PBX, by kind",
                        tls.handshakes - tls.resumed, pbx, kind="full")
                    add(counter, "recfs_pbx_tls_handshakes", "TLS handshakes with the PBX, by kind",
                        tls.resumed, pbx, kind="resumed")
                add(gauge, "recfs_pbx_logged_in", "1 while a PBX session is live",
                    1 if client.logged_in else 0, pbx)
                series = "p-series" if isinstance(client, PSeriesClient) else "s-series"
                add(gauge, "recfs_pbx_info", "The PBX's API series", 1, pbx, series=series)
                if isinstance(client, PSeriesClient):
                    add(counter, "recfs_pbx_token_refreshes", "P-Series access tokens refreshed",
                        client.refreshes, pbx)
            if s.events is not None:
                socket = s.events.stats
                add(gauge, "recfs_events_socket_open", "1 while the P-Series event socket is open",
                    1 if socket.state is SocketState.OPEN else 0, pbx)
                add(counter, "recfs_events_socket_drops", "Event socket drops", socket.drops, pbx)
                add(counter, "recfs_events_received", "Event frames received", socket.events, pbx)
                add(gauge, "recfs_events_last_timestamp", "UTC time of the last event (0: none)",
                    socket.last_event or 0, pbx)
            add(counter, "recfs_downloads", "Recording downloads", stats.downloads_completed,
                pbx, result="completed")
            add(counter, "recfs_downloads", "Recording downloads", stats.downloads_failed,
                pbx, result="failed")
            add(counter, "recfs_download_bytes", "Bytes received from the PBX",
                stats.bytes_downloaded, pbx)
            add(gauge, "recfs_downloads_running", "Transfers at the PBX now",
                content.slots.in_use, pbx)
            add(gauge, "recfs_downloads_queued", "Transfers waiting for a slot",
                content.slots.queued, pbx)
            add(counter, "recfs_cache_hits", "Opens served from the cache", stats.cache_hits, pbx)
            add(counter, "recfs_cache_misses", "Opens that needed the PBX", stats.cache_misses, pbx)
            add(counter, "recfs_cache_evictions", "Files evicted from the cache",
                cache.evictions, pbx)
            add(gauge, "recfs_cache_bytes", "Bytes of complete files in the cache",
                cache.complete_bytes, pbx)
            add(gauge, "recfs_cache_files", "Complete files in the cache", cache.complete_files,
                pbx)
            add(gauge, "recfs_cache_limit_bytes", "The cache's size cap (0: none)",
                cache.max_bytes or 0, pbx)
            add(gauge, "recfs_recordings", "Recordings in the catalog", s.catalog.count(), pbx)
            if s.archiver is not None:
                backlog = s.catalog.archive_backlog()
                archived = s.archiver.stats
                add(gauge, "recfs_archive_pending", "Recordings waiting for their upload",
                    backlog.pending, pbx)
                add(gauge, "recfs_archive_conflicts", "Recordings whose key holds other bytes",
                    backlog.conflicts, pbx)
                add(gauge, "recfs_recordings_lost", "Recordings the PBX no longer has and the "
                    "archive never got", backlog.lost, pbx)
                add(counter, "recfs_archive_uploads", "Uploads to the archive, by outcome",
                    archived.uploaded, pbx, outcome="stored")
                add(counter, "recfs_archive_uploads", "Uploads to the archive, by outcome",
                    archived.already_there, pbx, outcome="already_there")
                add(counter, "recfs_archive_uploads", "Uploads to the archive, by outcome",
                    archived.failures, pbx, outcome="failed")
                add(counter, "recfs_archive_upload_bytes", "Bytes uploaded to the archive",
                    archived.uploaded_bytes, pbx)
            for task, health in s.tasks.health.items():
                add(counter, "recfs_task_failures", "Failures of background tasks (each one "
                    "restarted)", health.failures, pbx, task=task)
        for task, health in self.mount_tasks.health.items():
            add(counter, "recfs_task_failures", "Failures of background tasks (each one "
                "restarted)", health.failures, "", task=task)
        yield from families.values()


async def serve_metrics(metrics: Metrics, sock: socket.socket, stop: trio.Event, *,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the registry on the bound *sock* (its own port) until *stop*. The server
    calls the app with `http` scopes only (no lifespan), which is all that
    prometheus_client's app knows."""
    host, port = sock.getsockname()[:2]
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    await serve_asgi(make_asgi_app(metrics.registry), sock, stop, "recfs.service.metrics.server",
                     task_status=task_status)
