"""Read-ahead for tools that copy a day's recordings one file after another (`cp -r`,
`tar`, rsync's copy phase, a backup walking an evicted history).

Such a tool has one file open at a time, so it keeps one transfer busy at the PBX
while `max_downloads` allows more. Once an open of a recording the cache does not
hold starts a *walk* of its day, every further open in that day (within WALK_GAP
seconds of the previous one) earns `per_open` background downloads of other
recordings of the day that are not cached yet. The tool's own order does not matter
(rsync copies in name order, readdir gives inode order): whatever is fetched ahead
is a file the walk will reach.

Opt-in (`-o readahead=N`): without it an open of an uncached recording costs exactly
one handshake at the PBX, which is what a person playing one recording wants. The
cost is bounded by the tool's own activity: a person who opens two recordings
of a day causes at most `per_open` extra downloads, never the whole day. Background
downloads yield the transfer slots to interactive reads (slots.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache

from recfs.catalog.database import Catalog, Recording

WALK_GAP = 10.0  # seconds between two opens that still make one walk
_BATCH = 64


@dataclass
class _Walk:
    last: float
    cursor: int = 0  # the day's entries are scanned once, in inode order
    seen: set[int] = field(default_factory=set)  # opened or fetched in this walk


@dataclass
class ReadAhead:
    """*wanted*(rec): not cached and not being downloaded; *fetch*(rec): queue a
    background download."""

    catalog: Catalog
    wanted: Callable[[Recording], bool]
    fetch: Callable[[Recording], None]
    per_open: int = 1
    clock: Callable[[], float] = time.monotonic
    _walks: LRUCache[str, _Walk] = field(init=False, default_factory=lambda: LRUCache(maxsize=16))

    def opened(self, rec: Recording, hit: bool) -> None:
        """A recording was opened; *hit*: served by the cache."""
        if self.per_open <= 0:
            return
        now = self.clock()
        walk = self._walks.get(rec.day)
        if walk is None or now - walk.last > WALK_GAP:
            if not hit:  # a walk starts where the cache did not have a file
                self._walks[rec.day] = _Walk(last=now, seen={rec.ino})
            return
        walk.last = now
        walk.seen.add(rec.ino)
        for _ in range(self.per_open):
            candidate = self._next(rec.day, walk)
            if candidate is None:
                return
            self.fetch(candidate)

    def _next(self, day: str, walk: _Walk) -> Recording | None:
        while True:
            batch = self.catalog.in_day(day, walk.cursor, _BATCH)
            if not batch:
                return None
            for rec in batch:
                walk.cursor = rec.ino
                if rec.ino not in walk.seen and self.wanted(rec):
                    walk.seen.add(rec.ino)
                    return rec
