"""The catalog's one writer: every write of a process goes through here.

Rules (read them before touching the catalog):

- One SQLite connection writes, and one thread uses it: the writer thread started
  by `CatalogWriter.run`. No other connection of this process writes the catalog;
  the trio thread only reads, through `Catalog`'s own connection (WAL: readers
  never wait for the writer, and see only committed transactions).
- A caller hands over an operation and awaits it; it is answered only after the
  transaction holding the operation committed (synchronous=FULL: on disk, through a
  power cut). A report is acknowledged after that, never before.
- Operations that arrive together share one transaction (group commit): under a
  burst one fsync serves many reports, a lone report costs its own commit. Each
  operation runs inside a SAVEPOINT, so one operation that fails (a bug, a
  constraint) fails alone; a COMMIT that fails (disk full, I/O error) fails every
  operation in it, and nothing of it is acknowledged.
- The trio loop never waits for the disk: it only queues work and is woken when
  the thread is done. Between two awaits nothing here blocks.
- Another process (`recfs backfill` beside a mount) has its own writer; SQLite
  serialises the two (busy_timeout), and readers learn of changes through
  `CatalogWatch` (recfs/catalog/watch.py).
- Where the writes go is the writer's `Backend`: the SQLite catalog itself, or a
  shared catalog in PostgreSQL (recfs/catalog/shared.py), whose thread is then also
  the one writer of the local replica this process reads, and follows the other
  mounts' commits into it between batches. A new replica copies a directory's
  recordings when it is first looked into (`ensure`), in that thread too, and the
  rest in its idle time.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio
from cachetools import LRUCache

from recfs.catalog.database import (Catalog, Recording, insert_calls, write_archive_retry,
                                    write_archived, write_content, write_lost, write_meta,
                                    write_size)
from recfs.catalog.watch import CatalogWatch
from recfs.pbx.reports import CallRecord

log = logging.getLogger("recfs.catalog.writer")

# Operations per transaction at most: bounds how long one commit holds the others.
MAX_BATCH = 2000

Operation = Callable[[Any], Any]  # given the backend's connection
T = TypeVar("T")

# Parts of a lazy replica known to be copied, remembered on the trio side (a miss
# only costs a trip to the writer thread, which finds the part there).
FILLED_REMEMBERED = 65_536


class NotCopied(Exception):
    """A part of a shared catalog that the local replica does not hold yet, and that
    cannot be copied now (the database is down)."""


@dataclass
class Pending:
    operation: Operation
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class WriterStats:
    transactions: int = 0
    failed_commits: int = 0
    last_error: str | None = None


class Backend(Protocol):
    """What the writer thread does with the database it owns: the SQLite catalog
    (SqliteBackend, below) or the shared catalog in PostgreSQL and the local
    replica that follows it (recfs/catalog/shared.py). Every method runs in the
    writer thread; the operations run inside `transaction`."""

    # False while a new replica still lacks recordings (read by the trio thread: a bool).
    complete: bool

    def idle_wait(self) -> float | None: ...  # seconds without work before `follow`; None: never
    def open(self) -> None: ...
    def close(self) -> None: ...
    def transaction(self, batch: list[Pending]) -> Exception | None: ...
    def follow(self) -> bool: ...
    def fill(self, key: str) -> None: ...  # copy a part (recfs/catalog/replica.py); NotCopied
    def describe(self) -> dict[str, Any]: ...  # for status: what, where, whether it answers

    # The operations (a *db* is what `transaction` hands them).
    def insert_calls(self, db: Any, calls: list[CallRecord], utc_offset: int | None,
                     namespace: str, sizes: list[int | None] | None = None
                     ) -> list[Recording | None]: ...
    def write_size(self, db: Any, ino: int, size: int) -> None: ...
    def write_meta(self, db: Any, key: str, value: str) -> None: ...
    def write_content(self, db: Any, ino: int, size: int, sha256: str, archive: bool) -> None: ...
    def write_archived(self, db: Any, ino: int, state: str, error: str | None) -> None: ...
    def write_archive_retry(self, db: Any, ino: int, error: str, next_try: float) -> None: ...
    def write_lost(self, db: Any, ino: int) -> None: ...


def run_batch(db: sqlite3.Connection, batch: list[Pending]) -> Exception | None:
    """Every operation of *batch* in one transaction on *db*, each in a SAVEPOINT
    (in-process: it costs microseconds); the error that failed the whole of it, if
    any (every operation then carries it)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        for pending in batch:
            db.execute("SAVEPOINT op")
            try:
                pending.result = pending.operation(db)
            except Exception as exc:
                db.execute("ROLLBACK TO op")
                pending.error = exc
                log.error("catalog write failed: %s", exc, exc_info=not isinstance(exc, sqlite3.Error))
            db.execute("RELEASE op")
        db.execute("COMMIT")
    except Exception as exc:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return fail_all(batch, exc)
    return None


