"""One mount: everything it runs lives in one trio nursery.

    serve_mount
      ├─ per PBX (recfs/pbx_service.py; one, or one per [pbx.NAME] table):
      │    ├─ writer.run      group commit of reports (recfs/commit.py)
      │    ├─ content.run     downloads and prefetch workers
      │    ├─ keep_session    login, heartbeat, re-login
      │    └─ backfill.run    CDR back-fill: the gap at mount/login, periodic re-check
      ├─ serve_reports        the report receiver, one port for every PBX
      ├─ serve_metrics        Prometheus, with -o metrics=
      ├─ _stop_on_signal      SIGINT/SIGTERM → unmount
      └─ pyfuse3.main         the kernel's requests

pyfuse3.main returns when the filesystem is unmounted (fusermount3 -u, or a
signal); then the nursery is cancelled, and the session logged out.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import pyfuse3
import trio

from recfs.service import systemd
from recfs.http.asgi import bind_socket
from recfs.service.config import MountOptions, OptionError
from recfs.vfs.fuse_ops import RecfsOperations
from recfs.service.metrics import Metrics, serve_metrics
from recfs.service.pbx_service import PbxService
from recfs.ingest.receiver import ReportRouter, serve_reports
from recfs.vfs.core import Owner
from recfs.vfs.multi import MultiFs

log = logging.getLogger("recfs.service.mount")


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
    it has been unmounted and every PBX session logged out."""
    if not os.path.isdir(opts.mountpoint):
        raise MountError(f"mount point {opts.mountpoint} is not a directory")
    options = fuse_options(opts)
    owner = Owner(opts.uid, opts.gid, opts.umask)
    sock = _bind("for PBX reports", *opts.listen)
    port = sock.getsockname()[1]
    metrics_sock = _bind("for metrics", *opts.metrics) if opts.metrics else None
    services: list[PbxService] = []
    stop_servers = trio.Event()
    try:
        for name, pbx_opts in (opts.pbxs or {"": opts}).items():
            services.append(PbxService(pbx_opts, name, port, owner))
        if opts.pbxs:
            fs = MultiFs({svc.name: svc.fs for svc in services}, owner)
            fs.status = lambda: {"pbxs": {svc.name: svc.status.snapshot() for svc in services}}
        else:
            fs = services[0].fs
        async with trio.open_nursery() as nursery:
            for svc in services:
                await svc.start(nursery)
            router = ReportRouter({svc.secret: svc.report_app() for svc in services})
            await nursery.start(serve_reports, router, sock, stop_servers)
            if metrics_sock is not None:
                metrics = Metrics()
                for svc in services:
                    metrics.watch(svc.status, svc.name)
                    svc.fs.read_latency = metrics.read_seconds.observe
                    svc.content.download_latency = metrics.download_seconds.observe
                await nursery.start(serve_metrics, metrics, metrics_sock, stop_servers)
            try:
                pyfuse3.init(RecfsOperations(fs, direct_io=opts.direct_io), opts.mountpoint,
                             options)
            except RuntimeError as exc:
                raise MountError(f"cannot mount on {opts.mountpoint}: {exc}") from None
            try:
                for svc in services:
                    svc.run_in(nursery)
                nursery.start_soon(_stop_on_signal)
                log.info("mounted %s on %s", opts.source if not opts.pbxs else
                         ", ".join(f"{svc.name}={svc.opts.source}" for svc in services),
                         opts.mountpoint)
                task_status.started()
                systemd.notify("READY=1\nSTATUS=mounted")
                await pyfuse3.main()
            finally:
                systemd.notify("STOPPING=1")
                pyfuse3.close(unmount=True)
                stop_servers.set()
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                async with trio.open_nursery() as farewells:
                    for svc in services:
                        farewells.start_soon(svc.log_out)
    finally:
        for svc in services:
            svc.close()
    log.info("unmounted %s", opts.mountpoint)


def _bind(purpose: str, host: str, port: int):
    try:
        return bind_socket(host, port)
    except OSError as exc:
        raise MountError(f"cannot listen {purpose} on {host}:{port}: {exc.strerror}") from None


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
