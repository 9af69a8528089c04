#!/usr/bin/env python3
"""recfs with a very large catalog: mount start-up, memory, `ls` of a day, `stat` of a
file, and `find -type f | wc -l` next to the pyfuse3 ceiling (scripts/bench_minimal_fs.py,
same tree shape, from memory), in the same run.

    .venv/bin/python scripts/bench_scale.py [--rows 1000000] [--state-dir DIR]

The PBX is not needed (and not reachable here): the mount must come up and answer
metadata from its catalog alone.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_mounted(path: Path, proc: subprocess.Popen, timeout: float = 120) -> float:
    started = time.perf_counter()
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise SystemExit(f"mount exited with {proc.returncode}")
        if time.perf_counter() - started > timeout:
            raise SystemExit("mount did not come up")
        time.sleep(0.005)
    return time.perf_counter() - started


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True, shell=False).stdout
    return time.perf_counter() - started, out


def find_count(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    out = subprocess.run(f"find {path} -type f | wc -l", shell=True, capture_output=True,
                         text=True, check=True).stdout
    return time.perf_counter() - started, int(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--state-dir", type=Path, help="reuse a catalog made by make_catalog.py")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recfs-scale-"))
    state = args.state_dir or tmp / "state"
    if not (state / "catalog.sqlite").exists():
        subprocess.run([sys.executable, HERE / "make_catalog.py", state, "--rows", str(args.rows)],
                       check=True)
    db = sqlite3.connect(state / "catalog.sqlite")
    rows = db.execute("SELECT sum(count) FROM days").fetchone()[0]
    day, count = db.execute("SELECT day, count FROM days ORDER BY day LIMIT 1 OFFSET 500").fetchone()
    name = db.execute("SELECT name FROM recordings WHERE day = ? LIMIT 1", (day,)).fetchone()[0]
    db.close()
    password = tmp / "password"
    password.write_text("unused\n")
    password.chmod(0o600)

    mnt = tmp / "recfs"
    mnt.mkdir()
    opts = (f"password_file={password},state_dir={state},cache_dir={tmp / 'cache'},"
            f"listen=127.0.0.1:0,prefetch=none,log_file={tmp / 'recfs.log'},"
            # The date tree alone: the shape the minimal filesystem serves too.
            f"views=none")
    proc = subprocess.Popen([sys.executable, "-m", "recfs.cli", "mount", "-f",
                             "http://127.0.0.1:9", str(mnt), "-o", opts])
    minimal_mnt = tmp / "minimal"
    minimal_mnt.mkdir()
    minimal = None
    try:
        ready = wait_mounted(mnt, proc)
        rss_ready = rss_mb(proc.pid)
        day_dir = mnt.joinpath(*day.split("-"))
        t_ls, out = timed(["ls", "-l", str(day_dir)])
        listed = len(out.splitlines()) - 1
        t_stat, _ = timed(["stat", str(day_dir / name)])
        t_find, found = find_count(mnt)
        t_find2, _ = find_count(mnt)
        rss_after = rss_mb(proc.pid)

        minimal = subprocess.Popen([sys.executable, HERE / "bench_minimal_fs.py",
                                    state / "catalog.sqlite", str(minimal_mnt)])
        wait_mounted(minimal_mnt, minimal)
        t_min, found_min = find_count(minimal_mnt)
        t_min2, _ = find_count(minimal_mnt)

        print(f"catalog: {rows} recordings")
        print(f"mount ready: {ready:.2f} s   (target < 2 s)")
        print(f"resident memory: {rss_ready:.0f} MB at ready, {rss_after:.0f} MB after find "
              "(target < 300 MB)")
        print(f"ls -l {day} ({listed} files): {t_ls * 1000:.0f} ms;  stat one file: "
              f"{t_stat * 1000:.0f} ms")
        print(f"find -type f | wc -l: recfs {t_find:.2f} s ({found}), again {t_find2:.2f} s;  "
              f"minimal pyfuse3 {t_min:.2f} s ({found_min}), again {t_min2:.2f} s;  "
              f"ratio {t_find / t_min:.2f} (target <= 2)")
    finally:
        for path, p in ((mnt, proc), (minimal_mnt, minimal)):
            if os.path.ismount(path):
                subprocess.run(["fusermount3", "-u", str(path)])
            if p is not None:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
