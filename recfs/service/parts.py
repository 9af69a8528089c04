"""The one way to build what talks to a PBX and writes its catalog: used by the
mount (recfs/service/pbx_service.py) and by `recfs backfill`, so that both register
the same report target, date calls with the same clock and give a recording the
same inode number (in a mount of several PBXs the PBX's name is mixed into every
inode: a catalog opened without it would hand out numbers the mount never would).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recfs.archive import ArchiveError, ArchiveStore, open_store
import trio

from recfs.catalog.database import Catalog
from recfs.content.cache import DiskCache, resolve_size
from recfs.catalog.postgres import (CatalogBusy, CatalogConfigError, CatalogUnavailable, PbxKey,
                                    PgSettings)
from recfs.catalog.schema import SchemaError
from recfs.catalog.shared import SharedBackend
from recfs.catalog.watch import CatalogWatch
from recfs.catalog.writer import Backend, CatalogWriter
from recfs.ingest.gate import load_secret
from recfs.pbx.client import PbxClient, ReportTarget
from recfs.pbx.pseries import PSeriesClient
from recfs.pbx.clock import META_KEY as OFFSET_KEY, PbxClock
from recfs.pbx.tls import parse_fingerprint, verification
from recfs.service.config import MountOptions, OptionError, report_target_fields
from recfs.service.mountpoint import ConfigurationError, MountError
from recfs.service.systemd import extend_start

log = logging.getLogger("recfs.service")


@dataclass
class PbxParts:
    catalog: Catalog
    watch: CatalogWatch
    writer: CatalogWriter  # not running yet: its run() belongs in the caller's nursery
    clock: PbxClock
    client: PbxClient | PSeriesClient  # by the `api=` option
    secret: str  # the last part of the report path registered at login


def open_pbx(opts: MountOptions, name: str, report_port: int, *,
             exclusive: bool = True) -> PbxParts:
    """Open the PBX's catalog and build its client. *name*: the PBX's directory in a
    mount of several PBXs ("" when it is the only one); *report_port*: the mount's
    receiver port, registered at every login; *exclusive*: take the PBX's ingest
    lock in a shared catalog (the mount does; `recfs backfill` and `recfs archive`
    run beside it)."""
    if opts.insecure:
        log.warning("%s: TLS verification is OFF (insecure): anyone on the path to the "
                    "PBX can read the recordings and the API password hash", opts.source)
    elif opts.source.startswith("http://"):
        log.warning("%s is plain HTTP: recordings and tokens cross the network "
                    "unencrypted", opts.source)
    opts.read_password()  # fail now, clearly, rather than at the first login
    state_dir = opts.resolved_state_dir()
    catalog, watch, writer = open_catalog(opts, name, exclusive=exclusive)
    secret = load_secret(state_dir)
    target_port, url, urltag = report_target_fields(opts, report_port, secret)
    pin = parse_fingerprint(opts.fingerprint) if opts.fingerprint else None
    verify = verification(opts.cafile, opts.insecure, pin)
    client: PbxClient | PSeriesClient
    if opts.api == "p-series":
        # user= is the API application's Client ID, the password its Client Secret.
        client = PSeriesClient(opts.source, opts.user, opts.read_password, verify=verify,
                               fingerprint=pin, io_timeout=opts.io_timeout)
    else:
        client = PbxClient(
            opts.source, opts.user, opts.read_password, api_version=opts.api_version,
            target=ReportTarget(target_port, url, urltag), verify=verify, fingerprint=pin,
            io_timeout=opts.io_timeout,
        )
    return PbxParts(catalog, watch, writer, PbxClock(_stored_offset(catalog)), client, secret)


def open_catalog(opts: MountOptions, name: str, *, exclusive: bool = True) -> tuple[
        Catalog, CatalogWatch, CatalogWriter]:
    """The catalog a PBX's ingest reads and writes: STATE_DIR/catalog.sqlite, or with
    `catalog=postgresql://...` the shared catalog, read through the local replica
    STATE_DIR/replica.sqlite."""
    state_dir = opts.resolved_state_dir()
    settings = opts.catalog_settings()
    if settings is None:
        catalog = Catalog(state_dir / "catalog.sqlite", namespace=name, upgrading=extend_start)
        watch = CatalogWatch(catalog)
        return catalog, watch, CatalogWriter(catalog, watch)
    catalog = Catalog(state_dir / "replica.sqlite", namespace=name, upgrading=extend_start)
    watch = CatalogWatch(catalog)
    backend = SharedBackend(settings, PbxKey(opts.catalog_name or name or opts.slug, name),
                            catalog, ingest=True, exclusive=exclusive, source=opts.source,
                            archive=opts.archive)
    return catalog, watch, CatalogWriter(catalog, watch, backend)


def open_replica(settings: PgSettings, pbx: PbxKey, path: Path) -> tuple[
        Catalog, CatalogWatch, CatalogWriter]:
    """A reader mount's view of one PBX of a shared catalog: its local replica, and
    the writer thread that keeps it (and never writes the shared catalog). A new
    replica is filled lazily: the mount is up at once, whatever the catalog holds."""
    catalog = Catalog(path, namespace=pbx.namespace, upgrading=extend_start)
    watch = CatalogWatch(catalog)
    backend: Backend = SharedBackend(settings, pbx, catalog, ingest=False, lazy=True)
    return catalog, watch, CatalogWriter(catalog, watch, backend)


# Another ingest mount holds the PBX: a standby may take over once it is gone, so
# systemd should try again later (sysexits.h EX_TEMPFAIL).
EX_TEMPFAIL = 75


class CatalogBusyError(MountError):
    exit_status = EX_TEMPFAIL


async def start_writer(nursery: trio.Nursery, writer: CatalogWriter) -> None:
    """Start the catalog's writer; a catalog that cannot be used is a MountError
    saying why (one line, no traceback)."""
    try:
        await nursery.start(writer.run)
    except CatalogBusy as exc:
        raise CatalogBusyError(str(exc)) from None
    except (CatalogConfigError, SchemaError) as exc:
        raise ConfigurationError(str(exc)) from None
    except CatalogUnavailable as exc:
        raise MountError(f"{exc}; is the database running?") from None


def open_archive(opts: MountOptions) -> ArchiveStore | None:
    """The archive the options name (nothing is contacted yet: check() does that),
    or None without `archive=`; OptionError naming the option to fix."""
    if not opts.archive:
        return None
    try:
        return open_store(opts.archive, endpoint=opts.archive_endpoint,
                          credentials=opts.archive_credentials, profile=opts.archive_profile,
                          region=opts.archive_region, io_timeout=opts.io_timeout,
                          max_uploads=opts.max_uploads)
    except ArchiveError as exc:
        raise OptionError(str(exc)) from None


async def check_archive(archive: ArchiveStore, who: str, meanwhile: str) -> None:
    """At start: a store that refuses the configuration fails the mount (*who*
    prefixes the message); one that is down only warns, saying what happens
    *meanwhile*."""
    try:
        await archive.check()
    except ArchiveError as exc:
        if not exc.temporary:
            raise ConfigurationError(f"{who}archive {archive.url}: {exc}") from None
        log.warning("archive %s not reachable (%s): %s", archive.url, exc, meanwhile)


def _stored_offset(catalog: Catalog) -> int | None:
    value = catalog.meta(OFFSET_KEY)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def open_cache(opts: MountOptions, may_evict: Callable[[int], bool] | None) -> DiskCache:
    """The PBX's cache; *may_evict*: whether a file may go (None: any may)."""
    root = opts.resolved_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    # Defaults: a quarter of the cache filesystem, and never less than 5 % of it free.
    max_bytes = resolve_size(opts.cache_size, root, 25)
    min_free = resolve_size(opts.cache_min_free, root, 5)
    return DiskCache(root, max_bytes=max_bytes, min_free=min_free,
                     index_path=opts.resolved_state_dir() / "cache-index.sqlite",
                     may_evict=may_evict or _anything)


def _anything(ino: int) -> bool:
    return True
