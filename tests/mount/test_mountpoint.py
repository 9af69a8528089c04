"""The mount point (recfs/service/mountpoint.py): a mount left dead by a killed recfs
is detached and mounted again (never stacked on); a live mount is refused; a path
that does not exist says so; files in the mount point need -o nonempty."""

from __future__ import annotations

import errno
import os
import re
import signal

import pytest

from tests.mount.harness import Mount, the_line, try_mount, wait_for


def mounts_at(path) -> int:
    """How many mounts /proc/self/mountinfo lists at *path* (stacked ones too)."""
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                  for line in f]
    return points.count(str(path))


def pid_of(argv: list[str]) -> int:
    """The process running exactly *argv* (a background mount's forked child)."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == wanted:
                        found.append(int(entry))
            except OSError:
                pass
    assert len(found) == 1, found
    return found[0]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_after_kill_9_the_same_command_mounts_again(sim, tmp_path, mode):
    background = mode == "background"
    first = Mount(sim, tmp_path / "m", "prefetch=none", background=background)
    cdr = sim.call(duration=2)
    data = first.wait_file(cdr).read_bytes()
    pid = pid_of(first.argv) if background else first.proc.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), 10, what="the kill")
    with pytest.raises(OSError) as dead:
        os.listdir(first.path)
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)

    # At once (well within the kernel's attribute timeout): the same command.
    again = Mount(sim, tmp_path / "m", "prefetch=none", background=background)
    # (-f: Mount's wait sees the dead mount as a mount point; wait for the new one.)
    wait_for(lambda: again.log().count("recfs.service.mount: mounted ") == 2, 30,
             what="the new mount")
    assert mounts_at(again.path) == 1, "stacked on the dead mount"
    assert "held a dead recfs mount" in again.log() and "detached it" in again.log()
    if background:
        assert "recfs: mount point" in again.log()  # the terminal was told too
    assert again.file_of(cdr).read_bytes() == data
    assert again.unmount() == 0
    assert mounts_at(again.path) == 0


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_a_mount_point_that_does_not_exist(sim, tmp_path, mode):
    missing = tmp_path / "nowhere"
    done = try_mount(sim, tmp_path / "x", mountpoint=missing, foreground=mode == "foreground")
    the_line(done, mode == "foreground", f"mount point {missing} does not exist", status=1)
    assert sim.stats()["logins"] == 0  # checked before anything else


def test_a_file_is_not_a_mount_point(sim, tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    done = try_mount(sim, tmp_path / "x", mountpoint=file)
    the_line(done, False, f"mount point {file} is not a directory", status=1)


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_files_in_the_mount_point_need_nonempty(sim, tmp_path, mode):
    mnt = tmp_path / "m" / "mnt"
    mnt.mkdir(parents=True)
    (mnt / "notes.txt").write_text("mine")
    done = try_mount(sim, tmp_path / "m", mountpoint=mnt, foreground=mode == "foreground")
    the_line(done, mode == "foreground", "not empty", "notes.txt", "hide", "-o nonempty", status=1)

    mount = Mount(sim, tmp_path / "m", "prefetch=none", "nonempty",
                  background=mode == "background")
    assert "notes.txt" not in os.listdir(mount.path)  # hidden while mounted
    assert mount.unmount() == 0
    assert (mnt / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_a_live_mount_is_refused_never_stacked(sim, tmp_path, mode):
    first = Mount(sim, tmp_path / "m", "prefetch=none", background=True)
    # The same command again (and with nonempty: a live mount is never mounted over).
    for extra in ((), ("nonempty",)):
        done = try_mount(sim, tmp_path / "m", *extra, mountpoint=first.path,
                         foreground=mode == "foreground")
        the_line(done, mode == "foreground", "already in use", "recfs mount is running",
                 "fusermount3 -u", status=1)
        assert mounts_at(first.path) == 1
    cdr = sim.call(duration=2)
    assert first.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
