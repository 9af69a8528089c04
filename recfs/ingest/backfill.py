"""Back-fill: the PBX's CDR history (cdr/get_random + cdr/download) fills in what the
pushed reports missed: while recfs was down, while the PBX could not reach it, or a
report the PBX simply dropped.

- At every mount (and again after every fresh login), the gap since the newest call
  recfs has heard of, with an overlap for calls that end long after they start.
- Every `backfill_interval` seconds, recent history again, without a remount.
- `recfs backfill` imports any range on demand.

A range is asked for in windows, a day at first; a window the PBX refuses is split
in halves down to a floor, so that a PBX that cannot answer large ranges is still
read completely, and no later window is that long again. A window that held few
calls makes the next one twice as long (up to a month): months of a quiet PBX's
history take a few requests, not one a day. Importing is idempotent: a known name
is counted as known.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import trio

from recfs.catalog.shared import WRITE_FAILURES
from recfs.pbx.clock import PbxClock, format_local, parse_local
from recfs.pbx.cdr import CdrFormatError, parse_cdr_csv
from recfs.pbx.client import PbxClient
from recfs.pbx.errors import PbxError
from recfs.pbx.reports import CallRecord

log = logging.getLogger("recfs.ingest.backfill")

WINDOW = timedelta(days=1)
MIN_WINDOW = timedelta(minutes=15)
MAX_WINDOW = timedelta(days=32)
# A window that answered fewer CDR rows than this doubles the next one.
GROW_BELOW = 1000
# Calls are reported when they end, dated by when they started: look back this far
# before the newest call recfs knows.
OVERLAP = timedelta(hours=2)
# With an empty catalog, a mount reaches back this far.
FIRST_LOOKBACK = timedelta(days=1)
# The end of a range: a little after the PBX's "now" (clocks differ).
AHEAD = timedelta(minutes=5)

Sink = Callable[[list[CallRecord]], Awaitable[tuple[int, int]]]


@dataclass
class Summary:
    new: int = 0
    known: int = 0
    unrecorded: int = 0
    malformed: list[tuple[str, int, str]] = field(default_factory=list)  # (window, line, reason)
    windows: int = 0

    def text(self) -> str:
        return (f"{self.new} new, {self.known} already known, {self.unrecorded} without recording, "
                f"{len(self.malformed)} malformed row(s)")


Progress = Callable[[datetime, Summary], None]


class Backfill:
    def __init__(self, client: PbxClient, sink: Sink, *, window: timedelta = WINDOW,
                 min_window: timedelta = MIN_WINDOW, grow: bool = True):
        self.client = client
        self.sink = sink
        self.window = window
        self.min_window = min_window
        self.grow = grow

    async def run_range(self, start: datetime, end: datetime, progress: Progress | None = None) -> Summary:
        """Import PBX-local [start, end] (naive datetimes, whole seconds)."""
        summary = Summary()
        cursor = start.replace(microsecond=0)
        end = end.replace(microsecond=0)
        size, ceiling = self.window, MAX_WINDOW + timedelta(seconds=1)
        while cursor <= end:
            stop = min(cursor + size - timedelta(seconds=1), end)
            rows, refused = await self._window(cursor, stop, summary)
            cursor = stop + timedelta(seconds=1)
            if refused is not None:
                # What the PBX refused once it would refuse again: stay below it.
                ceiling = min(ceiling, refused)
                size = max(self.min_window, refused / 2)
            elif self.grow and rows < GROW_BELOW and 2 * size < ceiling:
                size = 2 * size
            if progress is not None:
                progress(min(cursor, end), summary)
        return summary

    async def _window(self, start: datetime, end: datetime,
                      summary: Summary) -> tuple[int, timedelta | None]:
        """Import one window; the CDR rows it held, and the shortest span of it the
        PBX refused (None: no refusal)."""
        first, last = format_local(start), format_local(end)
        try:
            body = await self.client.cdr_download(first, last)
            rows = parse_cdr_csv(body)
        except (PbxError, CdrFormatError) as exc:
            # A refusal of the range itself may mean "too much at once"; a session
            # problem (login, token, lock-out) says nothing about the range.
            refused = isinstance(exc, CdrFormatError) or (
                exc.errno is not None and exc.operation not in ("login", "heartbeat"))
            if refused and end - start >= 2 * self.min_window:
                middle = start + (end - start) / 2
                middle = middle.replace(microsecond=0)
                log.info("CDRs %s..%s refused (%s); asking in two halves", first, last, exc)
                rows_a, refused_a = await self._window(start, middle, summary)
                rows_b, refused_b = await self._window(middle + timedelta(seconds=1), end, summary)
                span = end - start + timedelta(seconds=1)  # refused, longer than any half
                return rows_a + rows_b, min(refused_a or span, refused_b or span)
            raise
        summary.windows += 1
        summary.unrecorded += rows.unrecorded
        for line, reason in rows.malformed:
            log.warning("CDR %s..%s line %d ignored: %s", first, last, line, reason)
            summary.malformed.append((first, line, reason))
        if rows.calls:
            new, known = await self.sink(rows.calls)
            summary.new += new
            summary.known += known
        return rows.rows, None


class BackfillKeeper:
    """The mount's back-fill task: the gap at mount and after each login, then the
    periodic re-check. It never logs in itself: it waits for the session keeper
    (whose login guard cannot trip the PBX's lock-out)."""

    def __init__(self, backfill: Backfill, client: PbxClient, clock: PbxClock,
                 last_seen: Callable[[], str | None], interval: float,
                 overlap: timedelta = OVERLAP):
        self.backfill = backfill
        self.client = client
        self.clock = clock
        self.last_seen = last_seen
        self.interval = interval
        self.overlap = overlap

    def gap(self) -> tuple[datetime, datetime]:
        earliest, latest = self.clock.now_bounds()
        seen = self.last_seen()
        try:
            start = parse_local(seen) - self.overlap if seen else earliest - FIRST_LOOKBACK
        except ValueError:
            start = earliest - FIRST_LOOKBACK
        return min(start, latest), latest + AHEAD

    def recent(self) -> tuple[datetime, datetime]:
        earliest, latest = self.clock.now_bounds()
        return earliest - timedelta(seconds=self.interval) - self.overlap, latest + AHEAD

    async def _run(self, what: str, span: tuple[datetime, datetime]) -> None:
        start, end = span
        summary = await self.backfill.run_range(start, end)
        level = logging.INFO if summary.new or summary.malformed or what == "gap" else logging.DEBUG
        log.log(level, "back-fill (%s) %s..%s: %s", what, format_local(start), format_local(end),
                summary.text())

    async def run(self) -> None:
        seen_logins = 0
        pending_gap = True
        failures = 0
        next_check = trio.current_time() + self.interval
        retry_at = 0.0
        while True:
            now = trio.current_time()
            if self.client.logins != seen_logins:
                seen_logins = self.client.logins
                pending_gap = True
            if self.client.logged_in and now >= retry_at and (pending_gap or now >= next_check):
                what = "gap" if pending_gap else "re-check"
                span = self.gap() if pending_gap else self.recent()
                try:
                    await self._run(what, span)
                except (PbxError, CdrFormatError, OSError) + WRITE_FAILURES as exc:
                    failures += 1
                    pause = min(10.0 * 2 ** (failures - 1), 600.0)
                    retry_at = trio.current_time() + pause
                    log.warning("back-fill (%s) failed: %s; next try in %.0f s", what, exc, pause)
                else:
                    failures = 0
                    pending_gap = False
                    next_check = trio.current_time() + self.interval
            await trio.sleep(0.5)
