#!/usr/bin/env python3
"""Content-layer benchmarks: recfs against baselines measured side by side, in one run.

    .venv/bin/python scripts/bench_content.py            # everything (a few minutes)
    .venv/bin/python scripts/bench_content.py --quick    # smaller bulk and cap runs
    .venv/bin/python scripts/bench_content.py --only cached,stream

Needs root (drop_caches), /dev/fuse, curl, rsync, dd. Not part of the test suite:
it prints figures, and a ratio against its baseline for each.

  wire     uncached reads from a PBX that is not the bottleneck (nginx sends the
           bytes, the simulator keeps the handshake: scripts/nginx_front.py): dd bs=1M
           of never-read 64 MiB recordings vs curl (get_random + download) from
           nginx, and curl from the simulator alone to show the difference; stat +
           open + 128 KiB of never-read recordings vs a plain http.client script
           making the same two requests; recfs's CPU per recording and per MiB
  cached   dd bs=1M of a cached 64 MiB recording, vs a minimal pyfuse3 filesystem
           (below, in this file) serving the same file with os.pread; with
           direct_io (the default) and through the page cache (direct_io=no), the
           baseline opening its file the same way each time
  stream   uncached streaming read of a 20 MiB recording, vs get_random + download
           directly (httpx in-process, and curl)
  ttfb     open + first 4 KiB of an uncached recording, vs get_random + first body
           byte directly (httpx)
  bulk     rsync -a of N uncached recordings (200 KiB-5 MiB), vs a curl loop
           (get_random + download per name), run recfs, curl, curl, recfs; peak
           transfers at the simulator
  slowpbx  the same (100 recordings) with the PBX sending each download at 16 MiB/s
  seqcopy  cp -r of 100 uncached recordings from that slow PBX, readahead=1 vs 0
  many     50 readers of 50 recordings, and 20 readers of one: bytes, downloads
           per recording, peak RSS of recfs
  cap      cache_size=50M fed 500 MiB: the largest du seen, reads checked
  start    mount time with the cache from `bulk`, and after kill -9
  statcost ls -l of N recordings whose sizes are unknown (prefetch=none, learned by
           back-fill, a fresh mount each time): handshakes, bytes the PBX sent
           against the recordings' total, time; vs a direct client learning the N
           sizes (get_random + download up to its first body byte), run recfs,
           direct, direct, recfs; then du of the same day (sizes in the catalog),
           and ls -l once more from a PBX sending at 1 MB/s
  slotwait a PBX sending each download at 1 MB/s: two `head -c 4096` of uncached
           recordings, then a third reader's first 4 KiB and whole file; vs the
           same reader on an idle PBX; peak transfers at the PBX
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # the tests package: tests/mount/harness.py

from recfs.content.store import DownloadPolicy  # noqa: E402

from benchlib import MiB, cpu_seconds, dd, seconds_for, timed  # noqa: E402


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def evict_pages(path: Path) -> None:
    """Drop one file's pages from the page cache (a FUSE file's too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def line(name: str, figure: str, ratio: str = "") -> None:
    print(f"  {name:<44} {figure:<34} {ratio}", flush=True)


# -- the baseline filesystem ------------------------------------------------------

