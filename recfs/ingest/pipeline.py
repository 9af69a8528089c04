"""From a report on the wire (or a CDR row) to a recording in the catalog.

`Ingest.report` returns only after the transaction holding the recording committed
(recfs/catalog/writer.py: reports that arrive together share one), so the receiver
acknowledges no report that could still be lost. The same report twice is harmless
(the catalog keeps the first). HTTP is the receiver's business: this module answers
with an `Outcome`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from recfs.catalog.database import Recording
from recfs.catalog.writer import CatalogWriter
from recfs.pbx.clock import PbxClock
from recfs.pbx.reports import BadReport, CallRecord, call_from_cdr, decode_report, event_name

log = logging.getLogger("recfs.ingest")


class Outcome(enum.Enum):
    ADDED = "added"
    KNOWN = "known"  # the same recording came before
    UNRECORDED = "no recording"  # a call without a recording
    IGNORED = "ignored"  # another event than NewCdr
    REFUSED = "refused"  # not a report recfs can trust: the PBX must not send it again
    NOT_STORED = "not stored"  # the catalog could not commit it: the PBX must send it again


@dataclass
class IngestCounters:
    received: int = 0
    added: int = 0
    duplicates: int = 0
    unrecorded: int = 0
    ignored: int = 0
    rejected: int = 0
    not_stored: int = 0
    last_report: float | None = None


class Ingest:
    def __init__(self, writer: CatalogWriter, clock: PbxClock,
                 on_new: Callable[[Recording], None]):
        """*on_new* is told of each recording the catalog did not know (prefetch)."""
        self.writer = writer
        self.clock = clock
        self.on_new = on_new
        self.counters = IngestCounters()

    async def report(self, body: bytes, peer: str) -> tuple[Outcome, str]:
        """Handle one pushed report: its outcome, and a short reason for a refusal."""
        counters = self.counters
        counters.received += 1
        try:
            report = decode_report(body)
            event = event_name(report)
            if event != "NewCdr":
                counters.ignored += 1
                log.debug("ignored %s report from %s", event or "unnamed", peer)
                return Outcome.IGNORED, ""
            self.clock.learn(report.get("callid"), report.get("timestart"))
            call = call_from_cdr(report)
        except BadReport as exc:
            counters.rejected += 1
            log.warning("refused a report from %s: %s", peer, exc)
            return Outcome.REFUSED, str(exc)
        counters.last_report = time.time()
        if call is None:
            counters.unrecorded += 1
            return Outcome.UNRECORDED, ""
        try:
            rec = await self.writer.add(call, self.clock.offset)
        except Exception:
            # Not committed, not acknowledged: the PBX sends the report again. The
            # writer logged why.
            counters.not_stored += 1
            return Outcome.NOT_STORED, ""
        if rec is None:
            counters.duplicates += 1
            return Outcome.KNOWN, ""
        counters.added += 1
        self.on_new(rec)
        # One line per new recording: what an operator follows. It costs a few per cent
        # of a 1,000/s burst, well within the budget (scripts/bench_ingest.py).
        log.info("new recording %s/%s", rec.day.replace("-", "/"), rec.name)
        return Outcome.ADDED, ""

    def heard(self) -> None:
        """A P-Series event arrived (the counterpart of a report): for status."""
        self.counters.received += 1
        self.counters.last_report = time.time()

    async def add_calls(self, calls: list[CallRecord],
                        sizes: list[int | None] | None = None) -> tuple[int, int]:
        """Back-filled calls (or a P-Series list's, with their *sizes*): (new,
        already known)."""
        for call in calls:
            self.clock.learn(call.callid, call.timestart)
        new = known = 0
        added = (await self.writer.add_many(calls, self.clock.offset) if sizes is None else
                 await self.writer.add_listed(calls, sizes, self.clock.offset))
        for rec in added:
            if rec is None:
                known += 1
            else:
                new += 1
                self.on_new(rec)
        return new, known
