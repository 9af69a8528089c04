"""Everything one PBX needs inside a mount: its catalog and cache, its session, its
downloads, its report ingestion and back-fill, its directory tree.

A mount holds one (the usual case) or several (a config with [pbx.NAME] tables);
each runs its tasks in the mount's nursery, so one PBX being down disturbs nothing
of another's.
"""

from __future__ import annotations

import functools
import logging
import time

import trio

from recfs.catalog.database import Archive, Recording
from recfs.content.archiver import Archiver
from recfs.content.prefetch import PrefetchAll
from recfs.content.store import ContentStore, DownloadPolicy
from recfs.ingest.backfill import Backfill, BackfillKeeper
from recfs.ingest.gate import SOURCE_RECHECK, ReportGate, parse_networks
from recfs.ingest.pipeline import Ingest
from recfs.ingest.recording_list import RecordingList
from recfs.ingest.receiver import ReportApp
from recfs.logs import recent_problems
from recfs.pbx.events import EventSocket
from recfs.pbx.pseries import PSeriesClient
from recfs.pbx.session import keep_session
from recfs.service.config import MountOptions
from recfs.service.metrics import Observers
from recfs.service.parts import (check_archive, open_archive, open_cache, open_pbx,
                                 start_writer)
from recfs.service.status import StatusSources
from recfs.service.supervise import Supervisor
from recfs.vfs.core import Owner, RecordingsFs

log = logging.getLogger("recfs.service.mount")


