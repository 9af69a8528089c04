"""How reads reach recfs: direct_io (the default) or through the kernel's page cache
(`-o direct_io=no`), and what each means for programs that map files."""

from __future__ import annotations

import errno
import mmap
import os
import shutil

import httpx
import pytest

from tests.mount.harness import free_port, metric, wait_for

MiB = 1 << 20


def _cached_recording(sim, mount, url):
    cdr = sim.call(duration=80)  # 1.28 MB
    path = mount.wait_file(cdr)
    truth = sim.recording_bytes(cdr["recording"])
    assert path.read_bytes() == truth
    wait_for(lambda: any(mount.cache_dir.joinpath("complete").iterdir()), what="cache file")
    return path, truth


def _reads(url: str) -> float:
    return metric(httpx.get(url).text, "recfs_read_seconds_count")


def test_direct_io_reads_come_whole_to_recfs_every_time(sim, mount_factory, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    mount = mount_factory("prefetch=none", f"metrics=127.0.0.1:{port}")
    path, truth = _cached_recording(sim, mount, url)
    with open(path, "rb") as f:
        for _again in range(2):
            before = _reads(url)
            # Requests as large as the program's buffer (two: a buffer that does not
            # start on a page boundary spans 257 pages), not eight 128 KiB pages of
            # read-ahead; and the second time too: no second copy in the page cache.
            assert os.pread(f.fileno(), MiB, 0) == truth[:MiB]
            assert 1 <= _reads(url) - before <= 2
        with pytest.raises(OSError) as refused:
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # MAP_SHARED
        assert refused.value.errno == errno.ENODEV  # as the README says; direct_io=no below
        private = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        assert private[:] == truth
        private.close()
    shutil.copyfile(path, tmp_path / "copy")  # sendfile(2)
    assert (tmp_path / "copy").read_bytes() == truth


def test_direct_io_no_keeps_pages_in_the_kernel_and_mmap_works(sim, mount_factory, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    mount = mount_factory("prefetch=none", "direct_io=no", f"metrics=127.0.0.1:{port}")
    path, truth = _cached_recording(sim, mount, url)
    with open(path, "rb") as f:
        first = f.read()
        before = _reads(url)
        f.seek(0)
        assert f.read() == first == truth
        assert _reads(url) == before  # served from the kernel's pages
        shared = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert shared[:] == truth
        shared.close()
    shutil.copyfile(path, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == truth
