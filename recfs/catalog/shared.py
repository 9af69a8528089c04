"""The catalog writer's backend for a shared catalog in PostgreSQL.

One thread (the CatalogWriter's) owns two connections: one to PostgreSQL, one that
writes the local replica (recfs/catalog/replica.py). For each batch of operations:
one PostgreSQL transaction (each operation in a SAVEPOINT, as with SQLite); once it
committed, the new rows are pulled into the replica, and only then are the callers
answered, so that whatever the caller does next (a lookup, a download) finds the
recording in the replica. Between batches, every `follow_interval` seconds, it asks
PostgreSQL whether any other mount committed something of this PBX (an index probe)
and pulls it.

Ingest mounts hold the PBX's ingest lock on that same connection (a session
advisory lock, recfs/catalog/postgres.py): no write of this PBX goes through a
connection that does not hold it. When the connection is lost (the database
restarted, the network failed), the batch in flight fails (its callers answer the
PBX with an error and the PBX sends again), and the next batch or follow connects
anew, taking the lock again first: if another ingest mount took it meanwhile, every
write fails with CatalogBusy and says so, reads go on from the replica.

A new replica (recfs/catalog/replica.py) is filled lazily on reader mounts
(`lazy=True`): the mount is up as soon as the summaries are copied, a directory's
recordings are copied when it is first read (`fill`, for CatalogWriter.ensure), the
rest whenever the thread has nothing else to do. Everything else (ingest mounts,
`recfs archive`, `recfs backfill`) reads the replica as a whole (the archive queue,
what may leave the cache), so `open` copies all of it before they start.

Reader mounts (`ingest=False`) write nothing to PostgreSQL: every operation fails.
`recfs backfill` and `recfs archive` write without the lock (`exclusive=False`),
beside the PBX's ingest mount, as they do beside a mount with a SQLite catalog.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

import psycopg

from recfs.catalog import postgres as pg
from recfs.catalog import replica
from recfs.catalog.database import Catalog, Recording
from recfs.catalog.postgres import CatalogBusy, CatalogUnavailable, PbxKey, PgSettings
from recfs.catalog.writer import NotCopied, Pending, fail_all
from recfs.pbx.reports import CallRecord

log = logging.getLogger("recfs.catalog.shared")

FOLLOW_INTERVAL = 0.5  # seconds: a reader sees another mount's new recordings within this
RETRY_MAX = 10.0  # seconds between attempts to reach a database that is down, at most


class CatalogReadOnly(Exception):
    """A reader mount never writes the shared catalog."""


# What a catalog write can fail with, whichever the catalog: the database refused it
# or cannot be reached.
WRITE_FAILURES: tuple[type[Exception], ...] = (
    sqlite3.Error, psycopg.Error, CatalogUnavailable, CatalogBusy, CatalogReadOnly)


class SharedBackend:
    def __init__(self, settings: PgSettings, pbx: PbxKey, replica_catalog: Catalog, *,
                 ingest: bool, exclusive: bool = True, source: str = "",
                 archive: str | None = None, lazy: bool = False,
                 follow_interval: float = FOLLOW_INTERVAL):
        self.settings = settings
        self.pbx = pbx
        self.replica = replica_catalog
        self.ingest = ingest
        self.exclusive = ingest and exclusive  # holds the PBX's ingest lock
        self.source = source
        self.archive = archive
        self.follow_interval = follow_interval
        self.lazy = lazy
        self.complete = True  # until open() has seen the replica
        self.catalog_id = ""
        self._next_pull = 0.0
        self._fill_resume = 0.0  # after a local disk error, the background fill waits
        self._pg: psycopg.Connection[Any] | None = None
        self._local: sqlite3.Connection | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.5
        self._meta = _TransactionMeta(None)
        self._summaries = pg.Summaries(pbx.name)
        self.available = False  # read by status (a bool: one store, no lock needed)
        self.last_error: str | None = None

    # -- connection ---------------------------------------------------------------

    def open(self) -> None:
        """At the start: the database must answer, and an ingest mount must get
        the PBX's lock (CatalogBusy otherwise), so that a wrong URL or a second
        ingest mount fails the mount at once, clearly."""
        self._local = self.replica.connect(durable=False)
        self._meta = _TransactionMeta(self._local)
        self._connection()
        self._pull()
        self.complete = replica.complete(self._local)
        if not self.complete and not self.lazy:
            self._fill_all()

    def _fill_all(self) -> None:
        assert self._local is not None
        started = last_said = time.monotonic()
        log.info("copying PBX %s's recordings into the local replica", self.pbx.name)
        try:
            while not replica.fill_step(self._connection(), self._local, self.pbx):
                if time.monotonic() - last_said > 30:
                    last_said = time.monotonic()
                    log.info("copying into the local replica: %d recordings so far",
                             self._local.execute("SELECT COUNT(*) FROM recordings").fetchone()[0])
        except psycopg.Error as exc:
            raise CatalogUnavailable(f"catalog {self.settings.shown}: {pg.reason(exc)}") from None
        self.complete = True
        log.info("local replica complete in %.1f s", time.monotonic() - started)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._pg is not None and not self._pg.closed and not self._pg.broken:
            return self._pg
        self._drop()
        db = self.settings.connect(application="recfs ingest" if self.ingest else "recfs reader")
        try:
            self.catalog_id = pg.bring_up_to_date(db, self.settings.shown)
            if self.ingest:
                pg.register_pbx(db, self.pbx, self.source, self.archive)
                if self.exclusive:
                    pg.take_ingest_lock(db, self.pbx.name)
            assert self._local is not None
            replica.prepare(self._local, self.catalog_id)
        except psycopg.Error as exc:
            db.close()
            raise CatalogUnavailable(f"catalog {self.settings.shown}: {pg.reason(exc)}") from None
        except BaseException:
            db.close()
            raise
        if not self.available and self.last_error is not None:
            log.warning("catalog %s is back", self.settings.shown)
        self._pg, self.available, self.last_error = db, True, None
        self._retry_delay = 0.5
        return db

    def _drop(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()
            except psycopg.Error:
                pass
        self._pg = None

    def _failed(self, exc: BaseException) -> None:
        """The database went away (or refused): say so once, try again later."""
        message = str(exc) if isinstance(exc, (CatalogUnavailable, CatalogBusy)) else \
            f"catalog {self.settings.shown}: {pg.reason(exc)}"
        if self.available or self.last_error != message:
            log.warning("%s; serving the local replica, retrying", message)
        self.available, self.last_error = False, message
        self._drop()
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def close(self) -> None:
        self._drop()
        if self._local is not None:
            self._local.close()

    # -- the writer thread's jobs: batches, following, filling ----------------------

    def transaction(self, batch: list[Pending]) -> Exception | None:
        try:
            if not self.ingest:
                raise CatalogReadOnly("a reader mount does not write the shared catalog")
            if self._pg is None and time.monotonic() < self._retry_at:
                # Down a moment ago: answer at once rather than wait for a connect.
                raise CatalogUnavailable(self.last_error or "the catalog is not reachable")
            db = self._connection()
        except Exception as exc:
            if not isinstance(exc, CatalogReadOnly) and self._pg is None and \
                    time.monotonic() >= self._retry_at:
                self._failed(exc)
            for pending in batch:
                pending.error = exc
            return exc
        error = _optimistic_batch(db, batch, self._meta, self._summaries)
        if error is not None:
            if db.closed or db.broken:
                self._failed(error)
            return error
        self._pull(meta=bool(self._meta.written))
        return None

    def idle_wait(self) -> float | None:
        """A replica still being filled keeps the thread busy, unless the database
        is down (the fill waits for it too)."""
        now = time.monotonic()
        if self.complete or (self._pg is None and now < self._retry_at) or now < self._fill_resume:
            return self.follow_interval
        return 0.0

    def follow(self) -> bool:
        """Between batches: pull what other mounts committed (True if anything),
        and copy a batch of what a new replica still lacks."""
        if self._pg is None and time.monotonic() < self._retry_at:
            return False
        pulled = False
        if time.monotonic() >= self._next_pull or self._pg is None:
            self._next_pull = time.monotonic() + self.follow_interval
            pulled = self._pull() > 0
        if not self.complete and self._pg is not None and time.monotonic() >= self._fill_resume:
            assert self._local is not None
            try:
                self.complete = replica.fill_step(self._pg, self._local, self.pbx)
            except psycopg.Error as exc:
                self._failed(exc)
            except sqlite3.Error as exc:  # the local disk (full?): try again later
                log.error("local replica %s: %s; copying again in %.0f s", self.replica.path,
                          exc, RETRY_MAX)
                self._fill_resume = time.monotonic() + RETRY_MAX
            if self.complete:
                log.info("local replica of PBX %s complete", self.pbx.name)
        return pulled

    def fill(self, key: str) -> None:
        """Copy part *key* into the replica now (someone is listing it); NotCopied
        if the database or the local disk is not up to it."""
        if self.complete:
            return
        assert self._local is not None
        if self._pg is None and time.monotonic() < self._retry_at:
            raise NotCopied(f"{self.last_error}; not in the local replica yet")
        try:
            replica.fill(self._connection(), self._local, self.pbx, key)
        except (psycopg.Error, CatalogUnavailable, CatalogBusy) as exc:
            self._failed(exc)
            raise NotCopied(f"{self.last_error}; not in the local replica yet") from None
        except sqlite3.Error as exc:
            raise NotCopied(f"local replica {self.replica.path}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        return {"kind": "postgresql", "url": self.settings.shown, "pbx": self.pbx.name,
                "role": "ingest" if self.ingest else "reader", "available": self.available,
                "problem": self.last_error, "replica": str(self.replica.path),
                "replica_complete": self.complete}

    def _pull(self, *, meta: bool = True) -> int:
        assert self._local is not None
        try:
            return replica.pull(self._connection(), self._local, self.pbx, meta=meta)
        except (psycopg.Error, CatalogUnavailable, CatalogBusy) as exc:
            self._failed(exc)
        except sqlite3.Error as exc:  # the local disk: the next pull tries again
            log.error("local replica %s: %s", self.replica.path, exc)
        return 0

    # -- the operations -----------------------------------------------------------

    def insert_calls(self, db: Any, calls: list[CallRecord], utc_offset: int | None,
                     namespace: str, sizes: list[int | None] | None = None
                     ) -> list[Recording | None]:
        return pg.insert_calls(db, self.pbx, calls, utc_offset, self._meta, self._summaries,
                               sizes)

    def write_size(self, db: Any, ino: int, size: int) -> None:
        pg.write_size(db, self.pbx, ino, size)

    def write_meta(self, db: Any, key: str, value: str) -> None:
        pg.write_meta(db, self.pbx, key, value)
        self._meta.put(key, value)

    def write_content(self, db: Any, ino: int, size: int, sha256: str, archive: bool) -> None:
        pg.write_content(db, self.pbx, ino, size, sha256, archive)

    def write_archived(self, db: Any, ino: int, state: str, error: str | None) -> None:
        pg.write_archived(db, self.pbx, ino, state, error)

    def write_archive_retry(self, db: Any, ino: int, error: str, next_try: float) -> None:
        pg.write_archive_retry(db, self.pbx, ino, error, next_try)

    def write_lost(self, db: Any, ino: int) -> None:
        pg.write_lost(db, self.pbx, ino)


class _OperationFailed(Exception):
    pass


def _optimistic_batch(db: psycopg.Connection[Any], batch: list[Pending],
                      meta: _TransactionMeta, summaries: pg.Summaries) -> Exception | None:
    """Every operation of *batch* in one PostgreSQL transaction, as run_batch does
    for SQLite, but without a SAVEPOINT around each (two round trips an operation,
    twice the cost of the operation itself): when one fails, the transaction is
    rolled back and run again without it. The error that failed the whole, if any."""
    remaining = list(batch)
    while remaining:
        failed: tuple[Pending, Exception] | None = None
        meta.written.clear()
        summaries.clear()
        try:
            db.execute("BEGIN")
            for pending in remaining:
                try:
                    pending.result = pending.operation(db)
                except Exception as exc:
                    failed = (pending, exc)
                    raise _OperationFailed from exc
            with db.pipeline():  # one round trip
                summaries.flush(db)
                db.execute("COMMIT")
            return None
        except _OperationFailed:
            assert failed is not None
            culprit, error = failed
            if db.closed or db.broken:  # the connection, not the operation
                return _fail_all(db, remaining, error)
            db.execute("ROLLBACK")
            culprit.error = error
            log.error("catalog write failed: %s", error,
                      exc_info=not isinstance(error, psycopg.Error))
            remaining.remove(culprit)
        except Exception as exc:
            return _fail_all(db, remaining, exc)
    return None


def _fail_all(db: psycopg.Connection[Any], batch: list[Pending], exc: Exception) -> Exception:
    if not (db.closed or db.broken):
        try:
            db.execute("ROLLBACK")
        except psycopg.Error:
            pass
    return fail_all(batch, exc)


class _TransactionMeta:
    """pg.MetaView for the writer's transaction: what it wrote, else the replica's
    (the committed state, as of the last pull)."""

    def __init__(self, local: sqlite3.Connection | None):
        self.local = local
        self.written: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        if key in self.written:
            return self.written[key]
        if self.local is None:
            return None
        row = self.local.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        self.written[key] = value
