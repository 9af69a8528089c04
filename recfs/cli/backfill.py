"""`recfs backfill SOURCE --since DATE [--until DATE] -o ...`: import CDR history into
the catalog on demand, with a progress bar and a summary.

Uses the same options (and so the same state_dir, catalog and credentials) as the
mount, and the mount's own builder (recfs/service/parts.py); it may run while the
mount is up (SQLite serialises the two processes' writers, and the mount's catalog
watch sees the new rows).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime, timedelta

import trio

from recfs.ingest.backfill import WINDOW, Backfill, Summary
from recfs.ingest.pipeline import Ingest
from recfs.ingest.recording_list import RecordingList
from recfs.logs import setup_logging
from recfs.pbx.clock import format_local
from recfs.pbx.errors import PbxError
from recfs.pbx.pseries import PSeriesClient
from recfs.progress import terminal_progress
from recfs.service.config import MountOptions, OptionError, build_options, split_options
from recfs.service.mountpoint import MountError, expected_failure
from recfs.service.parts import PbxParts, open_pbx, start_writer

log = logging.getLogger("recfs.ingest.backfill")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recfs backfill",
        description="Import the PBX's call history (CDR) into recfs's catalog. "
                    "Dates are PBX-local: YYYY-MM-DD or 'YYYY-MM-DD hh:mm:ss'.")
    p.add_argument("source", help="the PBX's base URL, as given to recfs mount")
    p.add_argument("--since", required=True, type=_date, help="first day (or instant) to import")
    p.add_argument("--until", type=_until, help="last day (or instant) to import; default now")
    p.add_argument("--window-hours", type=float, default=None,
                   help="hours of history per CDR request, kept (halved on refusal); default "
                        f"{WINDOW.total_seconds() / 3600:.0f} at first, doubled after quiet windows")
    p.add_argument("--pbx", metavar="NAME", help="with a config of several PBXs: the [pbx.NAME] "
                   "table to back-fill")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="the mount's options (user, password_file, cafile, state_dir, ...)")
    return p


def _parse(text: str) -> tuple[datetime, bool]:
    for fmt, whole_day in (("%Y-%m-%d %H:%M:%S", False), ("%Y-%m-%d", True)):
        try:
            return datetime.strptime(text.strip(), fmt), whole_day
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD or 'YYYY-MM-DD hh:mm:ss'): {text!r}")


def _date(text: str) -> datetime:
    return _parse(text)[0]


def _until(text: str) -> datetime:
    value, whole_day = _parse(text)
    return value + timedelta(days=1, seconds=-1) if whole_day else value


class ProgressBar:
    """Progress through the range, in PBX-local days, with the counts so far; shown
    (by recfs.progress) only when stderr is a terminal."""

    DAY = 86400.0

    def __init__(self, start: datetime, end: datetime, enabled: bool):
        self.start, self.end = start, end
        self.span = max((end - start).total_seconds(), 1.0)
        self.done_days = 0.0
        # The bar appears at the first progress after `delay`: below the line that
        # announces the range, and never for a range imported at once.
        self.display = terminal_progress(
            "back-fill", enabled=enabled, total=self.span / self.DAY, unit="day", delay=0.5,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} days "
                       "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def __call__(self, at: datetime, summary: Summary) -> None:
        seconds = min(max((at - self.start).total_seconds(), 0.0), self.span)
        days = self.span / self.DAY if at >= self.end else seconds / self.DAY
        self.display.advance(days - self.done_days,
                             {"day": f"{at:%Y-%m-%d}", "new": summary.new,
                              "known": summary.known, "malformed": len(summary.malformed)})
        self.done_days = days

    def done(self) -> None:
        self.display.close()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        opts = build_options(args.source, os.getcwd(), split_options(*args.options))
    except OptionError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 2
    if args.window_hours is not None and args.window_hours <= 0:
        print("recfs: --window-hours must be positive", file=sys.stderr)
        return 2
    setup_logging(opts.log_level if opts.log_level != "INFO" else "WARNING")
    try:
        summary = trio.run(_run, opts, args)
    except PbxError as exc:
        print(f"\nrecfs: back-fill stopped: {exc}", file=sys.stderr)
        return 1
    except OptionError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # the catalog cannot be used (wrapped by trio's nursery)
        failure = expected_failure(exc)
        if failure is None:
            raise
        print(f"recfs: {failure}", file=sys.stderr)
        return failure.exit_status if isinstance(failure, MountError) else 2
    print(f"back-fill done: {summary.text()} ({summary.windows} CDR request(s))")
    for window, line, reason in summary.malformed[:20]:
        print(f"  malformed: CDRs from {window}, line {line}: {reason}")
    if len(summary.malformed) > 20:
        print(f"  ... and {len(summary.malformed) - 20} more malformed row(s)")
    return 0


async def _run(opts: MountOptions, args: argparse.Namespace) -> Summary:
    if opts.pbxs:
        if args.pbx not in opts.pbxs:
            raise OptionError(f"the config has several PBXs: name one with --pbx "
                              f"({', '.join(sorted(opts.pbxs))})")
        name, pbx_opts = args.pbx, opts.pbxs[args.pbx]
    elif args.pbx:
        raise OptionError("--pbx names a [pbx.NAME] table of the config, and it has none")
    else:
        name, pbx_opts = "", opts
    # The mount's own builder: the same report target (a login made here never
    # diverts the PBX's pushes away from a running mount), clock and inode numbers.
    parts = open_pbx(pbx_opts, name, opts.listen[1], exclusive=False)
    client = parts.client
    ingest = Ingest(parts.writer, parts.clock, on_new=lambda rec: None)
    if isinstance(client, PSeriesClient):
        try:
            return await _walk_list(parts, client, ingest)
        finally:
            parts.catalog.close()
    try:
        end = args.until or parts.clock.now_bounds()[1]
        if end < args.since:
            raise OptionError("--until is before --since")
        if args.window_hours is None:
            backfill = Backfill(client, ingest.add_calls)
        else:
            backfill = Backfill(client, ingest.add_calls,
                                window=timedelta(hours=args.window_hours), grow=False)
        bar = ProgressBar(args.since, end, enabled=not args.quiet)
        stopped: PbxError | None = None
        async with trio.open_nursery() as nursery:
            await start_writer(nursery, parts.writer)  # the writer runs while rows come in
            try:
                print(f"importing CDRs {format_local(args.since)} .. {format_local(end)} "
                      f"(PBX time)", file=sys.stderr)
                summary = await backfill.run_range(args.since, end, bar)
            except PbxError as exc:  # raised outside the nursery: not wrapped in a group
                stopped = exc
            finally:
                bar.done()
                with trio.move_on_after(5):
                    try:
                        await client.logout()
                    except PbxError:
                        pass
                await client.aclose()
            nursery.cancel_scope.cancel()
        if stopped is not None:
            raise stopped
        return summary
    finally:
        parts.catalog.close()


async def _walk_list(parts: PbxParts, client: PSeriesClient, ingest: Ingest) -> Summary:
    """A P-Series PBX: its recording list holds the whole history, sizes included;
    walked from the highest id the catalog knows (so --since and --until do not
    narrow it), as the mount does at every start."""
    listing = RecordingList(client, ingest, parts.writer, parts.catalog)
    print("reading the recording list (everything newer than the catalog knows)",
          file=sys.stderr)
    async with trio.open_nursery() as nursery:
        await start_writer(nursery, parts.writer)
        try:
            new = await listing.catch_up()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await client.logout()
            await client.aclose()
        nursery.cancel_scope.cancel()
    stats = listing.stats
    malformed = [("recording list", 0, "malformed item")] * stats.malformed
    return Summary(new=new, malformed=malformed, windows=stats.requests)
