"""The filesystem core and the content layer, without mounting: a real catalog and
cache on disk, the PBX played by respx."""

import errno
import os
import stat

import httpx
import pytest
import respx
import trio

from recfs.catalog.database import Catalog
from recfs.pbx.reports import CallRecord
from recfs.vfs.core import FsError
from recfs.vfs.tree import ROOT_INO

from tests.unit.vfs_world import NAME, CALL, wav, Pbx, make_fs, add, settled, path_attrs


async def test_tree_layout_and_attributes(world):
    fs = world
    rec = await add(fs)
    names = [n for n, _a, _c in fs.readdir(ROOT_INO, 0)]
    assert sorted(names) == ["2024", "by-number", "by-type"]
    day = await path_attrs(fs, "2024", "06", "10")
    assert stat.S_ISDIR(day.mode) and day.mode & 0o777 == 0o555
    listing = list(fs.readdir(day.ino, 0))
    assert [n for n, _a, _c in listing] == [NAME]
    # Unknown size in a listing: shown with timeout 0, never trusted by the kernel.
    assert listing[0][1].timeout == 0
    with pytest.raises(FsError) as info:
        await fs.lookup(day.ino, "nope.wav")
    assert info.value.errno == errno.ENOENT
    assert rec.mtime == 1718001234


async def test_stat_of_unknown_size_downloads_once_and_gives_exact_size(world):
    fs = world
    audio = wav(50_000)
    pbx = Pbx(audio)
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        attrs = await fs.getattr(rec.ino)
        assert attrs.size == len(audio) and attrs.mode & 0o777 == 0o444
        fh = fs.open(rec.ino, os.O_RDONLY)
        assert await fs.read(fh, 0, len(audio) + 10) == audio
        fs.release(fh)
        assert (pbx.randoms, pbx.downloads) == (1, 1)
        await settled(fs)
        # Cached now: the catalog knows the size, the next open costs the PBX nothing.
        assert fs.catalog.by_ino(rec.ino).size == len(audio)
        fh = fs.open(rec.ino, os.O_RDONLY)
        assert fs.is_cached_open(fh)
        assert await fs.read(fh, 100, 50) == audio[100:150]
        fs.release(fh)
        assert (pbx.randoms, pbx.downloads) == (1, 1)


async def test_concurrent_readers_share_one_download_and_read_before_it_ends(world):
    fs = world
    audio = wav(200_000)
    pbx = Pbx(audio, chunk=8192, delay=0.01, length=False)
    results = {}
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)

        async def reader(key, offset):
            fh = fs.open(rec.ino, os.O_RDONLY)
            results[key] = (await fs.read(fh, offset, 4096), pbx.streaming)
            fs.release(fh)

        async with trio.open_nursery() as n:
            n.start_soon(reader, "start", 0)
            n.start_soon(reader, "end", len(audio) - 4096)
        assert results["start"] == (audio[:4096], True)  # answered mid-download
        assert results["end"][0] == audio[-4096:]
        assert (pbx.randoms, pbx.downloads) == (1, 1)


async def read_error(fs, ino: int) -> int:
    """The errno of a read that must fail."""
    fh = fs.open(ino, os.O_RDONLY)
    try:
        with pytest.raises(FsError) as info:
            await fs.read(fh, 0, 100)
    finally:
        fs.release(fh)
    return info.value.errno


async def test_pbx_error_is_eio_and_caches_nothing(world, tmp_path):
    fs = world
    pbx = Pbx(wav(1000), error="10003")
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        assert await read_error(fs, rec.ino) == errno.EIO
        assert pbx.downloads == 1  # an errno is final: no pointless retries
    assert list((tmp_path / "cache" / "complete").iterdir()) == []
    assert list((tmp_path / "cache" / "partial").iterdir()) == []
    assert fs.catalog.by_ino(rec.ino).size is None


async def test_a_file_the_pbx_no_longer_has_is_lost_and_fails_at_once(world):
    fs = world
    pbx = Pbx(wav(1000), error="10023")  # audio file does not exist: auto-cleanup
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        assert await read_error(fs, rec.ino) == errno.ENODATA
        with trio.fail_after(5):  # marked by a write of its own
            while not fs.catalog.by_ino(rec.ino).lost:
                await trio.sleep(0.01)
        with pytest.raises(FsError) as again:
            fs.open(rec.ino, os.O_RDONLY)  # at once: no handshake
        assert again.value.errno == errno.ENODATA
        assert pbx.downloads == 1


