#!/usr/bin/env python3
"""Build a large recfs catalog quickly, for benchmarks: N recordings spread evenly
over some years, each with a known size (as if downloaded once).

    .venv/bin/python scripts/make_catalog.py STATE_DIR [--rows 1000000] [--years 3]

Writes STATE_DIR/catalog.sqlite with recfs's own schema (recfs.catalog.database), the inode
numbers recfs would derive, and the `days` table the trigger would have kept.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from recfs.catalog.database import Catalog, file_ino
from recfs.catalog.schema import bulk_load

START = 1672531200  # 2023-01-01 00:00:00 UTC


def rows(count: int, years: float, offset: int):
    step = years * 365 * 86400 / count
    now = time.time()
    for i in range(count):
        epoch = START + int(i * step)
        local = epoch + offset
        timestart = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(local))
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(local + 6))
        caller, callee = f"06{i % 100000000:08d}", str(2001 + i % 50)
        callid = f"{epoch}.{i}"
        name = f"{stamp}-{callid}-{caller}-{callee}-Inbound.wav"
        talk = 10 + i % 300
        yield (file_ino(name), name, timestart[:10], epoch, callid, timestart, caller, callee,
               "Inbound", "ANSWERED", str(talk + 7), str(talk), "SIP-Provider", "0201234567",
               "369900112233", 44 + talk * 16000, now)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("state_dir", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--years", type=float, default=3.0)
    ap.add_argument("--utc-offset", type=int, default=0, help="PBX offset, seconds east of UTC")
    args = ap.parse_args()
    path = args.state_dir / "catalog.sqlite"
    if path.exists():
        print(f"{path} exists; remove it first", file=sys.stderr)
        return 1
    started = time.perf_counter()
    catalog = Catalog(path)
    db = catalog.connect()
    db.execute("PRAGMA synchronous=OFF")

    def load(db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT INTO recordings (ino, name, day, epoch, callid, timestart, caller, callee, "
            "type, status, duration, talk_duration, trunk, did, pbx_serial, size, added) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(args.rows, args.years, args.utc_offset))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('pbx_utc_offset', ?)",
                   (str(args.utc_offset),))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seen', "
                   "(SELECT max(timestart) FROM recordings))")

    bulk_load(db, load)
    db.close()
    catalog.close()
    print(f"{args.rows} recordings in {path} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
