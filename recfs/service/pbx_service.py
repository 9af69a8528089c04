"""Everything one PBX needs inside a mount: its catalog and cache, its session, its
downloads, its report ingestion and back-fill, its directory tree.

A mount holds one (the usual case) or several (a config with [pbx.NAME] tables);
each runs its tasks in the mount's nursery, so one PBX being down disturbs nothing
of another's.
"""

from __future__ import annotations

import logging
import time
import trio

from recfs.ingest.backfill import Backfill, BackfillKeeper, follow_catalog_days
from recfs.catalog.database import Catalog
from recfs.catalog.writer import GroupCommit
from recfs.service.config import MountOptions, report_target_fields
from recfs.content.cache import DiskCache, resolve_size
from recfs.content.prefetch import PrefetchAll
from recfs.content.store import ContentStore, DownloadPolicy
from recfs.ingest.gate import ReportGate, load_secret, parse_networks
from recfs.ingest.pipeline import Ingest
from recfs.logs import recent_problems
from recfs.pbx.clock import META_KEY as OFFSET_KEY, PbxClock
from recfs.pbx.client import PbxClient, ReportTarget
from recfs.pbx.tls import parse_fingerprint, verification
from recfs.ingest.receiver import ReportApp
from recfs.pbx.session import keep_session
from recfs.service.status import StatusSources
from recfs.vfs.core import Owner, RecordingsFs

log = logging.getLogger("recfs.service.mount")


class PbxService:
    def __init__(self, opts: MountOptions, name: str, report_port: int, owner: Owner):
        """Open the PBX's files and build its parts; nothing runs yet. *name* is its
        directory in a mount of several PBXs, "" when it is the only one."""
        self.opts = opts
        self.name = name
        if opts.insecure:
            log.warning("%s: TLS verification is OFF (insecure): anyone on the path to the "
                        "PBX can read the recordings and the API password hash", opts.source)
        elif opts.source.startswith("http://"):
            log.warning("%s is plain HTTP: recordings and tokens cross the network "
                        "unencrypted", opts.source)
        opts.read_password()  # fail now, clearly, rather than at the first login
        state_dir = opts.resolved_state_dir()
        self.catalog = Catalog(state_dir / "catalog.sqlite", namespace=name)
        self.cache = _open_cache(opts)
        self.secret = load_secret(state_dir)
        self.gate = ReportGate(self.secret,
                               parse_networks(opts.report_from) if opts.report_from else None,
                               opts.source)
        target_port, url, urltag = report_target_fields(opts, report_port, self.secret)
        pin = parse_fingerprint(opts.fingerprint) if opts.fingerprint else None
        self.client = PbxClient(
            opts.source, opts.user, opts.read_password, api_version=opts.api_version,
            target=ReportTarget(target_port, url, urltag),
            verify=verification(opts.cafile, opts.insecure, pin), fingerprint=pin,
            io_timeout=opts.io_timeout,
        )
        self.content = ContentStore(self.catalog, self.cache, self.client,
                                    DownloadPolicy(max_downloads=opts.max_downloads,
                                                   readahead=opts.readahead))
        self.fs = RecordingsFs(self.catalog, self.content, owner, views=opts.views == "all",
                               top=name)
        self.clock = PbxClock(_stored_offset(self.catalog),
                              save=lambda offset: self.catalog.set_meta(OFFSET_KEY, str(offset)))
        self.writer = GroupCommit(self.catalog, self.clock)
        self.ingest = Ingest(self.catalog, self.fs, self.content,
                             prefetch_new=opts.prefetch in ("new", "all"),
                             writer=self.writer, clock=self.clock)
        self.status = StatusSources(opts.source, opts.mountpoint, self.client, self.ingest,
                                    self.content, self.catalog, recent_problems, time.time())
        self.fs.status = self.status.snapshot
        self.backfill = BackfillKeeper(Backfill(self.client, self.ingest.add_calls), self.client,
                                       self.clock, lambda: self.catalog.meta("last_seen"),
                                       opts.backfill_interval)

    def report_app(self) -> ReportApp:
        return ReportApp(self.ingest.report, self.gate)

    async def start(self, nursery: trio.Nursery) -> None:
        """What must run before the mount is ready: commits and downloads."""
        await self.gate.learn_source_addresses()
        await nursery.start(self.writer.run)
        await nursery.start(self.content.run)

    def run_in(self, nursery: trio.Nursery) -> None:
        """The background life of the PBX's session, once the mount is up."""
        nursery.start_soon(keep_session, self.client, self.opts.heartbeat)
        nursery.start_soon(self.backfill.run)
        nursery.start_soon(follow_catalog_days, self.catalog, self.fs)
        nursery.start_soon(_follow_source_address, self.gate)
        if self.opts.prefetch == "all":
            nursery.start_soon(PrefetchAll(self.catalog, self.content,
                                           workers=self.opts.max_downloads).run)
        log.info("%s: %d recordings in the catalog; cache %s: %d files, %.1f MiB of at most "
                 "%.1f MiB, keeping %.1f MiB free", self.opts.source, self.catalog.count(),
                 self.cache.root, self.cache.complete_files, self.cache.complete_bytes / 2**20,
                 (self.cache.max_bytes or 0) / 2**20, self.cache.min_free / 2**20)

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


def _open_cache(opts: MountOptions) -> DiskCache:
    root = opts.resolved_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    # Defaults: a quarter of the cache filesystem, and never less than 5 % of it free.
    max_bytes = resolve_size(opts.cache_size, root, 25)
    min_free = resolve_size(opts.cache_min_free, root, 5)
    return DiskCache(root, max_bytes=max_bytes, min_free=min_free,
                     index_path=opts.resolved_state_dir() / "cache-index.sqlite")


def _stored_offset(catalog: Catalog) -> int | None:
    value = catalog.meta(OFFSET_KEY)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _follow_source_address(gate: ReportGate) -> None:
    while True:
        await trio.sleep(600)
        await gate.learn_source_addresses()

