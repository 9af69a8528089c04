"""One mount: everything it runs lives in one trio nursery.

    serve_mount
      ├─ content.run        downloads and prefetch workers
      ├─ serve_reports      the report receiver (hypercorn)
      ├─ keep_session       login, heartbeat, re-login
      ├─ writer.run         group commit of reports (recfs/commit.py)
      ├─ backfill.run       CDR back-fill: the gap at mount/login, periodic re-check
      ├─ _stop_on_signal    SIGINT/SIGTERM → unmount
      └─ pyfuse3.main       the kernel's requests

pyfuse3.main returns when the filesystem is unmounted (fusermount3 -u, or a
signal); then the nursery is cancelled, and the session logged out.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import pyfuse3
import trio

from recfs.catalog import Catalog
from recfs.config import MountOptions, OptionError, report_target_fields
from recfs.content.cache import DiskCache, resolve_size
from recfs.content.prefetch import PrefetchAll
from recfs.content.store import ContentStore, DownloadPolicy
from recfs import systemd
from recfs.fuse_ops import RecfsOperations
from recfs.logs import recent_problems
from recfs.status import StatusSources
from recfs.gate import ReportGate, load_secret, parse_networks
from recfs.backfill import Backfill, BackfillKeeper, follow_catalog_days
from recfs.commit import GroupCommit
from recfs.ingest import Ingest
from recfs.pbxtime import META_KEY as OFFSET_KEY, PbxClock
from recfs.protocol.client import PbxClient, ReportTarget
from recfs.protocol.tls import parse_fingerprint, verification
from recfs.asgi import bind_socket
from recfs.metrics import Metrics, serve_metrics
from recfs.receiver import serve_reports
from recfs.session import keep_session
from recfs.vfs.core import Owner, RecordingsFs

log = logging.getLogger("recfs.mount")


class MountError(Exception):
    pass


def fuse_options(opts: MountOptions) -> set[str]:
    options = {"fsname=recfs", "subtype=recfs", "ro", "noatime", "nodev", "nosuid",
               # The kernel checks the modes recfs reports; without it, allow_other
               # would open every file to every user.
               "default_permissions"}
    if opts.allow_other:
        if not _user_allow_other() and os.getuid() != 0:
            raise MountError("allow_other needs 'user_allow_other' in /etc/fuse.conf "
                             "(or mount as root)")
        options.add("allow_other")
    elif opts.allow_root:
        options.add("allow_root")
    return options


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


async def serve_mount(opts: MountOptions, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Mount, call task_status.started() once the mount is usable, and return after
    it has been unmounted and the session logged out."""
    if not os.path.isdir(opts.mountpoint):
        raise MountError(f"mount point {opts.mountpoint} is not a directory")
    if opts.insecure:
        log.warning("TLS verification is OFF (insecure): anyone on the path to the PBX "
                    "can read the recordings and the API password hash")
    elif opts.source.startswith("http://"):
        log.warning("%s is plain HTTP: recordings and tokens cross the network unencrypted",
                    opts.source)
    options = fuse_options(opts)
    opts.read_password()  # fail now, clearly, rather than at the first login

    sock = _bind("for PBX reports", *opts.listen)
    port = sock.getsockname()[1]
    metrics_sock = _bind("for metrics", *opts.metrics) if opts.metrics else None
    catalog = Catalog(opts.resolved_state_dir() / "catalog.sqlite")
    cache = _open_cache(opts)
    stop_receiver = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            handler = _Deferred()
            secret = load_secret(opts.resolved_state_dir())
            gate = ReportGate(secret, parse_networks(opts.report_from) if opts.report_from else None,
                              opts.source)
            await gate.learn_source_addresses()
            await nursery.start(serve_reports, handler, gate, sock, stop_receiver)
            nursery.start_soon(_follow_source_address, gate)
            target_port, url, urltag = report_target_fields(opts, port, secret)
            pin = parse_fingerprint(opts.fingerprint) if opts.fingerprint else None
            client = PbxClient(
                opts.source, opts.user, opts.read_password, api_version=opts.api_version,
                target=ReportTarget(target_port, url, urltag),
                verify=verification(opts.cafile, opts.insecure, pin), fingerprint=pin,
                io_timeout=opts.io_timeout,
            )
            content = ContentStore(catalog, cache, client,
                                   DownloadPolicy(max_downloads=opts.max_downloads))
            fs = RecordingsFs(catalog, content, Owner(opts.uid, opts.gid, opts.umask),
                              views=opts.views == "all")
            clock = PbxClock(_stored_offset(catalog),
                             save=lambda offset: catalog.set_meta(OFFSET_KEY, str(offset)))
            writer = GroupCommit(catalog, clock)
            await nursery.start(writer.run)
            ingest = Ingest(catalog, fs, content, prefetch_new=opts.prefetch in ("new", "all"),
                            writer=writer, clock=clock)
            handler.target = ingest.report
            status = StatusSources(opts.source, opts.mountpoint, client, ingest, content,
                                   catalog, recent_problems, time.time())
            fs.status = status.snapshot
            if metrics_sock is not None:
                metrics = Metrics()
                metrics.watch(status)
                fs.read_latency = metrics.read_seconds.observe
                content.download_latency = metrics.download_seconds.observe
                await nursery.start(serve_metrics, metrics, metrics_sock, stop_receiver)
            backfill = BackfillKeeper(Backfill(client, ingest.add_calls), client, clock,
                                      lambda: catalog.meta("last_seen"), opts.backfill_interval)
            await nursery.start(content.run)

            try:
                pyfuse3.init(RecfsOperations(fs), opts.mountpoint, options)
            except RuntimeError as exc:
                raise MountError(f"cannot mount on {opts.mountpoint}: {exc}") from None
            try:
                nursery.start_soon(keep_session, client, opts.heartbeat)
                nursery.start_soon(backfill.run)
                nursery.start_soon(follow_catalog_days, catalog, fs)
                nursery.start_soon(_stop_on_signal)
                log.info("mounted %s on %s (%d recordings in the catalog)", opts.source,
                         opts.mountpoint, catalog.count())
                log.info("cache %s: %d files, %.1f MiB of at most %.1f MiB, keeping %.1f MiB free",
                         cache.root, cache.complete_files, cache.complete_bytes / 2**20,
                         (cache.max_bytes or 0) / 2**20, cache.min_free / 2**20)
                if opts.prefetch == "all":
                    nursery.start_soon(PrefetchAll(catalog, content,
                                                   workers=opts.max_downloads).run)
                task_status.started()
                systemd.notify("READY=1\nSTATUS=mounted")
                await pyfuse3.main()
            finally:
                systemd.notify("STOPPING=1")
                pyfuse3.close(unmount=True)
                stop_receiver.set()
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await client.logout()
                except Exception as exc:  # the PBX may be gone; unmounting must not fail
                    log.warning("logout: %s", exc)
                await client.aclose()
    finally:
        catalog.close()
        cache.close()
    log.info("unmounted %s", opts.mountpoint)


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


