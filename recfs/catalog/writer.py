"""Group commit: reports that arrive together share one SQLite transaction.

Each report's handler waits until the transaction that holds its recording has
committed (synchronous=FULL: on disk, through a power cut), and only then is the
report answered 200. While one batch is being committed in a worker thread, the next
batch gathers; so under a burst one fsync serves many reports, and a lone report
still costs only its own commit. SQLite work runs on a dedicated connection in a
thread, so the trio loop (FUSE, the receiver) never waits for the disk.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field

import trio

from recfs.catalog.database import Catalog, Recording
from recfs.pbx.clock import PbxClock
from recfs.pbx.reports import CallRecord

log = logging.getLogger("recfs.catalog.writer")

MAX_BATCH = 2000


@dataclass
class _Pending:
    call: CallRecord
    done: trio.Event = field(default_factory=trio.Event)
    result: Recording | None = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self, catalog: Catalog, clock: PbxClock | None = None):
        self.catalog = catalog
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self._queue: list[_Pending] = []
        self._wakeup = trio.Event()
        self._running = False
        self.batches = 0
        self.committed = 0

    async def add(self, call: CallRecord) -> Recording | None:
        """Durably record *call*; returns the new Recording or None if it was known."""
        if not self._running:
            raise RuntimeError("group commit is not running")
        pending = _Pending(call)
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def add_many(self, calls: list[CallRecord]) -> list[Recording | None]:
        """Several calls in one go (back-fill): one transaction per call list."""
        return await trio.to_thread.run_sync(self._commit_calls, calls)

    def _commit_calls(self, calls: list[CallRecord]) -> list[Recording | None]:
        assert self._db is not None
        return self.catalog.add_many(calls, db=self._db, utc_offset=self.clock.offset if self.clock else None)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._db = await trio.to_thread.run_sync(self.catalog.connect)
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    calls = [p.call for p in batch]
                    try:
                        # Shielded: once a transaction is in flight its waiters learn
                        # how it ended; an unmount waits for the commit (milliseconds).
                        with trio.CancelScope(shield=True):
                            results = await trio.to_thread.run_sync(self._commit_calls, calls)
                    except Exception as exc:
                        log.error("catalog commit of %d report(s) failed: %s", len(batch), exc)
                        for p in batch:
                            p.error = exc
                            p.done.set()
                        continue
                    self.batches += 1
                    self.committed += len(batch)
                    for p, rec in zip(batch, results):
                        p.result = rec
                        p.done.set()
        finally:
            self._running = False
            db, self._db = self._db, None
            if db is not None:
                db.close()
