"""Why a transfer runs (recfs/content/store.py, transfer.py): a stat learns a size for
one handshake and the headers, and the size goes to the catalog at once; a download
nobody reads any more stops, and its slot goes to whoever waits; one that prefetch
asked for carries on. The PBX is played by respx (tests/unit/vfs_world.py)."""

from __future__ import annotations

import os

import trio
import trio.testing

from recfs.pbx.reports import CallRecord
from tests.unit.vfs_world import Pbx, add, settled, wav

import respx


def call(i: int) -> CallRecord:
    return CallRecord(name=f"2024061008340{i}-171800123{i}.1-0612345678-2001-Inbound.wav",
                      callid=f"171800123{i}.1", timestart="2024-06-10 08:33:54",
                      caller="0612345678", callee="2001", type="Inbound")


def slow_pbx(size: int = 1 << 20) -> Pbx:
    """A body that takes over a second (256 chunks of 4 KiB, 5 ms apart)."""
    return Pbx(wav(size), chunk=4096, delay=0.005)


async def size_in_catalog(fs, ino: int) -> int | None:
    with trio.fail_after(5):
        while fs.catalog.by_ino(ino).size is None:
            await trio.sleep(0.01)
    return fs.catalog.by_ino(ino).size


def cache_files(fs) -> list[str]:
    root = fs.content.cache.root
    return sorted(p.name for d in ("complete", "partial") for p in (root / d).iterdir())


async def read_all(fs, ino: int, size: int) -> bytes:
    fh = fs.open(ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, size + 10)
    finally:
        fs.release(fh)


async def test_a_stat_costs_one_handshake_and_the_size_goes_to_the_catalog(world):
    fs = world
    fs.content.policy.linger = 0.05
    pbx = slow_pbx()
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        assert (await fs.getattr(rec.ino)).size == len(pbx.audio)
        # Known at once, also before the catalog has it: no second handshake.
        assert (await fs.getattr(rec.ino)).size == len(pbx.audio)
        assert await size_in_catalog(fs, rec.ino) == len(pbx.audio)
        await settled(fs)  # stopped after lingering: nobody opened it
        assert (pbx.randoms, pbx.downloads) == (1, 1)
        stats = fs.content.stats
        assert stats.downloads_stopped == 1 and stats.downloads_completed == 0
        assert stats.bytes_downloaded < len(pbx.audio) // 20  # the body was cut short
        assert pbx.streaming  # the PBX never got to the end of it
        assert cache_files(fs) == []  # the partial file went with it
        assert fs.content.cache.partial_bytes == 0
        assert rec.ino not in fs.content._failed  # stopping is not failing

        # An open later: a new handshake, and every byte.
        assert await read_all(fs, rec.ino, len(pbx.audio)) == pbx.audio
        assert (pbx.randoms, pbx.downloads) == (2, 2)
        await settled(fs)
        assert fs.content.is_cached(fs.catalog.by_ino(rec.ino))
        # From now on the PBX is not asked at all.
        assert (await fs.getattr(rec.ino)).size == len(pbx.audio)
        assert await read_all(fs, rec.ino, len(pbx.audio)) == pbx.audio
        assert pbx.randoms == 2


async def test_the_open_after_a_lookup_joins_its_transfer(world):
    """The kernel's open comes right after the lookup that learned the size: the
    abandoned transfer lingers for it, one handshake in all."""
    fs = world
    pbx = slow_pbx(200_000)
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        await fs.getattr(rec.ino)
        await trio.sleep(0.1)
        assert await read_all(fs, rec.ino, len(pbx.audio)) == pbx.audio
        assert (pbx.randoms, pbx.downloads) == (1, 1)
        assert fs.content.stats.downloads_stopped == 0


async def test_a_size_learned_mid_transfer_is_in_the_catalog_before_it_ends(world):
    fs = world
    fs.content.policy.linger = 0.05
    pbx = slow_pbx()
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        fh = fs.open(rec.ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 4096) == pbx.audio[:4096]
        assert await size_in_catalog(fs, rec.ino) == len(pbx.audio)
        assert fs.content.transfers  # still running: the size did not wait for the end
        fs.release(fh)
        await settled(fs)


