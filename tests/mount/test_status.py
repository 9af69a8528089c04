"""`recfs status` reads the running mount's state through the mount itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import recfs


from tests.ci import unavailable

from tests.mount.harness import RECFS, Mount


def test_status_as_root_and_as_json(sim, mounted):
    cdr = sim.call(duration=2)
    mounted.wait_file(cdr)
    mounted.file_of(cdr).read_bytes()
    out = subprocess.run([*RECFS, "status", str(mounted.path), "--json"], capture_output=True,
                         text=True, check=True).stdout
    status = json.loads(out)
    assert status["pbx"]["logged_in"] is True
    assert status["recordings"] == 1
    assert status["reports"]["added"] == 1 and status["reports"]["last"] is not None
    assert status["downloads"]["completed"] == 1
    human = subprocess.run([*RECFS, "status", str(mounted.path)], capture_output=True, text=True,
                           check=True).stdout
    assert "logged in" in human and "recordings:    1" in human


def test_status_as_another_user(sim):
    """An unprivileged user runs `recfs status` with the system's Python (root's venv is
    out of its reach) against a mount made with allow_other."""
    if os.geteuid() != 0:
        unavailable("acting as another user needs root")
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "Debian's python3 (scripts/setup installs it)"
    shared = Path(tempfile.mkdtemp(prefix="recfs-status-"))
    shared.chmod(0o755)  # the mount point must be reachable by that user
    mount = Mount(sim, shared / "m", "prefetch=none", "allow_other")
    try:
        # Only what `recfs status` needs: it imports nothing beyond these.
        source = Path(recfs.__file__).parent
        package = shared / "recfs"
        for name in ("__init__.py", "cli/__init__.py", "cli/main.py", "cli/status.py",
                     "vfs/__init__.py", "vfs/xattrs.py"):
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, package / name)
        for path in [shared, *package.rglob("*")]:
            path.chmod(0o755)
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
             "import sys; from recfs.cli.main import main; sys.exit(main(sys.argv[1:]))",
             "status", str(mount.path), "--json"],
            capture_output=True, text=True, cwd=shared, env={"PYTHONPATH": str(shared), "PATH": "/usr/bin:/bin"})
    finally:
        mount.cleanup()
        shutil.rmtree(shared)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == sim.url


def test_status_of_something_else_is_a_clear_error(tmp_path):
    result = subprocess.run([*RECFS, "status", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "is not a running recfs mount" in result.stderr


def test_no_secret_on_the_command_line(sim, mounted):
    """`ps` shows the mount's command line: the password is never on it."""
    cmdline = open(f"/proc/{mounted.proc.pid}/cmdline", "rb").read().decode()
    assert sim.password not in cmdline
    assert "password_file=" in cmdline
