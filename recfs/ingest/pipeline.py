"""From a report on the wire (or a CDR row) to a recording in the catalog and the tree.

The receiver answers 200 only after `Ingest.report` returned, and that happens only
after the transaction holding the recording committed (recfs/commit.py: reports
that arrive together share one): an acknowledged report is never lost. The same
report twice is harmless (the catalog keeps the first).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from recfs.catalog.database import Catalog, Recording
from recfs.catalog.writer import GroupCommit
from recfs.content.store import ContentStore
from recfs.pbx.clock import PbxClock
from recfs.pbx.reports import BadReport, CallRecord, call_from_cdr, decode_report, event_name
from recfs.vfs.core import RecordingsFs

log = logging.getLogger("recfs.ingest.pipeline")


@dataclass
class IngestCounters:
    received: int = 0
    added: int = 0
    duplicates: int = 0
    unrecorded: int = 0
    ignored: int = 0
    rejected: int = 0
    last_report: float | None = None
    by_event: dict[str, int] = field(default_factory=dict)


class Ingest:
    def __init__(self, catalog: Catalog, fs: RecordingsFs, content: ContentStore,
                 prefetch_new: bool, writer: GroupCommit, clock: PbxClock):
        self.catalog = catalog
        self.fs = fs
        self.content = content
        self.prefetch_new = prefetch_new
        self.writer = writer
        self.clock = clock
        self.counters = IngestCounters()

    async def report(self, body: bytes, peer: str) -> tuple[int, str]:
        """Handle one pushed report; returns (HTTP status, short reason)."""
        self.counters.received += 1
        try:
            report = decode_report(body)
            event = event_name(report)
            if event != "NewCdr":
                self.counters.ignored += 1
                log.debug("ignored %s report from %s", event or "unnamed", peer)
                return 200, "ignored"
            self.clock.learn(report.get("callid"), report.get("timestart"))
            call = call_from_cdr(report)
        except BadReport as exc:
            self.counters.rejected += 1
            log.warning("refused a report from %s: %s", peer, exc)
            return 400, str(exc)
        self.counters.last_report = time.time()
        if call is None:
            self.counters.unrecorded += 1
            return 200, "no recording"
        try:
            rec = await self.writer.add(call)
        except Exception:
            # Not committed: not acknowledged. The PBX sends the report again.
            return 503, "not stored"
        if rec is None:
            self.counters.duplicates += 1
            return 200, "known"
        self.counters.added += 1
        self.added(rec)
        # One line per new recording: what an operator follows. It costs a few per cent
        # of a 1,000/s burst, well within the budget (scripts/bench_ingest.py).
        log.info("new recording %s/%s", rec.day.replace("-", "/"), rec.name)
        return 200, "added"

    async def add_calls(self, calls: list[CallRecord]) -> tuple[int, int]:
        """Back-filled calls: (new, already known)."""
        for call in calls:
            self.clock.learn(call.callid, call.timestart)
        new = known = 0
        for rec in await self.writer.add_many(calls):
            if rec is None:
                known += 1
            else:
                new += 1
                self.added(rec)
        return new, known

    def added(self, rec: Recording) -> None:
        self.fs.added(rec)
        if self.prefetch_new:
            self.content.prefetch(rec)
