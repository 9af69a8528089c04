"""Download slots: at most N transfers at the PBX, interactive ones served first, and
none held against a waiter by a transfer nobody needs.

A plain semaphore would let a prefetch queue of hundreds starve the person who has
just opened a file; here, a waiting transfer that someone is reading jumps the
queue, even if it started life as a prefetch.

A holder may say it is *idle* (store.py: its readers have gone, it only lingers in
case one comes back): whenever an urgent transfer waits for a slot and no slot is on
its way to it, an idle holder is asked to give its slot up (*preempt*); the slot
passes to the waiter when that holder has let go of the PBX (its connection closed),
so the count holds at the PBX too. Background waiters do not preempt: the holder's
lingering is short, and it is what keeps the open that follows a lookup from losing
its place to a prefetch.
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


class _Holder:
    __slots__ = ("idle", "preempt", "yielding")

    def __init__(self, idle: Callable[[], bool], preempt: Callable[[], None] | None):
        self.idle = idle
        self.preempt = preempt
        self.yielding = False  # asked to give its slot up, not released yet


class Slots:
    def __init__(self, count: int):
        if count < 1:
            raise ValueError("max_downloads must be at least 1")
        self.count = count
        self.free = count
        self.preempted = 0  # idle holders asked to give their slot up, ever
        self._waiters: list[_Waiter] = []
        self._holders: list[_Holder] = []
        self._yielding = 0  # holders asked to give up their slot that still hold it

    @property
    def in_use(self) -> int:
        return self.count - self.free

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def hold(self, urgent: Callable[[], bool], idle: Callable[[], bool] = lambda: False,
                   preempt: Callable[[], None] | None = None) -> AsyncIterator[None]:
        """Hold a slot for the duration; *urgent* is asked each time a slot frees up,
        so that a transfer's priority can change while it waits. While the slot is
        held, *preempt* is called (at most once) if *idle*() and someone waits: the
        holder is then to leave the block soon."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
        else:
            waiter = _Waiter(urgent)
            self._waiters.append(waiter)
            self.reclaim()
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter.granted:
                    self._release()
                else:
                    self._waiters.remove(waiter)
                raise
        holder = _Holder(idle, preempt)
        self._holders.append(holder)
        try:
            yield
        finally:
            self._holders.remove(holder)
            if holder.yielding:
                self._yielding -= 1
            self._release()

    def reclaim(self) -> None:
        """Ask idle holders for their slots: one for each urgent waiter that no slot
        is on its way to yet. Called when someone starts waiting, by a holder that
        has just become idle, and for a waiter that has just become urgent."""
        if not self._waiters:
            return
        short = sum(1 for w in self._waiters if w.urgent()) - self._yielding
        for holder in list(self._holders):
            if short <= 0:
                return
            if holder.yielding or holder.preempt is None or not holder.idle():
                continue
            holder.yielding = True
            self._yielding += 1
            self.preempted += 1
            short -= 1
            holder.preempt()

    def _release(self) -> None:
        if not self._waiters:
            self.free += 1
            return
        chosen = next((w for w in self._waiters if w.urgent()), self._waiters[0])
        self._waiters.remove(chosen)
        chosen.granted = True
        chosen.event.set()
