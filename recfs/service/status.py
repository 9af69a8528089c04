"""The running mount's state, as `recfs status` shows it (recfs/cli/status.py).

The mount publishes `snapshot()` as the root directory's `user.recfs.mount`
extended attribute; `recfs status MOUNTPOINT` reads it back through the mount, so it
works for any user who may see the mount, without a socket or a PID file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any



@dataclass
class StatusSources:
    """What the status is made of; the mount fills it in."""

    source: str
    mountpoint: str
    client: Any  # PbxClient
    ingest: Any  # Ingest
    content: Any  # ContentStore
    catalog: Any  # Catalog
    problems: Any  # RecentProblems
    started: float

    def snapshot(self) -> dict[str, Any]:
        client, ingest, content = self.client, self.ingest, self.content
        cache = content.cache
        guard_error = client.guard.last_error
        problems = self.problems.last_hour()
        counters = ingest.counters
        return {
            "source": self.source,
            "mountpoint": self.mountpoint,
            "since": self.started,
            "pbx": {
                "logged_in": client.logged_in,
                "logins": client.logins,
                "last_contact": client.last_interaction,
                "problem": str(guard_error) if guard_error and not client.logged_in else None,
            },
            "reports": {
                "last": counters.last_report,
                "received": counters.received,
                "added": counters.added,
                "rejected": counters.rejected,
            },
            "recordings": self.catalog.count(),
            "cache": {
                "files": getattr(cache, "complete_files", None),
                "bytes": getattr(cache, "complete_bytes", None),
                "max_bytes": getattr(cache, "max_bytes", None),
                "min_free": getattr(cache, "min_free", None),
            },
            "downloads": {
                "running": content.slots.in_use,
                "queued": content.slots.queued,
                "completed": content.downloads_completed,
                "failed": content.downloads_failed,
            },
            "errors_last_hour": len(problems),
            "recent_errors": [message for _when, message in problems[-5:]],
        }
