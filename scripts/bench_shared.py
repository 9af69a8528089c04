#!/usr/bin/env python3
"""The shared catalog in PostgreSQL at scale: a reader mount of N recordings next to
its baselines, measured in the same run.

    .venv/bin/python scripts/bench_shared.py [--rows 10000000] [--work-dir DIR] [--rounds 3]

- time to ready of a reader mount: a new host's first mount (empty state_dir: the
  replica copies the summaries, and each directory's recordings as it is first
  read), `ls -l` of days nobody has read yet there (each copied from PostgreSQL
  then), how long the copy of the rest in the background takes (rows/s), and a
  restart with the replica there;
- `ls -l` of a day: reader mount vs a mount of the same rows as a SQLite catalog;
- `find` of the date tree: reader mount vs scripts/bench_minimal_fs.py (the pyfuse3
  ceiling, same tree shape, from memory);
- resident memory of the reader mount.

The rows are made by scripts/make_catalog.py (recfs's own inode numbers and days)
into a SQLite catalog, which the SQLite mount serves as it is and `recfs catalog copy`
puts into a PostgreSQL of this script's own (tests/postgres.py, 127.0.0.1 only).
--work-dir keeps that SQLite catalog between runs (making 10M rows takes minutes).
No PBX is needed: the SQLite mount points at a port where nothing listens, and
answers from its catalog alone (as scripts/bench_scale.py does).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the tests package

from bench_scale import find_count, rss_mb, wait_mounted
from benchlib import timed

from recfs.catalog.postgres import PbxKey, PgSettings
from recfs.cli.catalog import copy
from tests.postgres import PostgresServer

RECFS = [sys.executable, "-m", "recfs.cli"]
PBX = "bench"
# What a new replica of 10M rows may take to copy all in the background.
FILL_TIMEOUT = 3600.0


@dataclass
class Fs:
    """A foreground FUSE process (recfs or the minimal filesystem) on *path*."""

    path: Path
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Start it; seconds until the mount point is usable."""
        self.path.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        wait_mounted(self.path, self.proc, timeout)
        return time.perf_counter() - started

    def rss_mb(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        """Unmount and wait for the process; safe to call more than once."""
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False)
            if os.path.ismount(self.path):  # busy: detach it anyway
                subprocess.run(["fusermount3", "-uz", str(self.path)], check=False)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def reader_mount(url: str, work: Path, name: str) -> Fs:
    """A reader mount of the catalog; its state (the replica) in work/name-state.
    Its archive is an empty directory: nothing here reads a recording's bytes."""
    archive = work / "archive"
    archive.mkdir(exist_ok=True)
    opts = (f"state_dir={work / 'reader-state'},cache_dir={work / 'reader-cache'},"
            f"archive=file://{archive},"
            "views=none")  # the date tree alone, as the SQLite mount and the minimal fs
    return Fs(work / name, [*RECFS, "mount", "-f", url, str(work / name), "-o", opts],
              work / f"{name}.log")  # -f: the log goes to stderr


def sqlite_mount(state: Path, work: Path) -> Fs:
    """A mount of the same rows as a SQLite catalog, PBX unreachable (port 9)."""
    password = work / "password"
    password.write_text("unused\n")
    password.chmod(0o600)
    opts = (f"password_file={password},state_dir={state},cache_dir={work / 'sqlite-cache'},"
            f"listen=127.0.0.1:0,prefetch=none,views=none")
    return Fs(work / "sqlite", [*RECFS, "mount", "-f", "http://127.0.0.1:9",
                                str(work / "sqlite"), "-o", opts], work / "sqlite.log")


def minimal_fs(catalog: Path, work: Path) -> Fs:
    return Fs(work / "minimal", [sys.executable, str(HERE / "bench_minimal_fs.py"), str(catalog),
                                 str(work / "minimal")], work / "minimal.log")


# -- the data ------------------------------------------------------------------------

