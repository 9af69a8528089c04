"""The catalog: a durable SQLite record of every recording recfs has heard of.

Queries are shaped so that nothing scales with the size of the catalog: a day's
listing walks an index, a file is found by its inode (the rowid) or its name, and
the directory tree above the days comes from a small `days` table kept by a trigger.

Who touches it: a `Catalog`'s own connection belongs to the trio thread and only
reads (and creates the schema when the catalog is opened, before anything else
runs). Every write goes through the one writer (recfs/catalog/writer.py), whose
thread runs the operations defined here (`insert_calls`, `write_size`,
`write_meta`) on a connection of its own.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

from recfs.pbx.clock import META_KEY as OFFSET_KEY
from recfs.pbx import clock as pbx_clock
from recfs.catalog.schema import CALL_COLUMNS, bring_up_to_date
from recfs.pbx.reports import CallRecord

log = logging.getLogger("recfs.catalog.database")

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


class Summary(NamedTuple):
    """A directory's worth of recordings: a day, or a type's day ("TYPE/DAY")."""

    key: str
    recordings: int
    newest: float  # when the newest of them was added: what changed
    last_call: int  # start of the latest call in it (UTC epoch): the directory's mtime


class Archive:
    """A recording's states in the archive (the `archive` column)."""

    PENDING = "pending"
    ARCHIVED = "archived"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class ArchiveBacklog:
    pending: int  # to be uploaded
    retrying: int  # of those, the ones whose last upload failed
    conflicts: int
    lost: int  # the PBX no longer has them and the archive never got them
    last_error: str | None


# Rows of a listing fetched at once (vfs/core.py, RecordingsFs._list_files).
LISTING_BATCH = 256


class Listed(NamedTuple):
    """What a directory listing shows of a recording (the numbers and the type
    give its link count): a tuple, as a walk of the tree makes millions of them."""

    ino: int
    name: str
    mtime: float  # what Recording.mtime is
    size: int | None
    caller: str
    callee: str
    type: str


@dataclass(frozen=True)
class Recording:
    ino: int
    day: str
    mtime: float
    size: int | None
    added: float
    call: CallRecord
    sha256: str | None = None  # of the verified bytes, once downloaded
    archive: str | None = None  # an Archive state, or None: not in the archive
    lost: bool = False  # the PBX answered that it no longer has the file

    @property
    def name(self) -> str:
        return self.call.name




def call_epoch(call: CallRecord, utc_offset: int | None) -> int | None:
    """UTC start of the call: the callid's integer part; failing that, the PBX-local
    timestart less the PBX's learned UTC offset; None when neither dates it (never
    the host's time zone): the call's mtime is then when it was added."""
    return pbx_clock.call_epoch(call.callid, call.timestart, utc_offset)


def _insert(db: sqlite3.Connection, call: CallRecord, utc_offset: int | None,
            namespace: str = "", size: int | None = None) -> Recording | None:
    known = db.execute("SELECT callid FROM recordings WHERE name = ?", (call.name,)).fetchone()
    if known is not None:
        if size is not None:
            # A P-Series list names the size of a recording an event announced first.
            db.execute("UPDATE recordings SET size = ? WHERE name = ? AND size IS NULL",
                       (size, call.name))
        if known[0] and call.callid and known[0] != call.callid:
            # Same file name, another call: the first one keeps the name; a second
            # name for it, or a swap of its content, must not happen.
            log.warning("refused %s for call %s: the name belongs to call %s already",
                        call.name, call.callid, known[0])
        return None
    epoch = call_epoch(call, utc_offset)
    added = time.time()
    values = [getattr(call, c) for c in CALL_COLUMNS]
    columns = ", ".join(CALL_COLUMNS)
    marks = ", ".join("?" for _ in CALL_COLUMNS)
    day = pbx_clock.call_day(call.timestart, call.name, call.callid, utc_offset)
    for salt in range(16):
        ino = file_ino(call.name, salt, namespace)
        try:
            db.execute(
                f"INSERT INTO recordings (ino, day, epoch, added, size, {columns}) "
                f"VALUES (?, ?, ?, ?, ?, {marks})",
                [ino, day, epoch, added, size, *values],
            )
        except sqlite3.IntegrityError:
            continue  # another name hashed to this inode: take the next salt
        return Recording(ino, day, float(epoch if epoch is not None else added), size, added, call)
    raise RuntimeError(f"no free inode number for {call.name!r}")


