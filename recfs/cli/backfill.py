"""`recfs backfill SOURCE --since DATE [--until DATE] -o ...`: import CDR history into
the catalog on demand, with a progress bar and a summary.

Uses the same options (and so the same state_dir, catalog and credentials) as the
mount; it may run while the mount is up (SQLite serialises the writers, and the
mount picks up new days by itself).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime, timedelta

import trio

from recfs.ingest.backfill import WINDOW, Backfill, Summary
from recfs.catalog.database import Catalog
from recfs.service.config import OptionError, build_options, report_target_fields, split_options
from recfs.logs import setup_logging
from recfs.pbx.clock import META_KEY, PbxClock, format_local
from recfs.pbx.errors import PbxError
from recfs.pbx.reports import CallRecord

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
    def __init__(self, start: datetime, end: datetime, enabled: bool):
        self.start, self.end = start, end
        self.enabled = enabled

    def __call__(self, at: datetime, summary: Summary) -> None:
        if not self.enabled:
            return
        total = max((self.end - self.start).total_seconds(), 1.0)
        share = min(max((at - self.start).total_seconds() / total, 0.0), 1.0)
        filled = int(share * 30)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {share * 100:5.1f}% "
                         f"{at:%Y-%m-%d}  new {summary.new}  known {summary.known}  "
                         f"malformed {len(summary.malformed)} ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        opts = build_options(args.source, os.getcwd(), split_options(*args.options))
        opts.read_password()  # fail now, clearly
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
    print(f"back-fill done: {summary.text()} ({summary.windows} CDR request(s))")
    for window, line, reason in summary.malformed[:20]:
        print(f"  malformed: CDRs from {window}, line {line}: {reason}")
    if len(summary.malformed) > 20:
        print(f"  ... and {len(summary.malformed) - 20} more malformed row(s)")
    return 0


async def _run(opts, args) -> Summary:
    from recfs.ingest.gate import load_secret
    from recfs.pbx.client import PbxClient, ReportTarget
    from recfs.pbx.tls import parse_fingerprint, verification

    state_dir = opts.resolved_state_dir()
    catalog = Catalog(state_dir / "catalog.sqlite")
    try:
        stored = catalog.meta(META_KEY)
        clock = PbxClock(int(stored) if stored and stored.lstrip("-").isdigit() else None,
                         save=lambda offset: catalog.set_meta(META_KEY, str(offset)))
        # Register the same report target as the mount would, so that a login made
        # here never diverts the PBX's pushes away from a running mount.
        target = report_target_fields(opts, opts.listen[1], load_secret(state_dir))
        pin = parse_fingerprint(opts.fingerprint) if opts.fingerprint else None
        client = PbxClient(opts.source, opts.user, opts.read_password,
                           api_version=opts.api_version, target=ReportTarget(*target),
                           verify=verification(opts.cafile, opts.insecure, pin), fingerprint=pin,
                           io_timeout=opts.io_timeout)

        async def sink(calls: list[CallRecord]) -> tuple[int, int]:
            for call in calls:
                clock.learn(call.callid, call.timestart)
            results = await trio.to_thread.run_sync(
                lambda: catalog.add_many(calls, utc_offset=clock.offset))
            new = sum(1 for r in results if r is not None)
            return new, len(results) - new

        end = args.until or clock.now_bounds()[1]
        if end < args.since:
            raise OptionError("--until is before --since")
        bar = ProgressBar(args.since, end, enabled=not args.quiet and sys.stderr.isatty())
        if args.window_hours is None:
            backfill = Backfill(client, sink)
        else:
            backfill = Backfill(client, sink, window=timedelta(hours=args.window_hours), grow=False)
        try:
            print(f"importing CDRs {format_local(args.since)} .. {format_local(end)} (PBX time)",
                  file=sys.stderr)
            return await backfill.run_range(args.since, end, bar)
        finally:
            bar.done()
            with trio.move_on_after(5):
                try:
                    await client.logout()
                except PbxError:
                    pass
            await client.aclose()
    finally:
        catalog.close()
