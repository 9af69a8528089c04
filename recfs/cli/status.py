"""`recfs status MOUNTPOINT`: what a running mount is doing, read through the mount
itself (the root directory's STATUS_XATTR). Only the standard library: it must start
fast and run under any user's Python."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from recfs.vfs.xattrs import STATUS_XATTR


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
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return "?"


def render(status: dict[str, Any]) -> str:
    if "pbxs" in status:  # a mount of several PBXs: one block each
        return "\n".join(f"[{name}] " + render(part) for name, part in status["pbxs"].items())
    pbx, reports, cache, downloads = (status["pbx"], status["reports"], status["cache"],
                                      status["downloads"])
    catalog = status.get("catalog") or {}
    limit = f" of {_size(cache['max_bytes'])}" if cache.get("max_bytes") else ""
    lines = [f"recfs mount of {status['source']} on {status['mountpoint']}"]
    if pbx is None:
        lines.append("  reader mount:  serves the catalog; reads from the archive, never a PBX")
    else:
        lines[0] = (f"recfs mount of {status['source']} ({pbx.get('series', 's-series')}) "
                    f"on {status['mountpoint']}")
        session = ("logged in" if pbx["logged_in"]
                   else f"not logged in ({pbx['problem'] or 'connecting'})")
        lines.append(f"  PBX session:   {session}; last contact {_ago(pbx['last_contact'])}")
    events = pbx.get("events") if pbx is not None else None
    if events is not None:  # a P-Series PBX: its event socket, not pushed reports
        assert pbx is not None
        problem = f"; last problem: {events['last_error']}" if events.get("last_error") else ""
        lines += [
            f"  event socket:  {events['socket']} (opened {events['opened']} time(s), "
            f"{events['drops']} drop(s)); last event {_ago(events['last_event'])}, "
            f"{events['received']} received{problem}",
            f"  tokens:        {pbx['logins']} obtained, {pbx.get('token_refreshes', 0)} refreshed",
        ]
    elif reports is not None:
        lines.append(f"  last report:   {_ago(reports['last'])} ({reports['received']} "
                     f"received, {reports['rejected']} refused)")
    if catalog.get("kind") == "postgresql":
        state = "answering" if catalog["available"] else f"NOT answering ({catalog['problem']})"
        copying = "" if catalog.get("replica_complete", True) else \
            " (copying: directories as they are read, the rest meanwhile)"
        lines.append(f"  catalog:       {catalog['url']} ({catalog['role']}, PBX "
                     f"{catalog['pbx']}): {state}; local replica {catalog['replica']}{copying}")
    lines += [
        f"  recordings:    {status['recordings']}",
        f"  cache:         {cache['files']} files, {_size(cache['bytes'])}{limit}, "
        f"keeping {_size(cache['min_free'])} free",
        f"  downloads:     {downloads['running']} running, {downloads['queued']} queued, "
        f"{downloads['completed']} done, {downloads['failed']} failed",
        f"  errors (1 h):  {status['errors_last_hour']}",
    ]
    lines += [f"    {message}" for message in status["recent_errors"]]
    archive = status.get("archive")
    if archive:
        lines.append(f"  archive:       {archive['url']}: {archive['pending']} to upload "
                     f"({archive['retrying']} retrying), {archive['conflicts']} conflicts, "
                     f"{archive['lost']} lost on the PBX, {archive['uploaded']} uploaded")
        if archive.get("last_error"):
            lines.append(f"    last error: {archive['last_error']}")
    if catalog.get("failed_commits"):
        lines.append(f"  catalog:       {catalog['failed_commits']} commit(s) failed, last: "
                     f"{catalog['last_error']}")
    for task, health in sorted((status.get("task_failures") or {}).items()):
        lines.append(f"  task {task}: failed {health['failures']} time(s), restarted; last "
                     f"{_ago(health['last_failure'])}: {health['last_error']}")
    return "\n".join(lines)
