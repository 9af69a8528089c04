"""One recording's download in progress: what has arrived, and waiting for more.

Only the downloading task writes; readers wait for the byte they need. All of it
runs on the one trio thread, so the state changes between two awaits are atomic.
"""

from __future__ import annotations

import trio


class TransferFailed(Exception):
    """The download gave up; every read waiting on it gets EIO."""


class Transfer:
    def __init__(self, ino: int, name: str, size: int | None, fd: int):
        self.ino = ino
        self.name = name
        self.size = size  # known from the catalog, Content-Length or the WAV header
        self.fd = fd  # the partial file, written with pwrite by the download task only
        self.have = 0  # bytes [0, have) are on disk
        self.readers = 0  # open files and stat calls waiting: makes the transfer urgent
        self.error: Exception | None = None
        self.complete = False
        self.done = trio.Event()
        self._changed = trio.Event()  # any news: size, end, failure
        # Readers waiting for bytes: (end, event), woken only once their bytes are
        # there (or at the end, or on failure), not at every chunk: twenty readers
        # of one download must not all wake for every 16 KiB.
        self._byte_waiters: list[tuple[int, trio.Event]] = []

    @property
    def urgent(self) -> bool:
        return self.readers > 0

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
        self.have = have
        if self._byte_waiters and self._byte_waiters[0][0] <= have:
            ready = [w for w in self._byte_waiters if w[0] <= have]
            self._byte_waiters = [w for w in self._byte_waiters if w[0] > have]
            for _end, event in ready:
                event.set()

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
            await event.wait()
        if self.have < end:
            self.raise_if_failed()
            raise TransferFailed(f"{self.name} ended after {self.have} bytes")
