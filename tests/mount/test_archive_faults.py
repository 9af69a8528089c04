"""The archive's faults on real mounts, each with its defined outcome (docs/faults.md):
a store that stalls in the middle of an upload or of a download, a bucket that is
missing at mount time, a cache filesystem too small for a recording read back from
the archive, and a cache over its cap while nothing in it is archived yet.

The store is SeaweedFS on loopback behind a forwarder (Link, a FaultyLink that can
also stall by itself once a given number of bytes has gone one way: "mid-upload"
and "mid-download" exactly, however fast loopback is)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from recfs.content import archiver
from recfs.content.store import DownloadPolicy
from recfs.service.mountpoint import EX_CONFIG
from tests.ci import unavailable
from tests.mount.harness import (
    Mount,
    read_after_recovery,
    the_line,
    try_mount,
    wait_for,
)
from tests.mount.test_archive import (
    archived,
    credentials_file,
    object_key,
    s3_options,
    status,
)
from tests.servers import FaultyLink

IO_TIMEOUT = 3  # seconds: io_timeout= of every mount here


class Link(FaultyLink):
    """A FaultyLink that also stalls by itself: `stall_after(up=N)` lets N more bytes
    go towards the store (a request, an upload's body), then the whole link stalls
    as with `stall()`; `down=N` likewise counts bytes from the store (an answer, a
    download's body). `flow()` forwards again, bytes held back included;
    `stalled_at` is when the stall began."""

    def __init__(self, target: tuple[str, int]):
        self._budget: dict[str, int | None] = {"up": None, "down": None}
        self._budget_lock = threading.Lock()
        self.stalled_at: float | None = None
        super().__init__(target)

    @property
    def stalled(self) -> bool:
        return self._stalled.is_set()

    def stall(self) -> None:
        self.stalled_at = time.monotonic()
        super().stall()

    def stall_after(self, *, up: int | None = None, down: int | None = None) -> None:
        with self._budget_lock:
            self._budget = {"up": up, "down": down}

    def flow(self) -> None:
        with self._budget_lock:
            self._budget = {"up": None, "down": None}
        super().flow()

    def _passing(self, direction: str, count: int) -> int:
        """How many of *count* bytes may pass now; the stall begins once the budget
        of that direction is spent."""
        with self._budget_lock:
            budget = self._budget[direction]
            if budget is None:
                return count
            if count < budget:
                self._budget[direction] = budget - count
                return count
            self._budget = {"up": None, "down": None}
        self.stall()
        return budget

    def _send(self, sink: socket.socket, data: bytes) -> None:
        while data and not self._closing.is_set():
            if self._stalled.is_set():
                time.sleep(0.05)
                continue
            try:
                sent = sink.send(data)
            except TimeoutError:  # the reader is slow: wait for it, do not drop it
                continue
            data = data[sent:]

    def _forward(self, direction: str, sink: socket.socket, data: bytes,
                 connection: dict) -> None:
        passing = self._passing(direction, len(data))
        self._send(sink, data[:passing])
        self._send(sink, data[passing:])  # once the link flows again


def through(link: FaultyLink, bucket):
    """The bucket as seen through *link* (for s3_options)."""

    class ThroughLink:
        name, endpoint = bucket.name, link.endpoint
        access_key, secret_key = bucket.access_key, bucket.secret_key

    return ThroughLink


@pytest.fixture
def link(s3_bucket):
    target = urlsplit(s3_bucket.endpoint)
    forwarder = Link((target.hostname, target.port))
    yield forwarder
    forwarder.close()


def files_in(directory: Path) -> list[str]:
    try:
        return sorted(p.name for p in directory.iterdir())
    except FileNotFoundError:
        return []


def ino_file(path: Path) -> str:
    return f"{path.stat().st_ino:016x}.wav"


def drop_page_cache() -> None:
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)


def backlog_done(mount) -> bool:
    """Nothing left to upload (stored now, or found there already)."""
    backlog = status(mount)["archive"]
    return backlog["pending"] == 0 and backlog["retrying"] == 0


# -- 1. a store that stalls mid-upload ---------------------------------------------

# A PUT gives up after botocore's two tries, each waiting up to io_timeout for the
# store (plus up to 1 s for its "100 Continue", an upload of more than 1 MB).
UPLOAD_GIVES_UP = 2 * (IO_TIMEOUT + 1)


def test_a_store_that_stalls_mid_upload(sim, s3_bucket, link, tmp_path):
    """The upload fails within the timeout (io_timeout for each of botocore's two
    tries), the recording stays pending with the error in the status, reads go on
    meanwhile; once the store flows again the retry (after the archiver's pause)
    archives it."""
    mount = Mount(sim, tmp_path / "u", *s3_options(through(link, s3_bucket), tmp_path),
                  f"io_timeout={IO_TIMEOUT}")  # prefetch=new: downloaded, verified, queued
    link.stall_after(up=1 << 20)  # 1 MiB of the 4.8 MB upload goes through, then nothing
    big = sim.call(duration=300)
    original = sim.recording_bytes(big["recording"])
    path = mount.wait_file(big)
    wait_for(lambda: link.stalled, 30, what="the upload to stall")
    wait_for(lambda: status(mount)["archive"]["retrying"] >= 1, 4 * IO_TIMEOUT,
             what="the stalled upload to fail")
    failed_after = time.monotonic() - link.stalled_at
    assert failed_after <= UPLOAD_GIVES_UP + 2, failed_after
    backlog = status(mount)["archive"]
    assert backlog["pending"] == 1 and backlog["retrying"] == 1, backlog
    assert "unreachable or failed" in backlog["last_error"], backlog
    assert f"archiving {big['recording']} failed" in mount.log()
    # The mount serves reads meanwhile: the recording from the cache, a new call
    # from the PBX.
    assert path.read_bytes() == original
    small = sim.call(duration=2)
    assert mount.wait_file(small).read_bytes() == sim.recording_bytes(small["recording"])
    link.flow()
    began = time.monotonic()
    wait_for(lambda: backlog_done(mount), archiver.FIRST_PAUSE + 3 * IO_TIMEOUT + 5,
             what="the retry to archive it")
    print(f"stalled upload failed after {failed_after:.1f} s; archived "
          f"{time.monotonic() - began:.1f} s after the store flowed again")
    s3 = s3_bucket.client()
    stored = s3.get_object(Bucket=s3_bucket.name, Key=object_key(big))
    assert stored["Body"].read() == original
    assert stored["Metadata"]["sha256"] == hashlib.sha256(original).hexdigest()
    assert not s3.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads")
    assert status(mount)["archive"]["last_error"] is None
    # Stored by the retry, or already by the stalled PUT itself: the store may finish
    # a request the client gave up on (bytes it had sent before the stall went on
    # once the link flowed). Either is success: the object holds the right bytes.
    assert status(mount)["archive"]["uploaded"] >= 1
    assert mount.unmount() == 0


def test_an_unmount_during_an_upload(sim, s3_bucket, link, tmp_path):
    """The mount goes down while a PUT is under way (here: it is stalled, and the
    store answers once the unmount has begun). The request runs to its end in its
    thread, but nothing of its outcome is written (the catalog writer has stopped):
    no error, no traceback; the recording stays pending, and the next mount finds
    the object there already (same SHA-256) or uploads it."""
    options = [*s3_options(through(link, s3_bucket), tmp_path), f"io_timeout={IO_TIMEOUT}"]
    mount = Mount(sim, tmp_path / "x", *options)
    link.stall_after(up=1 << 20)
    big = sim.call(duration=300)
    mount.wait_file(big)
    wait_for(lambda: link.stalled, 30, what="the upload to stall")
    assert mount.proc is not None
    subprocess.run(["fusermount3", "-u", str(mount.path)], check=True, timeout=30)
    link.flow()  # the PUT goes on while the mount is going down
    assert mount.proc.wait(30) == 0
    again = Mount(sim, tmp_path / "x", *options)
    wait_for(lambda: backlog_done(again), 30, what="the upload to be found or made")
    original = sim.recording_bytes(big["recording"])
    head = s3_bucket.client().head_object(Bucket=s3_bucket.name, Key=object_key(big))
    assert head["Metadata"]["sha256"] == hashlib.sha256(original).hexdigest()
    assert again.unmount() == 0


# -- 2. a store that stalls mid-download -------------------------------------------

def archive_one(sim, bucket, link, work: Path, duration: int) -> tuple[dict, bytes]:
    """A recording of *duration* seconds, archived by a first mount (unmounted again)."""
    first = Mount(sim, work, *s3_options(through(link, bucket), work.parent),
                  f"io_timeout={IO_TIMEOUT}")
    cdr = sim.call(duration=duration)
    first.wait_file(cdr)
    wait_for(lambda: archived(first, 1), 60, what="the upload")
    assert first.unmount() == 0
    return cdr, sim.recording_bytes(cdr["recording"])


def pbx_downloads(sim, name: str) -> int:
    return sim.stats()["downloads"].get(name, 0)


# 2.5 MiB of the 4.8 MB object, then nothing: whatever the size of the store's
# reads (64 KiB first, then up to 1 MiB), some reach the cache's partial file
# first (the read under way when the stall begins is lost).
STALL_AFTER = 5 << 19

# The first attempt of the archive read ends io_timeout after its last byte; the
# next two get no answer to their GET at all (botocore tries each twice); 1 s and
# 2 s between them (DownloadPolicy: three attempts, the count restarting only when
# one gets further than the one before).
ARCHIVE_READ_GIVES_UP = IO_TIMEOUT + 1 + 2 * IO_TIMEOUT + 2 + 2 * IO_TIMEOUT


# A read far beyond the stall: it waits for bytes that never come. One read call
# (direct_io, the default: one FUSE read), so its outcome is recfs's own, not the
# kernel's (which may retry a failed read-ahead by itself).
FAR = 4 << 20
SOME = 1 << 16


def test_a_store_that_stalls_mid_download(sim, s3_bucket, link, tmp_path):
    """An archived recording read on a fresh cache while the store stalls after its
    first bytes: the read waiting for bytes past the stall fails with EIO once the
    archive's attempts are spent (the PBX is not asked meanwhile, nothing is left in
    the cache). That archive copy is then not used for a while: the next read, even
    on the same open file, is a new try and comes from the PBX at once: right bytes,
    and the right file cached."""
    cdr, original = archive_one(sim, s3_bucket, link, tmp_path / "d", duration=300)
    mount = Mount(sim, tmp_path / "d", *s3_options(through(link, s3_bucket), tmp_path),
                  f"io_timeout={IO_TIMEOUT}", "prefetch=none",
                  "cache_dir=" + str(tmp_path / "fresh-cache"))
    cache = tmp_path / "fresh-cache"
    path = mount.file_of(cdr)
    name = cdr["recording"]
    downloads = pbx_downloads(sim, name)
    link.stall_after(down=STALL_AFTER)
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.monotonic()
        with pytest.raises(OSError) as caught:
            os.pread(fd, SOME, FAR)
        took = time.monotonic() - started
        assert caught.value.errno == errno.EIO
        assert link.stalled
        assert re.search(rf"download of {re.escape(name)} failed \(attempt 1 of 3, [1-9]\d* of",
                         mount.log()), "the stall came after the first bytes were on disk"
        assert took <= ARCHIVE_READ_GIVES_UP + 5, took
        assert pbx_downloads(sim, name) == downloads  # every attempt went to the archive
        assert "from the archive" not in mount.log()
        assert files_in(cache / "complete") == [] and files_in(cache / "partial") == []
        # The next read (the store still stalls) asks the PBX, at once.
        started = time.monotonic()
        assert os.pread(fd, SOME, FAR) == original[FAR:FAR + SOME]
        assert time.monotonic() - started < IO_TIMEOUT
        assert pbx_downloads(sim, name) == downloads + 1
    finally:
        os.close(fd)
    assert path.read_bytes() == original
    wait_for(lambda: files_in(cache / "complete") == [ino_file(path)], 10, what="the commit")
    assert (cache / "complete" / ino_file(path)).read_bytes() == original
    link.flow()
    drop_page_cache()
    assert path.read_bytes() == original
    assert status(mount)["archive"]["lost"] == 0
    print(f"stalled archive read failed with EIO after {took:.1f} s")
    assert mount.unmount() == 0


def test_a_stalled_store_never_makes_an_archived_recording_lost(sim, s3_bucket, link, tmp_path):
    """As above, but the PBX has deleted the recording (its auto-cleanup: what the
    archive is for). The PBX's "no such file" is not "lost" for a recording that is
    archived: EIO, never ENODATA, never counted lost; once the store flows, the
    archive serves it."""
    cdr, original = archive_one(sim, s3_bucket, link, tmp_path / "g", duration=300)
    sim.http.post("/sim/delete-recordings", json={"names": [cdr["recording"]]}).raise_for_status()
    mount = Mount(sim, tmp_path / "g", *s3_options(through(link, s3_bucket), tmp_path),
                  f"io_timeout={IO_TIMEOUT}", "prefetch=none",
                  "cache_dir=" + str(tmp_path / "fresh-cache"))
    path = mount.file_of(cdr)
    link.stall_after(down=STALL_AFTER)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as first:
            os.pread(fd, SOME, FAR)
        assert first.value.errno == errno.EIO
        with pytest.raises(OSError) as second:  # the PBX is asked: it has it no more
            os.pread(fd, SOME, FAR)
        assert second.value.errno == errno.EIO, "an archived recording is not lost"
    finally:
        os.close(fd)
    assert status(mount)["archive"]["lost"] == 0
    assert "never archived" not in mount.log()
    link.flow()
    assert read_after_recovery(path, timeout=30) == original
    assert status(mount)["archive"]["lost"] == 0
    assert mount.unmount() == 0


# -- 3. a bucket missing at mount time ---------------------------------------------

@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_missing_bucket_ends_the_mount_command(sim, s3_bucket, tmp_path, foreground):
    missing = s3_bucket.name + "-missing"
    done = try_mount(sim, tmp_path / "b", f"archive=s3://{missing}/calls",
                     f"archive_endpoint={s3_bucket.endpoint}",
                     f"archive_credentials={credentials_file(s3_bucket, tmp_path)}",
                     foreground=foreground)
    line = the_line(done, foreground, "archive=", missing, "does not exist", status=EX_CONFIG)
    assert s3_bucket.secret_key not in done.stderr + done.stdout
    assert s3_bucket.access_key not in line
    # Nothing was created in the store either.
    assert missing not in [b["Name"] for b in s3_bucket.client().list_buckets()["Buckets"]]


# -- 4. a full cache filesystem while reading back from the archive -----------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs as the cache directory of the mount named "f"."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    cache = tmp_path / "f" / "tmpfs-cache"
    cache.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache)], check=True)
    try:
        yield cache
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_a_full_cache_filesystem_while_reading_back(sim, s3_bucket, link, small_tmpfs, tmp_path):
    """A 4.8 MB archived recording read on a 2 MiB cache filesystem: EIO (no room,
    nothing to evict), nothing complete or partial left behind; the archive copy is
    not blamed (the next read tries the archive again, and a recording the PBX has
    deleted is not taken for lost); the mount lives on and serves a small archived
    recording from the archive and a new one from the PBX."""
    mount_dir = tmp_path / "f"
    first = Mount(sim, mount_dir, *s3_options(through(link, s3_bucket), tmp_path),
                  f"io_timeout={IO_TIMEOUT}")
    big, small = sim.call(duration=300), sim.call(duration=10)
    for cdr in (big, small):
        first.wait_file(cdr)
    wait_for(lambda: archived(first, 2), 60, what="two uploads")
    assert first.unmount() == 0
    originals = {c["recording"]: sim.recording_bytes(c["recording"]) for c in (big, small)}
    # The PBX's auto-cleanup took the big one: the archive has the only copy.
    sim.http.post("/sim/delete-recordings", json={"names": [big["recording"]]}).raise_for_status()
    # No cap and no free-space floor: only ENOSPC stops the writes.
    mount = Mount(sim, mount_dir, *s3_options(through(link, s3_bucket), tmp_path),
                  f"io_timeout={IO_TIMEOUT}", "prefetch=none", "cache_size=1G",
                  "cache_min_free=0", f"cache_dir={small_tmpfs}")
    path = mount.file_of(big)
    downloads = pbx_downloads(sim, big["recording"])
    randoms = sum(sim.stats()["get_random"].values())
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    assert caught.value.errno in (errno.EIO, errno.ENOSPC)
    assert "cache filesystem full" in mount.log()
    assert files_in(small_tmpfs / "complete") == [] and files_in(small_tmpfs / "partial") == []
    # Again, after the failure is forgotten: the archive again, never the PBX, and
    # the recording is not "lost".
    time.sleep(DownloadPolicy().failure_memory + 0.5)
    with pytest.raises(OSError) as again:
        path.read_bytes()
    assert again.value.errno in (errno.EIO, errno.ENOSPC)
    assert pbx_downloads(sim, big["recording"]) == downloads
    full = f"download of {big['recording']} failed: cache filesystem full"
    assert mount.log().count(full) == 2  # both reads went to the archive
    assert sum(sim.stats()["get_random"].values()) == randoms
    assert status(mount)["archive"]["lost"] == 0
    assert files_in(small_tmpfs / "complete") == [] and files_in(small_tmpfs / "partial") == []
    # The mount lives on.
    small_path = mount.file_of(small)
    assert read_after_recovery(small_path) == originals[small["recording"]]
    wait_for(lambda: files_in(small_tmpfs / "complete") == [ino_file(small_path)], 10,
             what="the commit")
    wait_for(lambda: "from the archive" in mount.log(), 5, what="the small one from the archive")
    new = sim.call(duration=2)
    assert mount.wait_file(new).read_bytes() == sim.recording_bytes(new["recording"])
    assert mount.unmount() == 0


# -- 5. eviction respects the archive ----------------------------------------------

def test_eviction_keeps_what_is_not_archived(sim, s3_bucket, link, tmp_path):
    """A 2 MiB cache, the store down, 2.5 MB of new recordings: none is evicted
    (the cache holds their only copy besides the PBX), the cache goes over its cap
    and says so; once they are archived, the next download brings it back under."""
    cap = 2 << 20
    link.down()
    mount = Mount(sim, tmp_path / "e", *s3_options(through(link, s3_bucket), tmp_path),
                  f"io_timeout={IO_TIMEOUT}", "cache_size=2M")  # prefetch=new
    assert "not reachable" in mount.log()
    complete = mount.cache_dir / "complete"
    cdrs = [sim.call(duration=40) for _ in range(4)]  # 640 kB each
    paths = [mount.wait_file(cdr) for cdr in cdrs]
    wait_for(lambda: len(files_in(complete)) == 4, 30, what="four downloads")
    wait_for(lambda: status(mount)["archive"]["pending"] == 4, 10, what="four pending")
    assert files_in(complete) == sorted(ino_file(p) for p in paths)
    snapshot = status(mount)["cache"]
    assert snapshot["max_bytes"] == cap and snapshot["bytes"] > cap, snapshot
    assert "not archived yet" in mount.log()
    for cdr, path in zip(cdrs, paths):
        assert path.read_bytes() == sim.recording_bytes(cdr["recording"])
    link.up()
    began = time.monotonic()
    wait_for(lambda: backlog_done(mount), 90, what="the backlog to be uploaded")
    print(f"backlog archived {time.monotonic() - began:.1f} s after the store came back")
    assert len(files_in(complete)) == 4  # eviction happens on writes, not on a timer
    one_more = sim.call(duration=40)
    path = mount.wait_file(one_more)
    wait_for(lambda: ino_file(path) in files_in(complete), 30, what="one more download")
    snapshot = status(mount)["cache"]
    assert snapshot["bytes"] <= cap, snapshot
    assert len(files_in(complete)) < 5
    assert path.read_bytes() == sim.recording_bytes(one_more["recording"])
    assert mount.unmount() == 0