def fail_all(batch: list[Pending], exc: Exception) -> Exception:
    """A transaction that failed as a whole (its COMMIT, its connection): nothing of
    it is acknowledged, every operation carries the error."""
    log.error("catalog commit of %d operation(s) failed: %s", len(batch), exc)
    for pending in batch:
        pending.result = None
        pending.error = exc
    return exc


class SqliteBackend:
    """The catalog in one SQLite file (the embedded default)."""

    complete = True

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self._db = self.catalog.connect()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def idle_wait(self) -> float | None:
        return None  # CatalogWatch sees other processes' commits

    def follow(self) -> bool:
        return False

    def fill(self, key: str) -> None:
        pass  # the catalog itself: every part is here

    def describe(self) -> dict[str, Any]:
        return {"kind": "sqlite", "path": str(self.catalog.path), "available": True}

    def transaction(self, batch: list[Pending]) -> Exception | None:
        db = self._db
        assert db is not None
        return run_batch(db, batch)

    # Module functions looked up at each call: tests replace them.
    def insert_calls(self, db: Any, calls: list[CallRecord], utc_offset: int | None,
                     namespace: str, sizes: list[int | None] | None = None
                     ) -> list[Recording | None]:
        return insert_calls(db, calls, utc_offset, namespace, sizes)

    def write_size(self, db: Any, ino: int, size: int) -> None:
        write_size(db, ino, size)

    def write_meta(self, db: Any, key: str, value: str) -> None:
        write_meta(db, key, value)

    def write_content(self, db: Any, ino: int, size: int, sha256: str, archive: bool) -> None:
        write_content(db, ino, size, sha256, archive)

    def write_archived(self, db: Any, ino: int, state: str, error: str | None) -> None:
        write_archived(db, ino, state, error)

    def write_archive_retry(self, db: Any, ino: int, error: str, next_try: float) -> None:
        write_archive_retry(db, ino, error, next_try)

    def write_lost(self, db: Any, ino: int) -> None:
        write_lost(db, ino)


