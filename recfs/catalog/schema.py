"""The catalog's SQLite schema, and how an older one becomes the current one.

`meta.schema` holds the version. Opening a catalog brings it to SCHEMA_VERSION in
one transaction (so a crash in the middle leaves the old version, whole); a catalog
written by a newer recfs is refused, never silently misread.

The summary tables (days, type_days, numbers, participants) are kept by triggers,
so that listing a directory never scans the recordings; `newest` in them is when
the newest recording was added (what readers watch for changes), `last_call` the
start of the latest call (a directory's mtime: the same on every mount).

Versions:
1. recordings, days, meta; the views' tables (numbers, participants, type_days).
2. last_call in every summary, bytes (known sizes) per day; a recording's SHA-256,
   its state in the archive, and whether the PBX lost it.
3. The index a day's listing walks holds every column a listing shows: no lookup
   of each row in the table (a walk of the date tree reads only the index).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import fields

from recfs.pbx.reports import CallRecord

SCHEMA_VERSION = 3

log = logging.getLogger("recfs.catalog.schema")
HEARTBEAT = 5.0  # seconds between two calls of bring_up_to_date's *upgrading*


class SchemaError(Exception):
    pass


CALL_COLUMNS = [f.name for f in fields(CallRecord)]

# What the archive needs of a recording (version 2). `archive`: NULL, not in the
# archive (yet); 'pending', to be uploaded (its bytes are in the cache, which keeps
# them until then); 'archived'; 'conflict', the store holds other bytes under its key.
ARCHIVE_COLUMNS = [
    "sha256 TEXT",                                # of the verified bytes
    "archive TEXT",
    "archive_tries INTEGER NOT NULL DEFAULT 0",   # failed uploads in a row
    "archive_next REAL",                          # no upload before this time
    "archive_error TEXT",                         # why the last upload failed
    "lost INTEGER NOT NULL DEFAULT 0",            # the PBX no longer has it
]
_ARCHIVE_INDEXES = """
CREATE INDEX IF NOT EXISTS recordings_archive_queue ON recordings(archive_next)
    WHERE archive = 'pending';
CREATE INDEX IF NOT EXISTS recordings_archive_conflicts ON recordings(ino)
    WHERE archive = 'conflict';
