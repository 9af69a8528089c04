"""The mount test harness: a `recfs sim` process (Sim), a `recfs mount` process
(Mount), and what tests need around them.

Every Sim and Mount made during a test is remembered (``begin_test``); after the
test (``end_test``, from an autouse fixture in conftest.py) every mount is cleaned
up and its log is checked: no traceback, no ERROR or CRITICAL line the test did not
say it expects (``Mount(..., allowed_errors=[regex])`` or ``mount.allow(regex)``),
and no secret at all -- the PBX password, the report secret, any token or random a
simulator of the test handed out. A recfs log written without Mount (mount(8),
a mount expected to fail) is checked the same way once the test names it with
``watch_log(path, allowed_errors=[...])``; any other ``recfs.log`` under the test's
directory is checked too, with no errors allowed.
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
from collections.abc import Callable
from pathlib import Path

import httpx

from recfs.service.mountpoint import EX_CONFIG

RECFS = [sys.executable, "-m", "recfs.cli"]
FUSE_OK = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None

# A line that means a bug, unless the test expects it (tracebacks never are).
_ERROR_LINE = re.compile(r" (ERROR|CRITICAL) ")


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal *proc* (if still running), give it 10 s, then kill it."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class _Registry:
    """The Sims and Mounts of the running test."""

    def __init__(self) -> None:
        self.sims: list[Sim] = []
        self.mounts: list[Mount] = []
        self.logs: dict[Path, list[re.Pattern[str]]] = {}  # watch_log()


_current = _Registry()


class _SimProcess(subprocess.Popen):
    """The simulator's process: before anyone signals it (a test that takes the PBX
    down, or Sim.close), the secrets it issued are saved for the log check."""

    def __init__(self, *args, before_signal, **kwargs):
        self._before_signal = before_signal
        super().__init__(*args, **kwargs)

    def send_signal(self, sig) -> None:
        if self.poll() is None:
            self._before_signal()
        super().send_signal(sig)


class Sim:
    """A `recfs sim` process, and its admin API."""

    def __init__(self, workdir: Path, *extra: str):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ready = workdir / "ready.json"
        self.log_path = workdir / "sim.log"
        self._log = open(self.log_path, "wb")
        self._last_secrets: list[str] = []
        self.password = ""
        self.http = None
        _current.sims.append(self)
        self.proc = _SimProcess(
            [*RECFS, "sim", "--listen", "127.0.0.1:0", "--data-dir", str(workdir / "data"),
             "--calls-per-minute", "0", "--ready-file", str(ready), "--seed", "7", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, before_signal=self._save_secrets)
        wait_for(lambda: ready.exists() or self.proc.poll() is not None, 30, what="simulator")
        if self.proc.poll() is not None:
            raise AssertionError(f"simulator died:\n{self.log_path.read_text()}")
        info = json.loads(ready.read_text())
        self.url, self.cafile = info["base_url"], info["ca_file"]
        self.user, self.password = info["user"], info["password"]
        self.data_dir = Path(info["data_dir"])
        self.http = httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=self.cafile), timeout=30)

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
        """Every token and random this simulator handed out (once it is gone: what it
        had handed out when it was last asked, or signalled)."""
        if self.http is None or self.http.is_closed or self.proc.poll() is not None:
            return self._last_secrets
        try:
            self._last_secrets = self.http.get("/sim/issued-secrets", timeout=5).json()
        except httpx.HTTPError:
            pass
        return self._last_secrets

    def _save_secrets(self) -> None:
        self.issued_secrets()

    def recordings(self) -> dict[str, dict]:
        return {r["name"]: r for r in self.http.get("/sim/recordings").json()}

    def recording_bytes(self, name: str) -> bytes:
        return (self.data_dir / "recordings" / name).read_bytes()

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # saves the secrets first
        if self.http is not None:
            self.http.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Mount:
    """A `recfs mount -f` process (or a background one), with its log.

    The log is checked after the test (see the module's docstring). A test that
    provokes an error line says which: ``allowed_errors=[r"regex"]`` here, or
    ``mount.allow(r"regex")``; each regex is searched in the ERROR/CRITICAL lines.
    """

    def __init__(self, sim: Sim, workdir: Path, *options: str, background: bool = False,
                 env: dict[str, str] | None = None, allowed_errors: list[str] | tuple = (),
                 catalog: str | None = None):
        """*catalog*: a reader mount of that shared catalog (postgresql://...) instead
        of a mount of *sim* (whose secrets its log is still checked against)."""
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
        pbx = [] if catalog else [f"user={sim.user}", f"password_file={password_file}",
                                  f"cafile={sim.cafile}", "listen=127.0.0.1:0", "heartbeat=60"]
        opts = ",".join([*pbx, f"state_dir={self.state_dir}", f"cache_dir={self.cache_dir}",
                         f"log_file={self.log_path}", *options])
        self.argv = [*RECFS, "mount", catalog or sim.url, str(self.path), "-o", opts]
        self.background = background
        self.allowed_errors: list[re.Pattern[str]] = []
        self.allow(*allowed_errors)
        # What the log and the report secret were at cleanup, for a test that removes
        # its directory before the check runs.
        self._final_log: str | None = None
        self._final_report_secret: str | None = None
        self._log = open(self.log_path, "ab")
        self.proc: subprocess.Popen | None = None
        _current.mounts.append(self)  # before start(): a mount that fails is checked too
        self.start()

    def allow(self, *patterns: str) -> Mount:
        """ERROR/CRITICAL lines matching one of *patterns* are expected, not bugs.
        Keep them narrow; tracebacks and secrets are never allowed."""
        self.allowed_errors += [re.compile(p) for p in patterns]
        return self

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
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            if self._final_log is None:
                raise
            return self._final_log

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
        """Unmount (lazily) and stop the process; safe to call more than once."""
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], timeout=30)
        if self.proc is not None:
            stop_process(self.proc)
        self._log.close()
        if self.log_path.exists():
            self._final_log = self.log_path.read_text(errors="replace")
        secret = self.report_secret()
        if secret:
            self._final_report_secret = secret

    def report_secret(self) -> str | None:
        try:
            return (self.state_dir / "report-secret").read_text().strip() or None
        except FileNotFoundError:
            return self._final_report_secret

    def problems(self) -> list[str]:
        """Log lines that mean a bug: tracebacks, and error lines not allowed."""
        return log_problems(self.log(), self.allowed_errors)


def log_problems(text: str, allowed: list[re.Pattern[str]] = ()) -> list[str]:
    """Tracebacks, and ERROR/CRITICAL lines that no *allowed* regex matches."""
    return [line for line in text.splitlines()
            if "Traceback" in line
            or (_ERROR_LINE.search(line) and not any(p.search(line) for p in allowed))]


def leaked_secrets(text: str, secrets: list[str]) -> list[str]:
    """Where secrets appear in *text*: the lines, with the secrets themselves starred
    out (the report must not repeat them either)."""
    found = [s for s in set(secrets) if s and s in text]
    return [f"line {number}: {_starred(line, found)}"
            for number, line in enumerate(text.splitlines(), 1) if any(s in line for s in found)]


def watch_log(path: Path, allowed_errors: list[str] | tuple = ()) -> Path:
    """Check this log after the test like a Mount's: for a recfs process the test
    started itself. *allowed_errors* as for Mount; the file need not exist yet, but
    must by the end of the test."""
    _current.logs.setdefault(Path(path).resolve(), []).extend(
        re.compile(p) for p in allowed_errors)
    return path


def _secrets(mount: Mount) -> list[str]:
    """The secrets one mount knows: the PBX password, every token and random its
    simulator issued, the report secret."""
    found = [mount.sim.password, *mount.sim.issued_secrets()]
    secret = mount.report_secret()
    if secret:
        found.append(secret)
    return found


# -- the check after every mount test -------------------------------------------------

def begin_test() -> None:
    """A new test: forget the previous test's Sims and Mounts."""
    global _current
    _current = _Registry()


def end_test(test_dir: Path | None = None) -> list[str]:
    """Clean up every Mount of the test and check every log; what is wrong, as text
    (an empty list when all is well). The Sims' secrets are read as they are now, or
    as they were when they were stopped; then any Sim still running is stopped."""
    registry = _current
    failures: list[str] = []
    for mount in registry.mounts:
        try:
            mount.cleanup()
        except (OSError, subprocess.SubprocessError) as error:  # still check the rest
            failures.append(f"cleanup of {mount.path} failed: {error!r}")

    secrets = [secret for sim in registry.sims for secret in [sim.password, *sim.issued_secrets()]]
    for sim in registry.sims:  # one a test made by hand and left running
        if sim.proc.poll() is None:
            sim.close()
    secrets += [secret for mount in registry.mounts for secret in _secrets(mount)]
    secrets += [secret for path in _report_secret_files(test_dir)
                for secret in [path.read_text().strip()] if secret]

    # Each log once, with what any of its writers allows (mounts sharing a directory,
    # a remount, share a log).
    allowed: dict[Path, list[re.Pattern[str]]] = {}
    read: dict[Path, Callable[[], str]] = {}
    for mount in registry.mounts:
        path = mount.log_path.resolve()
        allowed.setdefault(path, []).extend(mount.allowed_errors)
        read.setdefault(path, mount.log)  # its copy, should the test have removed it
    for path, patterns in registry.logs.items():
        allowed.setdefault(path, []).extend(patterns)
    for path in _recfs_logs(test_dir):
        allowed.setdefault(path.resolve(), [])
    for path, patterns in allowed.items():
        try:
            text = read[path]() if path in read else path.read_text(errors="replace")
        except FileNotFoundError:
            failures.append(f"{path}: the log is missing")
            continue
        failures += _check(path, text, patterns, secrets)
    return failures


def _check(path: Path, text: str, allowed: list[re.Pattern[str]], secrets: list[str]) -> list[str]:
    """What is wrong with one log; secrets starred out of the answer too."""
    failures = []
    bad = log_problems(text, allowed)
    if bad:
        failures.append(f"{path}: {len(bad)} unexpected traceback/ERROR line(s):\n  "
                        + "\n  ".join(bad))
    leaks = leaked_secrets(text, secrets)
    if leaks:
        failures.append(f"{path}: secret(s) (password, token, random, report secret) "
                        f"reached the log:\n  " + "\n  ".join(leaks))
    if failures:
        failures.append(f"--- {path} ---\n{text}--- end of {path.name} ---")
    return [_starred(failure, secrets) for failure in failures]


def _starred(text: str, secrets: list[str]) -> str:
    for secret in set(secrets):
        if secret:
            text = text.replace(secret, "<SECRET>")
    return text


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        # Field 5 is the mount point, with spaces and such escaped as \ooo.
        return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                for line in f}


def _walk(test_dir: Path | None):
    """The files under *test_dir*, never looking inside a mount point (a FUSE mount
    left behind could hang a stat)."""
    if test_dir is None or not test_dir.is_dir():
        return
    skip = _mount_points()
    for root, dirs, files in os.walk(test_dir):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
        for name in files:
            yield Path(root, name)


def _recfs_logs(test_dir: Path | None) -> list[Path]:
    """recfs logs of mounts the test started without Mount (mount(8), several PBXs)."""
    return [path for path in _walk(test_dir) if path.name == "recfs.log"]


def _report_secret_files(test_dir: Path | None) -> list[Path]:
    return [path for path in _walk(test_dir) if path.name == "report-secret"]


# -- helpers --------------------------------------------------------------------------

def try_mount(sim, work: Path, *options: str, source: str | None = None,
              password: str | None = None, foreground: bool = False,
              env: dict[str, str] | None = None,
              mountpoint: Path | None = None) -> subprocess.CompletedProcess:
    """`recfs mount` that is expected to fail: run it to its end; nothing may be left
    mounted, and neither its terminal output nor its log may hold a traceback or a
    secret. (Its log is not called recfs.log: the harness's check would take the
    expected ERROR line for a bug.)"""
    work.mkdir(parents=True, exist_ok=True)
    if mountpoint is None:
        mountpoint = work / "mnt"
        mountpoint.mkdir(exist_ok=True)
    mounted_before = os.path.ismount(mountpoint)
    password_file = work / "password"
    password_file.write_text((sim.password if password is None else password) + "\n")
    password_file.chmod(0o600)
    log = work / "failed-mount.log"
    opts = ",".join([f"user={sim.user}", f"password_file={password_file}",
                     f"cafile={sim.cafile}", "listen=127.0.0.1:0", f"state_dir={work / 'state'}",
                     f"cache_dir={work / 'cache'}", f"log_file={log}", "prefetch=none",
                     *options])
    argv = [*RECFS, "mount", source or sim.url, str(mountpoint), "-o", opts]
    done = subprocess.run([*argv, "-f"] if foreground else argv, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, check=False)
    assert os.path.ismount(mountpoint) == mounted_before, "a refused mount mounts nothing"
    text = done.stderr + done.stdout + (log.read_text() if log.exists() else "")
    assert "Traceback" not in text, text
    assert not leaked_secrets(text, [sim.password, *sim.issued_secrets()])
    return done


def the_line(done: subprocess.CompletedProcess, foreground: bool, *words: str,
             status: int = EX_CONFIG) -> str:
    """The one line on stderr that says what is wrong: `recfs: ...` from a background
    mount's parent, the ERROR log line in the foreground. *status*: the exit status
    (a configuration error's by default: the systemd unit does not restart on it)."""
    assert done.returncode == status, done
    if foreground:
        lines = [line for line in done.stderr.splitlines() if " ERROR " in line]
    else:
        lines = [line for line in done.stderr.splitlines()
                 if line.startswith("recfs: ") and "cross the network unencrypted" not in line]
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


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


def pbx_tables(workdir: Path, sims: dict[str, Sim], extra: dict[str, str] | None = None) -> str:
    """The [pbx.NAME] tables of a config for a mount of several simulators (each with
    its password file in *workdir*), plus *extra* lines per NAME."""
    tables = ""
    for name, sim in sims.items():
        password = workdir / f"{name}.password"
        password.write_text(sim.password + "\n")
        password.chmod(0o600)
        tables += (f'[pbx.{name}]\nsource = "{sim.url}"\nuser = "{sim.user}"\n'
                   f'password_file = "{password}"\ncafile = "{sim.cafile}"\n'
                   f'{(extra or {}).get(name, "")}')
    return tables