class CatalogWriter:
    def __init__(self, catalog: Catalog, watch: CatalogWatch | None = None,
                 backend: Backend | None = None):
        """*catalog*: what this process reads (the SQLite catalog, or the local
        replica of a shared one); *backend*: where writes go (default: *catalog*)."""
        self.catalog = catalog
        self.watch = watch
        self.backend: Backend = backend or SqliteBackend(catalog)
        self.stats = WriterStats()
        self._queue: list[Pending] = []
        self._wakeup = trio.Event()
        self._running = False
        # Work for the thread, and what to call (on the trio thread) with its result.
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], Any], Callable[[Any], None]] | None] = queue.SimpleQueue()
        self._filled: LRUCache[str, bool] = LRUCache(FILLED_REMEMBERED)

    # -- what callers use --------------------------------------------------------

    async def add(self, call: CallRecord, utc_offset: int | None = None) -> Recording | None:
        """Durably record *call*: the new Recording, or None if its name was known."""
        result: list[Recording | None] = await self._submit(
            lambda db: self.backend.insert_calls(db, [call], utc_offset, self.catalog.namespace))
        return result[0]

    async def add_many(self, calls: list[CallRecord],
                       utc_offset: int | None = None) -> list[Recording | None]:
        """Several calls (a back-fill window) as one operation."""
        return await self._submit(
            lambda db: self.backend.insert_calls(db, calls, utc_offset, self.catalog.namespace))

    async def add_listed(self, calls: list[CallRecord], sizes: list[int | None],
                         utc_offset: int | None = None) -> list[Recording | None]:
        """Calls with the sizes a P-Series recording list gave (one operation): a
        known recording without a size gets it."""
        return await self._submit(
            lambda db: self.backend.insert_calls(db, calls, utc_offset, self.catalog.namespace,
                                                 sizes))

    async def set_size(self, ino: int, size: int) -> None:
        await self._submit(lambda db: self.backend.write_size(db, ino, size))

    async def set_meta(self, key: str, value: str) -> None:
        await self._submit(lambda db: self.backend.write_meta(db, key, value))

    async def set_content(self, ino: int, size: int, sha256: str, archive: bool) -> None:
        """A verified download: its size and SHA-256 (and, with an archive, an upload
        to come)."""
        await self._submit(lambda db: self.backend.write_content(db, ino, size, sha256, archive))

    async def set_archived(self, ino: int, state: str, error: str | None = None) -> None:
        await self._submit(lambda db: self.backend.write_archived(db, ino, state, error))

    async def retry_archive(self, ino: int, error: str, next_try: float) -> None:
        await self._submit(lambda db: self.backend.write_archive_retry(db, ino, error, next_try))

    async def set_lost(self, ino: int) -> None:
        await self._submit(lambda db: self.backend.write_lost(db, ino))

    async def ensure(self, key: str) -> None:
        """Before a listing reads part *key* of the catalog (\"day:2024-06-10\",
        \"number:2001\", \"numbers\"): a new replica of a shared catalog copies it now
        if it has not yet (recfs/catalog/replica.py); NotCopied if it cannot."""
        if self.backend.complete or key in self._filled:
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._running:
            raise RuntimeError("the catalog writer is not running")

        def fill() -> Exception | None:
            try:
                self.backend.fill(key)
            except Exception as exc:  # handed to the caller, not lost in the thread
                return exc
            return None

        error = await self._in_thread(fill)
        if error is not None:
            raise error
        self._filled[key] = True

    async def _submit(self, operation: Operation) -> Any:
        # A caller cancelled meanwhile (the mount going down) learns that first, not
        # that the writer has stopped.
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._running:
            raise RuntimeError("the catalog writer is not running")
        pending = Pending(operation)
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    # -- the task and its thread -------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        ready = trio.Event()
        failure: list[BaseException] = []

        def started(error: BaseException | None) -> None:
            if error is not None:
                failure.append(error)
            ready.set()

        thread = threading.Thread(target=self._thread_main, args=(token, started),
                                  name="recfs-catalog-writer", daemon=True)
        thread.start()
        try:
            await ready.wait()
            if failure:
                raise failure[0]
            self._running = True
            task_status.started()
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    # Shielded: once a transaction is in flight its callers learn how
                    # it ended; an unmount waits for the commit (milliseconds).
                    with trio.CancelScope(shield=True):
                        await self._commit(batch)
                    if self.watch is not None:
                        self.watch.poke()
        finally:
            self._running = False
            for pending in self._queue:
                pending.error = RuntimeError("the catalog writer stopped")
                pending.done.set()
            self._queue = []
            self._jobs.put(None)
            # The thread only finishes what it holds (nothing, after a shielded
            # commit) and closes its connection.
            await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)

    async def _in_thread(self, work: Callable[[], T]) -> T:
        """*work* in the writer thread, after what was handed to it before."""
        finished = trio.Event()
        outcome: list[T] = []

        def done(result: T) -> None:
            outcome.append(result)
            finished.set()

        self._jobs.put((work, done))
        await finished.wait()
        return outcome[0]

    async def _commit(self, batch: list[Pending]) -> None:
        error = await self._in_thread(lambda: self.backend.transaction(batch))
        self.stats.transactions += 1
        if error is not None:
            self.stats.failed_commits += 1
            self.stats.last_error = str(error)
        for pending in batch:
            pending.done.set()

    def _thread_main(self, token: trio.lowlevel.TrioToken,
                     started: Callable[[BaseException | None], None]) -> None:
        try:
            self.backend.open()
        except BaseException as exc:  # the catalog cannot be opened: run() raises it
            self.backend.close()
            token.run_sync_soon(started, exc)
            return
        token.run_sync_soon(started, None)
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=self.backend.idle_wait())
                except queue.Empty:
                    if self.backend.follow() and self.watch is not None:
                        try:
                            token.run_sync_soon(self.watch.poke)
                        except trio.RunFinishedError:
                            return
                    continue
                if job is None:
                    return
                work, finished = job
                result = work()
                try:
                    token.run_sync_soon(finished, result)
                except trio.RunFinishedError:
                    return
        finally:
            self.backend.close()