CREATE INDEX IF NOT EXISTS recordings_lost ON recordings(ino) WHERE lost = 1;
"""

# A recording's mtime: the call's start, or when it was added if nothing dates it.
_MTIME = "COALESCE(epoch, CAST(added AS INTEGER))"

# The indexes a listing walks. A day's holds what its listing shows (database.py,
# Catalog.day_entries): each row found in the table instead cost three times as much
# as the rest of the listing (a B-tree descent per file, the inodes being hashes,
# so a day's rows lie all over the table). A type's day is looked up in the table.
_LISTING_COLUMNS = "ino, name, epoch, added, size, caller, callee, type"
_DAY_LISTING_INDEX = f"""
CREATE INDEX IF NOT EXISTS recordings_listing ON recordings(day, {_LISTING_COLUMNS});
"""
_LISTING_INDEXES = _DAY_LISTING_INDEX + """
CREATE INDEX IF NOT EXISTS recordings_by_type_day ON recordings(type, day, ino);
"""

_TABLES = f"""
CREATE TABLE IF NOT EXISTS recordings (
    ino INTEGER PRIMARY KEY,      -- the stable inode number: derived from the name
    name TEXT NOT NULL UNIQUE,
    day TEXT NOT NULL,            -- PBX-local YYYY-MM-DD: the directory
    epoch INTEGER,                -- UTC start of the call: mtime
    {", ".join(f"{c} TEXT NOT NULL DEFAULT ''" for c in CALL_COLUMNS if c != "name")},
    size INTEGER,                 -- exact byte size once known, else NULL
    added REAL NOT NULL,
    {", ".join(ARCHIVE_COLUMNS)}
);
{_LISTING_INDEXES}CREATE TABLE IF NOT EXISTS days (
    day TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    newest REAL NOT NULL,
    last_call INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS numbers (      -- rowid: the listing cursor of by-number/
    number TEXT NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    newest REAL NOT NULL,
    last_call INTEGER NOT NULL DEFAULT 0
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
    last_call INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (type, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

# Which recordings a number took part in (the views' by-number/NUMBER).
_PARTICIPANTS = """    INSERT INTO participants(number, ino) SELECT NEW.caller, NEW.ino WHERE NEW.caller != ''
        ON CONFLICT DO NOTHING;
    INSERT INTO participants(number, ino) SELECT NEW.callee, NEW.ino WHERE NEW.callee != ''
        ON CONFLICT DO NOTHING;
"""

# Empty fields take no part in the views.
_TRIGGERS = f"""
CREATE TRIGGER recordings_summaries AFTER INSERT ON recordings BEGIN
    INSERT INTO days(day, count, newest, last_call, bytes)
        VALUES (NEW.day, 1, NEW.added, COALESCE(NEW.epoch, CAST(NEW.added AS INTEGER)),
                COALESCE(NEW.size, 0))
        ON CONFLICT(day) DO UPDATE SET count = count + 1, newest = excluded.newest,
            last_call = max(last_call, excluded.last_call), bytes = bytes + excluded.bytes;
{_PARTICIPANTS}    INSERT INTO numbers(number, count, newest, last_call)
        SELECT number, 1, NEW.added, COALESCE(NEW.epoch, CAST(NEW.added AS INTEGER))
        FROM (SELECT NEW.caller AS number UNION SELECT NEW.callee) WHERE number != ''
        ON CONFLICT(number) DO UPDATE SET count = count + 1, newest = excluded.newest,
            last_call = max(last_call, excluded.last_call);
    INSERT INTO type_days(type, day, count, newest, last_call)
        SELECT NEW.type, NEW.day, 1, NEW.added, COALESCE(NEW.epoch, CAST(NEW.added AS INTEGER))
        WHERE NEW.type != ''
        ON CONFLICT(type, day) DO UPDATE SET count = count + 1, newest = excluded.newest,
            last_call = max(last_call, excluded.last_call);
END;
CREATE TRIGGER recordings_size AFTER UPDATE OF size ON recordings BEGIN
    UPDATE days SET bytes = bytes + COALESCE(NEW.size, 0) - COALESCE(OLD.size, 0)
        WHERE day = NEW.day;
END;
"""

# A replica of a shared catalog (recfs/catalog/replica.py) copies the summaries from
# PostgreSQL, and holds only some of the recordings until it is complete: its one
# trigger keeps participants, which says which of the recordings present here a
# number took part in.
_SUMMARY_TRIGGERS = ("recordings_summaries", "recordings_size")
_REPLICA_TRIGGER = f"""
CREATE TRIGGER IF NOT EXISTS replica_participants AFTER INSERT ON recordings BEGIN
{_PARTICIPANTS}END;
"""


def make_replica(db: sqlite3.Connection) -> bool:
    """Give a catalog file a replica's trigger (inside the caller's transaction);
    True if it had the summary triggers until now."""
    had = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                     (_SUMMARY_TRIGGERS[0],)).fetchone() is not None
    for trigger in _SUMMARY_TRIGGERS:
        db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    _run(db, _REPLICA_TRIGGER)
    return had


# The summaries computed from the recordings themselves (what the triggers keep).
_REBUILD_SUMMARIES = f"""
DELETE FROM days;
DELETE FROM participants;
DELETE FROM numbers;
DELETE FROM type_days;
INSERT INTO days(day, count, newest, last_call, bytes)
    SELECT day, COUNT(*), MAX(added), MAX({_MTIME}), COALESCE(SUM(size), 0)
    FROM recordings GROUP BY day;
INSERT INTO participants(number, ino)
    SELECT caller, ino FROM recordings WHERE caller != ''
    UNION SELECT callee, ino FROM recordings WHERE callee != '';
INSERT INTO numbers(number, count, newest, last_call)
    SELECT p.number, COUNT(*), MAX(r.added), MAX(COALESCE(r.epoch, CAST(r.added AS INTEGER)))
    FROM participants p JOIN recordings r USING (ino)
    GROUP BY p.number ORDER BY MIN(r.added);
INSERT INTO type_days(type, day, count, newest, last_call)
    SELECT type, day, COUNT(*), MAX(added), MAX({_MTIME})
    FROM recordings WHERE type != '' GROUP BY type, day;
"""


def _statements(script: str) -> Iterator[str]:
    """One statement at a time: executescript() would COMMIT the transaction that
    makes a migration whole."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


def _run(db: sqlite3.Connection, script: str) -> None:
    for statement in _statements(script):
        db.execute(statement)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _version_1_to_2(db: sqlite3.Connection) -> None:
    added = {"days": ["last_call INTEGER NOT NULL DEFAULT 0", "bytes INTEGER NOT NULL DEFAULT 0"],
             "numbers": ["last_call INTEGER NOT NULL DEFAULT 0"],
             "type_days": ["last_call INTEGER NOT NULL DEFAULT 0"]}
    for table, columns in added.items():
        present = _columns(db, table)
        if not present:
            continue  # a catalog from before the views: created below, already current
        for column in columns:
            if column.split()[0] not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    present = _columns(db, "recordings")
    for column in ARCHIVE_COLUMNS:
        if column.split()[0] not in present:
            db.execute(f"ALTER TABLE recordings ADD COLUMN {column}")
    _run(db, _TABLES)
    _run(db, _ARCHIVE_INDEXES)
    for trigger in ("recordings_count_day", "recordings_views"):
        db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    _run(db, _TRIGGERS)
    _run(db, _REBUILD_SUMMARIES)


def _version_2_to_3(db: sqlite3.Connection) -> None:
    # 80 s for ten million recordings on a 2-core machine, once.
    log.info("building the catalog's listing index (once: 80 s for 10 million recordings)")
    db.execute("DROP INDEX IF EXISTS recordings_by_day")
    _run(db, _DAY_LISTING_INDEX)


# MIGRATIONS[n - 1] brings version n to n + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_version_1_to_2, _version_2_to_3]


def stored_version(db: sqlite3.Connection) -> int:
    """0 for an empty database."""
    if not _columns(db, "recordings"):
        return 0
    if not _columns(db, "meta"):
        return 1
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        return 1
    try:
        return int(row[0])
    except ValueError:
        raise SchemaError(f"the catalog's schema version is unreadable: {row[0]!r}") from None


@contextlib.contextmanager
def _heartbeat(beat: Callable[[], None] | None) -> Iterator[None]:
    """*beat*() now and every HEARTBEAT seconds until the block ends, from a thread of
    its own: one SQL statement of a migration (an index's sort) may take minutes."""
    if beat is None:
        yield
        return
    done = threading.Event()

    def run() -> None:
        beat()
        while not done.wait(HEARTBEAT):
            beat()

    thread = threading.Thread(target=run, name="catalog-upgrade", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def bring_up_to_date(db: sqlite3.Connection, path: str,
                     upgrading: Callable[[], None] | None = None) -> None:
    """Create or migrate the schema, in one transaction. *upgrading*: called every
    few seconds while a migration runs (the mount extends systemd's start timeout)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = stored_version(db)
        if version > SCHEMA_VERSION:
            raise SchemaError(f"{path} was written by a newer recfs (catalog schema {version}; "
                              f"this recfs knows up to {SCHEMA_VERSION}): upgrade recfs")
        if version == 0:
            _run(db, _TABLES)
            _run(db, _TRIGGERS)
            _run(db, _ARCHIVE_INDEXES)
        elif version < SCHEMA_VERSION:
            log.info("upgrading the catalog %s from schema %d to %d", path, version,
                     SCHEMA_VERSION)
            with _heartbeat(upgrading):
                for migrate in MIGRATIONS[version - 1:]:
                    migrate(db)
        if version != SCHEMA_VERSION:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def bulk_load(db: sqlite3.Connection, load: Callable[[sqlite3.Connection], None]) -> None:
    """Fill a new catalog at once (scripts/make_catalog.py, no mount running): *load*
    inserts the recordings with the triggers off, the summaries are then computed
    once, and the triggers come back; all in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for trigger in _SUMMARY_TRIGGERS:
            db.execute(f"DROP TRIGGER {trigger}")
        load(db)
        _run(db, _REBUILD_SUMMARIES)
        _run(db, _TRIGGERS)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
