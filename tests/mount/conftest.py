"""Real mounts against a real simulator: `recfs sim` and `recfs mount` run as the
user would run them (subprocesses, HTTPS on loopback), and the tests use the mount
through system calls and ordinary tools.

A mount test never skips in CI: if FUSE is missing there, it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ci import unavailable

RECFS = [sys.executable, "-m", "recfs.cli"]
FUSE_OK = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/mount" in str(item.fspath):
            item.add_marker(pytest.mark.mount)


@pytest.fixture(autouse=True)
def _fuse_available():
    # Before any other fixture mounts anything. (A marker would not do: an xfail
    # that never runs passes quietly.)
    if not FUSE_OK:
        unavailable("no /dev/fuse or fusermount3")


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Sim:
    """A `recfs sim` process, and its admin API."""

    def __init__(self, workdir: Path, *extra: str):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ready = workdir / "ready.json"
        self.log_path = workdir / "sim.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*RECFS, "sim", "--listen", "127.0.0.1:0", "--data-dir", str(workdir / "data"),
             "--calls-per-minute", "0", "--ready-file", str(ready), "--seed", "7", *extra],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: ready.exists() or self.proc.poll() is not None, 30, what="simulator")
        if self.proc.poll() is not None:
            raise AssertionError(f"simulator died:\n{self.log_path.read_text()}")
        info = json.loads(ready.read_text())
        self.url, self.cafile = info["base_url"], info["ca_file"]
        self.user, self.password = info["user"], info["password"]
        self.data_dir = Path(info["data_dir"])
        self.http = httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=self.cafile), timeout=30)
        self._last_secrets: list[str] = []

    def call(self, **fields) -> dict:
        reply = self.http.post("/sim/call", json=fields)
        reply.raise_for_status()
        return reply.json()

    def stats(self) -> dict:
        return self.http.get("/sim/stats").json()

    def faults(self, **switches) -> None:
        self.http.post("/sim/faults", json=switches).raise_for_status()

    def clear_faults(self) -> None:
        self.http.post("/sim/faults/clear").raise_for_status()

    def issued_secrets(self) -> list[str]:
        """Every token and random this simulator handed out (empty if it is gone)."""
        if self.http.is_closed:
            return self._last_secrets
        try:
            return self.http.get("/sim/issued-secrets").json()
        except httpx.HTTPError:
            return self._last_secrets

    def recordings(self) -> dict[str, dict]:
        return {r["name"]: r for r in self.http.get("/sim/recordings").json()}

    def recording_bytes(self, name: str) -> bytes:
        return (self.data_dir / "recordings" / name).read_bytes()

    def close(self) -> None:
        if self.proc.poll() is None:
            self._last_secrets = self.issued_secrets()
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Mount:
    """A `recfs mount -f` process (or a background one), with its log."""

    def __init__(self, sim: Sim, workdir: Path, *options: str, background: bool = False,
                 env: dict[str, str] | None = None):
        self.env = {**os.environ, **(env or {})}
        self.sim = sim
        self.workdir = workdir
        self.path = workdir / "mnt"
        self.path.mkdir(parents=True, exist_ok=True)
        self.state_dir = workdir / "state"
        self.cache_dir = workdir / "cache"
        password_file = workdir / "password"
        password_file.write_text(sim.password + "\n")
        password_file.chmod(0o600)
        self.log_path = workdir / "recfs.log"
        opts = ",".join([f"user={sim.user}", f"password_file={password_file}",
                         f"cafile={sim.cafile}", "listen=127.0.0.1:0",
                         f"state_dir={self.state_dir}", f"cache_dir={self.cache_dir}",
                         f"log_file={self.log_path}", "heartbeat=60", *options])
        self.argv = [*RECFS, "mount", sim.url, str(self.path), "-o", opts]
        self.background = background
        self._log = open(self.log_path, "ab")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        if self.background:
            done = subprocess.run(self.argv, stdout=self._log, stderr=subprocess.STDOUT, timeout=60,
                                  env=self.env)
            assert done.returncode == 0, self.log()
            assert os.path.ismount(self.path), "recfs mount returned before the mount was ready"
            return
        self.proc = subprocess.Popen([*self.argv, "-f"], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        wait_for(lambda: os.path.ismount(self.path) or self.proc.poll() is not None, 30,
                 what="mount")
        if not os.path.ismount(self.path):
            raise AssertionError(f"mount failed:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def p(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def file_of(self, cdr: dict) -> Path:
        """Where a call's recording shows up: YYYY/MM/DD/<name>, the PBX-local date."""
        year, month, day = cdr["timestart"][:10].split("-")
        return self.p(year, month, day, cdr["recording"])

    def wait_file(self, cdr: dict, timeout: float = 5.0) -> Path:
        """Wait for the name to be listed. Only readdir: a stat of a recording whose
        size is not known yet would (rightly) start its download."""
        path = self.file_of(cdr)

        def listed() -> bool:
            try:
                return path.name in os.listdir(path.parent)
            except FileNotFoundError:
                return False

        wait_for(listed, timeout, what=f"{path.name} to appear")
        return path

    def unmount(self) -> int:
        subprocess.run(["fusermount3", "-u", str(self.path)], check=True, timeout=30)
        if self.proc is None:
            wait_for(lambda: not os.path.ismount(self.path), 10, what="unmount")
            return 0
        return self.proc.wait(30)

    def cleanup(self) -> None:
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], timeout=30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def problems(self) -> list[str]:
        """Log lines that mean a bug: tracebacks and unexpected errors."""
        return [line for line in self.log().splitlines()
                if "Traceback" in line or re.search(r" (ERROR|CRITICAL) ", line)]


