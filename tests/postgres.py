"""A real PostgreSQL for tests, started by the tests themselves (Debian's `postgresql`
package, installed by scripts/setup).

    from tests.postgres import postgres, pg_catalog  # or through tests/conftest.py

``postgres`` is session-scoped (one throwaway cluster for the whole run, made with
`initdb` and `pg_ctl` as the `postgres` user: the server refuses to run as root);
``pg_catalog`` is the URL of a fresh, empty database for one test.
``PostgresServer.start(dir)`` gives a test a server of its own, for tests that crash
it (`crash()` is `pg_ctl -m immediate stop`: no shutdown checkpoint, as a power cut).

Loopback only: `listen_addresses=127.0.0.1`, its Unix socket in the test's directory,
trust authentication for the one role `recfs` (nothing but this machine can connect).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ci import unavailable

HOST = "127.0.0.1"
ROLE = "recfs"
OS_USER = "postgres"


def _bin_dir() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    directory: Path
    bin_dir: Path
    port: int
    _databases: int = field(default=0, repr=False)

    @classmethod
    def start(cls, directory: Path) -> PostgresServer:
        bin_dir = _bin_dir()
        if bin_dir is None:
            unavailable("no PostgreSQL server (Debian package postgresql, from scripts/setup)")
            raise AssertionError("unreachable")
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            unavailable(f"no {OS_USER} user (Debian package postgresql)")
        directory.mkdir(parents=True, exist_ok=True)
        # The server runs as postgres: it needs to reach and write its directory.
        for parent in [directory, *directory.parents]:
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
        shutil.chown(directory, OS_USER)
        server = cls(directory, bin_dir, _free_port())
        server._run("initdb", "-D", str(server.data), "--auth=trust", "-U", ROLE,
                    "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        server.up()
        return server

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", OS_USER, "--", str(self.bin_dir / tool), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=120)

    def up(self) -> None:
        """Start (or start again after stop/crash) on the same port and data."""
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses={HOST} "
                   "-c max_connections=200 -c fsync=on")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log_path),
                  "-o", options, "start")

    def crash(self) -> None:
        """Down at once, no checkpoint: what a power cut or OOM kill does."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        self._databases += 1
        name = f"recfs_test_{os.getpid()}_{self._databases}_{time.monotonic_ns() % 10**6}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL for the session."""
    server = PostgresServer.start(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_catalog(postgres: PostgresServer) -> str:
    """A fresh database's URL."""
    if not postgres.running:
        postgres.up()
    return postgres.new_database()


@pytest.fixture
def postgres_own(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, for tests that crash it."""
    server = PostgresServer.start(tmp_path / "postgres")
    try:
        yield server
    finally:
        server.stop()
