"""Read-ahead while a tool walks a day's recordings (recfs/content/readahead.py),
against a real catalog; the content store is stood in for by two functions."""

from __future__ import annotations

from recfs.catalog.database import Catalog
from recfs.content.readahead import WALK_GAP, ReadAhead
from recfs.pbx.reports import CallRecord
from tests.catalog_util import write_calls


def make(tmp_path, days: dict[str, int], per_open: int = 1):
    catalog = Catalog(tmp_path / "c.sqlite")
    recs = {}
    for day, count in days.items():
        y, m, d = day.split("-")
        recs[day] = write_calls(catalog, [
            CallRecord(name=f"{y}{m}{d}0900{i:02d}-1.{i}-2001-1003-Internal.wav",
                       timestart=f"{day} 09:00:{i:02d}") for i in range(count)])
    clock = [100.0]
    cached: set[int] = set()
    fetched: list[int] = []

    def fetch(rec):
        fetched.append(rec.ino)

    ahead = ReadAhead(catalog, lambda r: r.ino not in cached and r.ino not in fetched, fetch,
                      per_open, clock=lambda: clock[0])
    return ahead, recs, clock, cached, fetched


def test_a_walk_keeps_downloads_ahead_and_fetches_each_file_once(tmp_path):
    ahead, recs, clock, cached, fetched = make(tmp_path, {"2024-06-10": 8, "2024-06-11": 3})
    day = sorted(recs["2024-06-10"], key=lambda r: r.name)  # rsync's order, not the inode order
    opened: list[int] = []
    for rec in day:
        opened.append(rec.ino)
        before = len(fetched)
        ahead.opened(rec, hit=rec.ino in fetched)
        clock[0] += 1
        # Each open after the first earns one download while any file is left that
        # nobody opened or fetched yet; never one that was opened before.
        unseen = {r.ino for r in day} - set(opened) - set(fetched[:before])
        assert len(fetched) - before == (0 if len(opened) == 1 else min(1, len(unseen)))
        assert not set(fetched[before:]) & set(opened)
    assert len(fetched) == len(set(fetched)) >= 3
    assert set(fetched) | set(opened) == {r.ino for r in day}
    assert not set(fetched) & {r.ino for r in recs["2024-06-11"]}


def test_two_opens_do_not_fetch_the_whole_day(tmp_path):
    ahead, recs, clock, cached, fetched = make(tmp_path, {"2024-06-10": 50})
    day = recs["2024-06-10"]
    ahead.opened(day[10], hit=False)
    clock[0] += 2
    ahead.opened(day[20], hit=False)
    assert len(fetched) == 1
    assert fetched[0] not in (day[10].ino, day[20].ino)


def test_cached_files_and_pauses_start_no_walk(tmp_path):
    ahead, recs, clock, cached, fetched = make(tmp_path, {"2024-06-10": 10})
    day = recs["2024-06-10"]
    cached.update(r.ino for r in day[:5])
    ahead.opened(day[0], hit=True)
    clock[0] += 1
    ahead.opened(day[1], hit=True)
    assert fetched == []  # only a cache miss starts a walk
    ahead.opened(day[6], hit=False)
    clock[0] += WALK_GAP + 1
    ahead.opened(day[7], hit=False)
    assert fetched == []  # too long after: a new walk, not the same one
    clock[0] += 1
    ahead.opened(day[8], hit=False)
    assert len(fetched) == 1 and fetched[0] not in {r.ino for r in day[:5]}


def test_nothing_left_to_fetch_and_off(tmp_path):
    ahead, recs, clock, cached, fetched = make(tmp_path, {"2024-06-10": 3}, per_open=2)
    day = recs["2024-06-10"]
    for rec in day:
        clock[0] += 1
        ahead.opened(rec, hit=False)
    assert len(fetched) == 1  # the one file not opened yet when the walk began
    off, recs, clock, _cached, fetched = make(tmp_path / "off", {"2024-06-10": 3}, per_open=0)
    for rec in recs["2024-06-10"]:
        clock[0] += 1
        off.opened(rec, hit=False)
    assert fetched == []
