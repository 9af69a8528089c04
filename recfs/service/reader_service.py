"""One PBX in a reader mount: `recfs mount postgresql://... MOUNTPOINT`.

A reader mount serves what a shared catalog holds (recfs/catalog/postgres.py) and
never talks to a PBX: the tree, sizes, times and inode numbers come from the local
replica of the catalog that its writer thread keeps (recfs/catalog/shared.py), the
bytes from the archive the PBX's ingest mount uploads to, into this host's own
cache. Its parts are those of a PbxService without the PBX: no session, no reports,
no back-fill, no uploads.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import trio

from recfs.catalog.postgres import (CatalogConfigError, CatalogUnavailable, PbxEntry, PgSettings,
                                    pbxs)
from recfs.content.store import ContentStore, DownloadPolicy
from recfs.logs import recent_problems
from recfs.service.config import MountOptions, OptionError
from recfs.service.metrics import Observers
from recfs.service.mountpoint import ConfigurationError, MountError
from recfs.service.parts import (check_archive, open_archive, open_cache, open_replica,
                                 start_writer)
from recfs.service.status import StatusSources
from recfs.service.supervise import Supervisor
from recfs.vfs.core import Owner, RecordingsFs

log = logging.getLogger("recfs.service.reader")


def catalog_pbxs(settings: PgSettings) -> list[PbxEntry]:
    """The PBXs the catalog holds (at the start of a reader mount); MountError when
    the catalog cannot be reached or holds none."""
    try:
        db = settings.connect(application="recfs reader")
    except CatalogUnavailable as exc:
        raise MountError(f"{exc}; is the database running?") from None
    except CatalogConfigError as exc:
        raise ConfigurationError(str(exc)) from None
    try:
        found = pbxs(db)
    finally:
        db.close()
    if not found:
        raise MountError(f"catalog {settings.shown} holds no PBX yet: mount a PBX with "
                         f"-o catalog={settings.shown} first")
    return found


class ReaderService:
    def __init__(self, opts: MountOptions, entry: PbxEntry, name: str, owner: Owner,
                 observe: Observers, mount_tasks: Supervisor):
        """*entry*: the PBX in the catalog; *name*: its directory in the mount ("" when
        the catalog holds only it)."""
        settings = opts.catalog_settings()
        assert settings is not None
        self.name = name
        # Its own state and cache below the mount's, one directory per PBX.
        self.opts = dataclasses.replace(
            opts, state_dir=str(opts.resolved_state_dir() / entry.key.name),
            cache_dir=str(opts.resolved_cache_dir() / entry.key.name),
            archive=entry.archive or opts.archive)
        if not self.opts.archive:
            raise OptionError(f"PBX {entry.key.name} of the catalog has no archive to read "
                              f"from: give archive=")
        self.catalog, self.watch, self.writer = open_replica(
            settings, entry.key, self.opts.resolved_state_dir() / "replica.sqlite")
        self.archive = open_archive(self.opts)
        # Everything a reader caches is in the archive: any of it may be evicted.
        self.cache = open_cache(self.opts, None)
        # The archive keys are those of the ingest mount: its inode namespace.
        self.content = ContentStore(self.catalog, self.cache, None, self.writer,
                                    DownloadPolicy(max_downloads=opts.max_downloads,
                                                   readahead=opts.readahead),
                                    observe_download=observe.download,
                                    archive=self.archive, pbx=entry.key.namespace)
        self.tasks = Supervisor(name)
        self.status = StatusSources(settings.shown, opts.mountpoint, None, None, self.content,
                                    self.catalog, self.writer, None, self.tasks, mount_tasks,
                                    recent_problems, time.time())
        self.fs = RecordingsFs(self.catalog, self.content, owner, views=opts.views == "all",
                               top=name, status=self.status.snapshot,
                               observe_read=observe.read, ensure=self.writer.ensure)

    async def start(self, nursery: trio.Nursery) -> None:
        await start_writer(nursery, self.writer)
        self.fs.refresh()  # the replica is up to date now
        await nursery.start(self.content.run)

    async def check_archive(self) -> None:
        """The archive is where every byte comes from: one that refuses the
        configuration fails the mount; one that is down only warns."""
        assert self.archive is not None
        await check_archive(self.archive, "",
                            "only cached recordings can be read until it is back")

    def run_in(self, nursery: trio.Nursery) -> None:
        start = functools.partial(self.tasks.start, nursery)
        start("tree", functools.partial(self.watch.follow, self.fs.refresh))
        start("cache upkeep", self.cache.reconcile)
        log.info("%s: %d recordings in the catalog; cache %s: %d files", self.status.source,
                 self.catalog.count(), self.cache.root, self.cache.complete_files)

    async def close_archive(self) -> None:
        if self.archive is not None:
            await self.archive.aclose()

    def close(self) -> None:
        self.catalog.close()
        self.cache.close()
