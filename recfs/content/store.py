"""The content layer: bytes of recordings, from the cache or from the PBX.

One Transfer per recording at a time, shared by every reader and the prefetcher;
reads wait only for the bytes they need; a finished file is checked against its
announced size, fsynced and renamed into the cache, and its size recorded in the
catalog.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import trio

from recfs.catalog.database import Catalog, Recording
from recfs.content.cache import CacheFull, DiskCache
from recfs.content.readahead import ReadAhead
from recfs.content.slots import Slots
from recfs.content.transfer import Transfer, TransferFailed
from recfs.pbx.client import PbxClient
from recfs.pbx.errors import BAD_CREDENTIALS, LOCKED_OUT, NO_SUCH_FILE, PbxError

log = logging.getLogger("recfs.content")


READAHEAD_MIN_CACHE = 64 << 20  # smaller caches get no read-ahead


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


class ContentStore:
    def __init__(self, catalog: Catalog, cache: DiskCache, client: PbxClient,
                 policy: DownloadPolicy | None = None):
        self.catalog = catalog
        self.cache = cache
        self.client = client
        self.policy = policy or DownloadPolicy()
        self.slots = Slots(self.policy.max_downloads)
        self.transfers: dict[int, Transfer] = {}
        self._failed: dict[int, tuple[float, Transfer]] = {}  # ino → (when, failed transfer)
        self._nursery: trio.Nursery | None = None
        self._prefetch_send, self._prefetch_receive = trio.open_memory_channel[Recording](math.inf)
        self.downloads_completed = 0
        self.downloads_failed = 0
        self.attempts_started = 0
        self.retries = 0
        self.on_size: Callable[[int, int], None] | None = None
        # For metrics: bytes received, opens served by the cache or not, and a
        # callback given each completed download's duration.
        self.bytes_downloaded = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.download_latency: Callable[[float], None] | None = None
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
            nursery.start_soon(self.cache.reconcile)
            task_status.started()
            await trio.sleep_forever()

    # -- what the filesystem asks ---------------------------------------------------

    def known_size(self, rec: Recording) -> int | None:
        """The exact size without touching the network, if it is known at all."""
        if rec.size is not None:
            return rec.size
        transfer = self.transfers.get(rec.ino)
        if transfer is not None and transfer.size is not None:
            return transfer.size
        return self.cache.cached_size(rec.ino)

    def is_cached(self, rec: Recording) -> bool:
        return self.cache.is_cached(rec.ino)

    async def size(self, rec: Recording) -> int:
        """The exact size; may start the download and wait for its first bytes."""
        size = self.known_size(rec)
        if size is not None:
            return size
        transfer = self.transfer(rec)
        transfer.readers += 1
        try:
            return await transfer.wait_size()
        finally:
            transfer.readers -= 1

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
        failed = self._failed.get(rec.ino)
        if failed is not None:
            if trio.current_time() - failed[0] < self.policy.failure_memory:
                return failed[1]
            del self._failed[rec.ino]
        if self._nursery is None:
            raise RuntimeError("ContentStore.run() is not running")
        transfer = Transfer(rec.ino, rec.name, rec.size, self.cache.create_partial(rec.ino))
        self.transfers[rec.ino] = transfer
        self._nursery.start_soon(self._download, transfer)
        return transfer

    async def _download(self, transfer: Transfer) -> None:
        started = trio.current_time()
        try:
            # Attempts count failures in a row without progress: a transfer that
            # keeps getting further is worth continuing.
            attempt = 0
            while True:
                attempt += 1
                had = transfer.have
                try:
                    async with self.slots.hold(lambda: transfer.urgent):
                        self.attempts_started += 1
                        await self._fetch_once(transfer)
                    break
                except (PbxError, TransferFailed) as exc:
                    if transfer.have > had:
                        attempt = 1
                    final = attempt >= self.policy.attempts or not _retryable(exc)
                    log.warning("download of %s failed (attempt %d of %d, %d of %s bytes on disk):"
                                " %s%s", transfer.name, attempt, self.policy.attempts,
                                transfer.have, transfer.size if transfer.size is not None else "?",
                                exc, "" if final else "; retrying")
                    if final:
                        raise
                    self.retries += 1
                    await trio.sleep(self.policy.backoff * 2 ** (attempt - 1))
            assert transfer.size is not None
            await self.cache.commit(transfer.ino, transfer.fd, transfer.size)
        except (PbxError, TransferFailed, OSError) as exc:
            self.downloads_failed += 1
            self.cache.discard_partial(transfer.ino, transfer.have)
            if isinstance(exc, CacheFull):
                log.warning("download of %s failed: %s", transfer.name, exc.strerror)
            if len(self._failed) > 1000:
                self._failed.clear()
            self._failed[transfer.ino] = (trio.current_time(), transfer)
            transfer.fail(exc)
        except BaseException as exc:  # cancelled at unmount, or a bug: readers must not hang
            self.cache.discard_partial(transfer.ino, transfer.have)
            transfer.fail(TransferFailed(f"download interrupted: {type(exc).__name__}"))
            raise
        else:
            assert transfer.size is not None
            self.catalog.set_size(transfer.ino, transfer.size)
            if self.on_size is not None:
                self.on_size(transfer.ino, transfer.size)
            self.downloads_completed += 1
            if self.download_latency is not None:
                self.download_latency(trio.current_time() - started)
            transfer.finish()
            log.info("cached %s (%d bytes)", transfer.name, transfer.size)
        finally:
            os.close(transfer.fd)
            if self.transfers.get(transfer.ino) is transfer:
                del self.transfers[transfer.ino]

    async def _fetch_once(self, transfer: Transfer) -> None:
        """One handshake and one body. Bytes already on disk from an earlier attempt
        are skipped, not rewritten: the PBX has no Range, so they are read and dropped."""
        async with self.client.download(transfer.name) as body:
            announced = body.announced_size
            if announced is not None:
                if transfer.size is None:
                    transfer.announce_size(announced)
                elif transfer.size != announced:
                    raise TransferFailed(f"PBX announced {announced} bytes, "
                                         f"but the recording is known to have {transfer.size}")
            skip = transfer.have

            def take(chunk: bytes, position: int) -> int:
                # Plain function, no generator layer: this runs for every 16 KiB.
                end = position + len(chunk)
                if transfer.size is not None and end > transfer.size:
                    raise TransferFailed(f"PBX sent more than the announced {transfer.size} bytes")
                if end > skip:
                    start = max(position, skip)
                    self.cache.write(transfer.fd, memoryview(chunk)[start - position:], start)
                    self.bytes_downloaded += end - start
                    transfer.arrived(end)
                return end

            position = take(body.head, 0)
            async for chunk in body.chunks():
                position = take(chunk, position)
            if transfer.size is None:
                transfer.announce_size(position)
            if position != transfer.size:
                raise TransferFailed(f"body ended after {position} of {transfer.size} bytes")

    async def _prefetch_worker(self) -> None:
        async for rec in self._prefetch_receive:
            await self.fetch(rec)

    async def fetch(self, rec: Recording) -> bool:
        """Bring *rec* into the cache (background work); True if it is there."""
        if self.cache.is_cached(rec.ino):
            return True
        transfer = self.transfer(rec)
        await transfer.done.wait()
        return transfer.complete


# Errnos that will be the same on every try. Any other errno may be about the random
# (expired, already used: their numbers are undocumented) and deserves a fresh
# handshake, as pbx-api.md says: "on any failure start over with a fresh one".
FINAL_ERRNOS = frozenset({NO_SUCH_FILE, BAD_CREDENTIALS, LOCKED_OUT, "10003", "20000", "20001"})


def _retryable(error: Exception) -> bool:
    # A full cache stays full; a missing file stays missing.
    if isinstance(error, CacheFull):
        return False
    return not (isinstance(error, PbxError) and error.errno in FINAL_ERRNOS)


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
            self.store.cache_hits += 1
        else:
            self.store.cache_misses += 1
            transfer = self.store.transfer(self.rec)
            self.transfer = transfer
            transfer.readers += 1
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
        if self.transfer is not None:
            self.transfer.readers -= 1
            self.transfer = None
        self._close_fd()

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