@pytest.fixture
def sim(tmp_path):
    simulator = Sim(tmp_path / "sim")
    yield simulator
    simulator.close()


@pytest.fixture
def mount_factory(sim, tmp_path):
    mounts: list[Mount] = []

    def make(*options: str, background: bool = False, name: str = "m") -> Mount:
        mount = Mount(sim, tmp_path / name, *options, background=background)
        mounts.append(mount)
        return mount

    yield make
    for mount in mounts:
        mount.cleanup()
    for mount in mounts:
        # Any traceback or ERROR line is a bug, even if every assertion passed.
        assert mount.problems() == [], mount.log()
        log = mount.log()
        leaked = [secret for secret in _secrets(mount) if secret in log]
        assert not leaked, f"{len(leaked)} secret(s) (password, token, random) reached the log"


def _secrets(mount: Mount) -> list[str]:
    found = [mount.sim.password, *mount.sim.issued_secrets()]
    secret_file = mount.state_dir / "report-secret"
    if secret_file.exists():
        found.append(secret_file.read_text().strip())
    return found


@pytest.fixture
def mounted(mount_factory):
    """The usual mount: prefetch off, so that tests decide when the PBX is asked."""
    return mount_factory("prefetch=none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str, labels: str = "") -> float:
    """One value from a Prometheus scrape."""
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} missing from:\n{text}"
    return float(match.group(1))


def receiver_url(mount: Mount) -> str:
    """The report receiver's address, as the mount logged it (listen=127.0.0.1:0)."""
    found = re.findall(r"receiving PBX reports on (\S+):(\d+)", mount.log())
    assert found, mount.log()
    host, port = found[-1]
    secret = (mount.state_dir / "report-secret").read_text().strip()
    return f"http://{host}:{port}/recfs/{secret}"


def read_after_recovery(path: Path, timeout: float = 15.0) -> bytes:
    """Read a file whose last download failed: recfs remembers a failure for a
    moment (so that the kernel's re-issued read-ahead does not start it all over),
    then tries afresh."""
    result: list[bytes] = []

    def attempt() -> bool:
        try:
            result.append(path.read_bytes())
            return True
        except OSError:
            return False

    wait_for(attempt, timeout, interval=0.5, what=f"{path.name} to be readable again")
    return result[-1]
