#!/usr/bin/env python3
"""Soak run: a simulator making calls continuously, a recfs mount with a small cache
that keeps churning, and readers copying recordings out of the mount, for a bounded
time (default 10 minutes). At the end: every recording read matched the PBX byte for
byte, and recfs's open file descriptors and memory did not grow (figures printed).

    .venv/bin/python scripts/soak.py [--minutes 10] [--readers 4]

Everything stays on loopback; every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

RECFS = [sys.executable, "-m", "recfs.cli"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"soak: timed out waiting for {what}")


def proc_figures(pid: int) -> tuple[int, int]:
    """(open descriptors, resident KiB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss


def mount_pid(mountpoint: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"recfs.cli mount .* {mountpoint}"], capture_output=True,
                         text=True).stdout.split()
    return int(out[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--calls-per-minute", type=float, default=60.0)
    parser.add_argument("--cache-size", default="30M")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="recfs-soak-"))
    ready = work / "ready.json"
    sim = subprocess.Popen([*RECFS, "sim", "--listen", "127.0.0.1:0", "--data-dir", str(work / "pbx"),
                            "--calls-per-minute", str(args.calls_per_minute), "--min-duration", "3",
                            "--max-duration", "90", "--ready-file", str(ready)],
                           stdout=open(work / "sim.log", "wb"), stderr=subprocess.STDOUT)
    mnt = work / "mnt"
    mnt.mkdir()
    mount = None
    try:
        wait_for(ready.exists, 30, "the simulator")
        info = json.loads(ready.read_text())
        password = work / "password"
        password.write_text(info["password"] + "\n")
        password.chmod(0o600)
        opts = ",".join([f"user={info['user']}", f"password_file={password}", f"cafile={info['ca_file']}",
                         "listen=127.0.0.1:0", f"state_dir={work / 'state'}", f"cache_dir={work / 'cache'}",
                         f"cache_size={args.cache_size}", "prefetch=new", "io_timeout=10"])
        log = open(work / "recfs.log", "wb")
        mount = subprocess.Popen([*RECFS, "mount", info["base_url"], str(mnt), "-f", "-o", opts],
                                 stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.ismount(mnt), 30, "the mount")
        pid = mount_pid(mnt)
        http = httpx.Client(base_url=info["base_url"], verify=ssl.create_default_context(cafile=info["ca_file"]))

        deadline = time.monotonic() + args.minutes * 60
        errors: list[str] = []
        reads = [0]
        lock = threading.Lock()
        truth: dict[str, str] = {}

        def refresh_truth() -> None:
            listing = http.get("/sim/recordings").json()
            with lock:
                truth.update({r["name"]: r["sha256"] for r in listing})

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                files = [Path(root) / name for root, _d, names in os.walk(mnt) for name in names]
                if not files:
                    time.sleep(1)
                    continue
                path = rng.choice(files)
                try:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError as exc:
                    with lock:
                        errors.append(f"{path.name}: {exc}")
                    continue
                with lock:
                    expected = truth.get(path.name)
                if expected is None:
                    refresh_truth()
                    with lock:
                        expected = truth.get(path.name)
                if digest != expected:
                    with lock:
                        errors.append(f"{path.name}: content differs from the PBX's")
                with lock:
                    reads[0] += 1
                time.sleep(rng.uniform(0, 0.5))

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(args.readers)]
        wait_for(lambda: any(files for _r, _d, files in os.walk(mnt)), 120, "the first recording")
        time.sleep(5)
        start_fds, start_rss = proc_figures(pid)
        samples = [(0.0, start_fds, start_rss)]
        began = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() < deadline:
            time.sleep(min(30, max(0.1, deadline - time.monotonic())))
            samples.append((time.monotonic() - began, *proc_figures(pid)))
            print(f"  t={samples[-1][0]:6.0f}s  fds={samples[-1][1]:4d}  rss={samples[-1][2] / 1024:7.1f} MiB  "
                  f"reads={reads[0]}  errors={len(errors)}", flush=True)
        for t in threads:
            t.join(120)
        time.sleep(2)
        end_fds, end_rss = proc_figures(pid)
        cache_kib = int(subprocess.run(["du", "-sk", str(work / "cache")], capture_output=True,
                                       text=True).stdout.split()[0])
        stats = http.get("/sim/stats").json()
        print(f"soak: {args.minutes:.1f} min, {stats.get('calls', '?')} calls, {reads[0]} reads by "
              f"{args.readers} readers, {sum(stats['downloads'].values())} downloads at the PBX")
        print(f"soak: recfs fds {start_fds} -> {end_fds}; RSS {start_rss / 1024:.1f} -> "
              f"{end_rss / 1024:.1f} MiB (peak {max(s[2] for s in samples) / 1024:.1f} MiB); "
              f"cache dir {cache_kib / 1024:.1f} MiB (cap {args.cache_size})")
        problems = list(errors)
        if end_fds > start_fds + 5:
            problems.append(f"file descriptors grew from {start_fds} to {end_fds}")
        if end_rss > start_rss * 1.5 + 20 * 1024:
            problems.append(f"memory grew from {start_rss} KiB to {end_rss} KiB")
        if reads[0] == 0:
            problems.append("no reads happened")
        for line in (work / "recfs.log").read_text(errors="replace").splitlines():
            if "Traceback" in line or " ERROR " in line:
                problems.append(f"recfs logged: {line}")
        if problems:
            print("soak: FAILED\n  " + "\n  ".join(problems[:20]))
            return 1
        print("soak: OK")
        return 0
    finally:
        if mount is not None:
            subprocess.run(["fusermount3", "-uz", str(mnt)])
            try:
                mount.wait(30)
            except subprocess.TimeoutExpired:
                mount.kill()
        sim.send_signal(signal.SIGTERM)
        sim.wait(30)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
