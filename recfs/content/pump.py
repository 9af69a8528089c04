"""The body of a PBX download, read into its partial file by two worker threads.

The trio thread also answers FUSE; a download read there costs it one trip through
httpcore, h11 and httpx per TLS read, and the bytes are copied four times on the
way. Here a reader thread reads the socket (`RecordingBody.read_into`: OpenSSL
decrypts straight into a reused buffer with the GIL released) and hands the filled
buffer to a writer thread, which `pwrite`s it into the partial file (releasing the
GIL too) and tells trio how far it got. The two overlap: while one buffer is
written, the next is decrypted (a small ring of reused buffers between them).
The bytes are not hashed here: the SHA-256 the catalog keeps is taken from the
complete cache file once every reader has its bytes (ContentStore._record_content),
which kept 0.5 ms per MiB off the path a streaming reader waits on (the README's
benchmark section has figures, also of what else was tried).

Which thread touches what (the rule of this module):
- The reader thread touches only the download's socket (through `read_into`), the
  buffer it fills, and the `Leg` fields marked "reader"; it hands each filled
  buffer to the writer through the ring (`_Ring`) and does not touch it again
  until the writer gives it back.
- The writer thread touches only the partial file's descriptor (`os.pwrite`), the
  buffers it was handed, and the `Leg` fields marked "writer"; of the Transfer it
  reads only `fd` and `size`, which do not change while it runs. It writes every
  byte the reader read (pausing does not drop any: the next leg goes on from
  `position`), unless the transfer was stopped (its file is not ours any more) or
  writing failed. It never touches the cache.
- Both threads read the trio side's `halt` and `wanted` (plain values), and tell
  each other through the ring only.
- The trio thread touches the Transfer, the cache (room, eviction, accounting) and
  the stats. The writer asks it for cache room (and, on ENOSPC, for eviction) with
  `trio.from_thread.run_sync`, waiting for the answer, and reports progress with
  `TrioToken.run_sync_soon` (at most one report queued at a time; the report reads
  the latest position) once it has written the bytes a reader waits for (`wanted`,
  kept up to date through `Transfer.on_wait`) or every REPORT bytes. Only written
  bytes are reported: a reader is never told of bytes that are not in the file.
- Pausing and stopping: trio sets `Leg.halt` and wakes the socket wait; the reader
  returns at its next check, and the writer once it has written what was read. A
  writer that fails wakes the reader the same way. The trio task that started a
  leg always waits for both threads to return, even when cancelled, so the
  connection is closed (when the response is closed) only after they are done
  with it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from functools import partial

import trio

from recfs.content.cache import DiskCache, pwrite_all
from recfs.content.transfer import Transfer
from recfs.pbx.client import RecordingBody
from recfs.pbx.tls import Interrupted

# Bytes the threads may read and write before they stop for each other or the trio
# thread: a buffer of the ring (the largest read: whole TLS records as they arrive),
# the fill at which the reader hands a buffer over (smaller hand-overs cost a thread
# wake-up each; larger ones leave the writer idle longer), and the cache room asked
# for at a time (evicting for it).
BUFFER = 1 << 20
HANDOFF = 256 << 10  # <= BUFFER: a buffer is handed over before it is full
RING = 3  # buffers per download: one being read into, the others queued or being written
ROOM = 8 << 20
REPORT = 4 << 20  # at least every this many bytes, the writer reports its progress

_rings: list[list[bytearray]] = []  # reused: zeroed MiBs per download are measurable


class _Ring:
    """The buffers between the reader and the writer thread."""

    def __init__(self, buffers: list[bytearray]):
        self.buffers = buffers
        self._cond = threading.Condition(threading.Lock())
        self._free = list(buffers)
        self._full: deque[tuple[bytearray, int, int]] = deque()  # buffer, bytes, body offset
        self._closed = False  # the reader hands over no more
        self._aborted = False  # the writer takes no more

    def take_free(self) -> bytearray | None:
        """Reader: an empty buffer, waiting for the writer to give one back; None
        once the writer has stopped."""
        with self._cond:
            while not self._free and not self._aborted:
                self._cond.wait()
            return None if self._aborted else self._free.pop()

    def hand_over(self, buffer: bytearray, count: int, offset: int) -> None:
        with self._cond:
            self._full.append((buffer, count, offset))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def take_full(self) -> tuple[bytearray, int, int] | None:
        """Writer: the next filled buffer, in body order; None once the reader is
        done and all it handed over is taken."""
        with self._cond:
            while not self._full and not self._closed:
                self._cond.wait()
            return self._full.popleft() if self._full else None

    def give_back(self, buffer: bytearray) -> None:
        with self._cond:
            self._free.append(buffer)
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


class Leg:
    """One stretch of reading, in two worker threads, until the body ends, the
    transfer is abandoned (pause) or stopped."""

    def __init__(self, transfer: Transfer, body: RecordingBody, cache: DiskCache,
                 position: int, skip: int, on_bytes: Callable[[int], None]):
        self.transfer = transfer
        self.body = body
        self.cache = cache
        self.skip = skip  # bytes before this are on disk already (an earlier attempt)
        self.on_bytes = on_bytes  # trio thread: bytes written to the cache, for stats
        self.position = position  # reader: bytes of the body read so far
        self.ended = False  # reader: the body (or the connection) ended
        self.written = max(position, skip)  # writer: bytes [0, written) are on disk
        self.failure: Exception | None = None  # the first thread to fail (set once)
        self.room = self.written  # trio: the cache has counted bytes up to here
        self.halt = False  # trio: return at the next check
        self._token = trio.lowlevel.current_trio_token()
        self._reported = self.written  # trio: what the transfer has been told
        self._queued = False  # a progress report is waiting to run on the trio thread
        # trio: the writer reports once it has written this far (a reader waits for
        # it), or REPORT bytes after its last report; a report per record would
        # cost a trio wake-up (a syscall and a thread switch) per 16 KiB. The
        # reader hands its buffer over as soon as it has read this far.
        self.wanted = self.written + 1
        self._posted = self.written  # writer: where the last report was queued
        self._ring = _Ring(_rings.pop() if _rings else [bytearray(BUFFER) for _ in range(RING)])
        self._writer_limiter = trio.CapacityLimiter(1)

    # -- the trio thread ---------------------------------------------------------------

    async def run(self) -> bool:
        """Run the threads until both return; the transfer knows every byte written.
        True if the body (or the connection) ended; False if halted (abandoned,
        stopped, cancelled)."""
        assert self.body.direct is not None
        self.body.direct.clear()
        self.transfer.on_wait = self._reader_waits
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._halt_when_cancelled)
                # Neither stage raises (each keeps its failure in `failure`), so the
                # inner nursery ends when both threads have returned.
                async with trio.open_nursery() as threads:
                    # The writer has a limiter of its own: a reader waits for its
                    # writer, which must not wait for a thread that another
                    # download's reader holds.
                    threads.start_soon(partial(trio.to_thread.run_sync, self._write_stage,
                                               limiter=self._writer_limiter))
                    threads.start_soon(trio.to_thread.run_sync, self._read_stage)
                nursery.cancel_scope.cancel()
        finally:
            _rings.append(self._ring.buffers)  # both threads are done with them
            self.transfer.on_wait = None
            self._report()
            if not self.transfer.stopped:
                # Room counted but not used goes back (a stopped transfer gave all
                # of its count back when its partial file was deleted).
                unused = self.room - self.written
                self.cache.release(unused)
                self.transfer.counted -= unused
                self.room = self.written
        if self.failure is not None:
            raise self.failure
        return self.ended and self.written >= self.position

    async def _halt_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        """Any thread: the reader returns at its next check (or wait)."""
        self.halt = True
        if self.body.direct is not None:
            self.body.direct.wake()

    def _reader_waits(self) -> None:
        self._report()  # the bytes may be on disk already

    def _report(self) -> None:
        """Tell the transfer (and so its readers) how far the bytes on disk go, and
        the threads how far the next report should wait."""
        self._queued = False
        written = self.written
        transfer = self.transfer
        if written > self._reported and not transfer.stopped:
            self.on_bytes(written - self._reported)
            self._reported = written
            transfer.arrived(written)
            if transfer.abandoned and not transfer.all_there:
                self.stop()  # nobody reads: stop reading for now (store._linger)
        first = transfer.first_wanted
        self.wanted = first if first is not None else written + REPORT

    def _grant(self, upto: int) -> int:
        """Count cache room for bytes up to *upto* (evicting for it); the new limit.
        A halted leg still gets room: the writer writes every byte already read."""
        if self.transfer.stopped:
            return self.room  # its file is not ours any more: the writer returns
        need = upto - self.room
        self.cache.reserve(need)
        self.transfer.counted += need
        self.room = upto
        return upto

    def _evict(self, need: int) -> int:
        return self.cache.evict_for_full_disk(need)

    # -- the reader thread -------------------------------------------------------------

    def _read_stage(self) -> None:
        ring = self._ring
        try:
            self._read(ring)
        except Exception as exc:
            self._fail(exc)
        finally:
            ring.close()

    def _read(self, ring: _Ring) -> None:
        read_into = self.body.read_into
        while not self.halt:
            buffer = ring.take_free()
            if buffer is None:
                return  # the writer stopped
            view = memoryview(buffer)
            offset = self.position
            fill = 0
            # Fill the buffer up to HANDOFF, or less when a reader waits for the
            # bytes (the first byte should not wait for a quarter MiB); at least
            # one read each time (`wanted` may stay behind until the writer's
            # report has run).
            while True:
                try:
                    n = read_into(view[fill:])
                except Interrupted:
                    break
                if n == 0:
                    self.ended = True  # the end of the body, or of the connection: the caller checks
                    break
                fill += n
                self.position += n
                if fill >= HANDOFF or self.position >= self.wanted or self.halt:
                    break
            if fill:
                ring.hand_over(buffer, fill, offset)
            else:
                ring.give_back(buffer)
            if self.ended:
                return

    # -- the writer thread -------------------------------------------------------------

    def _write_stage(self) -> None:
        try:
            self._write_all()
        except Exception as exc:
            self._fail(exc)

    def _write_all(self) -> None:
        ring = self._ring
        size = self.transfer.size  # set before the body is read, not changed after
        assert size is not None
        room = self.room
        while (item := ring.take_full()) is not None:
            buffer, count, start = item
            chunk = memoryview(buffer)[:count]
            end = start + count
            if end > self.skip:
                if start < self.skip:
                    chunk, start = chunk[self.skip - start:], self.skip
                if end > room:
                    room = trio.from_thread.run_sync(self._grant, min(size, end + ROOM),
                                                     trio_token=self._token)
                    if end > room:
                        self._give_up()  # stopped: its partial file is not ours any more
                        return
                pwrite_all(self.transfer.fd, chunk, start, self._evict_from_thread)
                self.written = end
                if (end >= self.wanted or end - self._posted >= REPORT) and not self._queued:
                    self._queued = True
                    self._posted = end
                    self._token.run_sync_soon(self._report)
            ring.give_back(buffer)

    def _evict_from_thread(self, need: int) -> int:
        # ENOSPC: eviction touches the cache index, which is the trio thread's.
        return trio.from_thread.run_sync(self._evict, need, trio_token=self._token)

    # -- either thread -----------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self.failure is None:
            self.failure = exc
        self._give_up()

    def _give_up(self) -> None:
        """The other thread stops too: the writer takes no more, the reader reads no more."""
        self._ring.abort()
        self.stop()
