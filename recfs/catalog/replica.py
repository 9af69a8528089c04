"""A mount's local replica of one PBX's rows of the shared catalog.

The replica is an ordinary SQLite catalog (recfs/catalog/database.py reads it, its
triggers keep the summaries a listing needs), filled only from PostgreSQL: `pull`
copies every row whose `changed` number is above the last one copied, recordings
and meta each with its own cursor (recfs/catalog/postgres.py says why that never
skips a row). It runs in the catalog writer's thread (recfs/catalog/shared.py), the
one writer of the replica file.

A replica of another catalog (the URL now names another database, or the catalog
was made anew) is emptied first: `catalog_id` in its meta says whose it is.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

import psycopg

from recfs.catalog.postgres import RECORDING_COLUMNS, PbxKey
from recfs.catalog.schema import LISTING_INDEXES, bulk_load

log = logging.getLogger("recfs.catalog.replica")

BATCH = 5000
# An empty replica that has more than this to copy takes the bulk path: triggers off,
# summaries computed once at the end (a new host's first mount of a big catalog).
BULK_FROM = 20_000

# The page cache of a bulk copy (KiB): 512 MiB made no difference at a million rows
# and stayed in the process after (as resident memory).
BULK_CACHE_KIB = 128 * 1024
_LISTING_INDEXES = [line.strip().rstrip(";") for line in LISTING_INDEXES.strip().splitlines()]

_RECORDINGS_CURSOR = "replica_recordings"
_META_CURSOR = "replica_meta"
_CATALOG_ID = "replica_of"

_SELECT = (f"SELECT changed, {', '.join(RECORDING_COLUMNS)} FROM recfs.recordings "
           f"WHERE pbx = %s AND changed > %s ORDER BY changed LIMIT %s")
_UPSERT = (f"INSERT INTO recordings ({', '.join(RECORDING_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in RECORDING_COLUMNS)}) "
           f"ON CONFLICT(ino) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in ("size", "sha256", "archive",
                                                      "archive_tries", "archive_next",
                                                      "archive_error", "lost")))
_INSERT = (f"INSERT INTO recordings ({', '.join(RECORDING_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in RECORDING_COLUMNS)})")
_DAY = RECORDING_COLUMNS.index("day")
_TYPE = RECORDING_COLUMNS.index("type")


def _cursor(local: sqlite3.Connection, key: str) -> int:
    row = local.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def adopt(local: sqlite3.Connection, catalog_id: str) -> None:
    """Make *local* a replica of the catalog *catalog_id*: a replica of another one
    is emptied (its rows are not this catalog's)."""
    row = local.execute("SELECT value FROM meta WHERE key = ?", (_CATALOG_ID,)).fetchone()
    if row is not None and row[0] == catalog_id:
        return
    had = local.execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
    local.execute("BEGIN IMMEDIATE")
    try:
        for table in ("recordings", "days", "numbers", "participants", "type_days"):
            local.execute(f"DELETE FROM {table}")
        local.execute("DELETE FROM meta WHERE key != 'schema'")
        local.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_CATALOG_ID, catalog_id))
        local.execute("COMMIT")
    except BaseException:
        local.execute("ROLLBACK")
        raise
    if had:
        log.warning("the local replica held %d recordings of another catalog: emptied, "
                    "copying this one's", had)


def pull(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey, *,
         meta: bool = True) -> int:
    """Copy what changed since the last pull; the number of rows copied. *meta*:
    the PBX's meta too (the writer that has just committed knows whether it wrote
    any: one query less after a batch of reports)."""
    copied = _pull_meta(pg, local, pbx) if meta else 0
    cursor = _cursor(local, _RECORDINGS_CURSOR)
    if cursor == 0 and local.execute("SELECT 1 FROM recordings LIMIT 1").fetchone() is None:
        waiting = pg.execute("SELECT COUNT(*) FROM (SELECT 1 FROM recfs.recordings WHERE pbx = %s "
                             "LIMIT %s) s", (pbx.name, BULK_FROM + 1)).fetchone()
        if waiting is not None and waiting[0] > BULK_FROM:
            return copied + _bulk(pg, local, pbx)
    while True:
        rows = pg.execute(_SELECT, (pbx.name, cursor, BATCH)).fetchall()
        if not rows:
            return copied
        local.execute("BEGIN IMMEDIATE")
        try:
            cursor = _apply(local, rows)
            local.execute("COMMIT")
        except BaseException:
            local.execute("ROLLBACK")
            raise
        copied += len(rows)
        if len(rows) < BATCH:
            return copied