def serve_one_file(source: str, mountpoint: str, mode: str) -> None:
    """A minimal read-only pyfuse3 filesystem: / holds one file, read with os.pread,
    opened with direct_io or through the page cache (*mode*), as recfs is told to."""
    import errno
    import stat

    import pyfuse3
    import trio

    size = os.stat(source).st_size
    name = b"f.wav"
    ino = pyfuse3.ROOT_INODE + 1

    class Ops(pyfuse3.Operations):
        def _attr(self, inode):
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            if inode == pyfuse3.ROOT_INODE:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o555, 2, 0
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, size
            a.st_uid, a.st_gid = os.getuid(), os.getgid()
            a.attr_timeout = a.entry_timeout = 3600
            return a

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent, n, ctx=None):
            if parent == pyfuse3.ROOT_INODE and n == name:
                return self._attr(ino)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start, token):
            if start == 0:
                pyfuse3.readdir_reply(token, name, self._attr(ino), 1)

        async def open(self, inode, flags, ctx):
            # A descriptor per open, as recfs has (the kernel's read-ahead state is
            # per descriptor).
            return pyfuse3.FileInfo(fh=os.open(source, os.O_RDONLY),
                                    direct_io=mode == "direct_io")

        async def read(self, fh, off, length):
            return os.pread(fh, length, off)

        async def release(self, fh):
            os.close(fh)

    options = {"fsname=baseline", "ro", "noatime", "default_permissions"}
    pyfuse3.init(Ops(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


# -- direct PBX access (the other baselines) ---------------------------------------

class Direct:
    """get_random + download as any client would do them, without recfs."""

    def __init__(self, sim):
        import httpx
        self.sim = sim
        self.ctx = ssl.create_default_context(cafile=sim.cafile)
        self.http = httpx.Client(base_url=sim.url, verify=self.ctx, timeout=60,
                                 limits=httpx.Limits(max_keepalive_connections=0))
        md5 = hashlib.md5(sim.password.encode()).hexdigest()
        reply = self.http.post("/api/v2.0.0/login", json={
            "username": sim.user, "password": md5, "port": "9", "version": "2.0.0"}).json()
        self.token = reply["token"]

    def random(self, name: str) -> str:
        return self.http.post("/api/v2.0.0/recording/get_random", params={"token": self.token},
                              json={"recording": name}).json()["random"]

    def download(self, name: str, first_byte_only: bool = False) -> int:
        random_value = self.random(name)
        got = 0
        with self.http.stream("GET", "/api/v2.0.0/recording/download", params={
                "recording": name, "random": random_value, "token": self.token}) as reply:
            for chunk in reply.iter_raw():
                got += len(chunk)
                if first_byte_only and got:
                    break
        return got

    def first_byte_plain(self, name: str) -> None:
        """get_random + download up to the first body byte, with http.client: what a
        short script does (a connection each, as the PBX wants; no session reuse)."""
        import http.client
        import urllib.parse
        host, port = self.sim.url.rsplit("/", 1)[1].rsplit(":", 1)
        base = "/api/v2.0.0/recording/"
        conn = http.client.HTTPSConnection(host, int(port), context=self.ctx)
        conn.request("POST", f"{base}get_random?token={self.token}",
                     body=json.dumps({"recording": name}),
                     headers={"Content-Type": "application/json"})
        random_value = json.loads(conn.getresponse().read())["random"]
        conn.close()
        query = urllib.parse.urlencode({"recording": name, "random": random_value,
                                        "token": self.token})
        conn = http.client.HTTPSConnection(host, int(port), context=self.ctx)
        conn.request("GET", f"{base}download?{query}")
        assert conn.getresponse().read(1) == b"R"
        conn.close()

    def curl(self, name: str, out: str = "/dev/null") -> None:
        import urllib.parse
        base = self.sim.url + "/api/v2.0.0/recording/"
        reply = subprocess.run(
            ["curl", "-sS", "--cacert", self.sim.cafile, "-X", "POST",
             "-H", "Content-Type: application/json", "-d", json.dumps({"recording": name}),
             f"{base}get_random?token={self.token}"], capture_output=True, check=True).stdout
        random_value = json.loads(reply)["random"]
        query = urllib.parse.urlencode({"recording": name, "random": random_value,
                                        "token": self.token})
        subprocess.run(["curl", "-sS", "--cacert", self.sim.cafile, "-o", out,
                        f"{base}download?{query}"], check=True)

    def close(self) -> None:
        # Logged out, or the simulator would push every later report to port 9.
        reply = self.http.post("/api/v2.0.0/logout", params={"token": self.token}, json={})
        assert reply.json().get("status") == "Success", reply.text
        self.http.close()


# -- the benchmarks ------------------------------------------------------------------

def _calls(sim, count: int) -> list[dict]:
    """*count* calls with recordings of 200 KiB to 5 MiB, the same ones in every run."""
    rng = random.Random(7)
    return [sim.call(duration=rng.randint(13, 327)) for _ in range(count)]


def _sent_since(sim, offset: int) -> int:
    """Bytes of recordings the simulator sent since its log was *offset* bytes long."""
    text = sim.log_path.read_bytes()[offset:].decode(errors="replace")
    return (sum(int(n) for n in re.findall(r"→ audio (\d+) bytes", text))
            + sum(int(n) for n in re.findall(r"client went away after (\d+) of", text)))


def _wrong(sim, names: list[str], target: Path) -> list[str]:
    """The recordings missing from the copy in *target*, or not byte-identical."""
    copied = {p.name: p for p in target.rglob("*") if p.is_file()}
    return [n for n in names if n not in copied or copied[n].read_bytes() != sim.recording_bytes(n)]


class Bench:
    def __init__(self, work: Path, quick: bool, compare: str | None = None):
        from tests.mount.harness import Sim
        self.work = work
        self.quick = quick
        self.compare = compare
        self.sim = Sim(work / "sim")
        self.bulk_sim = None
        self.mounts = []

    def mount(self, name: str, *options: str, sim=None):
        from tests.mount.harness import Mount
        mount = Mount(sim or self.sim, self.work / name, "prefetch=none", *options)
        self.mounts.append(mount)
        return mount

    def close(self) -> None:
        for mount in self.mounts:
            mount.cleanup()
        self.sim.close()
        if self.bulk_sim is not None:
            self.bulk_sim.close()

    def listed(self, mount, cdrs, timeout: float = 120):
        """The calls whose recordings the mount lists, after waiting up to *timeout*."""
        deadline = time.monotonic() + timeout
        missing = list(cdrs)
        while missing and time.monotonic() < deadline:
            missing = [c for c in missing if not mount.file_of(c).parent.exists()
                       or c["recording"] not in os.listdir(mount.file_of(c).parent)]
            time.sleep(0.2)
        if missing:
            print(f"  NOTE: {len(missing)} of {len(cdrs)} reports never reached the mount "
                  f"within {timeout:.0f} s; going on without them")
        return [c for c in cdrs if c not in missing]

    def done(self, mount) -> None:
        mount.unmount()
        mount.cleanup()

    def truth(self, name: str) -> bytes:
        return self.sim.recording_bytes(name)

    def cached(self) -> None:
        print("cached sequential read, 64 MiB, dd bs=1M, alternating order; the baseline "
              "opens files the way recfs does")
        cdr = self.sim.call(duration=seconds_for(64 * MiB))
        for direct_io in (True, False):
            self._cached(cdr, direct_io)

    def _cached(self, cdr: dict, direct_io: bool) -> None:
        mode = "direct_io" if direct_io else "page cache"
        mount = self.mount(f"cached-{'dio' if direct_io else 'pc'}",
                           f"direct_io={'yes' if direct_io else 'no'}")
        path = mount.wait_file(cdr)
        dd(path)  # download it into the cache
        while not any((mount.cache_dir / "complete").iterdir()):
            time.sleep(0.05)
        cache_file = next((mount.cache_dir / "complete").iterdir())
        base_mnt = self.work / "baseline-mnt"
        base_mnt.mkdir(exist_ok=True)
        server = subprocess.Popen([sys.executable, __file__, "--serve-file", str(cache_file),
                                   str(base_mnt), "direct_io" if direct_io else "page_cache"])
        try:
            while not os.path.ismount(base_mnt):
                time.sleep(0.02)
            base_file = base_mnt / "f.wav"
            rec, base, rec_warm, base_warm = [], [], [], []
            for i in range(7):
                # Cold: nothing in the page cache, the backing file comes off the disk.
                for target, out in ((path, rec), (base_file, base))[::1 if i % 2 else -1]:
                    drop_caches()
                    out.append(timed(lambda: dd(target)))
                # Warm: the backing file in the page cache, only the FUSE file's pages
                # dropped: what is measured is the filesystem, not the disk.
                for target, out in ((path, rec_warm), (base_file, base_warm))[::1 if i % 2 else -1]:
                    dd(cache_file)
                    evict_pages(target)
                    out.append(timed(lambda: dd(target)))
        finally:
            subprocess.run(["fusermount3", "-u", str(base_mnt)], check=False)
            server.wait(10)
        size = path.stat().st_size
        for label, r, b in (("backing file in page cache", rec_warm, base_warm),
                            ("all caches dropped", rec, base)):
            r, b = statistics.median(r), statistics.median(b)
            line(f"recfs ({mode}), {label}", f"{size / r / MiB:8.0f} MiB/s (median of 7)")
            line(f"baseline pyfuse3 + os.pread ({mode})", f"{size / b / MiB:8.0f} MiB/s",
                 f"ratio {b / r:.2f} (goal >= 0.8)")
        self.done(mount)

    def stream(self) -> None:
        print("uncached streaming read of a 20 MiB recording over HTTPS")
        # readahead=0: the medians come from many files of one day read in a row, which
        # is a walk; read-ahead would fetch the next one while this one is measured.
        mount = self.mount("stream", "readahead=0")
        # Single transfers on this VM come in two speeds (about 200 and 300 MiB/s,
        # for recfs and httpx alike): nine of each, in rotating order, for medians
        # that do not flip with one lucky run.
        reps = 9
        cdrs = [self.sim.call(duration=seconds_for(20 * MiB)) for _ in range(reps * 3)]
        paths = [mount.wait_file(c) for c in cdrs]
        direct = Direct(self.sim)
        rec, via_httpx, via_curl = [], [], []
        try:
            for i in range(reps):
                runs = [lambda: rec.append(timed(lambda: dd(paths[3 * i]))),
                        lambda: via_httpx.append(timed(lambda: direct.download(cdrs[3 * i + 1]["recording"]))),
                        lambda: via_curl.append(timed(lambda: direct.curl(cdrs[3 * i + 2]["recording"])))]
                for run in runs[i % 3:] + runs[:i % 3]:
                    run()
        finally:
            direct.close()
        for i in range(reps):
            assert paths[3 * i].read_bytes() == self.truth(cdrs[3 * i]["recording"])
        size = paths[0].stat().st_size
        r, h, c = (statistics.median(x) for x in (rec, via_httpx, via_curl))
        line("recfs, dd bs=1M", f"{size / r / MiB:8.1f} MiB/s (median of {reps})")
        line("direct: httpx get_random + download", f"{size / h / MiB:8.1f} MiB/s",
             f"ratio {h / r:.2f} (goal >= 0.8)")
        line("direct: curl get_random + curl download", f"{size / c / MiB:8.1f} MiB/s",
             f"ratio {c / r:.2f} (goal >= 0.8)")
        self.done(mount)

    def ttfb(self) -> None:
        print("time to first byte of an uncached open")
        mount = self.mount("ttfb", "readahead=0")  # as in stream()
        reps = 15
        cdrs = [self.sim.call(duration=5) for _ in range(reps * 2)]
        paths = [mount.wait_file(c) for c in cdrs]
        direct = Direct(self.sim)
        rec, base = [], []

        def first(path):
            with open(path, "rb", buffering=0) as f:
                assert f.read(4096)[:4] == b"RIFF"

        try:
            for i in range(reps):
                rec.append(timed(lambda: first(paths[2 * i])))
                base.append(timed(lambda: direct.download(cdrs[2 * i + 1]["recording"], True)))
        finally:
            direct.close()
        r, b = statistics.median(rec), statistics.median(base)
        line("recfs: open + read 4 KiB", f"{r * 1000:8.1f} ms (median of {reps})")
        line("direct: get_random + first body byte", f"{b * 1000:8.1f} ms",
             f"recfs {1000 * (r - b):+.1f} ms (goal <= +10 ms)")
        self.done(mount)

    def wire(self) -> None:
        """Uncached reads against a PBX that is not the bottleneck: nginx in front of
        the simulator (scripts/nginx_front.py) sends the bytes, the simulator keeps
        the handshake (get_random, one-shot randoms). With --compare REV, recfs of that
        git revision is mounted too and measured in the same rounds."""
        from nginx_front import ACCEL_PREFIX, NginxFront
        from tests.mount.harness import Mount, Sim
        reps = 3 if self.quick else 7
        print(f"uncached reads, PBX = nginx (TLS 1.2, Connection: close) in front of the "
              f"simulator; {reps} rounds in rotating order")
        sim = Sim(self.work / "wire-sim", "--accel-redirect", ACCEL_PREFIX)
        front = None
        mounts: dict[str, object] = {}
        try:
            front = NginxFront(sim, self.work / "wire-nginx")
            fast = front.fronted()
            mounts["recfs"] = self.mount("wire", "readahead=0", sim=fast)
            if self.compare:
                old = self._export(self.compare)
                mount = Mount(fast, self.work / "wire-old", "prefetch=none", "readahead=0",
                              env={"PYTHONPATH": str(old), "PYTHONSAFEPATH": "1"})
                self.mounts.append(mount)
                mounts[f"recfs {self.compare}"] = mount
            size = 0
            direct, slow = Direct(fast), Direct(sim)
            times: dict[str, list[float]] = {
                k: [] for k in [*mounts, "curl nginx", "curl nginx to a file", "curl sim"]}
            out = self.work / "wire-curl-out"
            cpu: dict[str, list[float]] = {k: [] for k in mounts}
            try:
                for i in range(reps):
                    names = list(times)
                    cdrs = {k: sim.call(duration=seconds_for(64 * MiB)) for k in names}
                    size = sim.recordings()[cdrs[names[0]]["recording"]]["size"]
                    paths = {k: mounts[k].wait_file(cdrs[k], timeout=30) for k in mounts}
                    for k in names[i % len(names):] + names[:i % len(names)]:
                        if k in mounts:
                            before = cpu_seconds(mounts[k].proc.pid)
                            times[k].append(timed(lambda: dd(paths[k])))
                            # The download's tail after the last byte (fsync, the
                            # SHA-256 of the file, the catalog) counts too.
                            time.sleep(0.3)
                            cpu[k].append(cpu_seconds(mounts[k].proc.pid) - before)
                            assert paths[k].read_bytes() == sim.recording_bytes(cdrs[k]["recording"])
                        elif k == "curl nginx to a file":
                            times[k].append(timed(lambda: direct.curl(cdrs[k]["recording"], str(out))))
                            out.unlink()
                        else:
                            client = direct if k == "curl nginx" else slow
                            times[k].append(timed(lambda: client.curl(cdrs[k]["recording"])))
                    for cdr in cdrs.values():  # 64 MiB each: keep the disk free
                        sim.http.post("/sim/delete-recordings", json={
                            "names": [cdr["recording"]]}).raise_for_status()
                ttfb = {k: self._wire_ttfb(sim, m, direct, reps * 2) for k, m in mounts.items()}
            finally:
                direct.close()
                slow.close()
            med = {k: statistics.median(v) for k, v in times.items()}
            curl = med["curl nginx"]
            line("curl (get_random + download) from the simulator",
                 f"{size / med['curl sim'] / MiB:8.0f} MiB/s (median of {reps})", "the old baseline")
            line("curl (get_random + download) from nginx", f"{size / curl / MiB:8.0f} MiB/s",
                 f"{med['curl sim'] / curl:.1f}x the simulator")
            line("curl from nginx into a file (the page cache)",
                 f"{size / med['curl nginx to a file'] / MiB:8.0f} MiB/s",
                 "what a copy that keeps the bytes pays")
            for k in mounts:
                r = med[k]
                line(f"{k}: dd bs=1M, never-read 64 MiB", f"{size / r / MiB:8.0f} MiB/s "
                     f"({min(times[k]):.3f}-{max(times[k]):.3f} s)",
                     f"ratio {curl / r:.2f} of curl (goal >= 0.8); curl is {r / curl:.1f}x")
                c = statistics.median(cpu[k])
                line(f"  {k}: CPU per 64 MiB recording", f"{c * 1000:8.0f} ms",
                     f"{c * 1000 / (size / MiB):.2f} ms per MiB")
            for k in mounts:
                t_rec, t_direct, t_httpx, t_cpu = ttfb[k]
                line(f"{k}: stat + open + 128 KiB, never read", f"{t_rec * 1000:8.1f} ms "
                     f"(median of {reps * 2})")
                line("  direct script: get_random + download, 1 byte", f"{t_direct * 1000:8.1f} ms",
                     f"recfs {1000 * (t_rec - t_direct):+.1f} ms (goal <= +5 ms)")
                line("  same with httpx", f"{t_httpx * 1000:8.1f} ms")
                line(f"  {k}: CPU per uncached first read", f"{t_cpu * 1000:8.1f} ms")
        finally:
            for mount in mounts.values():
                self.done(mount)
            if front is not None:
                front.close()
            sim.close()

    def _export(self, rev: str) -> Path:
        """recfs/ as of git revision *rev*, for a mount to import instead of this tree."""
        target = self.work / f"recfs-{rev}"
        target.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "recfs"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return target

    def _wire_ttfb(self, sim, mount, direct, reps: int) -> tuple[float, float, float, float]:
        """stat + open + 128 KiB of never-read 1 MiB recordings through recfs, vs a
        plain script (http.client) making the same two requests and reading 1 byte,
        and httpx doing the same; medians, and recfs's CPU per recording (from the
        stat until its transfer has ended)."""
        cdrs = [sim.call(duration=seconds_for(MiB)) for _ in range(reps * 3)]
        paths = [mount.wait_file(c) for c in cdrs]
        rec, plain, via_httpx, cpu = [], [], [], []

        def first(path: Path) -> None:
            os.stat(path)
            with open(path, "rb", buffering=0) as f:
                assert len(f.read(128 * 1024)) == 128 * 1024

        for i in range(reps):
            before = cpu_seconds(mount.proc.pid)
            rec.append(timed(lambda: first(paths[3 * i])))
            time.sleep(0.1)  # the transfer ends (the file is complete, or stopped)
            cpu.append(cpu_seconds(mount.proc.pid) - before)
            plain.append(timed(lambda: direct.first_byte_plain(cdrs[3 * i + 1]["recording"])))
            via_httpx.append(timed(lambda: direct.download(cdrs[3 * i + 2]["recording"], True)))
        return (statistics.median(rec), statistics.median(plain), statistics.median(via_httpx),
                statistics.mean(cpu))

    def bulk(self) -> None:
        count = 100 if self.quick else 500
        print(f"bulk copy of {count} uncached recordings (200 KiB-5 MiB), max_downloads=2")
        self.bulk_sim, self.bulk_mount, self.bulk_names = self._copy_race("bulk", count)

    def slowpbx(self) -> None:
        rate = 16 * MiB
        count = 40 if self.quick else 100
        print(f"bulk copy of {count} uncached recordings from a PBX that sends each download "
              f"at {rate // MiB} MiB/s (a LAN, an embedded box), max_downloads=2")
        sim, mount, _names = self._copy_race("slowpbx", count, rate)
        mount.cleanup()
        sim.close()

    def seqcopy(self) -> None:
        rate, count = 16 * MiB, (30 if self.quick else 100)
        print(f"cp -r of {count} uncached recordings, one file at a time, from a PBX sending "
              f"each download at {rate // MiB} MiB/s: readahead=1 vs readahead=0 (default)")
        from tests.mount.harness import Sim
        sim = Sim(self.work / "seqcopy-sim")
        mounts = {}
        try:
            mounts = {n: self.mount(f"seqcopy-{n}", "max_downloads=2", f"readahead={n}", sim=sim)
                      for n in (0, 1)}
            cdrs = _calls(sim, count)
            for mount in mounts.values():
                self.listed(mount, cdrs)
            total = sum(entry["size"] for entry in sim.recordings().values())
            sim.faults(throttle=rate)
            took = {}
            for n, mount in mounts.items():
                day = mount.file_of(cdrs[0]).parent
                target = self.work / f"seqcopy-out-{n}"
                sim.http.post("/sim/reset-stats").raise_for_status()
                took[n] = timed(lambda: subprocess.run(["cp", "-r", str(day), str(target)],
                                                       check=True))
                peak = sim.stats()["downloads_max_concurrent"]
                bad = _wrong(sim, [c["recording"] for c in cdrs], target)
                shutil.rmtree(target)
                line(f"recfs readahead={n}: cp -r, {total / MiB:.0f} MiB",
                     f"{total / took[n] / MiB:8.1f} MiB/s, {took[n]:.1f} s",
                     f"peak at the PBX {peak}, {len(bad)} wrong")
            line("readahead=1 against readahead=0", "", f"ratio {took[0] / took[1]:.2f}")
        finally:
            for mount in mounts.values():
                self.done(mount)
            sim.close()

    def _copy_race(self, name: str, count: int, rate: int | None = None):
        """rsync -a of the date tree of *count* uncached recordings vs a curl loop.

        Run as recfs, curl, curl, recfs and compared in sums. The order matters on
        these VMs: memory the guest has not touched for a while (freed pages go back
        to the host) costs a host page fault on first touch, so a 2.6 GB write takes
        0.65 s warm and 5.8 s after 30 s idle. Whoever ran first paid for that alone;
        in ABBA order both sides pay for it once."""
        # A PBX of its own, holding just these recordings: the tree rsync copies
        # and the names the curl loop fetches are the same set.
        from tests.mount.harness import Sim
        sim = Sim(self.work / f"{name}-sim")
        cdrs = _calls(sim, count)
        sizes = sim.recordings()
        total = sum(entry["size"] for entry in sizes.values())
        names = sorted(sizes)
        if rate:
            sim.faults(throttle=rate)
        rsync, curl = [], []
        mount = None

        def recfs_round() -> None:
            nonlocal mount
            if mount is not None:
                self.done(mount)
            # A fresh mount (state and cache) each time: it learns the calls by
            # back-fill, so neither sizes nor bytes are known, as after the reports.
            mount = self.mount(f"{name}-{len(rsync)}", "max_downloads=2", sim=sim)
            listed = self.listed(mount, cdrs)
            assert len(listed) == len(cdrs), "the mount does not list every recording"
            sim.http.post("/sim/reset-stats").raise_for_status()
            target = self.work / f"{name}-rsync-out"
            # The date tree: the views name the same files again (as hard links).
            rsync.append(timed(lambda: subprocess.run(
                ["rsync", "-a", "--exclude=/by-type", "--exclude=/by-number",
                 f"{mount.path}/", f"{target}/"], check=True)))
            peak = sim.stats()["downloads_max_concurrent"]
            downloads = sum(sim.stats()["downloads"].values())
            bad = _wrong(sim, names, target)
            shutil.rmtree(target)
            line(f"recfs: rsync -a of {len(names)} files, {total / MiB:.0f} MiB",
                 f"{total / rsync[-1] / MiB:8.1f} MiB/s, {rsync[-1]:.1f} s",
                 f"PBX: {downloads} downloads, peak {peak}, {len(bad)} files wrong"
                 # rsync lstat()s a whole directory before it reads a file: each stat
                 # learns the size with a handshake of its own (README: "What the
                 # files look like"), so a file costs two downloads, the first cut
                 # short after the headers.
                 + ("" if peak <= 2 and downloads <= 2 * len(names) and not bad else "  NOT OK"))

        def curl_round() -> None:
            out = self.work / f"{name}-curl-out"
            out.mkdir()
            direct = Direct(sim)
            try:
                curl.append(timed(lambda: [direct.curl(n, str(out / n)) for n in names]))
            finally:
                direct.close()
            shutil.rmtree(out)
            line("curl loop (get_random + download each)",
                 f"{total / curl[-1] / MiB:8.1f} MiB/s, {curl[-1]:.1f} s")

        for run in (recfs_round, curl_round, curl_round, recfs_round):
            run()
        if rate:
            sim.clear_faults()
        line("curl loop time / recfs time, summed", "",
             f"ratio {sum(curl) / sum(rsync):.2f} (goal >= 1)")
        return sim, mount, names

    def statcost(self) -> None:
        count = 32 if self.quick else 64
        print(f"ls -l of {count} recordings of unknown size (200 KiB-5 MiB, prefetch=none, "
              "learned by back-fill), each time on a fresh mount; run recfs, direct, direct, "
              "recfs; then once from a PBX sending at 1 MB/s")
        from tests.mount.harness import Sim
        sim = Sim(self.work / "statcost-sim")
        try:
            cdrs = _calls(sim, count)
            sizes = {n: e["size"] for n, e in sim.recordings().items()}
            total = sum(sizes.values())
            took: list[float] = []
            base: list[float] = []

            def recfs_round(rate: int | None = None) -> None:
                mount = self.mount(f"statcost-{len(took)}", sim=sim)
                try:
                    day = mount.file_of(self.listed(mount, cdrs)[0]).parent
                    if rate:
                        sim.faults(throttle=rate)
                    sim.http.post("/sim/reset-stats").raise_for_status()
                    offset = sim.log_path.stat().st_size
                    out: list[str] = []
                    t = timed(lambda: out.append(subprocess.run(
                        ["ls", "-l", str(day)], capture_output=True, text=True, check=True).stdout))
                    shown = {f[-1]: int(f[4]) for f in (l.split() for l in out[0].splitlines()[1:])}
                    while sim.stats()["downloads_active"]:  # until lingering transfers end
                        time.sleep(0.05)
                    stats = sim.stats()
                    sent = _sent_since(sim, offset)
                    wrong = sum(shown.get(n) != sizes[n] for n in sizes)
                    line(f"recfs: ls -l{', 1 MB/s PBX' if rate else ''}",
                         f"{t * 1000:8.0f} ms, {wrong} wrong",
                         f"PBX: {sum(stats['get_random'].values())} handshakes, "
                         f"{stats['downloads_completed']} whole downloads")
                    line("  bytes the PBX sent / the recordings' total",
                         f"{sent / MiB:.1f} MiB / {total / MiB:.0f} MiB", f"{100 * sent / total:.2f} %")
                    if rate:
                        sim.clear_faults()
                        return
                    took.append(t)
                    sim.http.post("/sim/reset-stats").raise_for_status()
                    again = timed(lambda: subprocess.run(["du", "-sb", str(day)], check=True,
                                                         stdout=subprocess.DEVNULL))
                    line("  then du -sb of the day (sizes in the catalog)",
                         f"{again * 1000:8.0f} ms",
                         f"PBX: {sum(sim.stats()['get_random'].values())} handshakes")
                finally:
                    self.done(mount)

            def direct_round() -> None:
                direct = Direct(sim)
                try:
                    base.append(timed(lambda: [direct.download(n, first_byte_only=True)
                                               for n in sizes]))
                finally:
                    direct.close()
                line("direct: get_random + first body byte, each", f"{base[-1] * 1000:8.0f} ms")

            for run in (recfs_round, direct_round, direct_round, recfs_round):
                run()
            line("direct time / recfs time, summed", "", f"ratio {sum(base) / sum(took):.2f} "
                 f"(a stat holds its slot open_grace = {DownloadPolicy().open_grace * 1000:g} ms "
                 "for its open)")
            recfs_round(1_000_000)
        finally:
            sim.close()

    def slotwait(self) -> None:
        rate, reps = 1_000_000, (3 if self.quick else 5)
        size = 4 * rate  # 4 s apiece at the PBX's pace
        print(f"a PBX sending each download at {rate / 1e6:.0f} MB/s, max_downloads=2, "
              f"{size / 1e6:.0f} MB recordings: two `head -c 4096`, then a third reader; "
              "vs the same reader on an idle PBX")
        from tests.mount.harness import Sim
        sim = Sim(self.work / "slotwait-sim")
        mount = None
        try:
            mount = self.mount("slotwait", "max_downloads=2", "readahead=0", sim=sim)
            cdrs = [sim.call(duration=seconds_for(size)) for _ in range(reps * 4)]
            paths = [mount.wait_file(c) for c in cdrs]
            sim.faults(throttle=rate)
            first: dict[str, list[float]] = {"busy": [], "idle": []}
            whole: dict[str, list[float]] = {"busy": [], "idle": []}
            peak, wrong = 0, 0

            def reader(i: int, kind: str) -> None:
                nonlocal wrong
                began = time.perf_counter()
                with open(paths[i], "rb", buffering=0) as f:
                    data = f.read(4096)
                    first[kind].append(time.perf_counter() - began)
                    data += b"".join(iter(lambda: f.read(MiB), b""))
                whole[kind].append(time.perf_counter() - began)
                wrong += data != sim.recording_bytes(cdrs[i]["recording"])

            def idle_pbx() -> None:
                while sim.stats()["downloads_active"]:
                    time.sleep(0.05)

            for rep in range(reps):
                a, b, c, d = range(4 * rep, 4 * rep + 4)
                for kind in ("idle", "busy")[::1 if rep % 2 else -1]:
                    idle_pbx()
                    sim.http.post("/sim/reset-stats").raise_for_status()
                    if kind == "busy":
                        for i in (a, b):
                            subprocess.run(["head", "-c", "4096", str(paths[i])], check=True,
                                           stdout=subprocess.DEVNULL)
                    reader(c if kind == "busy" else d, kind)
                    peak = max(peak, sim.stats()["downloads_max_concurrent"])
            idle_pbx()
            fb, fi = statistics.median(first["busy"]), statistics.median(first["idle"])
            wb, wi = statistics.median(whole["busy"]), statistics.median(whole["idle"])
            line("third reader after two abandoned reads: first 4 KiB",
                 f"{fb * 1000:8.0f} ms (median of {reps})")
            line("same reader, idle PBX: first 4 KiB", f"{fi * 1000:8.0f} ms",
                 f"recfs {1000 * (fb - fi):+.0f} ms (goal: well below {size / rate:.0f} s)")
            line("third reader, whole file", f"{wb:8.2f} s")
            line("same reader, idle PBX, whole file", f"{wi:8.2f} s", f"ratio {wi / wb:.2f}")
            line("peak transfers at the PBX", f"{peak} (max_downloads=2)", f"{wrong} files wrong")
        finally:
            if mount is not None:
                self.done(mount)
            sim.close()

    def many(self) -> None:
        print("concurrent readers: 50 readers of 50 recordings, 20 readers of one")
        mount = self.mount("many", "max_downloads=2")
        rss_start = vm_rss(mount.proc.pid)
        cdrs = [self.sim.call(duration=rng_seconds) for rng_seconds in
                random.Random(3).choices(range(13, 200), k=50)]
        one = self.sim.call(duration=seconds_for(10 * MiB))
        paths = [mount.wait_file(c) for c in cdrs]
        one_path = mount.wait_file(one)
        self.sim.http.post("/sim/reset-stats").raise_for_status()
        results: dict[int, bytes] = {}

        def read(i, path):
            results[i] = path.read_bytes()

        threads = [threading.Thread(target=read, args=(i, p)) for i, p in enumerate(paths)]
        threads += [threading.Thread(target=read, args=(100 + i, one_path)) for i in range(20)]
        t = timed(lambda: ([th.start() for th in threads], [th.join(600) for th in threads]))
        stats = self.sim.stats()
        wrong = sum(results.get(i) != self.truth(c["recording"]) for i, c in enumerate(cdrs))
        wrong += sum(results.get(100 + i) != self.truth(one["recording"]) for i in range(20))
        per = [stats["downloads"].get(c["recording"], 0) for c in cdrs + [one]]
        line("70 readers, 51 recordings", f"{t:.1f} s, {wrong} wrong")
        line("downloads per recording", f"min {min(per)}, max {max(per)}",
             "ok" if set(per) == {1} else "NOT ONE EACH")
        line("peak transfers at the PBX", f"{stats['downloads_max_concurrent']} (max_downloads=2)")
        line("recfs RSS at start / peak", f"{rss_start / MiB:.0f} MiB / {vm_hwm(mount.proc.pid) / MiB:.0f} MiB")
        self.done(mount)

    def cap(self) -> None:
        fed = 200 * MiB if self.quick else 500 * MiB
        print(f"cache_size=50M fed {fed // MiB} MiB")
        mount = self.mount("cap", "cache_size=50M", "cache_min_free=0")
        cdrs, size = [], 0
        rng = random.Random(11)
        while size < fed:
            cdr = self.sim.call(duration=rng.randint(13, 327))
            cdrs.append(cdr)
            size += self.sim.recordings()[cdr["recording"]]["size"]
        cdrs = self.listed(mount, cdrs)
        paths = [mount.file_of(c) for c in cdrs]
        biggest, stop = 0, threading.Event()

        def watch():
            nonlocal biggest
            while not stop.is_set():
                out = subprocess.run(["du", "-s", "-B1", str(mount.cache_dir)],
                                     capture_output=True, text=True).stdout
                biggest = max(biggest, int(out.split()[0]))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        wrong = 0
        try:
            for cdr, path in zip(cdrs, paths):
                wrong += hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(
                    self.truth(cdr["recording"])).digest()
        finally:
            stop.set()
            watcher.join()
        line(f"{len(cdrs)} recordings read, {size / MiB:.0f} MiB", f"{wrong} wrong")
        line("largest du of the cache dir seen", f"{biggest / MiB:.1f} MiB",
             "cap held" if biggest <= 50 * MiB + 2 * 6 * MiB else "CAP EXCEEDED")
        line("(the cap allows downloads in flight on top:", "<= max_downloads x 5 MiB)")
        self.done(mount)

    def start(self) -> None:
        mount = getattr(self, "bulk_mount", None)
        if mount is None:
            print("start: needs bulk; skipped")
            return
        files = len(list((mount.cache_dir / "complete").iterdir()))
        print(f"mount start-up with {files} files in the cache")
        assert mount.unmount() == 0
        t = timed(mount.start)
        line("clean remount (process start to mounted)", f"{t * 1000:8.0f} ms")
        name = self.bulk_names[0]
        before = self.bulk_sim.stats()["downloads"].get(name, 0)
        path = next(mount.path.rglob(name))
        path.read_bytes()
        line("a cached file read after the remount", "PBX downloads +"
             f"{self.bulk_sim.stats()['downloads'].get(name, 0) - before}")
        mount.proc.send_signal(signal.SIGKILL)
        mount.proc.wait(10)
        subprocess.run(["fusermount3", "-uz", str(mount.path)], check=True)
        t = timed(mount.start)
        line("remount after kill -9", f"{t * 1000:8.0f} ms")
        empty = self.mount("empty")
        assert empty.unmount() == 0
        line("for comparison: mount with an empty cache", f"{timed(empty.start) * 1000:8.0f} ms")


ALL = ["wire", "cached", "stream", "ttfb", "bulk", "slowpbx", "seqcopy", "start", "many", "cap",
       "statcost", "slotwait"]


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-file":
        serve_one_file(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(ALL))
    parser.add_argument("--compare", metavar="REV",
                        help="wire: also mount recfs as of this git revision, same rounds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (drop_caches)", file=sys.stderr)
        return 2
    print(f"machine: {os.cpu_count()} CPUs, {platform_summary()}")
    work = Path(tempfile.mkdtemp(prefix="recfs-bench-"))
    bench = Bench(work, args.quick, args.compare)
    try:
        for name in args.only.split(","):
            getattr(bench, name)()
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def platform_summary() -> str:
    import platform
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal:")), "?")
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return f"{cpu}, {int(mem) // 1024} MiB RAM, Linux {platform.release()}, Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
