"""The one way to build what talks to a PBX and writes its catalog: used by the
mount (recfs/service/pbx_service.py) and by `recfs backfill`, so that both register
the same report target, date calls with the same clock and give a recording the
same inode number (in a mount of several PBXs the PBX's name is mixed into every
inode: a catalog opened without it would hand out numbers the mount never would).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from recfs.archive import ArchiveError, ArchiveStore, open_store
from recfs.catalog.database import Catalog
from recfs.catalog.watch import CatalogWatch
from recfs.catalog.writer import CatalogWriter
from recfs.ingest.gate import load_secret
from recfs.pbx.client import PbxClient, ReportTarget
from recfs.pbx.pseries import PSeriesClient
from recfs.pbx.clock import META_KEY as OFFSET_KEY, PbxClock
from recfs.pbx.tls import parse_fingerprint, verification
from recfs.service.config import MountOptions, OptionError, report_target_fields

log = logging.getLogger("recfs.service")


@dataclass
class PbxParts:
    catalog: Catalog
    watch: CatalogWatch
    writer: CatalogWriter  # not running yet: its run() belongs in the caller's nursery
    clock: PbxClock
    client: PbxClient | PSeriesClient  # by the `api=` option
    secret: str  # the last part of the report path registered at login


def open_pbx(opts: MountOptions, name: str, report_port: int) -> PbxParts:
    """Open the PBX's catalog and build its client. *name*: the PBX's directory in a
    mount of several PBXs ("" when it is the only one); *report_port*: the mount's
    receiver port, registered at every login."""
    if opts.insecure:
        log.warning("%s: TLS verification is OFF (insecure): anyone on the path to the "
                    "PBX can read the recordings and the API password hash", opts.source)
    elif opts.source.startswith("http://"):
        log.warning("%s is plain HTTP: recordings and tokens cross the network "
                    "unencrypted", opts.source)
    opts.read_password()  # fail now, clearly, rather than at the first login
    state_dir = opts.resolved_state_dir()
    catalog = Catalog(state_dir / "catalog.sqlite", namespace=name)
    watch = CatalogWatch(catalog)
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
    return PbxParts(catalog, watch, CatalogWriter(catalog, watch),
                    PbxClock(_stored_offset(catalog)), client, secret)


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


def _stored_offset(catalog: Catalog) -> int | None:
    value = catalog.meta(OFFSET_KEY)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
