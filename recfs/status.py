"""The running mount's state, as `recfs status` shows it.

The mount publishes `snapshot()` as the root directory's `user.recfs.mount`
extended attribute; `recfs status MOUNTPOINT` reads it back through the mount, so it
works for any user who may see the mount, without a socket or a PID file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

# On the mount's root directory, readable by name but not listed: `rsync -aX` of the
# tree must not copy a stale status into a backup (and a file's `user.recfs.status`
# is its call's status). Kept here, free of heavy imports, so that `recfs status`
# starts fast and runs under any user's Python.
STATUS_XATTR = "user.recfs.mount"


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


def read_status(mountpoint: str) -> dict[str, Any]:
    try:
        raw = os.getxattr(mountpoint, STATUS_XATTR)
    except OSError as exc:
        raise RuntimeError(f"{mountpoint} is not a running recfs mount ({exc.strerror})") from None
    return json.loads(raw)


def _ago(when: float | None) -> str:
    if when is None:
        return "never"
    seconds = max(0, int(time.time() - when))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "?"


def render(status: dict[str, Any]) -> str:
    if "pbxs" in status:  # a mount of several PBXs: one block each
        return "\n".join(f"[{name}] " + render(part) for name, part in status["pbxs"].items())
    pbx, reports, cache, downloads = (status["pbx"], status["reports"], status["cache"],
                                      status["downloads"])
    session = "logged in" if pbx["logged_in"] else f"not logged in ({pbx['problem'] or 'connecting'})"
    limit = f" of {_size(cache['max_bytes'])}" if cache.get("max_bytes") else ""
    lines = [
        f"recfs mount of {status['source']} on {status['mountpoint']}",
        f"  PBX session:   {session}; last contact {_ago(pbx['last_contact'])}",
        f"  last report:   {_ago(reports['last'])} ({reports['received']} received, "
        f"{reports['rejected']} refused)",
        f"  recordings:    {status['recordings']}",
        f"  cache:         {cache['files']} files, {_size(cache['bytes'])}{limit}, "
        f"keeping {_size(cache['min_free'])} free",
        f"  downloads:     {downloads['running']} running, {downloads['queued']} queued, "
        f"{downloads['completed']} done, {downloads['failed']} failed",
        f"  errors (1 h):  {status['errors_last_hour']}",
    ]
    lines += [f"    {message}" for message in status["recent_errors"]]
    return "\n".join(lines)
