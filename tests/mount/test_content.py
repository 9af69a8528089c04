"""The content layer on a real mount: interrupted transfers, the bounded cache, a full
cache filesystem, kill -9 and remount, prefetch=all."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess

import pytest

from tests.ci import unavailable

from tests.mount.harness import wait_for

SECOND = 16000  # bytes of 8 kHz 16-bit mono audio per second of call
HEADER = 44


def randoms(sim, name) -> int:
    return sim.stats()["get_random"].get(name, 0)


def downloads(sim, name) -> int:
    return sim.stats()["downloads"].get(name, 0)


def complete_files(mount) -> list[str]:
    return sorted(os.listdir(mount.cache_dir / "complete"))


def partial_files(mount) -> list[str]:
    return sorted(os.listdir(mount.cache_dir / "partial"))


def cache_bytes(mount) -> int:
    """What the cache's complete files hold, as du sees it (apparent size)."""
    out = subprocess.run(["du", "-s", "-b", str(mount.cache_dir / "complete")],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) - os.stat(mount.cache_dir / "complete").st_size


def _reads(path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


# -- interrupted transfers ----------------------------------------------------------

@pytest.mark.parametrize("fault", [
    {"reset_after": 100_000},
    {"truncate_after": 100_000},
    {"truncate_after": 100_000, "no_content_length": True},
    {"reset_after": 30},  # inside the WAV header: not even the size is known yet
])
def test_an_interrupted_transfer_is_resumed_with_a_fresh_random(sim, mounted, fault):
    cdr = sim.call(duration=30)
    name = cdr["recording"]
    path = mounted.wait_file(cdr)
    sim.faults(**fault, times=1)
    assert path.read_bytes() == sim.recording_bytes(name)
    assert randoms(sim, name) == 2 and downloads(sim, name) == 2
    assert "retrying" in mounted.log()
    # The reader has its bytes a moment before the file is committed.
    wait_for(lambda: complete_files(mounted), what="the cache file")
    assert partial_files(mounted) == []


def test_a_stalled_body_is_abandoned_after_io_timeout_and_retried(sim, mount_factory):
    mount = mount_factory("prefetch=none", "io_timeout=1.5")
    cdr = sim.call(duration=20)
    name = cdr["recording"]
    path = mount.wait_file(cdr)
    sim.faults(stall_after=150_000, times=1)
    assert path.read_bytes() == sim.recording_bytes(name)
    assert randoms(sim, name) == 2
    assert "ReadTimeout" in mount.log()


@pytest.mark.parametrize("fault", [{"reset_after": 50_000}, {"stall_after": 50_000}])
def test_when_retries_give_up_reads_fail_with_eio_and_the_mount_lives_on(sim, mount_factory,
                                                                          fault):
    mount = mount_factory("prefetch=none", "io_timeout=1")
    cdr = sim.call(duration=20)
    name = cdr["recording"]
    path = mount.wait_file(cdr)
    sim.faults(**fault)  # every attempt fails the same way
    with open(path, "rb", buffering=0) as f:
        assert f.read(1000) == sim.recording_bytes(name)[:1000]  # before the cut: served
        f.seek(200_000)
        with pytest.raises(OSError) as info:
            f.read(1000)  # past the cut: waits, then EIO once the retries are spent
        assert info.value.errno == errno.EIO
    assert randoms(sim, name) == 3  # the retry limit, each with a fresh random
    assert complete_files(mount) == [] and partial_files(mount) == []
    sim.clear_faults()
    # Right after giving up, reads fail at once (no new transfer); a little later a
    # read tries again.
    wait_for(lambda: _reads(path) == sim.recording_bytes(name), what="a new try")
    other = sim.call(duration=2)
    assert mount.wait_file(other).read_bytes() == sim.recording_bytes(other["recording"])


def test_seeks_ahead_wait_and_seeks_back_come_from_disk(sim, mounted):
    cdr = sim.call(duration=40)  # 640 kB at 200 kB/s
    name = cdr["recording"]
    truth = sim.recording_bytes(name)
    path = mounted.wait_file(cdr)
    sim.faults(throttle=200_000)
    with open(path, "rb", buffering=0) as f:
        f.seek(len(truth) - 5000)
        assert f.read(10_000) == truth[-5000:]
        for offset in (0, 300_000, 44, len(truth) - 1):
            f.seek(offset)
            assert f.read(4096) == truth[offset:offset + 4096]
    assert randoms(sim, name) == 1 and downloads(sim, name) == 1


def test_a_reader_goes_before_the_prefetch_backlog(sim, mount_factory):
    mount = mount_factory("prefetch=new", "max_downloads=1")
    sim.faults(throttle=300_000)
    backlog = [sim.call(duration=20) for _ in range(5)]  # 320 kB each: ~1 s apiece
    wanted = sim.call(duration=2)
    path = mount.wait_file(wanted)
    assert path.read_bytes() == sim.recording_bytes(wanted["recording"])
    # When the reader had its bytes, most of the backlog was still waiting.
    done = [c for c in backlog if sim.stats()["downloads"].get(c["recording"])]
    assert len(done) <= 2, done
    wait_for(lambda: len(complete_files(mount)) == 6, 30, what="the backlog")
    assert sim.stats()["downloads_max_concurrent"] == 1


@pytest.mark.parametrize("readahead", [1, 0])
def test_a_tool_copying_a_day_file_by_file_keeps_two_transfers_busy(sim, mount_factory,
                                                                    readahead):
    mount = mount_factory("prefetch=none", "max_downloads=2", f"readahead={readahead}")
    cdrs = [sim.call(duration=5) for _ in range(6)]  # 80 kB each
    paths = [mount.wait_file(c) for c in cdrs]
    sim.http.post("/sim/reset-stats").raise_for_status()
    sim.faults(throttle=200_000)  # ~0.4 s a download
    for path in sorted(paths):  # one file at a time, in name order, as rsync copies
        assert path.read_bytes() == sim.recording_bytes(path.name)
    stats = sim.stats()
    assert [stats["downloads"].get(c["recording"]) for c in cdrs] == [1] * 6
    # The tool had one file open at a time; read-ahead used the second transfer.
    assert stats["downloads_max_concurrent"] == (2 if readahead else 1)


# -- the bounded cache ----------------------------------------------------------------

def test_cache_size_is_kept_least_recently_used_go_first(sim, mount_factory):
    mount = mount_factory("prefetch=none", "cache_size=1M", "cache_min_free=0")
    cdrs = [sim.call(duration=12) for _ in range(8)]  # 192 kB each, 1.5 MB in all
    paths = [mount.wait_file(c) for c in cdrs]
    for i, (cdr, path) in enumerate(zip(cdrs, paths)):
        assert path.read_bytes() == sim.recording_bytes(cdr["recording"])
        assert cache_bytes(mount) <= 1 << 20
        if i == 4:
            # Recently used: the first one is read again (from the cache), so the
            # second is now the least recently used.
            assert paths[0].read_bytes() == sim.recording_bytes(cdrs[0]["recording"])
            assert downloads(sim, cdrs[0]["recording"]) == 1
    cached = len(complete_files(mount))
    assert 1 <= cached < 8 and cache_bytes(mount) <= 1 << 20
    # A size stays known after eviction: stat asks nobody.
    before = sim.stats()["get_random"]
    assert paths[1].stat().st_size == HEADER + 12 * SECOND
    assert sim.stats()["get_random"] == before
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    # The one read again survived its elders; the second went first.
    assert paths[0].read_bytes() == sim.recording_bytes(cdrs[0]["recording"])
    assert downloads(sim, cdrs[0]["recording"]) == 1
    assert paths[1].read_bytes() == sim.recording_bytes(cdrs[1]["recording"])
    assert downloads(sim, cdrs[1]["recording"]) == 2
    assert paths[7].read_bytes() == sim.recording_bytes(cdrs[7]["recording"])
    assert downloads(sim, cdrs[7]["recording"]) == 1


def test_open_files_are_not_evicted_and_the_overshoot_is_reported(sim, mount_factory):
    mount = mount_factory("prefetch=none", "cache_size=300K", "cache_min_free=0")
    cdrs = [sim.call(duration=12) for _ in range(3)]  # 192 kB each
    paths = [mount.wait_file(c) for c in cdrs]
    truth = [sim.recording_bytes(c["recording"]) for c in cdrs]
    assert paths[0].read_bytes() == truth[0]
    with open(paths[0], "rb") as held:
        assert paths[1].read_bytes() == truth[1]
        held_file = f"{os.fstat(held.fileno()).st_ino:016x}.wav"
        # Over the cap, and the held one stays.
        wait_for(lambda: len(complete_files(mount)) == 2, what="the second file in the cache")
        assert held_file in complete_files(mount)
        assert "over its limit" in mount.log()
        assert held.read() == truth[0]
    assert paths[2].read_bytes() == truth[2]
    assert cache_bytes(mount) <= 300 * 1024
    assert sum(downloads(sim, c["recording"]) for c in cdrs) == 3


@pytest.fixture
def small_cache_fs(tmp_path):
    """A 1 MiB tmpfs as the mount's cache directory (the mount named "m")."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    cache = tmp_path / "m" / "cache"
    cache.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True)
    yield cache
    subprocess.run(["umount", "-l", str(cache)], check=False)


def test_a_full_cache_filesystem_evicts_or_fails_one_read(small_cache_fs, sim, mount_factory):
    # No cap and no free-space floor: only ENOSPC stops the writes.
    mount = mount_factory("prefetch=none", "cache_size=1G", "cache_min_free=0")
    assert mount.cache_dir == small_cache_fs
    cdrs = [sim.call(duration=12) for _ in range(8)]  # 1.5 MB into 1 MiB
    for cdr in cdrs:
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
    assert 1 <= len(complete_files(mount)) < 8
    assert "cache filesystem full" not in mount.log()  # evicted and carried on
    big = sim.call(duration=70)  # 1.1 MB: can never fit
    path = mount.wait_file(big)
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO
    assert f"{path.stat().st_ino:016x}.wav" not in complete_files(mount)
    assert partial_files(mount) == []
    # A complete file is complete: every one left matches the PBX's.
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    for cdr in cdrs:
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])


def test_cache_min_free_keeps_room_on_the_filesystem(small_cache_fs, sim, mount_factory):
    mount = mount_factory("prefetch=none", "cache_size=1G", "cache_min_free=600K")
    cdrs = [sim.call(duration=12) for _ in range(6)]  # 192 kB each
    for cdr in cdrs:
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
        wait_for(lambda: partial_files(mount) == [], what="the commit")
        st = os.statvfs(small_cache_fs)
        assert st.f_bavail * st.f_frsize >= 600 * 1024 - 4096
    assert 1 <= len(complete_files(mount)) <= 2


# -- persistence --------------------------------------------------------------------

def test_kill_9_mid_download_then_remount(sim, mount_factory):
    mount = mount_factory("prefetch=none")
    done = sim.call(duration=3)
    assert mount.wait_file(done).read_bytes() == sim.recording_bytes(done["recording"])
    wait_for(lambda: complete_files(mount), what="cache file")
    busy = sim.call(duration=60)
    busy_path = mount.wait_file(busy)
    sim.faults(throttle=100_000)
    reader = subprocess.Popen(["cat", str(busy_path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for(lambda: any((mount.cache_dir / "partial" / f).stat().st_size > 100_000
                         for f in partial_files(mount)), 20, what="a partial file")
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(10)
    reader.wait(30)
    subprocess.run(["fusermount3", "-uz", str(mount.path)], check=True)
    assert partial_files(mount)  # what the crash left
    sim.clear_faults()
    mount.start()
    assert partial_files(mount) == []  # never trusted
    wait_for(lambda: not list(mount.cache_dir.glob("partial.discard-*")), what="cleanup")
    assert mount.wait_file(done).read_bytes() == sim.recording_bytes(done["recording"])
    assert downloads(sim, done["recording"]) == 1  # the complete file was kept
    assert busy_path.read_bytes() == sim.recording_bytes(busy["recording"])
    assert downloads(sim, busy["recording"]) == 2
    assert re.search(r"cache \S+: 1 files", mount.log())


# -- prefetch=all -------------------------------------------------------------------

def test_prefetch_all_brings_the_catalog_in_newest_first(sim, mount_factory):
    first = mount_factory("prefetch=none")
    cdrs = [sim.call(duration=2) for i in range(5)]
    for cdr in cdrs:
        first.wait_file(cdr)
    assert first.unmount() == 0
    assert sim.stats()["downloads"] == {} or sum(sim.stats()["downloads"].values()) == 0
    second = mount_factory("prefetch=all", "max_downloads=1")  # the same state and cache
    # "cached" is logged once the catalog has the download's hash: the walk may have
    # moved on (and ended) by then.
    wait_for(lambda: "prefetch=all done" in second.log()
             and len(re.findall(r"cached (\S+) \(", second.log())) >= 5, 30, what="prefetch=all")
    names = re.findall(r"cached (\S+) \(", second.log())
    newest_first = [c["recording"] for c in sorted(
        cdrs, key=lambda c: tuple(map(int, c["callid"].split("."))), reverse=True)]
    assert names == newest_first
    assert re.search(r"prefetch=all done: 5 fetched .* 0 failed", second.log())
    for cdr in cdrs:
        assert second.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
    assert all(n == 1 for n in sim.stats()["downloads"].values())
