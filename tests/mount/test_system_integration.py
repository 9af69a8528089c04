"""mount(8), fstab and systemd: the ways an administrator starts recfs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci import unavailable

from tests.mount.harness import Mount, wait_for

HELPER = Path(sys.executable).parent / "mount.fuse.recfs"
SBIN = Path("/sbin/mount.fuse.recfs")


@pytest.fixture
def mount_helper_installed():
    """/sbin/mount.fuse.recfs as the README tells administrators to install it."""
    if os.geteuid() != 0:
        unavailable("installing /sbin/mount.fuse.recfs needs root")
    assert HELPER.exists(), "pip install should have created mount.fuse.recfs"
    created = False
    if not SBIN.exists():
        SBIN.symlink_to(HELPER)
        created = True
    yield
    if created:
        SBIN.unlink()


def _options(sim, work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    (work / "mnt").mkdir(exist_ok=True)
    password = work / "password"
    password.write_text(sim.password + "\n")
    password.chmod(0o600)
    return ",".join([f"user={sim.user}", f"password_file={password}", f"cafile={sim.cafile}",
                     "listen=127.0.0.1:0", f"state_dir={work / 'state'}",
                     f"cache_dir={work / 'cache'}", f"log_file={work / 'recfs.log'}",
                     "prefetch=none", "_netdev", "nofail", "x-systemd.automount"])


def _check_and_unmount(sim, mnt: Path, log: Path) -> None:
    try:
        assert os.path.ismount(mnt)
        cdr = sim.call(duration=2)
        day = mnt.joinpath(*cdr["timestart"][:10].split("-"))
        wait_for(lambda: day.exists() and cdr["recording"] in os.listdir(day), what="recording")
        assert (day / cdr["recording"]).read_bytes() == sim.recording_bytes(cdr["recording"])
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    wait_for(lambda: "unmounted" in log.read_text(), what="clean exit in the log")
    assert "Traceback" not in log.read_text()


def test_mount_t_fuse_recfs(sim, tmp_path, mount_helper_installed):
    work = tmp_path / "mt"
    opts = _options(sim, work)
    subprocess.run(["mount", "-t", "fuse.recfs", sim.url, str(work / "mnt"), "-o", opts],
                   check=True, timeout=60)
    _check_and_unmount(sim, work / "mnt", work / "recfs.log")


def test_fstab_line(sim, tmp_path, mount_helper_installed):
    work = tmp_path / "fstab"
    opts = _options(sim, work)
    fstab = tmp_path / "fstab.test"
    fstab.write_text(f"{sim.url} {work / 'mnt'} fuse.recfs {opts} 0 0\n")
    # -T: the same parsing as /etc/fstab, without touching the machine's own.
    subprocess.run(["mount", "-T", str(fstab), str(work / "mnt")], check=True, timeout=60)
    _check_and_unmount(sim, work / "mnt", work / "recfs.log")


def test_systemd_notify_ready_and_stopping(sim, tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(30)
        mount = Mount(sim, tmp_path / "sd", "prefetch=none", env={"NOTIFY_SOCKET": address})
        try:
            message = listener.recv(4096).decode()
            assert "READY=1" in message
            assert os.path.ismount(mount.path), "READY=1 came before the mount was usable"
            mount.proc.terminate()
            assert "STOPPING=1" in listener.recv(4096).decode()
            assert mount.proc.wait(30) == 0
        finally:
            mount.cleanup()


def test_runs_without_home_or_path(sim, tmp_path):
    # As systemd may start it: no HOME, a PATH with nothing useful on it.
    mount = Mount(sim, tmp_path / "bare", "prefetch=none", env={"PATH": "/nonexistent", "HOME": ""})
    try:
        cdr = sim.call(duration=2)
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
        assert mount.unmount() == 0
    finally:
        mount.cleanup()
