"""One mount: everything it runs lives in one trio nursery.

    serve_mount
      ├─ per PBX (recfs/service/pbx_service.py; one, or one per [pbx.NAME] table):
      │    ├─ writer.run        the catalog's one writer (recfs/catalog/writer.py)
      │    ├─ content.run       downloads and prefetch workers
      │    └─ supervised (recfs/service/supervise.py): the session keeper, back-fill,
      │       the tree following the catalog, the report sources, the cache's
      │       upkeep, prefetch=all
      ├─ supervised: the report receiver (one port for every PBX), the metrics endpoint
      ├─ _stop_on_signal        SIGINT/SIGTERM → unmount
      └─ pyfuse3.main           the kernel's requests

pyfuse3.main returns when the filesystem is unmounted (fusermount3 -u, or a
signal); then the nursery is cancelled, and the session logged out.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import pyfuse3
import trio

from recfs.http.asgi import bind_socket
from recfs.http.server import BACKLOG
from recfs.ingest.receiver import ReportRouter, serve_reports
from recfs.logs import redact
from recfs.service import systemd
from recfs.service.config import MountOptions
from recfs.service.first_contact import contact_all
from recfs.service.metrics import Metrics, serve_metrics
from recfs.service.mountpoint import EX_CONFIG, MountError, expected_failure, prepare_mountpoint
from recfs.service.pbx_service import PbxService
from recfs.service.reader_service import ReaderService, catalog_pbxs
from recfs.service.supervise import Supervisor
from recfs.vfs.core import Owner
from recfs.vfs.fuse_ops import Filesystem, RecfsOperations
from recfs.vfs.multi import MultiFs

log = logging.getLogger("recfs.service.mount")


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
    it has been unmounted and every PBX session logged out. First the mount point
    (recfs/service/mountpoint.py: a dead mount there is detached, a live one refused);
    before the mount is ready, one login per PBX (recfs/service/first_contact.py: a
    wrong configuration is a MountError, an unreachable PBX only a warning)."""
    await prepare_mountpoint(opts.mountpoint, opts.nonempty)  # a dead mount there: detached
    options = fuse_options(opts)
    owner = Owner(opts.uid, opts.gid, opts.umask)
    # Only S-Series PBXs push reports; a reader mount, or a mount of P-Series PBXs
    # alone (events over the WebSocket recfs opens), listens on no port at all.
    pushes = not opts.is_reader and any(part.api != "p-series"
                                        for part in (opts.pbxs or {"": opts}).values())
    sock = _bind("for PBX reports", *opts.listen) if pushes else None
    port = sock.getsockname()[1] if sock is not None else 0
    metrics_sock = _bind("for metrics", *opts.metrics) if opts.metrics else None
    services: list[PbxService] = []
    readers: list[ReaderService] = []
    stop_servers = trio.Event()
    mount_tasks = Supervisor()
    # Kept whether or not they are served: the histograms are fed as things happen.
    metrics = Metrics(mount_tasks)
    try:
        parts: list[PbxService | ReaderService]
        if opts.is_reader:
            readers = await _reader_services(opts, owner, metrics, mount_tasks)
            parts = list(readers)
        else:
            for name, pbx_opts in (opts.pbxs or {"": opts}).items():
                services.append(PbxService(pbx_opts, name, port, owner, metrics.observers,
                                           mount_tasks))
            parts = list(services)
        fs: Filesystem
        if len(parts) > 1 or opts.pbxs:
            fs = MultiFs({part.name: part.fs for part in parts}, owner,
                         status=lambda: {"pbxs": {part.name: part.status.snapshot()
                                                  for part in parts}})
        else:
            fs = parts[0].fs
        for part in parts:
            metrics.watch(part.status, part.name)
        async with trio.open_nursery() as nursery:
            for part in parts:
                await part.start(nursery)
            if services:
                router = ReportRouter({svc.secret: svc.report_app() for svc in services
                                       if svc.opts.api != "p-series"})
                # Supervised like every background task; the socket listens already, so
                # the PBX's first reports wait in its backlog, never refused.
                if sock is not None:
                    mount_tasks.start(nursery, "report receiver", _serving(
                        "for PBX reports", sock, lambda s: serve_reports(router, s, stop_servers)))
                await contact_all(services)  # wrong configuration: MountError; PBX down: mount
            for part in parts:
                await part.check_archive()  # likewise
            if metrics_sock is not None:
                mount_tasks.start(nursery, "metrics endpoint", _serving(
                    "for metrics", metrics_sock, lambda s: serve_metrics(metrics, s, stop_servers)))
            try:
                pyfuse3.init(RecfsOperations(fs, direct_io=opts.direct_io), opts.mountpoint,
                             options)
            except RuntimeError as exc:
                raise MountError(f"cannot mount on {opts.mountpoint}: {exc}") from None
            try:
                for part in parts:
                    part.run_in(nursery)
                nursery.start_soon(_stop_on_signal)
                log.info("mounted %s on %s", _described(opts, services), opts.mountpoint)
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
                    for part in parts:
                        farewells.start_soon(part.close_archive)
    finally:
        for svc in services:
            svc.close()
        for reader in readers:
            reader.close()
    log.info("unmounted %s", opts.mountpoint)


