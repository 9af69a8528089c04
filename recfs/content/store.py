"""The content layer: bytes of recordings, from the cache, the archive or the PBX.

A recording that is archived is read from the archive (the PBX is not asked); the
bytes are checked against the catalog's size and SHA-256 before the file enters the
cache, and an archive copy that fails that (or is missing, or the store is down) is
not used again for a while: the next read asks the PBX, if it still has the file.
A recording the PBX no longer has and the archive never got is *lost*: marked so in
the catalog, and its reads fail at once. Every download from the PBX is hashed as it
arrives, and the catalog learns size and SHA-256 together (with an archive, that
queues its upload: archiver.py).

The body of a PBX download whose length is known is read, hashed and written by two
worker threads (pump.py, which says what each may touch); everything else here runs
on the trio thread.

One Transfer per recording at a time, shared by every reader and the prefetcher;
reads wait only for the bytes they need; a finished file is checked against its
announced size, fsynced and renamed into the cache. A size is recorded in the
catalog as soon as a transfer learns it (Content-Length or the WAV header), so a
`stat` costs the PBX one handshake, once.

A transfer runs only while someone wants what it has not delivered yet (transfer.py,
`Interest`): an open file, a stat still waiting for the size, a prefetch or
read-ahead. Once none of them needs more it is *abandoned*: it stops reading (the
PBX soon stops sending, TCP flow control) and lingers for `DownloadPolicy.linger`
seconds in case someone comes back -- the open that follows every lookup, a player
after a probe -- and is stopped after that; at once if it holds no slot, or as soon
as a reader or a stat waits for its slot (slots.py). So nobody waits behind a
download nobody reads. Stopping closes the connection and deletes the partial file;
the next reader starts afresh (a random is good for one download, and the PBX has
no Range: there is nothing to resume).
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import AbstractAsyncContextManager
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio
from cachetools import LRUCache, TTLCache

from recfs.archive import ArchiveDownload, ArchiveError, ArchiveStore, NotInArchive, key_for
from recfs.catalog.database import Archive, Catalog, Listed, Recording
from recfs.catalog.writer import CatalogWriter
from recfs.content.cache import CacheFull, DiskCache, fd_sha256
from recfs.content.readahead import ReadAhead
from recfs.content.slots import Slots
from recfs.content.transfer import Interest, RecordingLost, Transfer, TransferFailed
from recfs.content.pump import Leg
from recfs.pbx.client import RecordingBody
from recfs.pbx.errors import PbxError

log = logging.getLogger("recfs.content")


READAHEAD_MIN_CACHE = 64 << 20  # smaller caches get no read-ahead


@dataclass
class ContentStats:
    """What status and metrics show of the content layer."""

    downloads_completed: int = 0
    downloads_failed: int = 0
    bytes_downloaded: int = 0  # received from the PBX
    cache_hits: int = 0  # opens served by the cache
    cache_misses: int = 0  # opens that needed a transfer
    downloads_stopped: int = 0  # abandoned by everyone who wanted them, and stopped


@dataclass
class DownloadPolicy:
    max_downloads: int = 2
    attempts: int = 3  # per transfer, each with a fresh get_random
    backoff: float = 1.0  # seconds before the 2nd attempt; doubles
    # After a transfer gave up, reads of that recording fail at once for this long
    # (the kernel re-issues a failed read-ahead: that must not start it all over).
    failure_memory: float = 2.0
    # Background downloads each open earns while a tool walks a day (readahead.py).
    # Off by default: an open of an uncached recording then costs exactly one
    # handshake, and a reader measuring one stream gets the PBX to itself.
    readahead: int = 0
    # Seconds an abandoned transfer stays connected, not reading, in case someone
    # comes back for it: the kernel's open right after the lookup that learned the
    # size, a player started after a probe. A reader or a stat waiting for a slot
    # gets its slot at once. 0 stops it at once: the first open of a recording of
    # unknown size then costs two handshakes (first 4 KiB: 17.7 ms instead of 8.6).
    linger: float = 1.0
    # Seconds a transfer that only stats have used (no file opened) keeps its slot
    # after learning the size, even against a reader or a stat waiting for one: the
    # kernel's open follows its lookup within 0.1-2 ms (six readers at once), and
    # must not cost a second handshake. A transfer whose readers have closed their
    # files gives its slot up at once. The price, paid by `ls -l` of unknown sizes
    # from a PBX that answers a handshake faster than this: README, Benchmarks.
    open_grace: float = 0.005


class ContentStore:
    def __init__(self, catalog: Catalog, cache: DiskCache, client: RecordingSource | None,
                 writer: CatalogWriter, policy: DownloadPolicy | None = None,
                 observe_download: Callable[[float], None] = lambda seconds: None, *,
                 archive: ArchiveStore | None = None, pbx: str = ""):
        """*observe_download* is given each completed download's duration (metrics);
        *archive*: where archived recordings are read from (*pbx*: this PBX's part
        of the keys in a mount of several); *client*: None in a reader mount of a
        shared catalog, which reads only the archive."""
        self.catalog = catalog
        self.cache = cache
        self.client = client
        self.writer = writer
        self.archive = archive
        self.pbx = pbx
        # ino → its archive copy failed (True: wrong bytes or missing; False: the
        # store failed, down or stalled); reads go to the PBX until this expires.
        self._archive_bad: TTLCache[int, bool] = TTLCache(
            maxsize=4096, ttl=ARCHIVE_BAD_MEMORY, timer=time.monotonic)
        self.policy = policy or DownloadPolicy()
        self.observe_download = observe_download
        self.slots = Slots(self.policy.max_downloads)
        self.transfers: dict[int, Transfer] = {}
        # ino → its transfer that gave up, for failure_memory seconds. time.monotonic,
        # not trio.current_time: that one fails outside trio (a lookup from a test).
        self._failed: TTLCache[int, Transfer] = TTLCache(
            maxsize=1024, ttl=self.policy.failure_memory, timer=time.monotonic)
        self._nursery: trio.Nursery | None = None
        self._prefetch_send, self._prefetch_receive = trio.open_memory_channel[Recording](math.inf)
        # Sizes learned from transfers, for stats in the moment before the catalog
        # has them (its write is under way, and the transfer may be gone already).
        self._sizes: LRUCache[int, int] = LRUCache(maxsize=4096)
        self.stats = ContentStats()
        # A file fetched ahead must still be there when the walk reaches it: in a
        # cache that holds only a few recordings it would push out the ones in use.
        small = cache.max_bytes is not None and cache.max_bytes < READAHEAD_MIN_CACHE
        self.readahead = ReadAhead(catalog, self._worth_fetching, self.prefetch,
                                   0 if small else self.policy.readahead)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hold the transfers and prefetch workers; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.policy.max_downloads):
                nursery.start_soon(self._prefetch_worker)
            task_status.started()
            await trio.sleep_forever()

    # -- what the filesystem asks ---------------------------------------------------

    def known_size(self, rec: Recording | Listed) -> int | None:
        """The exact size without touching the network, if it is known at all."""
        if rec.size is not None:
            return rec.size
        transfer = self.transfers.get(rec.ino)
        if transfer is not None and transfer.size is not None:
            return transfer.size
        size = self._sizes.get(rec.ino)
        if size is not None:
            return size
        return self.cache.cached_size(rec.ino)

    def is_cached(self, rec: Recording) -> bool:
        return self.cache.is_cached(rec.ino)

    async def size(self, rec: Recording) -> int:
        """The exact size; may start a transfer and wait for its first bytes (or its
        headers). Nobody else wanting the rest, the transfer stops soon after."""
        size = self.known_size(rec)
        if size is not None:
            return size
        transfer = self.transfer(rec)
        self._join(transfer, Interest.SIZE)
        try:
            return await transfer.wait_size()
        finally:
            self._left(transfer, Interest.SIZE)

    def open(self, rec: Recording) -> "OpenRecording":
        handle = OpenRecording(self, rec)
        handle.attach()
        self.readahead.opened(rec, hit=handle.transfer is None)
        return handle

    def _worth_fetching(self, rec: Recording) -> bool:
        return not (self.cache.is_cached(rec.ino) or rec.ino in self.transfers
                    or rec.ino in self._failed)

    def prefetch(self, rec: Recording) -> None:
        self._prefetch_send.send_nowait(rec)

    # -- transfers --------------------------------------------------------------

    def transfer(self, rec: Recording) -> Transfer:
        """The running transfer of *rec*, or a new one."""
        transfer = self.transfers.get(rec.ino)
        if transfer is not None:
            return transfer
        archive_key = None
        if self.archive is not None and rec.archive == Archive.ARCHIVED \
                and rec.ino not in self._archive_bad:
            archive_key = key_for(rec.day, rec.name, self.archive.prefix, self.pbx)
        elif rec.lost:
            raise RecordingLost(f"{rec.name}: the PBX no longer has it, and it was never archived")
        failed = self._failed.get(rec.ino)
        if failed is not None:
            return failed
        if self._nursery is None:
            raise RuntimeError("ContentStore.run() is not running")
        transfer = Transfer(rec.ino, rec.name, rec.size, self.cache.create_partial(rec.ino),
                            archive_key=archive_key,
                            sha256=rec.sha256 if archive_key is not None else None)
        self.transfers[rec.ino] = transfer
        self._nursery.start_soon(self._download, transfer)
        return transfer

    def _join(self, transfer: Transfer, interest: Interest) -> None:
        transfer.join(interest)
        if not transfer.holding_slot:
            self.slots.reclaim()  # it may have just become urgent

    def _left(self, transfer: Transfer, interest: Interest) -> None:
        """*interest* no longer waits on *transfer*; if nobody else does, it stops:
        at once if it holds no slot, else as soon as a reader or a stat waits for
        a slot, or after lingering (_linger)."""
        if not transfer.leave(interest) or transfer.stopped or transfer.all_there:
            return
        if not transfer.holding_slot:
            self._stop(transfer, "nobody waits for it")
            return
        self.slots.reclaim()
        if not transfer.was_read and self._nursery is not None:
            self._nursery.start_soon(self._reclaim_later, self.policy.open_grace)

    def _idle(self, transfer: Transfer) -> bool:
        """Holds a slot that nobody needs it for (slots.py): abandoned, and if no
        file was ever opened on it, for open_grace seconds already."""
        if not transfer.abandoned or transfer.stopped or transfer.all_there:
            return False
        if transfer.was_read:
            return True
        return (transfer.idle_since is not None
                and trio.current_time() - transfer.idle_since >= self.policy.open_grace)

    async def _reclaim_later(self, delay: float) -> None:
        await trio.sleep(delay)
        self.slots.reclaim()

    def _stop(self, transfer: Transfer, why: str) -> None:
        """End an abandoned transfer: its task is cancelled (which closes the
        connection before the slot is released), its partial file deleted now, and
        the next reader of the recording starts a new transfer."""
        if transfer.stopped or transfer.done.is_set():
            return
        transfer.stopped = True
        transfer.scope.cancel()
        if self.transfers.get(transfer.ino) is transfer:
            del self.transfers[transfer.ino]
        # Now, not when the task ends: a new transfer of the recording may create
        # its partial file before that.
        self._discard_partial(transfer)
        self.stats.downloads_stopped += 1
        log.debug("download of %s stopped after %d of %s bytes: %s", transfer.name, transfer.have,
                  transfer.size if transfer.size is not None else "?", why)
        transfer.fail(TransferFailed(f"stopped: {why}"))

    async def _linger(self, transfer: Transfer) -> None:
        """Abandoned while streaming: read no further and wait a moment for someone
        to come back; stopped if nobody does (or, by Slots.reclaim, as soon as a
        reader or a stat waits for a slot)."""
        self.slots.reclaim()
        with trio.move_on_after(self.policy.linger):
            while transfer.abandoned:
                await transfer.wait_interest()
            return
        self._stop(transfer, "nobody came back for it")
        await trio.lowlevel.checkpoint()  # cancelled: the task ends here

    def _size_learned(self, transfer: Transfer) -> None:
        """The transfer has just learned the size the catalog lacks: the catalog
        learns it now, not when (or if) the whole file has arrived."""
        assert transfer.size is not None
        self._sizes[transfer.ino] = transfer.size
        if transfer.unrecorded and self._nursery is not None:
            transfer.unrecorded = False
            self._nursery.start_soon(self._record_size, transfer.ino, transfer.name,
                                     transfer.size, transfer.size_recorded)

    async def _record_size(self, ino: int, name: str, size: int, recorded: trio.Event) -> None:
        try:
            await self.writer.set_size(ino, size)
        except Exception as exc:  # learned again by the next transfer
            log.warning("size of %s not recorded: %s", name, exc)
        finally:
            recorded.set()

    async def _download(self, transfer: Transfer) -> None:
        with transfer.scope:  # cancelled by _stop
            await self._download_in_scope(transfer)

    async def _download_in_scope(self, transfer: Transfer) -> None:
        started = trio.current_time()
        try:
            # Attempts count failures in a row without progress: a transfer that
            # keeps getting further is worth continuing.
            attempt = 0
            while True:
                attempt += 1
                had = transfer.have
                try:
                    async with self.slots.hold(
                            lambda: transfer.urgent, idle=lambda: self._idle(transfer),
                            preempt=lambda: self._stop(transfer, "someone waits for its slot")):
                        transfer.holding_slot = True
                        try:
                            await self._fetch_once(transfer)
                        finally:
                            transfer.holding_slot = False
                    break
                except (PbxError, TransferFailed, ArchiveError) as exc:
                    if transfer.have > had:
                        attempt = 1
                    final = attempt >= self.policy.attempts or not _retryable(exc)
                    log.warning("download of %s failed (attempt %d of %d, %d of %s bytes on disk):"
                                " %s%s", transfer.name, attempt, self.policy.attempts,
                                transfer.have, transfer.size if transfer.size is not None else "?",
                                exc, "" if final or transfer.abandoned else "; retrying")
                    if final:
                        raise
                    if transfer.abandoned:
                        self._stop(transfer, "nobody waits for it")
                    await trio.sleep(self.policy.backoff * 2 ** (attempt - 1))
            assert transfer.size is not None
            await self.cache.commit(transfer.ino, transfer.fd, transfer.size)
        except (PbxError, TransferFailed, ArchiveError, OSError) as exc:
            if transfer.stopped:
                return  # whatever broke on the way out: _stop has cleaned up
            self.stats.downloads_failed += 1
            self._discard_partial(transfer)
            if isinstance(exc, CacheFull):
                log.warning("download of %s failed: %s", transfer.name, exc.strerror)
            if transfer.archive_key is not None and not isinstance(exc, OSError):
                # The archive copy failed (an OSError is the cache's: a full cache
                # filesystem is no fault of the copy). Not remembered as a failure:
                # the next read asks the PBX at once.
                self._archive_bad[transfer.ino] = isinstance(exc, (ArchiveMismatch, NotInArchive))
                transfer.fail(TransferFailed(f"archive copy {transfer.archive_key}: {exc}"))
                return
            if isinstance(exc, PbxError) and exc.file_gone:
                if self.archive is not None and self._archived(transfer.ino):
                    # Asked because its archive copy failed a moment ago: not lost.
                    # If the store failed (not the copy), the next read (after
                    # failure_memory) tries the archive again.
                    copy_wrong = self._archive_bad.get(transfer.ino, False)
                    if not copy_wrong:
                        self._archive_bad.pop(transfer.ino, None)
                    exc = TransferFailed(f"{transfer.name}: the PBX no longer has it (errno "
                                         f"{exc.errno}), and its archive copy " +
                                         ("is wrong or missing" if copy_wrong else
                                          "could not be read just now"))
                    log.warning("%s", exc)
                else:
                    exc = RecordingLost(f"{transfer.name}: the PBX no longer has it (errno "
                                        f"{exc.errno}), and it was never archived")
                    log.warning("%s", exc)
                    self._nursery_or_none_start(self._mark_lost, transfer.ino)
            self._failed[transfer.ino] = transfer
            transfer.fail(exc)
        except BaseException as exc:  # stopped, cancelled at unmount, or a bug
            if not transfer.stopped:  # (stopped: _stop did all this already)
                self._discard_partial(transfer)
                transfer.fail(TransferFailed(f"download interrupted: {type(exc).__name__}"))
            raise
        else:
            assert transfer.size is not None
            transfer.finish()
            self.stats.downloads_completed += 1
            self.observe_download(trio.current_time() - started)
            self._size_learned(transfer)  # if it was learned only now, at the end
            await transfer.size_recorded.wait()
            if transfer.archive_key is None:
                await self._record_content(transfer)
            log.info("cached %s (%d bytes) from %s", transfer.name, transfer.size,
                     "the archive" if transfer.archive_key is not None else "the PBX")
        finally:
            os.close(transfer.fd)
            if self.transfers.get(transfer.ino) is transfer:
                del self.transfers[transfer.ino]

    def _discard_partial(self, transfer: Transfer) -> None:
        self.cache.discard_partial(transfer.ino, transfer.counted)
        transfer.counted = 0

    def _archived(self, ino: int) -> bool:
        rec = self.catalog.by_ino(ino)
        return rec is not None and rec.archive == Archive.ARCHIVED

    def _nursery_or_none_start(self, task: Callable[[int], Awaitable[None]], ino: int) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(task, ino)

    async def _mark_lost(self, ino: int) -> None:
        try:
            await self.writer.set_lost(ino)
        except Exception as exc:  # found again by the next read
            log.warning("could not mark a lost recording in the catalog: %s", exc)

    async def _record_content(self, transfer: Transfer) -> None:
        """What was verified: size and SHA-256 (and, with an archive, an upload).

        The SHA-256 of a PBX download is taken here, from the complete cache file,
        not from the bytes as they came: the PBX sends no hash to check them
        against, so it only has to be there before the archive (queued by this
        very write) uploads the file, and hashing on the way cost a streaming
        reader 0.5 ms per MiB (README, `wire`). It is the hash of the bytes
        readers were given, also of those kept from an earlier attempt."""
        assert transfer.size is not None
        try:
            size, sha256 = await trio.to_thread.run_sync(fd_sha256, transfer.fd)
        except OSError as exc:  # the file was served; the next download records it
            log.warning("SHA-256 of %s not taken: %s", transfer.name, exc)
            return
        if size != transfer.size:  # a bug, or someone else writing into the cache
            log.error("cached %s has %d bytes, not the %d downloaded: not recorded",
                      transfer.name, size, transfer.size)
            return
        transfer.sha256 = sha256
        try:
            await self.writer.set_content(transfer.ino, size, sha256,
                                          archive=self.archive is not None)
        except Exception as exc:  # the file is good; the next download records it
            log.warning("SHA-256 of %s not recorded: %s", transfer.name, exc)

    def _source(self, transfer: Transfer) -> AbstractAsyncContextManager[Body]:
        if transfer.archive_key is not None and self.archive is not None:
            return self.archive.get(transfer.archive_key)
        if self.client is None:
            raise TransferFailed(f"{transfer.name} is not in the archive (yet): a reader mount "
                                 f"reads recordings from the archive only")
        return self.client.download(transfer.name)

    async def _fetch_once(self, transfer: Transfer) -> None:
        """One handshake (or object GET) and one body. Bytes already on disk from an
        earlier attempt are skipped, not rewritten: the PBX has no Range, so they are
        read and dropped."""
        verify = transfer.expected_sha256 is not None
        async with self._source(transfer) as body:
            # An archive download hashes its bytes in its reading thread (checked
            # before the last byte is released); the PBX's are hashed from the cache
            # file once complete (_record_content), off the path readers wait on.
            announced = body.announced_size
            if announced is not None:
                if transfer.size is None:
                    transfer.announce_size(announced)
                    self._size_learned(transfer)
                elif transfer.size != announced:
                    raise TransferFailed(f"PBX announced {announced} bytes, "
                                         f"but the recording is known to have {transfer.size}")
            skip = transfer.have

            def take(chunk: bytes, position: int) -> int:
                # Plain function, no generator layer: this runs for every 16 KiB.
                end = position + len(chunk)
                if transfer.stopped:
                    return end  # the partial file is not ours any more; cancelled next
                if transfer.size is not None and end > transfer.size:
                    raise TransferFailed(f"PBX sent more than the announced {transfer.size} bytes")
                if end > skip:
                    start = max(position, skip)
                    self.cache.write(transfer.fd, memoryview(chunk)[start - position:], start)
                    transfer.counted += end - start
                    self.stats.bytes_downloaded += end - start
                    # From the archive, the last byte waits for the SHA-256: a reader
                    # of wrong bytes gets EIO before the end of the file.
                    transfer.arrived(end if not verify or end < (transfer.size or 0) else end - 1)
                return end

            position = take(body.head, 0)
            if transfer.abandoned and not transfer.all_there:
                await self._linger(transfer)
            if isinstance(body, RecordingBody) and body.direct is not None:
                position = await self._pump(transfer, body, position, skip)
            else:
                async for chunk in body.chunks():
                    position = take(chunk, position)
                    if transfer.abandoned and not transfer.all_there:
                        await self._linger(transfer)  # nobody reads: read no further for now
            if transfer.size is None:
                transfer.announce_size(position)
            if position != transfer.size:
                raise TransferFailed(f"body ended after {position} of {transfer.size} bytes")
            transfer.sha256 = _source_sha256(body)
        if transfer.expected_sha256 is not None and transfer.sha256 != transfer.expected_sha256:
            log.error("archive object %s of %s has other bytes than were archived (SHA-256 %s, "
                      "catalog %s): not cached; the next read asks the PBX",
                      transfer.archive_key, transfer.name, transfer.sha256,
                      transfer.expected_sha256)
            raise ArchiveMismatch(f"SHA-256 {transfer.sha256} instead of {transfer.expected_sha256}")
        if verify:
            transfer.arrived(position)

    async def _pump(self, transfer: Transfer, body: RecordingBody, position: int,
                    skip: int) -> int:
        """The rest of a PBX body, read by a worker thread (pump.py) in legs: a leg
        ends when the body does, or when nobody reads any more (then this lingers,
        as the chunk loop does, and goes on if someone comes back)."""
        while True:
            leg = Leg(transfer, body, self.cache, position, skip, self._downloaded)
            ended = await leg.run()
            position = leg.position
            if ended:
                return position  # the whole body, or the connection ended early
            if transfer.abandoned and not transfer.all_there:
                await self._linger(transfer)

    def _downloaded(self, count: int) -> None:
        self.stats.bytes_downloaded += count

    async def _prefetch_worker(self) -> None:
        async for rec in self._prefetch_receive:
            await self.fetch(rec)

    async def fetch(self, rec: Recording) -> bool:
        """Bring *rec* into the cache (background work); True if it is there."""
        if self.cache.is_cached(rec.ino):
            return True
        transfer = self.transfer(rec)
        transfer.join(Interest.FETCH)
        try:
            await transfer.done.wait()
        finally:
            self._left(transfer, Interest.FETCH)
        return transfer.complete


def _source_sha256(body: Body) -> str | None:
    return body.sha256() if isinstance(body, ArchiveDownload) else None


class ArchiveMismatch(TransferFailed):
    """An archive object whose bytes are not the recording's: never cached."""


