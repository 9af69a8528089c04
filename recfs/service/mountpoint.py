"""The mount point, checked before anything else of a mount starts.

- A mount left dead by a recfs that was killed (`kill -9`, the OOM killer) or
  crashed answers every request with ENOTCONN: it is detached (`fusermount3 -uz`),
  logged, and the mount goes on (a restart after a crash just works, under systemd
  too). Only recfs's own dead mounts are detached; another dead FUSE mount is
  refused with the command that detaches it.
- A live mount there (recfs or anything else) is refused: mounts are never stacked.
  A non-FUSE filesystem mounted there (a bind mount, a tmpfs) would be hidden: that
  takes `-o nonempty`.
- A path that does not exist, or is not a directory, is refused, saying which.
- A directory that holds files is refused unless `-o nonempty`: the mount would
  hide them until it is unmounted.

Whether something is mounted there comes from /proc/self/mountinfo, never from a
stat of the path: within the kernel's attribute timeout a dead mount's root still
stats as a directory. Only statfs, which always reaches the filesystem, tells a dead
FUSE mount (ENOTCONN) from a live one; it runs in a thread with a time limit, so a
hung one cannot hang the mount command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass

import trio

log = logging.getLogger("recfs.service.mountpoint")

# How long a filesystem mounted at the mount point has to answer statfs.
ANSWER_TIMEOUT = 5.0
# Dead mounts stacked on one another (what older versions could leave behind).
MAX_DETACH = 8
MNT_DETACH = 2


class MountError(Exception):
    """The mount cannot go ahead; the message says why and what to do (the command
    ends with `exit_status` and nothing mounted)."""

    exit_status = 1


# sysexits.h: a configuration error. The systemd unit does not restart on it
# (RestartPreventExitStatus=78): starting again cannot help until someone fixes it.
EX_CONFIG = 78


def expected_failure(exc: BaseException) -> BaseException | None:
    """The MountError or OptionError inside *exc*, even when trio wrapped it in a
    group: a failure that ends a command with one line rather than a traceback."""
    from recfs.service.config import OptionError
    if isinstance(exc, (MountError, OptionError)):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = expected_failure(inner)
            if found is not None:
                return found
    return None


class ConfigurationError(MountError):
    """The PBX refused the configuration (credentials, certificate, not a PBX API)."""

    exit_status = EX_CONFIG


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the parts that matter here."""

    mount_point: str
    fstype: str
    source: str

    @property
    def fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith(("fuse.", "fuseblk"))

    @property
    def recfs(self) -> bool:
        return self.fstype == "fuse.recfs" or (self.fuse and self.source == "recfs")

    def describe(self) -> str:
        return f"{self.fstype} {self.source}"


def _unescape(field: str) -> str:
    # Spaces, tabs, newlines and backslashes in paths come as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_at(path: str, mountinfo: str = "/proc/self/mountinfo") -> MountEntry | None:
    """What is mounted at *path* (the topmost of stacked mounts), or None."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        if _unescape(fields[4]) == path:
            found = MountEntry(path, rest[0], _unescape(rest[1]))
    return found


@dataclass(frozen=True)
class Finding:
    """What `examine` found: nothing in the way (ok), a dead recfs mount to detach,
    or an error for the user."""

    ok: bool = False
    detach: MountEntry | None = None
    error: str | None = None


def examine(path: str, nonempty: bool, mountinfo: str = "/proc/self/mountinfo") -> Finding:
    """Blocking (statfs of whatever is mounted there): run it in a thread."""
    real = os.path.realpath(path)
    entry = mounted_at(real, mountinfo)
    if entry is not None:
        if entry.fuse:
            try:
                os.statvfs(real)
            except OSError as exc:
                if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                    if entry.recfs:
                        return Finding(detach=entry)
                    return Finding(error=f"mount point {path} holds a dead {entry.fstype} mount "
                                         f"(its process is gone): detach it with "
                                         f"'fusermount3 -uz {path}' first")
                return Finding(error=f"mount point {path} holds a {entry.fstype} mount that "
                                     f"fails ({exc.strerror}): unmount it first "
                                     f"(fusermount3 -u {path})")
            what = "a recfs mount is running there" if entry.recfs else \
                f"{entry.describe()} is mounted there"
            return Finding(error=f"mount point {path} is already in use: {what}; unmount it "
                                 f"first (fusermount3 -u {path}); recfs does not stack mounts")
        if not nonempty:
            return Finding(error=f"mount point {path} is itself a mount point "
                                 f"({entry.describe()}): a recfs mount would hide it; add "
                                 f"-o nonempty to mount over it anyway")
        log.info("mounting over the %s mounted at %s (nonempty)", entry.describe(), path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return Finding(error=f"mount point {path} does not exist")
    except NotADirectoryError:
        return Finding(error=f"mount point {path} is not a directory")
    except OSError as exc:
        return Finding(error=f"mount point {path}: {exc.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        return Finding(error=f"mount point {path} is not a directory")
    try:
        with os.scandir(real) as entries:
            names = [e.name for _, e in zip(range(3), entries)]
    except OSError as exc:
        return Finding(error=f"mount point {path}: cannot list it ({exc.strerror})")
    if names and entry is None:
        if not nonempty:
            shown = ", ".join(repr(n) for n in names[:2]) + (", ..." if len(names) > 2 else "")
            return Finding(error=f"mount point {path} is not empty ({shown}): the mount would "
                                 f"hide its files until it is unmounted; empty it, or add "
                                 f"-o nonempty to mount over them anyway")
        log.info("mounting over the files in %s (nonempty)", path)
    return Finding(ok=True)


async def prepare_mountpoint(path: str, nonempty: bool = False) -> None:
    """Make *path* ready for the mount, or raise MountError saying why it is not."""
    for _ in range(MAX_DETACH):
        finding = None
        with trio.move_on_after(ANSWER_TIMEOUT * 2):
            finding = await trio.to_thread.run_sync(examine, path, nonempty,
                                                    abandon_on_cancel=True)
        if finding is None:
            raise MountError(f"mount point {path} does not answer (a hung mount there, or on "
                             f"the way to it?)")
        if finding.error is not None:
            raise MountError(finding.error)
        if finding.detach is None:
            return
        await _detach(path)
        log.warning("mount point %s held a dead recfs mount (its process ended without "
                    "unmounting: killed or crashed); detached it", path)
    raise MountError(f"mount point {path}: dead mounts keep appearing there")


async def _detach(path: str) -> None:
    """`fusermount3 -uz PATH` (lazy: whoever still has it open keeps ENOTCONN); as
    root without fusermount3 on the PATH (systemd units may have none), umount2."""
    fusermount = shutil.which("fusermount3") or next(
        (p for p in ("/usr/bin/fusermount3", "/bin/fusermount3", "/usr/local/bin/fusermount3")
         if os.access(p, os.X_OK)), None)
    if fusermount is not None:
        done = await trio.run_process([fusermount, "-uz", path], capture_stdout=True,
                                      capture_stderr=True, check=False)
        if done.returncode == 0:
            return
        problem = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
    else:
        problem = "fusermount3 not found"
    if os.geteuid() == 0:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.umount2(os.fsencode(path), MNT_DETACH) == 0:
            return
        problem += f"; umount2: {os.strerror(ctypes.get_errno())}"
    raise MountError(f"mount point {path} holds a dead recfs mount that cannot be detached "
                     f"({problem}): run 'fusermount3 -uz {path}' (as its owner or root)")
