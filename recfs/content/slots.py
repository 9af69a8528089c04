"""Download slots: at most N transfers at the PBX, interactive ones served first.

A plain semaphore would let a prefetch queue of hundreds starve the person who has
just opened a file; here, a waiting transfer that someone is reading jumps the
queue, even if it started life as a prefetch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio


class _Waiter:
    __slots__ = ("urgent", "event", "granted")

    def __init__(self, urgent: Callable[[], bool]):
        self.urgent = urgent
        self.event = trio.Event()
        self.granted = False


class Slots:
    def __init__(self, count: int):
        if count < 1:
            raise ValueError("max_downloads must be at least 1")
        self.count = count
        self.free = count
        self._waiters: list[_Waiter] = []

    @property
    def in_use(self) -> int:
        return self.count - self.free

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def hold(self, urgent: Callable[[], bool]) -> AsyncIterator[None]:
        """Hold a slot for the duration; *urgent* is asked each time a slot frees up,
        so that a transfer's priority can change while it waits."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
        else:
            waiter = _Waiter(urgent)
            self._waiters.append(waiter)
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter.granted:
                    self._release()
                else:
                    self._waiters.remove(waiter)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if not self._waiters:
            self.free += 1
            return
        chosen = next((w for w in self._waiters if w.urgent()), self._waiters[0])
        self._waiters.remove(chosen)
        chosen.granted = True
        chosen.event.set()