class Body(Protocol):
    """A download in progress, from the PBX (RecordingBody) or the archive."""

    @property
    def announced_size(self) -> int | None: ...

    head: bytes

    def chunks(self) -> AsyncIterator[bytes]: ...


class RecordingSource(Protocol):
    """Where recordings come from: a PBX of either series (recfs/pbx/client.py,
    recfs/pbx/pseries.py). Failures are PbxErrors; `file_gone` says the PBX no
    longer has the file."""

    def download(self, name: str) -> AbstractAsyncContextManager[Body]: ...


# Seconds an archive copy that failed is not used again (reads go to the PBX).
ARCHIVE_BAD_MEMORY = 60.0


def _retryable(error: Exception) -> bool:
    # A full cache stays full; a missing file stays missing; wrong bytes in the
    # archive stay wrong (the next transfer asks the PBX).
    if isinstance(error, (CacheFull, ArchiveMismatch)):
        return False
    if isinstance(error, ArchiveError):
        return error.temporary
    # Any errno but a final one (PbxError.final) may be about the random (expired,
    # already used: their numbers are undocumented) and deserves a fresh handshake,
    # as pbx-api.md says: "on any failure start over with a fresh one".
    return not (isinstance(error, PbxError) and error.final)


class OpenRecording:
    """An open file: reads come from the cache, or wait on the shared transfer."""

    def __init__(self, store: ContentStore, rec: Recording):
        self.store = store
        self.rec = rec
        self.fd: int | None = None
        self.transfer: Transfer | None = None

    def attach(self) -> None:
        """Find the bytes: the cached file if complete, else the (new or running)
        transfer's partial file, which becomes the cached file when it completes."""
        self._detach()
        cache = self.store.cache
        fd = cache.open_complete(self.rec.ino, self.store.known_size(self.rec))
        if fd is not None:
            self.store.stats.cache_hits += 1
        else:
            self.store.stats.cache_misses += 1
            transfer = self.store.transfer(self.rec)
            self.transfer = transfer
            self.store._join(transfer, Interest.READ)
            if transfer.error is not None:
                return  # it has just failed: reads fail until it may be tried again
            fd = cache.open_partial(self.rec.ino)
        self.fd = fd
        cache.pin(self.rec.ino)  # an open file is never evicted

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.store.cache.unpin(self.rec.ino)

    def _detach(self) -> None:
        transfer, self.transfer = self.transfer, None
        self._close_fd()
        if transfer is not None:
            self.store._left(transfer, Interest.READ)  # the last reader gone: it stops

    async def read(self, offset: int, size: int) -> bytes:
        if self.transfer is not None and self.transfer.error is not None:
            self.attach()  # the last download failed: a new read deserves a new try
        if self.transfer is not None and not self.transfer.complete:
            try:
                self.transfer.raise_if_failed()
                total = await self.transfer.wait_size()
                end = min(offset + size, total)
                if end <= offset:
                    return b""
                await self.transfer.wait_for(end)
            except TransferFailed:
                # The failed download's partial file is deleted: holding it open
                # would keep its disk space taken.
                self._close_fd()
                raise
        assert self.fd is not None
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        self._detach()
