"""The download pump's two threads without a PBX: a body that halts or fails in the
middle, and what then is in the partial file and what the transfer was told."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import cast

import pytest
import trio

from recfs.content.cache import DiskCache
from recfs.content.pump import Leg
from recfs.content.transfer import Transfer
from recfs.pbx.client import RecordingBody
from recfs.pbx.tls import Interrupted

DATA = os.urandom(3 << 20)
PIECE = 100_000  # what one read_into returns


class FakeDirect:
    """`SocketBody`'s wake-up, as the Leg uses it."""

    def __init__(self) -> None:
        self.woken = threading.Event()

    def wake(self) -> None:
        self.woken.set()

    def clear(self) -> None:
        self.woken.clear()


class FakeBody:
    """The rest of a body, PIECE bytes per read; *on_read*(count) runs in the
    reader thread after each read."""

    def __init__(self, data: bytes, on_read=lambda count: None):
        self.data = data
        self.at = 0
        self.reads = 0
        self.direct = FakeDirect()
        self.on_read = on_read

    def read_into(self, view: memoryview) -> int:
        if self.direct.woken.is_set():
            raise Interrupted()
        n = min(len(view), PIECE, len(self.data) - self.at)
        view[:n] = self.data[self.at:self.at + n]
        self.at += n
        self.reads += 1
        self.on_read(self.reads)
        return n


def run_leg(tmp_path: Path, body: FakeBody, *, fd: int | None = None) -> tuple[Leg, Transfer]:
    cache = DiskCache(tmp_path / "cache")
    own = cache.create_partial(1)
    transfer = Transfer(1, "r.wav", len(DATA), own if fd is None else fd)
    legs: list[Leg] = []

    async def main() -> None:
        position = 0
        while True:  # as ContentStore._pump: legs until the body ends
            leg = Leg(transfer, cast(RecordingBody, body), cache, position, 0,
                      lambda count: None)
            legs.append(leg)
            ended = await leg.run()
            # Never told of bytes that are not in the file, and every byte read is.
            assert transfer.have == leg.written == leg.position
            assert os.pread(own, leg.written, 0) == DATA[:leg.written]
            position = leg.position
            if ended:
                return

    try:
        trio.run(main)
        return legs[-1], transfer
    finally:
        os.close(own)


def test_whole_body(tmp_path):
    leg, transfer = run_leg(tmp_path, FakeBody(DATA))
    assert transfer.have == len(DATA)


def test_halted_with_bytes_in_flight_writes_them(tmp_path):
    """A pause (the trio side sets halt) comes while the reader has read bytes the
    writer has not written, before the writer asked for cache room: they are
    written all the same, and the next leg goes on after them."""
    halts = []

    def halt_now(reads: int) -> None:
        if reads in (1, 7, 20):
            halts.append(reads)
            leg_holder[-1].stop()

    leg_holder: list[Leg] = []
    original_init = Leg.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        leg_holder.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Leg, "__init__", init)
        leg, transfer = run_leg(tmp_path, FakeBody(DATA, halt_now))
    assert halts == [1, 7, 20]
    assert len(leg_holder) == 4
    assert transfer.have == len(DATA)


def test_write_failure_stops_the_reader(tmp_path):
    body = FakeBody(DATA)
    with pytest.raises(OSError):
        run_leg(tmp_path, body, fd=-1)  # EBADF in the writer's pwrite
    assert body.at < len(DATA)  # the reader stopped instead of reading on
