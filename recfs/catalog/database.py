"""The catalog: a durable SQLite record of every recording recfs has heard of.

Queries are shaped so that nothing scales with the size of the catalog: a day's
listing walks an index, a file is found by its inode (the rowid) or its name, and
the directory tree above the days comes from a small `days` table kept by a trigger.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from recfs.pbx.reports import CallRecord

log = logging.getLogger("recfs.catalog.database")

SCHEMA_VERSION = 1

_CALL_COLUMNS = [f.name for f in fields(CallRecord)]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS recordings (
    ino INTEGER PRIMARY KEY,      -- the stable inode number: derived from the name
    name TEXT NOT NULL UNIQUE,
    day TEXT NOT NULL,            -- PBX-local YYYY-MM-DD: the directory
    epoch INTEGER,                -- UTC start of the call: mtime
    {", ".join(f"{c} TEXT NOT NULL DEFAULT ''" for c in _CALL_COLUMNS if c != "name")},
    size INTEGER,                 -- exact byte size once known, else NULL
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_by_day ON recordings(day, ino);
CREATE TABLE IF NOT EXISTS days (
    day TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    newest REAL NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS recordings_count_day AFTER INSERT ON recordings BEGIN
    INSERT INTO days(day, count, newest) VALUES (NEW.day, 1, NEW.added)
    ON CONFLICT(day) DO UPDATE SET count = count + 1, newest = NEW.added;
END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

# The by-number/ and by-type/ views: small tables kept by triggers, so that listing
# a view never scans the recordings. Empty fields take no part.
_VIEWS_SCHEMA = """
CREATE TABLE IF NOT EXISTS numbers (      -- rowid: the listing cursor of by-number/
    number TEXT NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    newest REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    number TEXT NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (number, ino)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS type_days (
    type TEXT NOT NULL,
    day TEXT NOT NULL,
    count INTEGER NOT NULL,
    newest REAL NOT NULL,
    PRIMARY KEY (type, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recordings_by_type_day ON recordings(type, day, ino);
CREATE TRIGGER IF NOT EXISTS recordings_views AFTER INSERT ON recordings BEGIN
    INSERT INTO participants(number, ino) SELECT NEW.caller, NEW.ino WHERE NEW.caller != ''
        ON CONFLICT DO NOTHING;
    INSERT INTO participants(number, ino) SELECT NEW.callee, NEW.ino WHERE NEW.callee != ''
        ON CONFLICT DO NOTHING;
    INSERT INTO numbers(number, count, newest) SELECT NEW.caller, 1, NEW.added
        WHERE NEW.caller != ''
        ON CONFLICT(number) DO UPDATE SET count = count + 1, newest = NEW.added;
    INSERT INTO numbers(number, count, newest) SELECT NEW.callee, 1, NEW.added
        WHERE NEW.callee != '' AND NEW.callee != NEW.caller
        ON CONFLICT(number) DO UPDATE SET count = count + 1, newest = NEW.added;
    INSERT INTO type_days(type, day, count, newest) SELECT NEW.type, NEW.day, 1, NEW.added
        WHERE NEW.type != ''
        ON CONFLICT(type, day) DO UPDATE SET count = count + 1, newest = NEW.added;
END;
"""

# A catalog written before the views existed gets them filled once.
_VIEWS_FILL = """
INSERT OR IGNORE INTO participants(number, ino)
    SELECT caller, ino FROM recordings WHERE caller != ''
    UNION SELECT callee, ino FROM recordings WHERE callee != '';
INSERT OR IGNORE INTO numbers(number, count, newest)
    SELECT number, COUNT(*), MAX(r.added) FROM participants p JOIN recordings r USING (ino)
    GROUP BY number ORDER BY MIN(r.added);
INSERT OR IGNORE INTO type_days(type, day, count, newest)
    SELECT type, day, COUNT(*), MAX(added) FROM recordings WHERE type != '' GROUP BY type, day;
INSERT OR REPLACE INTO meta VALUES ('views', '1');
"""

# File inodes live in [2**62, 2**63), directory inodes in [2**61, 2**62): disjoint by
# construction, never 1 (the root), and below 2**63 so SQLite's rowid holds them.
FILE_INO_BASE = 1 << 62
DIR_INO_BASE = 1 << 61


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def file_ino(name: str, salt: int = 0, namespace: str = "") -> int:
    """A recording's inode: from its name (and, in a mount of several PBXs, the
    PBX's directory name, so that two PBXs never share an inode)."""
    key = name if salt == 0 else f"{salt}\0{name}"
    if namespace:
        key = f"{namespace}\0{key}"
    return FILE_INO_BASE | (_hash64(key) & (FILE_INO_BASE - 1))


def dir_ino(path: str) -> int:
    return DIR_INO_BASE | (_hash64("dir:" + path) & (DIR_INO_BASE - 1))


@dataclass(frozen=True)
class Recording:
    ino: int
    day: str
    mtime: float
    size: int | None
    added: float
    call: CallRecord

    @property
    def name(self) -> str:
        return self.call.name


_LOCAL_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def call_epoch(call: CallRecord, utc_offset: int | None) -> int | None:
    """UTC start of the call: the callid's integer part; failing that, the PBX-local
    timestart less the PBX's learned UTC offset."""
    if utc_offset is not None and not _CALLID_EPOCH.match(call.callid) \
            and _LOCAL_STAMP.match(call.timestart):
        try:
            naive = datetime.strptime(call.timestart, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return None
        return int(naive.replace(tzinfo=timezone.utc).timestamp()) - utc_offset
    return call.epoch


_CALLID_EPOCH = re.compile(r"^\d{9,11}(?:\.\d+)?$")


def _insert(db: sqlite3.Connection, call: CallRecord, utc_offset: int | None,
            namespace: str = "") -> Recording | None:
    known = db.execute("SELECT callid FROM recordings WHERE name = ?", (call.name,)).fetchone()
    if known is not None:
        if known[0] and call.callid and known[0] != call.callid:
            # Same file name, another call: the first one keeps the name; a second
            # name for it, or a swap of its content, must not happen.
            log.warning("refused %s for call %s: the name belongs to call %s already",
                        call.name, call.callid, known[0])
        return None
    epoch = call_epoch(call, utc_offset)
    added = time.time()
    values = [getattr(call, c) for c in _CALL_COLUMNS]
    columns = ", ".join(_CALL_COLUMNS)
    marks = ", ".join("?" for _ in _CALL_COLUMNS)
    day = call.day
    for salt in range(16):
        ino = file_ino(call.name, salt, namespace)
        try:
            db.execute(
                f"INSERT INTO recordings (ino, day, epoch, added, {columns}) "
                f"VALUES (?, ?, ?, ?, {marks})",
                [ino, day, epoch, added, *values],
            )
        except sqlite3.IntegrityError:
            continue  # another name hashed to this inode: take the next salt
        return Recording(ino, day, float(epoch if epoch is not None else added), None, added, call)
    raise RuntimeError(f"no free inode number for {call.name!r}")


class Catalog:
    def __init__(self, path: Path | str, namespace: str = ""):
        self.path = Path(path)
        self.namespace = namespace  # the PBX's directory in a mount of several PBXs
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged report must survive a crash *and* a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        has_views = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'recordings_views'").fetchone()
        self._db.executescript(_VIEWS_SCHEMA)
        if not has_views:
            self._db.executescript(f"BEGIN; {_VIEWS_FILL} COMMIT;")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------

    def add(self, call: CallRecord) -> Recording | None:
        """Record *call* durably. Returns the new Recording, or None if the name was
        known already (reports come twice; the first one wins)."""
        return self.add_many([call])[0]

    def connect(self) -> sqlite3.Connection:
        """Another connection to the same catalog (for a writer thread)."""
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def add_many(self, calls: list[CallRecord], db: sqlite3.Connection | None = None,
                 utc_offset: int | None = None) -> list[Recording | None]:
        """Record *calls* in one transaction (one fsync for all): each a new Recording,
        or None where the name was known. Also keeps meta `last_seen`, the newest
        PBX-local call start recfs has heard of. *utc_offset* (seconds east of UTC,
        as learned from the PBX) dates calls whose callid carries no time."""
        db = db if db is not None else self._db
        results: list[Recording | None] = []
        newest = ""
        db.execute("BEGIN IMMEDIATE")
        try:
            for call in calls:
                results.append(_insert(db, call, utc_offset, self.namespace))
                if _LOCAL_STAMP.match(call.timestart) and call.timestart > newest:
                    newest = call.timestart
            if newest:
                db.execute("INSERT INTO meta VALUES ('last_seen', ?) ON CONFLICT(key) DO UPDATE "
                           "SET value = max(value, excluded.value)", (newest,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results

    def set_size(self, ino: int, size: int) -> None:
        self._db.execute("UPDATE recordings SET size = ? WHERE ino = ?", (size, ino))

    # -- reading ---------------------------------------------------------------

    @staticmethod
    def _recording(row: sqlite3.Row) -> Recording:
        call = CallRecord(**{c: row[c] for c in _CALL_COLUMNS})
        epoch = row["epoch"]
        return Recording(row["ino"], row["day"], float(epoch if epoch is not None else row["added"]),
                         row["size"], row["added"], call)

    def by_ino(self, ino: int) -> Recording | None:
        row = self._db.execute("SELECT * FROM recordings WHERE ino = ?", (ino,)).fetchone()
        return self._recording(row) if row else None

    def by_name(self, name: str) -> Recording | None:
        row = self._db.execute("SELECT * FROM recordings WHERE name = ?", (name,)).fetchone()
        return self._recording(row) if row else None

    def in_day(self, day: str, after_ino: int = 0, limit: int = 1000) -> list[Recording]:
        """A day's recordings in inode order, from after *after_ino*: a cursor that
        stays right while new recordings arrive during a listing."""
        rows = self._db.execute(
            "SELECT * FROM recordings WHERE day = ? AND ino > ? ORDER BY ino LIMIT ?",
            (day, after_ino, limit),
        ).fetchall()
        return [self._recording(r) for r in rows]

    def day_entries(self, day: str, after_ino: int = 0, limit: int = 64) -> list[Recording]:
        """Like in_day, for listings: only what a directory entry needs (of the call
        record: the name, the numbers and the type), fetched in small batches, since
        the kernel asks for a few dozen entries at a time."""
        return self._entries("FROM recordings r WHERE r.day = ?", (day,), after_ino, limit)

    def type_day_entries(self, type_: str, day: str, after_ino: int = 0,
                         limit: int = 64) -> list[Recording]:
        return self._entries("FROM recordings r WHERE r.type = ? AND r.day = ?", (type_, day),
                             after_ino, limit)

    def number_entries(self, number: str, after_ino: int = 0, limit: int = 64) -> list[Recording]:
        """Every recording of a call in which *number* took part (caller or callee)."""
        return self._entries("FROM participants p JOIN recordings r ON r.ino = p.ino "
                             "WHERE p.number = ?", (number,), after_ino, limit)

    def _entries(self, source: str, args: tuple, after_ino: int, limit: int) -> list[Recording]:
        rows = self._db.execute(
            f"SELECT r.ino, r.name, r.day, r.epoch, r.size, r.added, r.caller, r.callee, r.type "
            f"{source} AND r.ino > ? ORDER BY r.ino LIMIT ?", (*args, after_ino, limit)).fetchall()
        # Only what a listing shows: the numbers and the type give the link count.
        return [Recording(ino, day, float(epoch if epoch is not None else added), size, added,
                          CallRecord(name, caller=caller, callee=callee, type=type_))
                for ino, name, day, epoch, size, added, caller, callee, type_ in rows]

    def numbers(self, after: int = 0, limit: int = 64) -> list[tuple[int, str, float]]:
        """(cursor, number, newest) for by-number/, in order of first appearance."""
        return [tuple(row) for row in self._db.execute(
            "SELECT rowid, number, newest FROM numbers WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit))]

    def number(self, number: str) -> tuple[int, float] | None:
        """(count, newest) of a number that took part in some recorded call."""
        row = self._db.execute("SELECT count, newest FROM numbers WHERE number = ?",
                               (number,)).fetchone()
        return tuple(row) if row else None

    def type_days(self) -> list[tuple[str, str, float]]:
        return [tuple(row) for row in self._db.execute("SELECT type, day, newest FROM type_days")]

    def days(self) -> list[tuple[str, int, float]]:
        """(day, number of recordings, time the newest was added), for every day."""
        return [(r["day"], r["count"], r["newest"])
                for r in self._db.execute("SELECT day, count, newest FROM days ORDER BY day")]

    def count(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(count), 0) FROM days").fetchone()[0]

    def total_known_size(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM recordings").fetchone()[0]

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
