"""prefetch=all: bring the whole catalog into the cache, newest first (oldest last),
for a mirror or a backup staging area.

Walks the catalog a day at a time (never the whole of it in memory), runs at most
max_downloads background fetches (the download slots still put readers first), and
stops when the cache is full rather than evicting what it has just fetched. Progress
goes to the log (counts, every few seconds) and to the Progress it is given (one
recording a step, with the counts so far): the mount gives it a terminal display
when stderr is a terminal, and nothing otherwise. This module writes to no terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import trio

from recfs.catalog.database import Catalog, Recording
from recfs.content.store import ContentStore
from recfs.progress import NoProgress, Progress

log = logging.getLogger("recfs.prefetch")

REPORT_INTERVAL = 10.0


def newest_first(catalog: Catalog) -> Iterator[Recording]:
    for day, *_ in reversed(catalog.days()):
        recordings: list[Recording] = []
        cursor = 0
        while True:
            batch = catalog.in_day(day, cursor)
            if not batch:
                break
            recordings += batch
            cursor = batch[-1].ino
        recordings.sort(key=_age, reverse=True)
        yield from recordings


def _age(rec: Recording) -> tuple[float, tuple[int, ...], str]:
    # The callid's integer part is the call's start; its fraction counts calls.
    parts = tuple(int(p) for p in rec.call.callid.split(".") if p.isdigit())
    return rec.mtime, parts, rec.name


class PrefetchAll:
    def __init__(self, catalog: Catalog, content: ContentStore, *, workers: int,
                 progress: Progress | None = None):
        self.catalog = catalog
        self.content = content
        self.workers = workers
        self.progress: Progress = progress if progress is not None else NoProgress()
        self.total = 0
        self.seen = 0
        self.already = 0
        self.fetched = 0
        self.failed = 0
        self.bytes = 0
        self.stopped_full = False
        self.done = trio.Event()
        self._last_report = 0.0

    def _fits(self, rec: Recording) -> bool:
        cache = self.content.cache
        if cache.max_bytes is None or rec.size is None:
            return True
        return cache.used_bytes + rec.size <= cache.max_bytes

    async def run(self) -> None:
        # Counted afresh: the mount starts the walk over if it failed.
        self.seen = self.already = self.fetched = self.failed = self.bytes = 0
        self.stopped_full = False
        self.total = self.catalog.count()
        started = time.monotonic()
        log.info("prefetch=all: %d recordings in the catalog; fetching those not cached, "
                 "newest first", self.total)
        self.progress.total(self.total)
        walk = newest_first(self.catalog)
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._worker, walk)
        finally:
            self.progress.close()  # also when the mount ends first
        log.info("prefetch=all %s: %d fetched (%.1f MiB), %d were cached already, %d failed, "
                 "%d recordings, %.0f s", "stopped, the cache is full" if self.stopped_full else
                 "done", self.fetched, self.bytes / 2**20, self.already, self.failed, self.total,
                 time.monotonic() - started)
        self.done.set()

    async def _worker(self, walk: Iterator[Recording]) -> None:
        # Several workers share one iterator: next() never awaits, so it is safe on trio.
        for rec in walk:
            if self.stopped_full:
                return
            self.seen += 1
            if self.content.is_cached(rec):
                self.already += 1
                self._advance()
                continue
            if not self._fits(rec):
                # Fetching more would only evict what this walk just brought in.
                self.stopped_full = True
                return
            ok = await self.content.fetch(rec)
            if ok:
                self.fetched += 1
                self.bytes += self.content.known_size(rec) or 0
            else:
                self.failed += 1
            self._advance()
            self._report()

    def _advance(self) -> None:
        self.progress.advance(1, {"fetched": f"{self.fetched} ({self.bytes / 2**20:.1f} MiB)",
                                  "cached already": self.already, "failed": self.failed})

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._last_report >= REPORT_INTERVAL:
            self._last_report = now
            log.info("prefetch=all: %d of %d recordings done (%d fetched, %.1f MiB; %d failed)",
                     self.seen, self.total, self.fetched, self.bytes / 2**20, self.failed)