async def test_abandoned_reads_do_not_delay_a_third_reader(world):
    fs = world
    assert fs.content.slots.count == 2
    pbx = slow_pbx()
    with respx.mock as router:
        pbx.install(router)
        recs = [await add(fs, call(i)) for i in range(3)]
        for rec in recs[:2]:  # two `head -c 4096`
            fh = fs.open(rec.ino, os.O_RDONLY)
            assert await fs.read(fh, 0, 4096) == pbx.audio[:4096]
            fs.release(fh)
        # Both slots are still taken (lingering, in case their readers come back) ...
        assert fs.content.slots.in_use == 2
        began = trio.current_time()
        fh = fs.open(recs[2].ino, os.O_RDONLY)
        with trio.fail_after(2):
            assert await fs.read(fh, 0, 4096) == pbx.audio[:4096]
        waited = trio.current_time() - began
        # ... but the third reader's transfer got one at once: a whole body takes 1.3 s.
        assert waited < 0.3, waited
        assert fs.content.slots.in_use <= 2
        assert fs.content.slots.preempted >= 1
        assert await fs.read(fh, 0, len(pbx.audio)) == pbx.audio
        fs.release(fh)
        await settled(fs)
        assert fs.content.stats.downloads_stopped == 2  # the two nobody came back for
        assert fs.content.stats.downloads_completed == 1
        assert fs.content.slots.free == 2


async def test_a_prefetch_carries_on_when_a_reader_leaves(world):
    fs = world
    fs.content.policy.linger = 0.01
    pbx = Pbx(wav(300_000), chunk=4096, delay=0.002)
    with respx.mock as router:
        pbx.install(router)
        rec = await add(fs)
        fs.content.prefetch(rec)
        with trio.fail_after(5):
            while rec.ino not in fs.content.transfers:
                await trio.sleep(0.001)
        fh = fs.open(rec.ino, os.O_RDONLY)
        assert fs.content.transfers[rec.ino] is fs._handles[fh].transfer  # shared
        assert await fs.read(fh, 0, 4096) == pbx.audio[:4096]
        fs.release(fh)
        await settled(fs)
        assert fs.content.stats.downloads_stopped == 0
        assert fs.content.stats.downloads_completed == 1
        assert (pbx.randoms, pbx.downloads) == (1, 1)
        assert fs.content.is_cached(rec)
        assert await read_all(fs, rec.ino, len(pbx.audio)) == pbx.audio
        assert pbx.randoms == 1


async def test_a_reader_that_leaves_before_its_slot_comes_stops_its_transfer(world):
    """Waiting for a slot with nobody waiting for it: stopped at once, never run."""
    fs = world
    fs.content.policy.linger = 0.05
    pbx = slow_pbx()
    with respx.mock as router:
        pbx.install(router)
        recs = [await add(fs, call(i)) for i in range(3)]
        busy = [fs.open(rec.ino, os.O_RDONLY) for rec in recs[:2]]
        for fh in busy:
            await fs.read(fh, 0, 10)
        fh = fs.open(recs[2].ino, os.O_RDONLY)
        await trio.sleep(0.05)
        assert fs.content.slots.queued == 1
        fs.release(fh)
        assert recs[2].ino not in fs.content.transfers
        await trio.testing.wait_all_tasks_blocked()
        assert fs.content.slots.queued == 0 and fs.content.slots.in_use == 2
        assert pbx.randoms == 2
        for fh in busy:
            fs.release(fh)
        await settled(fs)
        assert cache_files(fs) == []


async def test_concurrent_lookups_and_opens_cost_one_handshake_each(world):
    """Readers started together: the stats queue for slots while the first lookups'
    opens are on their way; those keep their slots (open_grace) and are joined."""
    fs = world
    pbx = Pbx(wav(100_000), chunk=4096, delay=0.002)
    with respx.mock as router:
        pbx.install(router)
        recs = [await add(fs, call(i)) for i in range(5)]

        async def cat(rec):
            await fs.getattr(rec.ino)  # the kernel's lookup
            assert await read_all(fs, rec.ino, len(pbx.audio)) == pbx.audio

        async with trio.open_nursery() as nursery:
            for rec in recs:
                nursery.start_soon(cat, rec)
        assert (pbx.randoms, pbx.downloads) == (5, 5)
        assert fs.content.stats.downloads_stopped == 0


async def test_stats_one_after_another_do_not_wait_for_lingering_ones(world):
    """`ls -l`: each stat's transfer lingers after the size (an open may follow), but
    gives its slot to the next stat once open_grace has passed, not after linger."""
    fs = world
    pbx = slow_pbx()
    with respx.mock as router:
        pbx.install(router)
        recs = [await add(fs, call(i)) for i in range(6)]
        began = trio.current_time()
        for rec in recs:
            assert (await fs.getattr(rec.ino)).size == len(pbx.audio)
        took = trio.current_time() - began
        assert took < fs.content.policy.linger, took
        assert pbx.randoms == 6 and fs.content.slots.preempted == 4
        await settled(fs)
        assert fs.content.stats.downloads_stopped == 6
        assert cache_files(fs) == []
