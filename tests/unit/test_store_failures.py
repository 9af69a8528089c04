"""ContentStore's failure memory: a transfer that gave up answers reads of its
recording at once for failure_memory seconds (the kernel re-issues failed reads),
then a read starts a fresh download; and the memory holds a bounded number."""

from __future__ import annotations

import contextlib

import trio

from recfs.catalog.database import Recording
from recfs.content.cache import DiskCache
from recfs.content.store import ContentStore, DownloadPolicy
from recfs.pbx.errors import NO_SUCH_FILE, PbxError
from recfs.pbx.reports import CallRecord

NAME = "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"
REC = Recording(1, "2024-06-10", 1718001234.0, 1000, 0.0, CallRecord(NAME, "1718001234.88"))


class MissingFilePbx:
    """Every download fails with an error no retry can mend."""

    def __init__(self) -> None:
        self.downloads = 0

    @contextlib.asynccontextmanager
    async def download(self, name: str):
        self.downloads += 1
        raise PbxError("download", NO_SUCH_FILE)
        yield  # pragma: no cover


def store(tmp_path, client=None, memory: float = 2.0) -> ContentStore:
    return ContentStore(None, DiskCache(tmp_path / "cache"), client, None,  # type: ignore[arg-type]
                        DownloadPolicy(max_downloads=1, failure_memory=memory))


async def test_a_failed_transfer_is_remembered_for_failure_memory_seconds(tmp_path, nursery):
    pbx = MissingFilePbx()
    content = store(tmp_path, pbx, memory=0.3)
    await nursery.start(content.run)
    failed = content.transfer(REC)
    with trio.fail_after(5):
        await failed.done.wait()
    assert not failed.complete and content.stats.downloads_failed == 1
    # Within the memory: the same failed transfer, no new handshake.
    assert content.transfer(REC) is failed
    assert not content._worth_fetching(REC)
    assert pbx.downloads == 1
    await trio.sleep(0.35)
    # Past it: forgotten, and a read starts over.
    assert content._worth_fetching(REC)
    again = content.transfer(REC)
    assert again is not failed
    with trio.fail_after(5):
        await again.done.wait()
    assert pbx.downloads == 2


def test_the_failure_memory_is_bounded_and_works_outside_trio(tmp_path):
    content = store(tmp_path)
    for ino in range(1, 5001):
        content._failed[ino] = object()  # type: ignore[assignment]
    assert len(content._failed) == content._failed.maxsize < 5000
    assert 5000 in content._failed and 1 not in content._failed  # the oldest go first
    assert not content._worth_fetching(Recording(5000, "2024-06-10", 0.0, 1, 0.0,
                                                 CallRecord("x.wav")))
