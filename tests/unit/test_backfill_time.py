"""The PBX's clock (UTC offset learned from callid + timestart) and back-fill windows."""

import time
from datetime import datetime, timedelta

import pytest

from recfs.ingest.backfill import Backfill, BackfillKeeper
from recfs.catalog.database import Catalog, call_epoch, insert_calls
from recfs.pbx.clock import PbxClock, offset_of
from recfs.pbx.errors import PbxError
from recfs.pbx.reports import CallRecord

HEADER = b"callid,timestart,recording\r\n"


@pytest.mark.parametrize("callid,timestart,offset", [
    ("1718001234.88", "2024-06-10 06:33:54", 0),
    ("1718001234.88", "2024-06-10 08:33:54", 7200),       # CEST
    ("1718001234", "2024-06-10 12:03:54", 19800),         # India, +05:30
    ("1718001234.1", "2024-06-09 20:33:54", -36000),      # Hawaii
    ("1718001234.1", "2024-06-10 08:33:54 ", None),       # not the format
    ("abc", "2024-06-10 08:33:54", None),
    ("1718001234.1", "2024-06-10 08:10:00", None),        # not a quarter hour apart
    ("1718001234.1", "2024-06-12 08:33:54", None),        # two days apart: not an offset
    ("1718001234.1", "2024-06-31 08:33:54", None),        # no such date
    ("1718001234.1", "", None),
    (None, "2024-06-10 08:33:54", None),
])
def test_offset_of(callid, timestart, offset):
    assert offset_of(callid, timestart) == offset


def test_clock_follows_daylight_saving_and_saves():
    saved = []
    clock = PbxClock(None, save=saved.append, now=lambda: 1718001234.0)
    lo, hi = clock.now_bounds()
    assert hi - lo == timedelta(hours=28)  # unknown: any zone
    clock.learn("1718001234.88", "2024-06-10 08:33:54")
    clock.learn("1730000000.1", "2024-10-27 04:33:20")  # CET after the change
    assert saved == [7200, 3600]
    assert clock.local_now() == datetime(2024, 6, 10, 7, 33, 54)


def _add(catalog: Catalog, calls: list[CallRecord], utc_offset: int | None):
    db = catalog.connect()
    try:
        db.execute("BEGIN IMMEDIATE")
        recordings = insert_calls(db, calls, utc_offset)
        db.execute("COMMIT")
    finally:
        db.close()
    return recordings


def test_day_follows_pbx_date_and_mtime_true_utc(tmp_path, host_tz):
    catalog = Catalog(tmp_path / "c.sqlite")
    # 00:30 local on 2024-06-11 in UTC+2 is 22:30 UTC on the 10th.
    call = CallRecord(name="20240611003005-1718058600.1-1-2-Internal.wav", callid="1718058600.1",
                      timestart="2024-06-11 00:30:00")
    nocallid = CallRecord(name="x.wav", timestart="2024-06-11 00:30:00")
    rec, rec2 = _add(catalog, [call, nocallid], utc_offset=7200)
    assert (rec.day, rec.mtime) == ("2024-06-11", 1718058600.0)
    assert (rec2.day, rec2.mtime) == ("2024-06-11", 1718058600.0)
    assert catalog.by_name("x.wav").mtime == 1718058600.0
    assert catalog.meta("last_seen") == "2024-06-11 00:30:00"
    catalog.close()


def test_call_epoch_uses_the_learned_offset_never_the_host_zone(host_tz):
    nocallid = CallRecord(name="x.wav", timestart="2024-06-11 00:30:00")
    assert call_epoch(nocallid, 7200) == 1718058600
    assert call_epoch(nocallid, 0) == 1718058600 + 7200
    assert call_epoch(nocallid, None) is None  # unknown offset: no guess
    # The callid wins over the stamp whatever the offset.
    withcallid = CallRecord(name="y.wav", callid="1718058600.7", timestart="2024-06-11 09:00:00")
    assert call_epoch(withcallid, 7200) == call_epoch(withcallid, None) == 1718058600
    assert call_epoch(CallRecord(name="z.wav", timestart="2024-06-31 00:30:00"), 7200) is None


def test_a_call_nothing_dates_gets_the_time_it_was_added(tmp_path, host_tz):
    catalog = Catalog(tmp_path / "c.sqlite")
    before = time.time()
    (rec,) = _add(catalog, [CallRecord(name="x.wav", timestart="2024-06-11 00:30:00")], None)
    after = time.time()
    assert rec.day == "2024-06-11"
    assert before <= rec.mtime == rec.added <= after
    stored = catalog.by_name("x.wav")
    assert stored.mtime == stored.added == rec.added
    catalog.close()


