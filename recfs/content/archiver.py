"""Uploads to the archive: every recording recfs has verified goes into the archive,
so that it outlives the PBX's auto-cleanup and the cache's eviction.

The catalog holds what is to be done (`archive` = 'pending', with the time of the
next try and the last error), so a kill -9, a reboot or a store that is down for a
day loses nothing: the queue is read again from the catalog. The cache keeps a
pending recording's file (DiskCache never evicts what `may_evict` refuses), so the
bytes uploaded are the bytes verified. A failed upload is tried again later, with a
growing pause (never a hot loop); an object already in the store with the same
SHA-256 is success; one with other bytes is never overwritten: the recording is
marked as a conflict and the reason logged.

Recordings downloaded before the archive was configured (in the cache, with no
SHA-256 yet) are adopted once after start: hashed from the cache and queued.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from recfs.archive import ArchiveError, ArchiveStore, PutOutcome, key_for
from recfs.catalog.database import Archive, Catalog, Recording
from recfs.catalog.shared import WRITE_FAILURES
from recfs.catalog.writer import CatalogWriter
from recfs.content.cache import DiskCache, fd_sha256

log = logging.getLogger("recfs.archive")

# Seconds between two looks at the queue when nothing pokes the archiver (retries
# that came due, another process's changes).
RECHECK = 30.0
FIRST_PAUSE = 10.0
MAX_PAUSE = 3600.0
CATALOG_PAUSE = 5.0  # seconds, after the catalog could not record an upload


@dataclass
class ArchiveStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
    already_there: int = 0
    conflicts: int = 0
    failures: int = 0
    last_error: str | None = None


def metadata_of(rec: Recording) -> dict[str, str]:
    """The CDR fields stored with the object (the SHA-256 is the store's own)."""
    call = rec.call
    fields = {"callid": call.callid, "caller": call.caller, "callee": call.callee,
              "type": call.type, "timestart": call.timestart}
    return {key: value for key, value in fields.items() if value}


def file_sha256(path: str | os.PathLike[str]) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


class Archiver:
    def __init__(self, catalog: Catalog, cache: DiskCache, writer: CatalogWriter,
                 store: ArchiveStore, fetch: Callable[[Recording], Awaitable[bool]], *,
                 pbx: str = "", max_uploads: int = 2):
        """*fetch* brings a recording into the cache (the content store's); *pbx*:
        the PBX's directory in a mount of several PBXs, part of every key."""
        self.catalog = catalog
        self.cache = cache
        self.writer = writer
        self.store = store
        self.fetch = fetch
        self.pbx = pbx
        self.max_uploads = max_uploads
        self.stats = ArchiveStats()
        self._poked = trio.Event()
        # When the retries this process scheduled come due (time.time(), a heap): the
        # queue is looked at then, not only every RECHECK seconds.
        self._retries_due: list[float] = []

    def key(self, rec: Recording) -> str:
        return key_for(rec.day, rec.name, self.store.prefix, self.pbx)

    def poke(self) -> None:
        """Something became pending: look at the queue now."""
        self._poked.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._adopt_cached)  # uploads need not wait for it
            await self._upload_forever()

    async def _upload_forever(self) -> None:
        while True:
            now = time.time()
            due = self.catalog.archive_queue(now, limit=16 * self.max_uploads)
            while self._retries_due and self._retries_due[0] <= now:
                heapq.heappop(self._retries_due)  # in `due` (or retried already)
            if not due:
                wait = RECHECK
                if self._retries_due:  # a little late, never early: then it is due
                    wait = min(wait, self._retries_due[0] - now + 0.1)
                with trio.move_on_after(wait):
                    await self._poked.wait()
                self._poked = trio.Event()
                continue
            slots = trio.Semaphore(self.max_uploads)
            async with trio.open_nursery() as nursery:
                for rec in due:
                    await slots.acquire()
                    nursery.start_soon(self._upload_released, rec, slots)

    async def _upload_released(self, rec: Recording, slots: trio.Semaphore) -> None:
        try:
            await self.upload(rec)
        except WRITE_FAILURES as exc:
            # The catalog cannot take the outcome (its database is down, its disk
            # full): the recording stays pending, and the next try finds the object
            # there already. A pause, not a hot loop over the same queue.
            log.warning("archiving %s: the catalog cannot record it now (%s); trying again "
                        "in %.0f s", rec.name, exc, CATALOG_PAUSE)
            await trio.sleep(CATALOG_PAUSE)
        finally:
            slots.release()

    async def upload(self, rec: Recording) -> None:
        """One pending recording into the archive; the catalog learns the outcome."""
        if rec.sha256 is None or rec.size is None:
            return  # not verified yet: queued by set_content once it is
        if not self.cache.is_cached(rec.ino) and not await self.fetch(rec):
            await self._retry(rec, "not in the cache, and it could not be fetched")
            return
        key = self.key(rec)
        self.cache.pin(rec.ino)  # the bytes to upload stay where they are meanwhile
        try:
            outcome = await self.store.put(key, str(self.cache.complete_path(rec.ino)),
                                           sha256=rec.sha256, size=rec.size,
                                           metadata=metadata_of(rec))
        except ArchiveError as exc:
            await self._retry(rec, str(exc))
            return
        except OSError as exc:  # the cache file went (deleted by hand?): fetch it again
            await self._retry(rec, f"cannot read the cached file: {exc.strerror}")
            return
        finally:
            self.cache.unpin(rec.ino)
        # A put runs to its end in its thread even when the mount is going down; the
        # catalog writer may be gone by now. Then the recording stays pending, and the
        # next mount finds the object there already.
        await trio.lowlevel.checkpoint_if_cancelled()
        if outcome is PutOutcome.CONFLICT:
            self.stats.conflicts += 1
            reason = f"{key} holds other bytes than {rec.name} (SHA-256 {rec.sha256}); not overwritten"
            log.warning("archive conflict: %s", reason)
            await self.writer.set_archived(rec.ino, Archive.CONFLICT, reason)
            return
        if outcome is PutOutcome.ALREADY_THERE:
            self.stats.already_there += 1
        else:
            self.stats.uploaded += 1
            self.stats.uploaded_bytes += rec.size
        await self.writer.set_archived(rec.ino, Archive.ARCHIVED)
        self.cache.evictable_changed()
        log.debug("archived %s as %s", rec.name, key)

    async def _retry(self, rec: Recording, error: str) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()  # as in upload(): unmounting
        self.stats.failures += 1
        self.stats.last_error = error
        tries = self._tries(rec.ino)
        pause = min(FIRST_PAUSE * 2 ** tries, MAX_PAUSE)
        log.warning("archiving %s failed: %s; next try in %.0f s", rec.name, error, pause)
        next_try = time.time() + pause
        await self.writer.retry_archive(rec.ino, error, next_try)
        heapq.heappush(self._retries_due, next_try)

    def _tries(self, ino: int) -> int:
        return self.catalog.archive_tries(ino)

    async def _adopt_cached(self) -> None:
        """Recordings in the cache that the archive has never seen (downloaded before
        it was configured): hashed from the cache, and queued."""
        cursor = 0
        adopted = 0
        # The catalog writes go together (group commit), not one transaction each.
        async with trio.open_nursery() as writes:
            while True:
                batch = self.catalog.not_archived(cursor)
                if not batch:
                    break
                cursor = batch[-1].ino
                adopted += await self._adopt(batch, writes)
        if adopted:
            log.info("archive: %d recording(s) from the cache queued for upload", adopted)

    async def _adopt(self, batch: list[Recording], writes: trio.Nursery) -> int:
        adopted = 0
        for rec in batch:
            if rec.archive is not None or not self.cache.is_cached(rec.ino):
                continue
            path = self.cache.complete_path(rec.ino)
            self.cache.pin(rec.ino)
            try:
                size, sha256 = await trio.to_thread.run_sync(file_sha256, path)
            except OSError:
                continue  # evicted meanwhile: nothing to adopt
            finally:
                self.cache.unpin(rec.ino)
            if rec.sha256 is not None and rec.sha256 != sha256 or \
                    rec.size is not None and rec.size != size:
                log.warning("cached %s differs from what was verified; not archived",
                            rec.name)
                continue
            writes.start_soon(self.writer.set_content, rec.ino, size, sha256, True)
            adopted += 1
        return adopted