class PbxService:
    def __init__(self, opts: MountOptions, name: str, report_port: int, owner: Owner,
                 observe: Observers, mount_tasks: Supervisor):
        """Open the PBX's files and build its parts; nothing runs yet. *name* is its
        directory in a mount of several PBXs, "" when it is the only one."""
        self.opts = opts
        self.name = name
        parts = open_pbx(opts, name, report_port)
        self.catalog, self.watch, self.writer = parts.catalog, parts.watch, parts.writer
        self.clock, self.client, self.secret = parts.clock, parts.client, parts.secret
        self.archive = open_archive(opts)
        self.cache = open_cache(opts, self._may_evict if self.archive is not None else None)
        self.gate = ReportGate(self.secret,
                               parse_networks(opts.report_from) if opts.report_from else None,
                               opts.source)
        self.content = ContentStore(self.catalog, self.cache, self.client, self.writer,
                                    DownloadPolicy(max_downloads=opts.max_downloads,
                                                   readahead=opts.readahead),
                                    observe_download=observe.download,
                                    archive=self.archive, pbx=name)
        self.archiver = None if self.archive is None else Archiver(
            self.catalog, self.cache, self.writer, self.archive, self.content.fetch, pbx=name,
            max_uploads=opts.max_uploads)
        prefetch_new = opts.prefetch in ("new", "all")
        self.ingest = Ingest(self.writer, self.clock,
                             on_new=self.content.prefetch if prefetch_new else _ignore)
        self.tasks = Supervisor(name)
        # How new recordings are learned: S-Series reports (the receiver) and CDR
        # back-fill; P-Series the recording list and the event socket.
        self.backfill: BackfillKeeper | None = None
        self.recording_list: RecordingList | None = None
        self.events: EventSocket | None = None
        if isinstance(self.client, PSeriesClient):
            self.recording_list = RecordingList(self.client, self.ingest, self.writer,
                                                self.catalog)
            self.events = EventSocket(self.client, self.recording_list.on_frame,
                                      self.recording_list.catch_up_logged,
                                      heartbeat=opts.event_heartbeat)
        else:
            self.backfill = BackfillKeeper(Backfill(self.client, self.ingest.add_calls),
                                           self.client, self.clock,
                                           lambda: self.catalog.meta("last_seen"),
                                           opts.backfill_interval)
        self.status = StatusSources(opts.source, opts.mountpoint, self.client, self.ingest,
                                    self.content, self.catalog, self.writer, self.archiver, self.tasks, mount_tasks,
                                    recent_problems, time.time(), self.recording_list, self.events)
        self.fs = RecordingsFs(self.catalog, self.content, owner, views=opts.views == "all",
                               top=name, status=self.status.snapshot,
                               observe_read=observe.read)

    def _may_evict(self, ino: int) -> bool:
        """With an archive, the cache holds the only copy of a recording until it is
        archived: only archived ones may go."""
        rec = self.catalog.by_ino(ino)
        return rec is None or rec.archive == Archive.ARCHIVED

    async def check_archive(self) -> None:
        """At start: a store that refuses the configuration fails the mount; one that
        is down does not (the mount serves cache and PBX, and archives later)."""
        if self.archive is not None:
            await check_archive(self.archive, f"{self.opts.source}: ",
                                "recordings are kept in the cache and archived once it is back")

    def report_app(self) -> ReportApp:
        return ReportApp(self.ingest.report, self.gate)

    async def start(self, nursery: trio.Nursery) -> None:
        """What must run before the mount is ready: the catalog's writer (a catalog
        that cannot be opened fails the mount) and the downloads."""
        await self.gate.learn_source_addresses()
        await start_writer(nursery, self.writer)
        self.fs.refresh()  # a shared catalog's replica has just caught up
        await nursery.start(self.content.run)

    async def first_contact(self) -> None:
        """Log in once before the mount is ready (recfs/service/first_contact.py):
        MountError when the configuration is wrong (credentials, certificate, not a
        PBX at SOURCE); when the PBX is only unreachable, a WARNING, and the mount
        comes up with the catalog and the cache (keep_session goes on trying)."""
        from recfs.service.first_contact import first_contact
        await first_contact(self.client, self.opts, self.name,
                            lambda: (self.cache.complete_files, self.catalog.count()))

    def run_in(self, nursery: trio.Nursery) -> None:
        """The background life of the PBX's session, once the mount is up; each task
        supervised (recfs/service/supervise.py)."""
        start = functools.partial(self.tasks.start, nursery)
        if isinstance(self.client, PSeriesClient):
            assert self.recording_list is not None and self.events is not None
            start("tokens", self.client.keep_tokens)
            start("recording list", functools.partial(_walk_every, self.recording_list,
                                                      self.opts.backfill_interval))
            start("events", self.events.run)
        else:
            assert self.backfill is not None
            start("session", functools.partial(keep_session, self.client, self.opts.heartbeat))
            start("back-fill", self.backfill.run)
        start("tree", functools.partial(self.watch.follow, self.fs.refresh))
        start("report sources", functools.partial(_follow_source_address, self.gate))
        start("cache upkeep", self.cache.reconcile)
        if self.archiver is not None:
            archiver = self.archiver
            start("archive", archiver.run)
            start("archive queue", functools.partial(self.watch.follow, archiver.poke))
        if self.opts.prefetch == "all":
            from recfs.progress import terminal_progress  # a bar only when stderr is a terminal
            start("prefetch", PrefetchAll(self.catalog, self.content,
                                          workers=self.opts.max_downloads,
                                          progress=terminal_progress(
                                              f"prefetch=all {self.name}".rstrip(),
                                              unit="rec")).run)
        log.info("%s: %d recordings in the catalog; cache %s: %d files, %.1f MiB of at most "
                 "%.1f MiB, keeping %.1f MiB free", self.opts.source, self.catalog.count(),
                 self.cache.root, self.cache.complete_files, self.cache.complete_bytes / 2**20,
                 (self.cache.max_bytes or 0) / 2**20, self.cache.min_free / 2**20)

    async def close_archive(self) -> None:
        if self.archive is not None:
            await self.archive.aclose()

    async def log_out(self) -> None:
        """On the way down (shielded by the caller): the PBX may be gone already."""
        try:
            await self.client.logout()
        except Exception as exc:
            log.warning("%s: logout: %s", self.opts.source, exc)
        await self.client.aclose()

    def close(self) -> None:
        self.catalog.close()
        self.cache.close()


def _ignore(rec: Recording) -> None:
    pass


async def _walk_every(recording_list: RecordingList, interval: float) -> None:
    """The list at mount, then every *interval* seconds: events the PBX never sent
    (or sent while the socket was down and the reconnect's walk failed) still
    bring their recordings."""
    while True:
        await recording_list.catch_up_logged()
        await trio.sleep(interval)


async def _follow_source_address(gate: ReportGate) -> None:
    while True:
        await trio.sleep(SOURCE_RECHECK)
        await gate.learn_source_addresses()