def _bind(purpose: str, host: str, port: int):
    try:
        return bind_socket(host, port)
    except OSError as exc:
        raise MountError(f"cannot listen {purpose} on {host}:{port}: {exc.strerror}") from None


class _Deferred:
    """The receiver must be bound before the ingest side exists; reports that arrive
    in between are refused with 503, and the PBX sends them again."""

    def __init__(self):
        self.target: Callable[[bytes, str], Awaitable[tuple[int, str]]] | None = None

    async def __call__(self, body: bytes, peer: str) -> tuple[int, str]:
        if self.target is None:
            return 503, "starting"
        return await self.target(body, peer)


async def _follow_source_address(gate: ReportGate) -> None:
    while True:
        await trio.sleep(600)
        await gate.learn_source_addresses()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def run(opts: MountOptions, on_ready: Callable[[], None] | None = None) -> int:
    """Run a mount to its end in this process (the foreground case)."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_mount, opts)
            if on_ready is not None:
                on_ready()

    try:
        trio.run(main)
    except BaseException as exc:
        expected = _expected_failure(exc)
        if expected is None:
            raise
        log.error("%s", expected)
        return 1
    return 0


def _expected_failure(exc: BaseException) -> BaseException | None:
    """The MountError/OptionError inside *exc*, even when trio wrapped it in a group."""
    if isinstance(exc, (MountError, OptionError)):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _expected_failure(inner)
            if found is not None:
                return found
    return None


def run_in_background(opts: MountOptions, start_logging: Callable[[], None]) -> int:
    """Fork; the parent returns 0 once the child's mount is ready (or 1 with the
    child's error), so that `recfs mount` in a script or fstab returns a usable mount."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read()
        if message == b"ready":
            return 0
        sys.stderr.write(message.decode("utf-8", "replace") or "recfs: mount failed\n")
        return 1
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    start_logging()

    def ready() -> None:
        os.write(write_end, b"ready")
        os.close(write_end)
        # From now on nobody reads our terminal output: logs go to the log file.
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    started = time.monotonic()
    try:
        code = run(opts, on_ready=ready)
    except BaseException as exc:
        code = 1
        log.exception("mount failed")
        _tell_parent(write_end, f"recfs: {exc}\n")
    else:
        if code != 0:
            _tell_parent(write_end, "recfs: mount failed; see the log\n")
    log.debug("mount ran %.0f s", time.monotonic() - started)
    os._exit(code)


def _tell_parent(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode())
        os.close(fd)
    except OSError:
        pass
