"""The running mount's state, as `recfs status` shows it (recfs/cli/status.py).

The mount publishes `snapshot()` as the root directory's `user.recfs.mount`
extended attribute; `recfs status MOUNTPOINT` reads it back through the mount, so it
works for any user who may see the mount, without a socket or a PID file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from recfs.catalog.database import Catalog
from recfs.catalog.writer import CatalogWriter
from recfs.content.archiver import Archiver
from recfs.content.store import ContentStore
from recfs.ingest.pipeline import Ingest
from recfs.logs import RecentProblems
from recfs.ingest.recording_list import RecordingList
from recfs.pbx.client import PbxClient
from recfs.pbx.events import EventSocket
from recfs.pbx.pseries import PSeriesClient
from recfs.service.supervise import Supervisor

@dataclass
class StatusSources:
    """What the status is made of; the mount fills it in."""

    source: str
    mountpoint: str
    client: PbxClient | PSeriesClient | None  # None: a reader mount of a shared catalog
    ingest: Ingest | None
    content: ContentStore
    catalog: Catalog
    writer: CatalogWriter
    archiver: Archiver | None  # None: no archive
    tasks: Supervisor  # the PBX's own background tasks
    mount_tasks: Supervisor  # the mount's: the report receiver, the metrics endpoint
    problems: RecentProblems
    started: float
    # P-Series only: the recording list and the event socket.
    recording_list: RecordingList | None = None
    events: EventSocket | None = None

    def snapshot(self) -> dict[str, Any]:
        client, ingest, content = self.client, self.ingest, self.content
        cache = content.cache
        problems = self.problems.last_hour()
        return {
            "source": self.source,
            "mountpoint": self.mountpoint,
            "since": self.started,
            "pbx": None if client is None else {
                "series": "p-series" if isinstance(client, PSeriesClient) else "s-series",
                "logged_in": client.logged_in,
                "logins": client.logins,
                "last_contact": client.last_interaction,
                "problem": str(client.guard.last_error)
                if client.guard.last_error and not client.logged_in else None,
                **self._p_series(),
            },
            "reports": None if ingest is None else {
                "last": ingest.counters.last_report,
                "received": ingest.counters.received,
                "added": ingest.counters.added,
                "rejected": ingest.counters.rejected,
            },
            "recordings": self.catalog.count(),
            "catalog": {
                "failed_commits": self.writer.stats.failed_commits,
                "last_error": self.writer.stats.last_error,
                **self.writer.backend.describe(),
            },
            "cache": {
                "files": cache.complete_files,
                "bytes": cache.complete_bytes,
                "max_bytes": cache.max_bytes,
                "min_free": cache.min_free,
            },
            "downloads": {
                "running": content.slots.in_use,
                "queued": content.slots.queued,
                "completed": content.stats.downloads_completed,
                "failed": content.stats.downloads_failed,
            },
            "archive": None if self.archiver is None else {
                "url": self.archiver.store.url,
                **dataclasses.asdict(self.catalog.archive_backlog()),
                "uploaded": self.archiver.stats.uploaded,
                "failures": self.archiver.stats.failures,
            },
            "task_failures": {**self.mount_tasks.snapshot(), **self.tasks.snapshot()},
            "errors_last_hour": len(problems),
            "recent_errors": [message for _when, message in problems[-5:]],
        }

    def _p_series(self) -> dict[str, Any]:
        client = self.client
        if not isinstance(client, PSeriesClient):
            return {}
        found: dict[str, Any] = {"token_refreshes": client.refreshes}
        if self.events is not None:
            stats = self.events.stats
            found["events"] = {"socket": stats.state.value, "opened": stats.opened,
                               "drops": stats.drops, "received": stats.events,
                               "last_event": stats.last_event, "last_error": stats.last_error}
        if self.recording_list is not None:
            found["recording_list"] = {"walks": self.recording_list.stats.walks,
                                       "requests": self.recording_list.stats.requests,
                                       "malformed": self.recording_list.stats.malformed,
                                       "last_id": self.recording_list.last_id()}
        return found
