"""From a report on the wire to a recording in the catalog and the tree.

The receiver answers 200 only after `Ingest.report` returned, and that happens only
after the catalog committed: an acknowledged report is never lost. The same report
twice is harmless (the catalog keeps the first).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from recfs.catalog import Catalog, Recording
from recfs.content.store import ContentStore
from recfs.protocol.reports import BadReport, call_from_cdr, decode_report, event_name
from recfs.vfs.core import RecordingsFs

log = logging.getLogger("recfs.ingest")


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
                 prefetch_new: bool):
        self.catalog = catalog
        self.fs = fs
        self.content = content
        self.prefetch_new = prefetch_new
        self.counters = IngestCounters()

    def report(self, body: bytes, peer: str) -> tuple[int, str]:
        """Handle one pushed report; returns (HTTP status, short reason)."""
        self.counters.received += 1
        try:
            report = decode_report(body)
            event = event_name(report)
            if event != "NewCdr":
                self.counters.ignored += 1
                log.debug("ignored %s report from %s", event or "unnamed", peer)
                return 200, "ignored"
            call = call_from_cdr(report)
        except BadReport as exc:
            self.counters.rejected += 1
            log.warning("refused a report from %s: %s", peer, exc)
            return 400, str(exc)
        self.counters.last_report = time.time()
        if call is None:
            self.counters.unrecorded += 1
            return 200, "no recording"
        rec = self.catalog.add(call)
        if rec is None:
            self.counters.duplicates += 1
            return 200, "known"
        self.counters.added += 1
        self.added(rec)
        log.info("new recording %s/%s", rec.day.replace("-", "/"), rec.name)
        return 200, "added"

    def added(self, rec: Recording) -> None:
        self.fs.added(rec)
        if self.prefetch_new:
            self.content.prefetch(rec)