async def test_short_body_is_retried_with_a_fresh_random(world):
    fs = world
    audio = wav(30_000)
    pbx = Pbx(audio)
    real = pbx._download

    def first_short(request):
        if pbx.downloads == 0:
            pbx.downloads += 1

            async def body():
                yield audio[:10_000]
            return httpx.Response(200, content=body(), headers={"content-length": str(len(audio))})
        return real(request)

    pbx._download = first_short
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        fh = fs.open(rec.ino, os.O_RDONLY)
        assert await fs.read(fh, 0, len(audio)) == audio
        fs.release(fh)
    assert (pbx.randoms, pbx.downloads) == (2, 2)


async def test_writes_are_refused(world):
    fs = world
    rec = await add(fs)
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(FsError) as info:
            fs.open(rec.ino, flags)
        assert info.value.errno == errno.EROFS


async def test_inodes_survive_a_remount(world, tmp_path):
    fs = world
    rec = await add(fs)
    day = await path_attrs(fs, "2024", "06", "10")
    again = make_fs(Catalog(tmp_path / "state" / "catalog.sqlite"), fs.content)
    day2 = await path_attrs(again, "2024", "06", "10")
    assert day2.ino == day.ino
    assert [c for _n, _a, c in again.readdir(day2.ino, 0)] == [rec.ino]


async def test_readdir_cursor_is_stable_while_entries_arrive(world):
    fs = world
    for i in range(30):
        await add(fs, CallRecord(name=f"20240610083402-17180012{i:02d}.1-1-2-Internal.wav",
                           timestart="2024-06-10 08:33:54"))
    day = await path_attrs(fs, "2024", "06", "10")
    seen, cursor = [], 0
    while True:
        page = list(fs.readdir(day.ino, cursor))[:7]
        if not page:
            break
        seen += [n for n, _a, _c in page]
        cursor = page[-1][2]
        await add(fs, CallRecord(name=f"late-{len(seen)}.wav", timestart="2024-06-10 09:00:00"))
    assert len(seen) == len(set(seen)) >= 30


async def test_duplicate_report_is_harmless(world):
    fs = world
    assert await fs.content.writer.add(CALL) is not None
    assert await fs.content.writer.add(CALL) is None
    assert fs.catalog.count() == 1


async def test_xattrs_carry_the_cdr(world):
    fs = world
    rec = await add(fs)
    assert "user.recfs.caller" in fs.listxattr(rec.ino)
    assert fs.getxattr(rec.ino, "user.recfs.caller") == b"0612345678"
    with pytest.raises(FsError):
        fs.getxattr(rec.ino, "user.recfs.did")


async def test_views_list_the_same_files_with_the_same_inodes(world):
    fs = world
    rec = await add(fs)
    other = await add(fs, CallRecord(name="20240611090000-1718096400.1-2001-1003-Internal.wav",
                               callid="1718096400.1", timestart="2024-06-11 09:00:00",
                               caller="2001", callee="1003", type="Internal"))
    await fs.content.writer.set_size(rec.ino, 1044)  # known: a lookup then needs no PBX
    by_type = await path_attrs(fs, "by-type", "Inbound", "2024", "06", "10")
    assert [(n, c) for n, _a, c in fs.readdir(by_type.ino, 0)] == [(NAME, rec.ino)]
    assert (await fs.lookup(by_type.ino, NAME)).ino == rec.ino
    with pytest.raises(FsError):
        await fs.lookup(by_type.ino, other.name)  # Internal, not Inbound
    numbers = await path_attrs(fs, "by-number")
    assert sorted(n for n, _a, _c in fs.readdir(numbers.ino, 0)) == ["0612345678", "1003", "2001"]
    both = await path_attrs(fs, "by-number", "2001")
    assert sorted(c for _n, _a, c in fs.readdir(both.ino, 0)) == sorted([rec.ino, other.ino])
    with pytest.raises(FsError):
        await fs.lookup(numbers.ino, "9999")
    # Each name is a hard link: the day, the type's day, each number's directory.
    assert (await fs.lookup(by_type.ino, NAME)).nlink == 4
    # Hostile types and numbers never become directories (nor links).
    odd = await add(fs, CallRecord(name="x.wav", timestart="2024-06-10 10:00:00", type="..",
                             caller="a/b", callee="2001"))
    await fs.content.writer.set_size(odd.ino, 10)
    assert (await fs.getattr(odd.ino)).nlink == 2
    assert "a/b" not in [n for n, _a, _c in fs.readdir(numbers.ino, 0)]
    assert ".." not in [n for n, _a, _c in fs.readdir((await path_attrs(fs, "by-type")).ino, 0)]


async def test_a_name_reused_for_another_call_is_refused(world, caplog):
    fs = world
    first = await add(fs)
    impostor = CallRecord(name=NAME, callid="1718009999.1", timestart="2024-06-10 10:00:00",
                          caller="666", callee="2001", type="Inbound")
    assert await fs.content.writer.add(impostor) is None
    assert fs.catalog.by_name(NAME) == first
    assert "belongs to call 1718001234.88 already" in caplog.text
