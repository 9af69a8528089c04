"""recfs.progress (the terminal display of long jobs), the back-fill command's bar,
and prefetch=all reporting to a Progress instead of writing to the terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from datetime import datetime, timedelta

import pytest
import trio

from recfs.catalog.database import Recording
from recfs.cli.backfill import ProgressBar
from recfs.content.prefetch import PrefetchAll
from recfs.ingest.backfill import Summary
from recfs.pbx.reports import CallRecord
from recfs.progress import NoProgress, TerminalProgress, terminal_progress

RATE = re.compile(r"\d+(\.\d+)?(rec/s|s/rec)")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


class NotATty(io.StringIO):
    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        raise AssertionError(f"wrote {text!r} to a stream that is not a terminal")


def screen(out: str) -> list[str]:
    """What a terminal shows of *out*: each line as its last carriage return left it."""
    return [line.rsplit("\r", 1)[-1] for line in out.split("\n")]


def last_bar(out: str) -> str:
    return out.rstrip("\n").rsplit("\r", 1)[-1]


def test_nothing_is_written_when_the_stream_is_not_a_terminal():
    stream = NotATty()
    progress = terminal_progress("job", stream=stream, total=3, unit="rec")
    assert isinstance(progress, NoProgress)
    progress.total(3)
    progress.advance(1, {"new": 1})
    progress.close()
    assert stream.getvalue() == ""


def test_nothing_is_written_when_disabled_even_on_a_terminal():
    stream = FakeTty()
    progress = terminal_progress("job", enabled=False, stream=stream, total=3)
    progress.advance(3)
    progress.close()
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar_with_rate_and_counts():
    stream = FakeTty()
    progress = terminal_progress("job", stream=stream, unit="rec", mininterval=0)
    assert isinstance(progress, TerminalProgress)
    progress.total(4)
    for i in range(4):
        time.sleep(0.02)
        progress.advance(1, {"new": i + 1, "failed": 0})
    progress.close()
    progress.close()  # twice is harmless
    out = stream.getvalue()
    last = last_bar(out)
    assert last.startswith("job: 100%") and "4/4" in last, out
    assert RATE.search(last), last
    assert "new 4, failed 0" in last
    assert out.endswith("\n")  # the last state stays on the screen


def test_total_starts_the_count_over_and_a_closed_bar_opens_anew():
    stream = FakeTty()
    progress = terminal_progress("job", stream=stream, unit="rec", mininterval=0)
    progress.total(2)
    progress.advance(2)
    progress.total(3)  # a restarted job
    progress.advance(1)
    progress.close()
    assert "1/3" in last_bar(stream.getvalue())
    progress.total(5)
    progress.advance(5)
    progress.close()
    assert "5/5" in last_bar(stream.getvalue())


def test_log_lines_print_above_a_bar_on_stderr(monkeypatch):
    tty = FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])
    progress = terminal_progress("job", total=2, unit="rec", mininterval=0)
    progress.advance(1)
    assert root.handlers != [handler]  # routed through tqdm while the bar is up
    logging.getLogger("recfs.test").warning("hello")
    progress.advance(1)
    progress.close()
    assert root.handlers == [handler]
    # The log line is a line of its own on the screen, not glued to the bar.
    assert screen(tty.getvalue()) == ["LOG hello", last_bar(tty.getvalue()), ""]


def test_backfill_bar_counts_pbx_local_days(monkeypatch):
    tty = FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    start = datetime(2024, 6, 1)
    end = datetime(2024, 6, 4, 23, 59, 59)  # --until 2024-06-04: four days
    bar = ProgressBar(start, end, enabled=True)
    summary = Summary(new=5, known=2)
    summary.malformed.append(("w", 3, "bad"))
    time.sleep(0.6)  # past the bar's delay
    bar(start + timedelta(days=2), summary)
    bar(end, summary)
    bar.done()
    last = last_bar(tty.getvalue())
    assert "100%" in last and "4.0/4.0 days" in last, last
    assert re.search(r"(day/s|s/day)", last), last
    assert "day 2024-06-04, new 5, known 2, malformed 1" in last, last


def test_backfill_bar_quiet_or_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", NotATty())
    bar = ProgressBar(datetime(2024, 6, 1), datetime(2024, 6, 2), enabled=True)
    bar(datetime(2024, 6, 2), Summary())
    bar.done()
    tty = FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = ProgressBar(datetime(2024, 6, 1), datetime(2024, 6, 2), enabled=False)
    bar(datetime(2024, 6, 2), Summary())
    bar.done()
    assert tty.getvalue() == ""


# -- prefetch=all with a recording Progress ---------------------------------------------


class RecordingProgress:
    def __init__(self) -> None:
        self.totals: list[float] = []
        self.steps: list[tuple[float, dict[str, object]]] = []
        self.closed = 0

    def total(self, n: float) -> None:
        self.totals.append(n)

    def advance(self, n: float = 1, counts=None) -> None:
        self.steps.append((n, dict(counts or {})))

    def close(self) -> None:
        self.closed += 1


def recording(ino: int, day: str, second: int, size: int = 1000) -> Recording:
    callid = f"{1717200000 + ino * 100 + second}.{ino}"
    call = CallRecord(name=f"{day.replace('-', '')}0000{second:02d}-{callid}-1-2-Inbound.wav",
                      callid=callid)
    return Recording(ino, day, float(1717200000 + ino * 100 + second), size, 0.0, call)


class FakeCatalog:
    def __init__(self, recordings: list[Recording]):
        self.recordings = recordings

    def days(self):
        days = sorted({r.day for r in self.recordings})
        return [(d, sum(1 for r in self.recordings if r.day == d), 0.0) for d in days]

    def in_day(self, day, after_ino=0, limit=1000):
        return sorted((r for r in self.recordings if r.day == day and r.ino > after_ino),
                      key=lambda r: r.ino)[:limit]

    def count(self):
        return len(self.recordings)


class FakeCache:
    max_bytes = None
    used_bytes = 0


class FakeContent:
    def __init__(self, cached=(), failing=(), block=False):
        self.cache = FakeCache()
        self.cached, self.failing, self.block = set(cached), set(failing), block
        self.fetched: list[int] = []

    def is_cached(self, rec):
        return rec.ino in self.cached

    async def fetch(self, rec):
        if self.block:
            await trio.sleep_forever()
        self.fetched.append(rec.ino)
        return rec.ino not in self.failing

    def known_size(self, rec):
        return rec.size


RECORDINGS = [recording(1, "2024-06-01", 1), recording(2, "2024-06-02", 1),
              recording(3, "2024-06-02", 2), recording(4, "2024-06-03", 1)]


async def test_prefetch_all_reports_to_its_progress_and_not_to_the_terminal(capsys):
    progress = RecordingProgress()
    content = FakeContent(cached={2}, failing={1})
    job = PrefetchAll(FakeCatalog(RECORDINGS), content, workers=1, progress=progress)
    await job.run()
    assert content.fetched == [4, 3, 1]  # newest first; 2 was cached
    assert progress.totals == [4]
    assert [n for n, _c in progress.steps] == [1, 1, 1, 1]
    assert progress.steps[-1][1] == {"fetched": "2 (0.0 MiB)", "cached already": 1, "failed": 1}
    assert progress.closed == 1
    assert (job.fetched, job.already, job.failed) == (2, 1, 1)
    assert job.done.is_set()
    assert capsys.readouterr().err == ""


async def test_prefetch_all_closes_its_progress_when_cancelled_and_counts_afresh_again():
    progress = RecordingProgress()
    job = PrefetchAll(FakeCatalog(RECORDINGS), FakeContent(block=True), workers=2,
                      progress=progress)
    with trio.move_on_after(0.1):
        await job.run()
    assert progress.closed == 1 and not job.done.is_set()
    job.content = FakeContent()
    await job.run()  # the supervisor starts a failed walk over: counts start at 0
    assert progress.totals == [4, 4] and progress.closed == 2
    assert (job.seen, job.fetched) == (4, 4)


def test_prefetch_all_without_a_progress_shows_nothing():
    job = PrefetchAll(FakeCatalog([]), FakeContent(), workers=1)
    assert isinstance(job.progress, NoProgress)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