def insert_calls(db: sqlite3.Connection, calls: list[CallRecord], utc_offset: int | None,
                 namespace: str = "", sizes: list[int | None] | None = None
                 ) -> list[Recording | None]:
    """The writer's operation for new calls (inside its transaction): each a new
    Recording, or None where the name was known (reports come twice; the first one
    wins). Also keeps meta `last_seen`, the newest PBX-local call start recfs has
    heard of, and the PBX's UTC offset *utc_offset* (seconds east of UTC, as
    learned from the PBX; it dates calls whose callid carries no time)."""
    if sizes is None:
        sizes = [None] * len(calls)
    results = [_insert(db, call, utc_offset, namespace, size) for call, size in zip(calls, sizes)]
    newest = max((c.timestart for c in calls if pbx_clock.parse_stamp(c.timestart) is not None),
                 default="")
    if newest:
        db.execute("INSERT INTO meta VALUES ('last_seen', ?) ON CONFLICT(key) DO UPDATE "
                   "SET value = max(value, excluded.value)", (newest,))
    if utc_offset is not None:
        write_meta(db, OFFSET_KEY, str(utc_offset))
    return results


def write_size(db: sqlite3.Connection, ino: int, size: int) -> None:
    db.execute("UPDATE recordings SET size = ? WHERE ino = ?", (size, ino))


def write_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def write_content(db: sqlite3.Connection, ino: int, size: int, sha256: str,
                  archive: bool) -> None:
    """A download was verified: its size and SHA-256; with an archive, the recording
    is now to be uploaded (unless it is there already)."""
    db.execute("UPDATE recordings SET size = ?, sha256 = ?, lost = 0, archive = CASE "
               "WHEN ? AND archive IS NULL THEN 'pending' ELSE archive END WHERE ino = ?",
               (size, sha256, archive, ino))


def write_archived(db: sqlite3.Connection, ino: int, state: str,
                   error: str | None = None) -> None:
    """Archived (or, with *error*, a conflict: the store holds other bytes)."""
    db.execute("UPDATE recordings SET archive = ?, archive_error = ?, archive_tries = 0, "
               "archive_next = NULL WHERE ino = ?", (state, error, ino))


def write_archive_retry(db: sqlite3.Connection, ino: int, error: str, next_try: float) -> None:
    db.execute("UPDATE recordings SET archive_tries = archive_tries + 1, archive_error = ?, "
               "archive_next = ? WHERE ino = ?", (error, next_try, ino))


def write_lost(db: sqlite3.Connection, ino: int) -> None:
    db.execute("UPDATE recordings SET lost = 1 WHERE ino = ?", (ino,))