def _apply(local: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    """Inside the replica's transaction: the rows, their summaries marked as changed
    now, and the cursor; the new cursor."""
    local.executemany(_UPSERT, [row[1:] for row in rows])
    # A summary's `newest` is what the tree watches for (recfs/vfs/core.py refresh):
    # rows added elsewhere carry that host's time, so it is set to this one's.
    now = time.time()
    days = {row[1 + _DAY] for row in rows}
    local.executemany("UPDATE days SET newest = max(newest, ?) WHERE day = ?",
                      [(now, day) for day in days])
    type_days = {(row[1 + _TYPE], row[1 + _DAY]) for row in rows if row[1 + _TYPE]}
    local.executemany("UPDATE type_days SET newest = max(newest, ?) WHERE type = ? AND day = ?",
                      [(now, t, d) for t, d in type_days])
    cursor = int(rows[-1][0])
    local.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_RECORDINGS_CURSOR, str(cursor)))
    return cursor


def _pull_meta(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey) -> int:
    cursor = _cursor(local, _META_CURSOR)
    rows = pg.execute("SELECT changed, key, value FROM recfs.meta WHERE pbx = %s AND changed > %s "
                      "ORDER BY changed", (pbx.name, cursor)).fetchall()
    if not rows:
        return 0
    local.execute("BEGIN IMMEDIATE")
    try:
        local.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                          [(key, value) for _, key, value in rows])
        local.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                      (_META_CURSOR, str(rows[-1][0])))
        local.execute("COMMIT")
    except BaseException:
        local.execute("ROLLBACK")
        raise
    return len(rows)


def _bulk(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey) -> int:
    """The first copy of a big catalog: in one SQLite transaction, without the
    triggers (schema.bulk_load) and without the listing indexes (built once at the
    end, from sorted data), in inode order (the table's own order: appends, not
    inserts all over the file), with a page cache that holds the name index."""
    copied = 0
    started = time.monotonic()
    log.info("copying PBX %s's rows of the shared catalog into the local replica", pbx.name)
    # The cursor first: rows committed after it are copied again by the next pull
    # (an upsert: harmless); none before it can be missed.
    row = pg.execute("SELECT COALESCE(MAX(changed), 0) FROM recfs.recordings WHERE pbx = %s",
                     (pbx.name,)).fetchone()
    cursor = int(row[0]) if row else 0

    def load(db: sqlite3.Connection) -> None:
        nonlocal copied
        for index in _LISTING_INDEXES:
            db.execute(f"DROP INDEX IF EXISTS {index.split()[5]}")
        with pg.transaction(), pg.cursor(name="recfs_replica_copy") as rows:
            # Sorting millions of rows takes longer than a statement may otherwise.
            pg.execute("SET LOCAL statement_timeout = 0")
            rows.itersize = BATCH
            rows.execute(f"SELECT {', '.join(RECORDING_COLUMNS)} FROM recfs.recordings "
                         f"WHERE pbx = %s ORDER BY ino", (pbx.name,))
            while batch := rows.fetchmany(BATCH):
                db.executemany(_INSERT, batch)
                copied += len(batch)
        for index in _LISTING_INDEXES:
            db.execute(index)
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_RECORDINGS_CURSOR, str(cursor)))

    # A connection of its own (the same thread, one after the other): its big page
    # cache goes with it.
    path = local.execute("PRAGMA database_list").fetchone()[2]
    bulk = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        bulk.execute("PRAGMA synchronous=NORMAL")
        bulk.execute(f"PRAGMA cache_size={-BULK_CACHE_KIB}")
        bulk_load(bulk, load)
    finally:
        bulk.close()
    log.info("copied %d recordings into the local replica in %.1f s", copied,
             time.monotonic() - started)
    return copied
