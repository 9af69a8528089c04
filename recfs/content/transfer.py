"""One recording's download in progress: what has arrived, who waits for it, and
waiting for more.

Only the downloading task writes; readers wait for the byte they need. All of it
runs on the one trio thread, so the state changes between two awaits are atomic.

A transfer knows *why* it runs (`Interest`): open files that read it, `stat` calls
that wait only for its size, and background fetches (prefetch, read-ahead) that want
it in the cache. Once none of them needs anything more from it (the last reader has
closed its file, the stat has its size) it is *abandoned*: the content store then
stops it (store.py), since no one would ever read the rest.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import trio


class TransferFailed(Exception):
    """The download gave up; every read waiting on it gets EIO."""


class RecordingLost(TransferFailed):
    """The PBX no longer has the recording, and the archive has no copy: reads fail
    at once (ENODATA), with no handshake."""


class Interest(enum.Enum):
    READ = "readers"  # an open file: wants the bytes
    SIZE = "sizers"  # a stat: wants the size, then nothing more
    FETCH = "fetchers"  # prefetch or read-ahead: wants the file in the cache


class Transfer:
    def __init__(self, ino: int, name: str, size: int | None, fd: int, *,
                 archive_key: str | None = None, sha256: str | None = None):
        """*archive_key*: read from the archive (under that key) instead of the PBX;
        *sha256*: what the bytes must hash to (known for an archived recording)."""
        self.ino = ino
        self.name = name
        self.archive_key = archive_key
        self.expected_sha256 = sha256
        # Of the complete file: from the archive, as it came (checked against the
        # expected one); from the PBX, once complete (ContentStore._record_content).
        self.sha256: str | None = None
        self.size = size  # known from the catalog, Content-Length or the WAV header
        self.fd = fd  # the partial file, written only by the download task (or its writer thread, pump.py)
        self.have = 0  # bytes [0, have) are on disk
        self.counted = 0  # bytes the cache counts for the partial file (written or reserved)
        self.readers = 0  # open files: make the transfer urgent
        self.sizers = 0  # stat calls waiting for the size: urgent too, until it is known
        self.fetchers = 0  # background fetches waiting for the whole file
        self.joined = False  # a transfer nobody ever joined (started directly) is never abandoned
        self.was_read = False  # an open file has joined it
        self.idle_since: float | None = None  # trio time it was last abandoned
        self.stopped = False  # stopped by the store: it no longer owns its partial file
        self.holding_slot = False  # between the slot's grant and its release
        # The catalog learns a size as soon as the transfer does: `unrecorded` until
        # that write is under way, `size_recorded` once it is done (or was not needed).
        self.unrecorded = size is None
        self.size_recorded = trio.Event()
        if size is not None:
            self.size_recorded.set()
        self.scope = trio.CancelScope()  # the download task runs inside it
        self.error: Exception | None = None
        self.complete = False
        self.done = trio.Event()
        self._changed = trio.Event()  # any news: size, end, failure
        self._interest = trio.Event()  # someone joined
        # Readers waiting for bytes: (end, event), woken only once their bytes are
        # there (or at the end, or on failure), not at every chunk: twenty readers
        # of one download must not all wake for every 16 KiB.
        self._byte_waiters: list[tuple[int, trio.Event]] = []
        # Set while a worker thread writes the body (content/pump.py): called when a
        # reader starts waiting for bytes not reported yet, so that the writer
        # reports as soon as it has them, and not at every record.
        self.on_wait: Callable[[], None] | None = None

    @property
    def urgent(self) -> bool:
        """Someone is waiting in person (a read, a stat), not a background fetch."""
        return self.readers > 0 or (self.sizers > 0 and self.size is None)

    @property
    def wanted(self) -> bool:
        """Anyone still needs something this transfer has not delivered yet."""
        return self.readers > 0 or self.fetchers > 0 or (self.sizers > 0 and self.size is None)

    @property
    def abandoned(self) -> bool:
        """Everyone it was for has what they wanted, or has gone."""
        return self.joined and not self.wanted and not self.done.is_set()

    @property
    def all_there(self) -> bool:
        """Every byte is on disk: what is left is checking and committing the file."""
        return self.size is not None and self.have >= self.size

    # -- interest -----------------------------------------------------------------

    def join(self, interest: Interest) -> None:
        setattr(self, interest.value, getattr(self, interest.value) + 1)
        self.joined = True
        self.was_read |= interest is Interest.READ
        self.idle_since = None
        self._interest.set()
        self._interest = trio.Event()

    def leave(self, interest: Interest) -> bool:
        """One interest went; True if that abandoned the transfer."""
        setattr(self, interest.value, getattr(self, interest.value) - 1)
        if self.abandoned and self.idle_since is None:
            self.idle_since = trio.current_time()
        return self.abandoned

    async def wait_interest(self) -> None:
        """Return once someone joins (a stat waiting for the size has it already)."""
        await self._interest.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        for _end, event in self._byte_waiters:
            event.set()
        self._byte_waiters = []

    # -- the download task's side -------------------------------------------------

    def announce_size(self, size: int) -> None:
        self.size = size
        self._notify()

    def arrived(self, have: int) -> None:
        # Never backwards: a worker thread's progress report may come after the
        # download task has said the same or more (content/pump.py).
        if have <= self.have:
            return
        self.have = have
        if self._byte_waiters and self._byte_waiters[0][0] <= have:
            ready = [w for w in self._byte_waiters if w[0] <= have]
            self._byte_waiters = [w for w in self._byte_waiters if w[0] > have]
            for _end, event in ready:
                event.set()

    @property
    def first_wanted(self) -> int | None:
        """The smallest end of bytes a reader waits for, if any."""
        return self._byte_waiters[0][0] if self._byte_waiters else None

    def finish(self) -> None:
        self.complete = True
        self.done.set()
        self._notify()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()
        self._notify()

    # -- the readers' side ------------------------------------------------------

    def raise_if_failed(self) -> None:
        if isinstance(self.error, RecordingLost):
            raise self.error  # its own kind: the reader answers ENODATA, not EIO
        if self.error is not None:
            raise TransferFailed(f"download of {self.name} failed: {self.error}") from self.error

    async def wait_size(self) -> int:
        while self.size is None:
            self.raise_if_failed()
            if self.complete:
                break
            await self._changed.wait()
        assert self.size is not None
        return self.size

    async def wait_for(self, end: int) -> None:
        """Return once bytes [0, end) are on disk."""
        while self.have < end and not self.complete:
            self.raise_if_failed()
            event = trio.Event()
            self._byte_waiters.append((end, event))
            self._byte_waiters.sort(key=lambda w: w[0])
            if self.on_wait is not None:
                self.on_wait()
            await event.wait()
        if self.have < end:
            self.raise_if_failed()
            raise TransferFailed(f"{self.name} ended after {self.have} bytes")
