"""mount(8), fstab and systemd: the ways an administrator starts recfs."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recfs.catalog.database import file_ino
from tests.catalog_util import v2_catalog
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


@contextlib.contextmanager
def under_systemd(sim, workdir: Path) -> Iterator[tuple[Mount, socket.socket]]:
    """A mount started as by a Type=notify unit, and the socket systemd would read."""
    address = str(workdir.parent / f"{workdir.name}.sock")  # AF_UNIX: at most 107 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(60)
        mount = Mount(sim, workdir, "prefetch=none", env={"NOTIFY_SOCKET": address})
        try:
            yield mount, listener
        finally:
            mount.cleanup()


def test_systemd_notify_ready_and_stopping(sim, tmp_path):
    with under_systemd(sim, tmp_path / "sd") as (mount, listener):
        message = listener.recv(4096).decode()
        assert "READY=1" in message
        assert os.path.ismount(mount.path), "READY=1 came before the mount was usable"
        mount.proc.terminate()
        assert "STOPPING=1" in listener.recv(4096).decode()
        assert mount.proc.wait(30) == 0


def test_a_catalog_upgrade_asks_systemd_for_time(sim, tmp_path):
    """The first start after an upgrade may rebuild an index of millions of rows:
    systemd hears about it (EXTEND_TIMEOUT_USEC) before READY=1, so its start timeout
    does not kill the mount (and the upgrade) at every restart; the tree is intact."""
    state = tmp_path / "old" / "state"
    state.mkdir(parents=True)
    rows = []
    for k in range(20_000):
        day = f"2023-01-0{2 + k % 2}"
        caller = str(100 + k % 7)
        name = f"{day.replace('-', '')}1200{k % 60:02d}-1672660800.{k}-{caller}-2001-Inbound.wav"
        rows.append((file_ino(name), name, day, 1_672_660_800 + k, 1_672_660_900.0 + k,
                     f"1672660800.{k}", f"{day} 12:00:00", caller, "2001", "Inbound",
                     1000 + k, None, None))
    v2_catalog(state / "catalog.sqlite", rows)
    with under_systemd(sim, tmp_path / "old") as (mount, listener):
        first = listener.recv(4096).decode()
        assert "EXTEND_TIMEOUT_USEC=" in first and "STATUS=upgrading the catalog" in first
        while "READY=1" not in (message := listener.recv(4096).decode()):
            assert "EXTEND_TIMEOUT_USEC=" in message
        day = mount.path / "2023" / "01" / "03"
        assert len(os.listdir(day)) == 10_000
        assert os.stat(day / rows[1][1]).st_ino == rows[1][0]
        assert "building the catalog's listing index" in mount.log_path.read_text()


def test_runs_without_home_or_path(sim, tmp_path):
    # As systemd may start it: no HOME, a PATH with nothing useful on it.
    mount = Mount(sim, tmp_path / "bare", "prefetch=none", env={"PATH": "/nonexistent", "HOME": ""})
    try:
        cdr = sim.call(duration=2)
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
        assert mount.unmount() == 0
    finally:
        mount.cleanup()