async def _reader_services(opts: MountOptions, owner: Owner, metrics: Metrics,
                           mount_tasks: Supervisor) -> list[ReaderService]:
    """A reader mount's parts: one per PBX of the catalog (a directory each when it
    holds several, the PBX's name)."""
    settings = opts.catalog_settings()
    assert settings is not None
    entries = await trio.to_thread.run_sync(catalog_pbxs, settings)
    names = [entry.key.name if len(entries) > 1 else "" for entry in entries]
    return [ReaderService(opts, entry, name, owner, metrics.observers, mount_tasks)
            for entry, name in zip(entries, names)]


def _described(opts: MountOptions, services: list[PbxService]) -> str:
    """What the mount serves, for its log line (never a password)."""
    settings = opts.catalog_settings()
    if opts.is_reader and settings is not None:
        return f"the catalog {settings.shown}"
    if opts.pbxs:
        return ", ".join(f"{svc.name}={svc.opts.source}" for svc in services)
    return opts.source


def _bind(purpose: str, host: str, port: int) -> socket.socket:
    try:
        sock = bind_socket(host, port)
        sock.listen(BACKLOG)
    except OSError as exc:
        raise MountError(f"cannot listen {purpose} on {host}:{port}: {exc.strerror}") from None
    return sock


def _serving(purpose: str, first: socket.socket,
             serve: Callable[[socket.socket], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A server task for the supervisor: the first run serves on *first* (bound when
    the mount started, so that a taken port fails the mount); a restart after a
    failure binds the same address again."""
    host, port = first.getsockname()[:2]
    unused = [first]

    async def task() -> None:
        await serve(unused.pop() if unused else _bind(purpose, host, port))
    return task


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def run(opts: MountOptions, on_ready: Callable[[], None] | None = None,
        on_failure: Callable[[str], None] | None = None) -> int:
    """Run a mount to its end in this process (the foreground case). A MountError or
    OptionError (a wrong configuration, a mount point in the way) is one ERROR line
    (stderr: the terminal, or the journal under systemd, where the unit then fails:
    READY=1 never came) and exit status 1; *on_failure* gets its text too."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_mount, opts)
            if on_ready is not None:
                on_ready()

    try:
        trio.run(main)
    except BaseException as exc:
        expected = expected_failure(exc)
        if expected is None:
            raise
        message = str(expected)
        log.error("%s", message, extra=_FAILURE)
        # What `systemctl status` shows beside "failed".
        systemd.notify("STATUS=" + message.replace("\n", "; "))
        if on_failure is not None:
            on_failure(message)
        return expected.exit_status if isinstance(expected, MountError) else EX_CONFIG
    return 0


# Marks the log line of the failure that ends the command (the parent of a background
# mount prints the failure itself, not this line).
_FAILURE = {"mount_failure": True}


def run_in_background(opts: MountOptions, start_logging: Callable[[], None]) -> int:
    """Fork; the parent returns 0 once the child's mount is ready (or 1 with the
    child's error), so that `recfs mount` in a script or fstab returns a usable mount.

    Until then the child reports to the parent through a pipe, one JSON object a
    line: {"notice": TEXT} for each WARNING or worse it logs (the PBX not reachable,
    a dead mount detached, TLS verification off), {"error": TEXT} when the mount
    fails, {"ready": true} when it is usable. The parent prints notices and the error
    as `recfs: TEXT` lines on its stderr; the rest of the log goes to the log file
    only."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode("utf-8", "replace")
        if _print_report(report) == 0:
            return 0
        # The child ends right after its error: its status is the command's.
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return code if code > 0 else 1
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    start_logging()
    # The terminal gets what the parent prints, not the log's own lines.
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    parent = _ParentPipe(write_end)
    logging.getLogger().addHandler(parent)

    def ready() -> None:
        parent.say("ready", True)
        parent.close_pipe()
        logging.getLogger().removeHandler(parent)

    started = time.monotonic()
    try:
        code = run(opts, on_ready=ready, on_failure=lambda message: parent.say("error", message))
    except BaseException as exc:
        code = 1
        log.exception("mount failed", extra=_FAILURE)
        parent.say("error", f"mount failed: {_innermost(exc)}; see the log")
    else:
        if code != 0 and not parent.said_error:
            parent.say("error", "mount failed; see the log")
    parent.close_pipe()
    log.debug("mount ran %.0f s", time.monotonic() - started)
    os._exit(code)


class _ParentPipe(logging.Handler):
    """The background child's side of the pipe to the waiting parent: forwards
    WARNING and worse, until the mount is ready."""

    def __init__(self, fd: int):
        super().__init__(logging.WARNING)
        self._fd: int | None = fd
        self.said_error = False

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "mount_failure", False):
            return  # the parent prints the failure from say("error", ...)
        self.say("notice", redact(record.getMessage()))

    def say(self, kind: str, value: object) -> None:
        if self._fd is None:
            return
        self.said_error |= kind == "error"
        try:
            os.write(self._fd, (json.dumps({kind: value}) + "\n").encode())
        except OSError:
            pass

    def close_pipe(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _print_report(report: str) -> int:
    """The parent's side: print the child's notices and error; 0 once it was ready."""
    ready, errors = False, []
    for line in report.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            message = {"error": line}
        if not isinstance(message, dict):
            message = {"error": line}
        if "notice" in message:
            _say(str(message["notice"]))
        elif message.get("ready"):
            ready = True
        elif "error" in message:
            errors.append(str(message["error"]))
    if ready:
        return 0
    for error in errors or ["mount failed (the mount process ended without a word)"]:
        _say(error)
    return 1


def _say(text: str) -> None:
    for line in text.splitlines() or [""]:
        sys.stderr.write(f"recfs: {line}\n")
    sys.stderr.flush()


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