class Catalog:
    def __init__(self, path: Path | str, namespace: str = "", *,
                 upgrading: Callable[[], None] | None = None):
        """*upgrading*: called every few seconds while an older catalog's schema is
        brought up to date (recfs/catalog/schema.py), which can take minutes."""
        self.path = Path(path)
        self.namespace = namespace  # the PBX's directory in a mount of several PBXs
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged report must survive a crash *and* a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        try:
            bring_up_to_date(self._db, str(self.path), upgrading)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def connect(self, *, durable: bool = True) -> sqlite3.Connection:
        """The writer's own connection (recfs/catalog/writer.py: only its thread
        uses it). *durable*: every commit on disk before it returns; a replica of a
        shared catalog (recfs/catalog/replica.py) need not be: what a crash takes of
        it, the next pull copies again (its cursor goes back with its rows)."""
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        # FULL: an acknowledged report must survive a crash *and* a power cut.
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def data_version(self) -> int:
        """Changes whenever another connection (the writer, another process)
        committed: what CatalogWatch polls."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    # -- reading ---------------------------------------------------------------

    @staticmethod
    def _recording(row: sqlite3.Row) -> Recording:
        call = CallRecord(**{c: row[c] for c in CALL_COLUMNS})
        epoch = row["epoch"]
        return Recording(row["ino"], row["day"], float(epoch if epoch is not None else row["added"]),
                         row["size"], row["added"], call, row["sha256"], row["archive"],
                         bool(row["lost"]))

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

    def day_entries(self, day: str, after_ino: int = 0,
                    limit: int = LISTING_BATCH) -> list[Listed]:
        """A day's listing from after *after_ino*, read from the listing index alone
        (schema.py): only what a directory entry needs."""
        return self._entries("FROM recordings r WHERE r.day = ?", (day,), after_ino, limit)

    def type_day_entries(self, type_: str, day: str, after_ino: int = 0,
                         limit: int = LISTING_BATCH) -> list[Listed]:
        return self._entries("FROM recordings r WHERE r.type = ? AND r.day = ?", (type_, day),
                             after_ino, limit)

    def number_entries(self, number: str, after_ino: int = 0,
                       limit: int = LISTING_BATCH) -> list[Listed]:
        """Every recording of a call in which *number* took part (caller or callee)."""
        return self._entries("FROM participants p JOIN recordings r ON r.ino = p.ino "
                             "WHERE p.number = ?", (number,), after_ino, limit)

    def _entries(self, source: str, args: tuple, after_ino: int, limit: int) -> list[Listed]:
        # Plain tuples from a cursor of its own (not sqlite3.Row), made into Listed
        # at C speed: a walk of the tree takes millions of them.
        cursor = self._db.cursor()
        cursor.row_factory = None
        rows = cursor.execute(
            f"SELECT r.ino, r.name, COALESCE(r.epoch, r.added), r.size, r.caller, r.callee, "
            f"r.type {source} AND r.ino > ? ORDER BY r.ino LIMIT ?",
            (*args, after_ino, limit)).fetchall()
        return list(map(Listed._make, rows))

    def numbers(self, after: int = 0, limit: int = 64) -> list[tuple[int, str, int]]:
        """(cursor, number, latest call) for by-number/, in order of first appearance."""
        return [(rowid, number, last_call) for rowid, number, last_call in self._db.execute(
            "SELECT rowid, number, last_call FROM numbers WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit))]

    def number(self, number: str) -> tuple[int, int] | None:
        """(count, latest call) of a number that took part in some recorded call."""
        row = self._db.execute("SELECT count, last_call FROM numbers WHERE number = ?",
                               (number,)).fetchone()
        return (row[0], row[1]) if row else None

    def type_days(self, since: float = 0.0) -> list[Summary]:
        """(type, day) summaries changed after *since* (a time recordings were added)."""
        return [Summary(f"{type_}/{day}", count, newest, last_call)
                for type_, day, count, newest, last_call in self._db.execute(
                    "SELECT type, day, count, newest, last_call FROM type_days WHERE newest > ?",
                    (since,))]

    def days(self, since: float = 0.0) -> list[Summary]:
        """Day summaries changed after *since* (a time recordings were added), by day."""
        return [Summary(*row) for row in self._db.execute(
            "SELECT day, count, newest, last_call FROM days WHERE newest > ? ORDER BY day",
            (since,))]

    def archive_queue(self, now: float, limit: int = 64) -> list[Recording]:
        """Recordings to upload whose next try is due, the longest waiting first."""
        rows = self._db.execute(
            "SELECT * FROM recordings WHERE archive = 'pending' AND "
            "(archive_next IS NULL OR archive_next <= ?) ORDER BY archive_next LIMIT ?",
            (now, limit)).fetchall()
        return [self._recording(r) for r in rows]

    def archive_tries(self, ino: int) -> int:
        """Failed uploads of *ino* in a row."""
        row = self._db.execute("SELECT archive_tries FROM recordings WHERE ino = ?",
                               (ino,)).fetchone()
        return row[0] if row else 0

    def archive_backlog(self) -> ArchiveBacklog:
        """What status and metrics show of the archive: counts from partial indexes,
        never a scan of the recordings."""
        pending, failing = self._db.execute(
            "SELECT COUNT(*), COUNT(archive_error) FROM recordings WHERE archive = 'pending'"
        ).fetchone()
        conflicts = self._db.execute(
            "SELECT COUNT(*) FROM recordings WHERE archive = 'conflict'").fetchone()[0]
        lost = self._db.execute("SELECT COUNT(*) FROM recordings WHERE lost = 1").fetchone()[0]
        last = self._db.execute(
            "SELECT archive_error FROM recordings WHERE archive = 'pending' AND "
            "archive_error IS NOT NULL ORDER BY archive_next DESC LIMIT 1").fetchone()
        return ArchiveBacklog(pending, failing, conflicts, lost, last[0] if last else None)

    def not_archived(self, after_ino: int = 0, limit: int = 256) -> list[Recording]:
        """Every recording not in the archive, in inode order (`recfs archive`)."""
        rows = self._db.execute(
            "SELECT * FROM recordings WHERE ino > ? AND (archive IS NULL OR archive != 'archived') "
            "ORDER BY ino LIMIT ?", (after_ino, limit)).fetchall()
        return [self._recording(r) for r in rows]

    def archived(self, after_ino: int = 0, limit: int = 256) -> list[Recording]:
        """Every archived recording, in inode order (`recfs archive --verify`)."""
        rows = self._db.execute(
            "SELECT * FROM recordings WHERE ino > ? AND archive = 'archived' "
            "ORDER BY ino LIMIT ?", (after_ino, limit)).fetchall()
        return [self._recording(r) for r in rows]

    def known_bytes(self) -> int:
        """The sum of every size known (statfs)."""
        return self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM days").fetchone()[0]

    def count(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(count), 0) FROM days").fetchone()[0]

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