def test_offset_learning_does_not_depend_on_the_host_zone(host_tz):
    assert offset_of("1718001234.88", "2024-06-10 08:33:54") == 7200
    assert offset_of("1718001234", "2024-06-10 12:03:54") == 19800
    assert offset_of("1718001234.1", "2024-06-09 20:33:54") == -36000
    clock = PbxClock(None, now=lambda: 1718001234.0)
    clock.learn("1718001234.88", "2024-06-10 08:33:54")
    assert clock.offset == 7200
    assert clock.local_now() == datetime(2024, 6, 10, 8, 33, 54)


class FakeClient:
    def __init__(self, refuse_longer_than: timedelta):
        self.limit = refuse_longer_than
        self.asked = []
        self.refused = []
        self.logins = 1
        self.logged_in = True

    async def cdr_download(self, start, end):
        s, e = (datetime.strptime(t, "%Y-%m-%d %H:%M:%S") for t in (start, end))
        if e - s >= self.limit:
            self.refused.append((s, e))
            raise PbxError("cdr_download", "10003")
        self.asked.append((s, e))
        return HEADER + f"{int(s.timestamp())}.1,{start},{s:%Y%m%d%H%M%S}-{int(s.timestamp())}.1-1-2-Internal.wav\r\n".encode()


async def test_windows_cover_the_range_and_shrink_when_refused():
    got = []

    async def sink(calls):
        got.extend(calls)
        return len(calls), 0

    client = FakeClient(timedelta(hours=6))
    start, end = datetime(2024, 6, 1), datetime(2024, 6, 3, 23, 59, 59)
    summary = await Backfill(client, sink).run_range(start, end)
    # contiguous, no gaps, no overlaps, each shorter than what the PBX refuses
    assert client.asked[0][0] == start and client.asked[-1][1] == end
    for (s1, e1), (s2, _e2) in zip(client.asked, client.asked[1:]):
        assert s2 == e1 + timedelta(seconds=1)
    assert all(e - s < timedelta(hours=6) for s, e in client.asked)
    assert summary.new == len(client.asked) == len(got) and summary.windows == len(client.asked)


def _contiguous(asked, start, end) -> bool:
    return asked[0][0] == start and asked[-1][1] == end and all(
        s2 == e1 + timedelta(seconds=1) for (_s1, e1), (s2, _e2) in zip(asked, asked[1:]))


async def _count(calls):
    return len(calls), 0


async def test_quiet_history_is_asked_for_in_growing_windows():
    # A quarter of a quiet PBX's history: 1, 2, 4, 8, 16, 32, 32 ... days, not 91 requests.
    client = FakeClient(timedelta(days=365))
    start, end = datetime(2024, 1, 1), datetime(2024, 3, 31, 23, 59, 59)
    summary = await Backfill(client, _count).run_range(start, end)
    assert _contiguous(client.asked, start, end)
    assert [round((e - s).total_seconds() / 86400) for s, e in client.asked] == [1, 2, 4, 8, 16, 32, 28]
    assert summary.windows == 7


async def test_windows_stay_below_what_the_pbx_refused():
    client = FakeClient(timedelta(days=3))
    start, end = datetime(2024, 1, 1), datetime(2024, 1, 31, 23, 59, 59)
    await Backfill(client, _count).run_range(start, end)
    assert _contiguous(client.asked, start, end)
    assert all(e - s < timedelta(days=3) for s, e in client.asked)
    # Refused once (the 4-day window), then never asked for that much again.
    assert len(client.refused) == 1


async def test_busy_or_fixed_windows_do_not_grow(monkeypatch):
    start, end = datetime(2024, 1, 1), datetime(2024, 1, 5, 23, 59, 59)
    client = FakeClient(timedelta(days=365))
    await Backfill(client, _count, window=timedelta(hours=12), grow=False).run_range(start, end)
    assert len(client.asked) == 10
    monkeypatch.setattr("recfs.ingest.backfill.GROW_BELOW", 1)  # every window counts as busy
    client = FakeClient(timedelta(days=365))
    await Backfill(client, _count).run_range(start, end)
    assert len(client.asked) == 5


async def test_a_pbx_that_refuses_everything_stops_the_backfill():
    async def sink(calls):
        return 0, 0

    with pytest.raises(PbxError):
        await Backfill(FakeClient(timedelta(0)), sink).run_range(datetime(2024, 6, 1), datetime(2024, 6, 2))


def test_gap_starts_before_the_last_seen_call():
    clock = PbxClock(7200, now=lambda: 1718001234.0)
    keeper = BackfillKeeper(None, None, clock, lambda: "2024-06-09 10:00:00", 600)
    start, end = keeper.gap()
    assert start == datetime(2024, 6, 9, 8, 0, 0)
    assert end > datetime(2024, 6, 10, 8, 33, 54)
    keeper = BackfillKeeper(None, None, clock, lambda: None, 600)
    assert keeper.gap()[0] == datetime(2024, 6, 9, 8, 33, 54)
