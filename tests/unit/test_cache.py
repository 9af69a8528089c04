"""The disk cache without mounting: limits, LRU, pins, ENOSPC, the index across
restarts, and what a crash leaves behind."""

from __future__ import annotations

import errno
import os
import time

import pytest
import trio

from recfs.content.cache import (
    _TOUCH_GRANULARITY,
    CacheFull,
    DiskCache,
    parse_size,
    resolve_size,
)


def put(cache: DiskCache, ino: int, data: bytes) -> None:
    """A download in miniature: write a partial file, then commit it."""
    fd = cache.create_partial(ino)
    try:
        for start in range(0, len(data), 1000):
            cache.write(fd, data[start:start + 1000], start)
        trio.run(cache.commit, ino, fd, len(data))
    finally:
        os.close(fd)


def cached(cache: DiskCache) -> set[int]:
    return {int(p.stem, 16) for p in cache.complete_dir.iterdir()}


def test_parse_size():
    assert parse_size("20G") == (20 << 30, False)
    assert parse_size("512m") == (512 << 20, False)
    assert parse_size("1.5K") == (1536, False)
    assert parse_size("100") == (100, False)
    assert parse_size("5%") == (500, True)
    for bad in ("", "G", "-1M", "101%", "lots"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_resolve_size_is_absolute_or_a_share_of_the_filesystem(tmp_path):
    st = os.statvfs(tmp_path)
    total = st.f_blocks * st.f_frsize
    assert resolve_size("1M", tmp_path, 25) == 1 << 20
    assert resolve_size("10%", tmp_path, 25) == total * 1000 // 10000
    assert resolve_size(None, tmp_path, 25) == int(total * 25 / 100)


def test_least_recently_used_complete_files_go_first(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=10_000)
    for ino in (1, 2, 3):
        put(cache, ino, bytes([ino]) * 3000)
    assert cache.used_bytes == 9000
    fd = cache.open_complete(1, 3000)  # 1 is now the most recently used
    os.close(fd)
    put(cache, 4, b"4" * 3000)  # needs 2000 bytes: 2 goes
    assert cached(cache) == {1, 3, 4}
    assert cache.used_bytes == 9000 and cache.evictions == 1
    put(cache, 5, b"5" * 6000)  # 3, then 1
    assert cached(cache) == {4, 5}
    assert cache.used_bytes <= 10_000


def test_pinned_files_stay_and_the_overshoot_is_counted(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=5000)
    put(cache, 1, b"1" * 4000)
    cache.pin(1)
    put(cache, 2, b"2" * 4000)
    assert cached(cache) == {1, 2}
    assert cache.overshoot_max > 0
    cache.unpin(1)
    put(cache, 3, b"3" * 1000)
    assert cached(cache) == {2, 3}
    assert cache.used_bytes <= 5000


def test_enospc_evicts_then_gives_up_with_cachefull(tmp_path, monkeypatch):
    cache = DiskCache(tmp_path / "c")
    put(cache, 1, b"1" * 100)
    put(cache, 2, b"2" * 100)
    room = {"left": 150}
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):  # a filesystem with 150 bytes left, until files go
        if room["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), room["left"])
        room["left"] -= n
        return real_pwrite(fd, data[:n], offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        room["left"] += 100
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    fd = cache.create_partial(3)
    cache.write(fd, b"3" * 250, 0)  # 150, then ENOSPC: evict 1, 100 more
    assert cached(cache) == {2} and cache.partial_bytes == 250
    with pytest.raises(CacheFull):
        cache.write(fd, b"3" * 500, 250)  # evicts 2, still no room
    assert cached(cache) == set()
    os.close(fd)
    cache.discard_partial(3, cache.partial_bytes)
    assert cache.partial_bytes == 0 and not list(cache.partial_dir.iterdir())


def test_the_index_survives_a_restart_and_partials_do_not(tmp_path):
    index = tmp_path / "state" / "index.sqlite"
    index.parent.mkdir()
    cache = DiskCache(tmp_path / "c", index_path=index)
    put(cache, 1, b"1" * 1000)
    put(cache, 2, b"2" * 2000)
    fd = cache.create_partial(3)
    cache.write(fd, b"3" * 500, 0)  # a download in flight when the process dies
    os.close(fd)
    # No close(): as after kill -9.
    again = DiskCache(tmp_path / "c", index_path=index)
    assert again.usage() == (2, 3000)  # from the index, without scanning
    assert list(again.partial_dir.iterdir()) == []
    assert again.cached_size(1) == 1000 and again.cached_size(3) is None
    trio.run(again.reconcile)
    assert not list((tmp_path / "c").glob("partial.discard-*"))
    assert again.usage() == (2, 3000)


def test_reconcile_adopts_unindexed_files_and_forgets_missing_ones(tmp_path):
    cache = DiskCache(tmp_path / "c")
    put(cache, 1, b"1" * 1000)
    put(cache, 2, b"2" * 2000)
    cache.close()
    # A crash between rename and index write; and a file deleted by hand.
    (tmp_path / "c" / "complete" / f"{7:016x}.wav").write_bytes(b"7" * 700)
    (tmp_path / "c" / "complete" / f"{1:016x}.wav").unlink()
    again = DiskCache(tmp_path / "c")
    trio.run(again.reconcile)
    assert again.usage() == (2, 2700)
    assert again.cached_size(7) == 700 and again.cached_size(1) is None


def test_a_cached_file_of_the_wrong_length_is_discarded(tmp_path):
    cache = DiskCache(tmp_path / "c")
    put(cache, 1, b"1" * 1000)
    assert cache.open_complete(1, 999) is None
    assert cached(cache) == set() and cache.usage() == (0, 0)


def last_access(cache: DiskCache, ino: int) -> float:
    return cache._db.execute("SELECT last_access FROM files WHERE ino = ?", (ino,)).fetchone()[0]


def test_an_access_time_is_written_at_most_once_per_granularity(tmp_path, monkeypatch):
    cache = DiskCache(tmp_path / "c")
    put(cache, 1, b"1" * 1000)
    os.close(cache.open_complete(1, 1000))
    first = last_access(cache, 1)
    later = time.time() + 5
    monkeypatch.setattr(time, "time", lambda: later)
    os.close(cache.open_complete(1, 1000))
    assert last_access(cache, 1) == first  # opened again within the granularity
    # Once the granularity has passed, the next open writes it again.
    cache._touched.expire(time.monotonic() + _TOUCH_GRANULARITY)
    os.close(cache.open_complete(1, 1000))
    assert last_access(cache, 1) == later


def test_the_map_of_recent_accesses_is_bounded(tmp_path):
    cache = DiskCache(tmp_path / "c")
    put(cache, 1, b"1" * 100)
    os.close(cache.open_complete(1, 100))
    for ino in range(2, 10_000):  # as many opens of other files, within seconds
        cache._touched[ino] = True
    assert len(cache._touched) == cache._touched.maxsize == 4096
    assert 9999 in cache._touched and 1 not in cache._touched  # the oldest went first


# -- what may not be evicted (with an archive: what is not archived yet) -------------

def test_eviction_skips_what_may_not_go_and_frees_the_rest(tmp_path):
    kept = {1, 3}  # not archived yet
    cache = DiskCache(tmp_path / "c", max_bytes=10_000, may_evict=lambda ino: ino not in kept)
    for ino in (1, 2, 3):
        put(cache, ino, bytes([ino]) * 3000)
    put(cache, 4, b"4" * 3000)  # over the cap: 1 is the oldest but stays, 2 goes
    assert cached(cache) == {1, 3, 4} and cache.evictions == 1
    put(cache, 5, b"5" * 3000)  # 1 and 3 stay, 4 goes
    assert cached(cache) == {1, 3, 5} and cache.evictions == 2
    assert cache.used_bytes <= 10_000
    kept.clear()  # archived
    cache.evictable_changed()
    put(cache, 6, b"6" * 3000)  # now the oldest, 1, goes
    assert cached(cache) == {3, 5, 6}


def test_a_cache_of_files_that_may_not_go_is_not_walked_at_every_write(tmp_path):
    asked: list[int] = []
    allowed: set[int] = set()

    def may_evict(ino: int) -> bool:
        asked.append(ino)
        return ino in allowed

    cache = DiskCache(tmp_path / "c", max_bytes=5000, may_evict=may_evict)
    put(cache, 1, b"1" * 3000)
    put(cache, 2, b"2" * 2000)  # at the cap, not over it: nothing asked
    assert asked == []
    fd = cache.create_partial(3)
    try:
        cache.write(fd, b"3" * 1000, 0)  # over: both asked, both refused
        assert sorted(asked) == [1, 2] and cached(cache) == {1, 2}
        assert cache.overshoot_max == 1000 and cache._nothing_to_evict
        asked.clear()
        cache.write(fd, b"3" * 1000, 1000)  # over again: the index is not walked again
        cache.write(fd, b"3" * 1000, 2000)
        assert asked == [] and cache.overshoot_max == 3000

        allowed.add(1)  # archived: the archiver says so
        cache.evictable_changed()
        assert not cache._nothing_to_evict
        cache.write(fd, b"3" * 1000, 3000)
        # 4000 bytes over: 1 goes (the oldest), 2 is asked too and stays.
        assert asked == [1, 2] and cached(cache) == {2}
        assert cache.used_bytes == 2000 + 4000

        asked.clear()
        cache.write(fd, b"3" * 1000, 4000)  # over: 2 refused, then nothing more to ask
        cache.write(fd, b"3" * 1000, 5000)
        assert asked == [2]

        asked.clear()
        cache.pin(2)  # opened: a pin alone changes nothing
        cache.write(fd, b"3" * 1000, 6000)
        assert asked == []
        cache.unpin(2)  # the last handle of a file closed: it may be evictable now
        assert not cache._nothing_to_evict
        cache.write(fd, b"3" * 1000, 7000)
        assert asked == [2]

        asked.clear()
        cache.write(fd, b"3" * 1000, 8000)
        assert asked == []
        trio.run(cache.commit, 3, fd, 9000)  # a new complete file: walked again
        assert not cache._nothing_to_evict
    finally:
        os.close(fd)
    put(cache, 4, b"4" * 10)
    assert sorted(asked) == [2, 3]  # still refused: both stay
    assert cached(cache) == {2, 3, 4}


def test_files_adopted_after_start_up_are_evictable_again(tmp_path):
    """A pass that found nothing to evict is not the last word once reconcile()
    adopts complete files the index missed."""
    allowed = {7}
    cache = DiskCache(tmp_path / "c", max_bytes=5000, may_evict=lambda ino: ino in allowed)
    put(cache, 1, b"1" * 4000)
    # A crash between rename and index write left 7 unindexed.
    (tmp_path / "c" / "complete" / f"{7:016x}.wav").write_bytes(b"7" * 2000)
    fd = cache.create_partial(2)
    try:
        cache.write(fd, b"2" * 2000, 0)  # over: 1 refused, nothing to evict
        assert cache._nothing_to_evict
        trio.run(cache.reconcile)  # adopts 7, and the cache is over its cap
        assert cached(cache) == {1}  # 7 went at once (2 is still partial)
    finally:
        os.close(fd)
