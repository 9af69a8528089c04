"""The body of a PBX download, read into its partial file by a worker thread.

The trio thread also answers FUSE; a download read there costs it one trip through
httpcore, h11 and httpx per TLS read, and the bytes are copied four times on the
way. Here a worker thread reads the socket (`RecordingBody.read_into`: OpenSSL
decrypts straight into a reused buffer with the GIL released), hashes the bytes and
`pwrite`s them into the partial file (both release the GIL too), and tells trio how
far it got.

Which thread touches what (the rule of this module):
- The worker thread touches only the download's socket (through `read_into`), the
  partial file's descriptor (`os.pwrite`), the SHA-256 object, its read buffer, and
  the `Leg` fields marked "thread" below; of the Transfer it reads only `fd` and
  `size`, which do not change while it runs, and of the trio side's fields only
  `halt` and `wanted` (plain values). It never touches the cache.
- The trio thread touches the Transfer, the cache (room, eviction, accounting) and
  the stats. The worker asks it for cache room (and, on ENOSPC, for eviction) with
  `trio.from_thread.run_sync`, waiting for the answer, and reports progress with
  `TrioToken.run_sync_soon` (at most one report queued at a time; the report reads
  the latest position) once it has the bytes a reader waits for (`wanted`, kept
  up to date through `Transfer.on_wait`) or every REPORT bytes.
- Pausing and stopping: trio sets `Leg.halt` and wakes the socket wait; the worker
  returns at its next check. The trio task that started a leg always waits for the
  thread to return, even when cancelled, so the connection is closed (when the
  response is closed) only after the thread is done with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from recfs.content.cache import DiskCache, pwrite_all
from recfs.content.transfer import Transfer
from recfs.pbx.client import RecordingBody
from recfs.pbx.tls import Interrupted

# Bytes the worker may read and write before it stops for the trio thread: the
# largest read (whole TLS records as they arrive, up to this much), and the cache
# room asked for at a time (evicting for it).
BUFFER = 1 << 20
ROOM = 8 << 20
REPORT = 4 << 20  # at least every this many bytes, the worker reports its progress

_buffers: list[bytearray] = []  # reused: a zeroed MiB per download is measurable


class Leg:
    """One stretch of reading, in one worker thread, until the body ends, the
    transfer is abandoned (pause) or stopped."""

    def __init__(self, transfer: Transfer, body: RecordingBody, cache: DiskCache,
                 digest: Any, position: int, skip: int, on_bytes: Callable[[int], None]):
        self.transfer = transfer
        self.body = body
        self.cache = cache
        self.digest = digest
        self.skip = skip  # bytes before this are on disk already (an earlier attempt)
        self.on_bytes = on_bytes  # trio thread: bytes written to the cache, for stats
        self.position = position  # thread: bytes of the body read so far
        self.written = max(position, skip)  # thread: bytes [0, written) are on disk
        self.room = self.written  # trio: the cache has counted bytes up to here
        self.halt = False  # trio: return at the next check
        self._token = trio.lowlevel.current_trio_token()
        self._reported = self.written  # trio: what the transfer has been told
        self._queued = False  # a progress report is waiting to run on the trio thread
        # trio: the worker reports once it has written this far (a reader waits for
        # it), or REPORT bytes after its last report; a report per record would
        # cost a trio wake-up (a syscall and a thread switch) per 16 KiB.
        self.wanted = self.written + 1
        self._posted = self.written  # thread: where the last report was queued

    # -- the trio thread ---------------------------------------------------------------

    async def run(self) -> bool:
        """Run the worker until it returns; the transfer knows every byte it wrote.
        True if the body (or the connection) ended; False if halted (abandoned,
        stopped, cancelled)."""
        assert self.body.direct is not None
        self.body.direct.clear()
        self.transfer.on_wait = self._reader_waits
        ended, failure = False, None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._halt_when_cancelled)
                try:
                    ended = await trio.to_thread.run_sync(self._work)
                except Exception as exc:  # raised below, not wrapped in the nursery's group
                    failure = exc
                finally:
                    nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            self.transfer.on_wait = None
            self._report()
            if not self.transfer.stopped:
                # Room counted but not used goes back (a stopped transfer gave all
                # of its count back when its partial file was deleted).
                unused = self.room - self.written
                self.cache.release(unused)
                self.transfer.counted -= unused
                self.room = self.written
        return ended

    async def _halt_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        self.halt = True
        if self.body.direct is not None:
            self.body.direct.wake()

    def _reader_waits(self) -> None:
        self._report()  # the bytes may be on disk already

    def _report(self) -> None:
        """Tell the transfer (and so its readers) how far the bytes on disk go, and
        the worker how far the next report should wait."""
        self._queued = False
        written = self.written
        transfer = self.transfer
        if written > self._reported and not transfer.stopped:
            self.on_bytes(written - self._reported)
            self._reported = written
            transfer.arrived(written)
            if transfer.abandoned and not transfer.all_there:
                self.halt = True  # nobody reads: stop reading for now (store._linger)
        first = transfer.first_wanted
        self.wanted = first if first is not None else written + REPORT

    def _grant(self, upto: int) -> int:
        """Count cache room for bytes up to *upto* (evicting for it); the new limit."""
        if self.transfer.stopped or self.halt:
            return self.room  # no more: the worker returns
        need = upto - self.room
        self.cache.reserve(need)
        self.transfer.counted += need
        self.room = upto
        return upto

    def _evict(self, need: int) -> int:
        return self.cache.evict_for_full_disk(need)

    # -- the worker thread -------------------------------------------------------------

    def _work(self) -> bool:
        buffer = _buffers.pop() if _buffers else bytearray(BUFFER)
        try:
            return self._pump(memoryview(buffer))
        finally:
            _buffers.append(buffer)

    def _pump(self, view: memoryview) -> bool:
        size = self.transfer.size  # set before the body is read, not changed after
        assert size is not None
        room = self.room
        while not self.halt:
            try:
                n = self.body.read_into(view)
            except Interrupted:
                return False
            if n == 0:
                return True  # the end of the body, or of the connection: the caller checks
            chunk = view[:n]
            self.digest.update(chunk)
            start, end = self.position, self.position + n
            self.position = end
            if end <= self.skip:
                continue
            if start < self.skip:
                chunk, start = chunk[self.skip - start:], self.skip
            if end > room:
                room = trio.from_thread.run_sync(self._grant, min(size, end + ROOM),
                                                 trio_token=self._token)
                if end > room:
                    return False  # stopped or halted meanwhile
            self._write(chunk, start)
            self.written = end
            if (end >= self.wanted or end - self._posted >= REPORT) and not self._queued:
                self._queued = True
                self._posted = end
                self._token.run_sync_soon(self._report)
        return False

    def _write(self, chunk: memoryview, offset: int) -> None:
        pwrite_all(self.transfer.fd, chunk, offset, self._evict_from_thread)

    def _evict_from_thread(self, need: int) -> int:
        # ENOSPC: eviction touches the cache index, which is the trio thread's.
        return trio.from_thread.run_sync(self._evict, need, trio_token=self._token)