def make_rows(state: Path, rows: int) -> None:
    """state/catalog.sqlite with *rows* recordings, unless it is there already."""
    if (state / "catalog.sqlite").exists():
        return
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(HERE / "make_catalog.py"), str(state), "--rows", str(rows)],
                   check=True)


def sample_days(catalog: Path, count: int) -> list[tuple[str, int]]:
    """*count* days spread over the catalog (day, recordings): a new day for each
    round, so that no listing is answered from the kernel's cache of an earlier one."""
    db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        days = db.execute("SELECT day, count FROM days ORDER BY day").fetchall()
    finally:
        db.close()
    step = max(1, len(days) // (count + 1))
    return days[step::step][:count]


def copy_into(catalog: Path, url: str) -> float:
    """The SQLite catalog into PostgreSQL with recfs's copy (recfs/cli/catalog.py),
    keeping the inode numbers; seconds."""
    source = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        return timed(lambda: copy(source, PgSettings(url), PbxKey(PBX, ""), quiet=True))
    finally:
        source.close()


def wait_complete(reader: Fs, started: float) -> tuple[float, float]:
    """Seconds from *started* until the reader's replica says it is complete
    (recfs/catalog/shared.py logs it), and the highest resident memory seen."""
    peak = 0.0
    while "local replica of PBX bench complete" not in reader.log.read_text(errors="replace"):
        if time.monotonic() - started > FILL_TIMEOUT:
            raise SystemExit(f"the replica was not complete after {FILL_TIMEOUT:.0f} s")
        peak = max(peak, reader.rss_mb())
        time.sleep(1)
    return time.monotonic() - started, peak


# -- the measurements -----------------------------------------------------------------

def ls_l(path: Path) -> tuple[float, int]:
    """Seconds for `ls -l` of *path*, and the files it listed."""
    out: list[str] = []
    seconds = timed(lambda: out.extend(subprocess.run(
        ["ls", "-l", str(path)], capture_output=True, text=True, check=True).stdout.splitlines()))
    return seconds, len(out) - 1  # "total N" first


def day_dir(mount: Path, day: str) -> Path:
    return mount.joinpath(*day.split("-"))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_restarts(reader: Fs, rounds: int) -> list[float]:
    """Ready times of the reader mount started again with its replica in place."""
    times = []
    for _ in range(rounds):
        reader.stop()
        times.append(reader.start())
    return times


def alternate(k: int, ours: Fs, theirs: Fs, measure: Callable[[Fs], float]) -> tuple[float, float]:
    """*measure* on both, the one first in round *k* second in round k + 1 (what runs
    first meets a colder page cache)."""
    pair = [ours, theirs] if k % 2 == 0 else [theirs, ours]
    seconds = {id(fs): measure(fs) for fs in pair}
    return seconds[id(ours)], seconds[id(theirs)]


def measure_ls(reader: Fs, sqlite: Fs, days: list[tuple[str, int]]) -> None:
    """`ls -l` of the same day on both: a new day each round."""
    ours, theirs = [], []
    for k, (day, count) in enumerate(days):
        def listing(fs: Fs, day: str = day, count: int = count) -> float:
            seconds, listed = ls_l(day_dir(fs.path, day))
            if listed != count:
                raise SystemExit(f"ls -l {day} on {fs.path} listed {listed}, not {count}")
            return seconds

        a, b = alternate(k, reader, sqlite, listing)
        ours.append(a)
        theirs.append(b)
        print(f"  ls -l {day} ({count} files): reader {a * 1000:.0f} ms, "
              f"SQLite {b * 1000:.0f} ms, ratio {ratio(a, b)}")
    print(f"ls -l of a day, median of {len(days)}: reader {median(ours) * 1000:.0f} ms, "
          f"SQLite mount {median(theirs) * 1000:.0f} ms: ratio {ratio(median(ours), median(theirs))} "
          f"(goal <= 1.5x)")


def measure_find(reader: Fs, minimal: Fs, rows: int, rounds: int) -> None:
    """`find -type f | wc -l` on both."""
    def find(fs: Fs) -> float:
        seconds, found = find_count(fs.path)
        if found != rows:
            raise SystemExit(f"find on {fs.path} found {found} files, not {rows}")
        return seconds

    ours, theirs = [], []
    for k in range(rounds):
        a, b = alternate(k, reader, minimal, find)
        ours.append(a)
        theirs.append(b)
        print(f"  find round {k + 1}: reader {a:.1f} s, minimal pyfuse3 {b:.1f} s, "
              f"ratio {ratio(a, b)}")
    print(f"find -type f of {rows} files, median of {rounds}: reader {median(ours):.1f} s "
          f"({rows / median(ours):.0f} files/s), minimal pyfuse3 {median(theirs):.1f} s: "
          f"ratio {ratio(median(ours), median(theirs))} (goal <= 2x)")


def run(args: argparse.Namespace, work: Path, cleanup: contextlib.ExitStack) -> None:
    state = args.work_dir or work / "sqlite-state"
    catalog = state / "catalog.sqlite"
    made = timed(lambda: make_rows(state, args.rows))
    db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    rows = db.execute("SELECT count(*) FROM recordings").fetchone()[0]
    db.close()
    print(f"catalog: {rows} recordings ({made:.0f} s to make; {catalog})")

    server = PostgresServer.start(work / "postgres")
    cleanup.callback(server.stop)
    url = server.new_database()
    copied = copy_into(catalog, url)
    print(f"recfs catalog copy into PostgreSQL: {copied:.1f} s ({rows / copied:.0f} rows/s)")

    reader = reader_mount(url, work, "reader")
    cleanup.callback(reader.stop)
    started = time.monotonic()
    first = reader.start()
    print(f"reader mount, first on a new host (empty replica): ready in {first:.2f} s (goal < 2 s)")
    for day, count in sample_days(catalog, args.rounds)[::-1]:
        seconds, listed = ls_l(day_dir(reader.path, day))
        print(f"  ls -l {day} ({listed} of {count} files) on it, the day not copied yet: "
              f"{seconds * 1000:.0f} ms")
    filled, peak = wait_complete(reader, started)
    print(f"  the rest copied in the background in {filled:.0f} s ({rows / filled:.0f} rows/s); "
          f"resident memory meanwhile at most {peak:.0f} MB")
    restarts = measure_restarts(reader, args.rounds)
    print(f"reader mount restart, replica in place: ready in "
          f"{', '.join(f'{t:.2f}' for t in restarts)} s; median {median(restarts):.2f} s (goal < 2 s)")
    rss_ready = reader.rss_mb()

    sqlite = sqlite_mount(state, work)
    cleanup.callback(sqlite.stop)
    sqlite_ready = sqlite.start()
    print(f"SQLite-catalog mount of the same rows: ready in {sqlite_ready:.2f} s "
          f"(reader restart / SQLite: {ratio(median(restarts), sqlite_ready)})")
    measure_ls(reader, sqlite, sample_days(catalog, args.rounds * 2))
    sqlite.stop()

    minimal = minimal_fs(catalog, work)
    cleanup.callback(minimal.stop)
    minimal.start()
    measure_find(reader, minimal, rows, args.find_rounds)
    print(f"reader mount resident memory: {rss_ready:.0f} MB at ready (after restart), "
          f"{reader.rss_mb():.0f} MB after find")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--work-dir", type=Path,
                    help="keep the SQLite catalog (WORK_DIR/catalog.sqlite) here, made once")
    ap.add_argument("--rounds", type=int, default=3,
                    help="restarts; ls -l of 2x this many days")
    ap.add_argument("--find-rounds", type=int, default=2)
    args = ap.parse_args()
    # A SIGTERM cleans up as Ctrl-C does: mounts down, PostgreSQL stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="recfs-shared-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        run(args, work, cleanup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
