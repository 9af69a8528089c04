"""A mount's local replica of one PBX's rows of the shared catalog.

The replica is an ordinary SQLite catalog file (recfs/catalog/database.py reads it),
written only from PostgreSQL, in two ways:
- `pull` copies every row whose `changed` number is above the last one copied: the
  summaries (days, type_days, numbers: what the tree's directories are made of),
  meta, and the recordings, each with its own cursor (recfs/catalog/postgres.py says
  why that never skips a row);
- a new replica (a new host's first mount) does not copy millions of recordings
  before it can answer: its recordings and numbers cursors start at PostgreSQL's
  newest, `fill` copies a directory's part when someone looks into it ("day:DAY",
  "number:NUMBER", or "numbers", the list of numbers), and `fill_step`, in the
  writer's idle time, copies the rest, newest days first, a batch at a time, until
  the replica is complete. The mount is ready once the day summaries are here.

Why a fill never leaves a row out: it copies what is committed when it runs, and
whatever commits later has a number above every one the pull cursor has passed, so
the next pull brings it. Pulls and fills run in the catalog writer's thread
(recfs/catalog/shared.py), the one writer of the replica file, one after the other.
How far each fill got is kept in the file (`replica_fill`): a restart goes on.

The replica's only trigger keeps `participants` (recfs/catalog/schema.py
make_replica): its summaries are PostgreSQL's. A replica of another catalog (the
URL now names another database, or the catalog was made anew) is emptied first:
`replica_of` in its meta says whose it is.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from recfs.catalog.postgres import RECORDING_COLUMNS, PbxKey
from recfs.catalog.schema import make_replica

log = logging.getLogger("recfs.catalog.replica")

BATCH = 5000

_RECORDINGS_CURSOR = "replica_recordings"
_META_CURSOR = "replica_meta"
_CATALOG_ID = "replica_of"
_STATE = "replica_fill"  # "lazy" while recordings are still to be copied, then "complete"

_FILL_TABLE = ("CREATE TABLE IF NOT EXISTS replica_fill (key TEXT PRIMARY KEY, "
               "done INTEGER NOT NULL, after TEXT NOT NULL) WITHOUT ROWID")

_COLUMNS = ", ".join(RECORDING_COLUMNS)
_SELECT = (f"SELECT changed, {_COLUMNS} FROM recfs.recordings "
           f"WHERE pbx = %s AND changed > %s ORDER BY changed LIMIT %s")
_UPSERT = (f"INSERT INTO recordings ({_COLUMNS}) "
           f"VALUES ({', '.join('?' for _ in RECORDING_COLUMNS)}) "
           f"ON CONFLICT(ino) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in ("size", "sha256", "archive",
                                                      "archive_tries", "archive_next",
                                                      "archive_error", "lost")))


@dataclass(frozen=True)
class _Summary:
    """A summary table, named alike in both databases; `newest` (what the tree
    watches, recfs/vfs/core.py refresh) is this host's time of the copy."""

    table: str
    key: tuple[str, ...]
    values: tuple[str, ...]

    @property
    def cursor(self) -> str:
        return f"replica_{self.table}"

    @property
    def columns(self) -> str:
        return ", ".join(self.key + self.values)

    @property
    def select(self) -> str:
        return (f"SELECT changed, {self.columns} FROM recfs.{self.table} "
                f"WHERE pbx = %s AND changed > %s ORDER BY changed LIMIT %s")

    @property
    def upsert(self) -> str:
        names = self.key + self.values + ("newest",)
        return (f"INSERT INTO {self.table} ({', '.join(names)}) "
                f"VALUES ({', '.join('?' for _ in names)}) "
                f"ON CONFLICT({', '.join(self.key)}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in self.values + ("newest",)))


_DAYS = _Summary("days", ("day",), ("count", "last_call", "bytes"))
_TYPE_DAYS = _Summary("type_days", ("type", "day"), ("count", "last_call"))
_NUMBERS = _Summary("numbers", ("number",), ("count", "last_call"))
_SUMMARIES = (_DAYS, _TYPE_DAYS, _NUMBERS)


@contextmanager
def _transaction(local: sqlite3.Connection) -> Iterator[None]:
    local.execute("BEGIN IMMEDIATE")
    try:
        yield
        local.execute("COMMIT")
    except BaseException:
        local.execute("ROLLBACK")
        raise


def _meta(local: sqlite3.Connection, key: str) -> str | None:
    row = local.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(local: sqlite3.Connection, key: str, value: str | int) -> None:
    local.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))


def _cursor(local: sqlite3.Connection, key: str) -> int:
    return int(_meta(local, key) or 0)


def prepare(local: sqlite3.Connection, catalog_id: str) -> None:
    """Make *local* a replica of the catalog *catalog_id*: one of another catalog
    is emptied (its rows are not this catalog's); a replica made before replicas
    were filled lazily is a complete one."""
    local.execute(_FILL_TABLE)
    row = local.execute("SELECT value FROM meta WHERE key = ?", (_CATALOG_ID,)).fetchone()
    if row is None or row[0] != catalog_id:
        had = local.execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
        with _transaction(local):
            for table in ("recordings", "days", "numbers", "participants", "type_days",
                          "replica_fill"):
                local.execute(f"DELETE FROM {table}")
            local.execute("DELETE FROM meta WHERE key != 'schema'")
            _set_meta(local, _CATALOG_ID, catalog_id)
        if had:
            log.warning("the local replica held %d recordings of another catalog: emptied, "
                        "copying this one's", had)
    with _transaction(local):
        make_replica(local)
        if _meta(local, _STATE) is None and _meta(local, _RECORDINGS_CURSOR) is not None:
            _set_meta(local, _STATE, "complete")


def complete(local: sqlite3.Connection) -> bool:
    """Every recording of the PBX is here (as of the last pull)."""
    return _meta(local, _STATE) == "complete"


def pull(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey, *,
         meta: bool = True) -> int:
    """Copy what changed since the last pull; the number of rows copied. *meta*:
    the PBX's meta too (the writer that has just committed knows whether it wrote
    any: one query less after a batch of reports)."""
    if _meta(local, _RECORDINGS_CURSOR) is None:
        _begin(pg, local, pbx)
    tables: list[tuple[str, str, Callable[[list[tuple[Any, ...]]], None]]] = [
        (summary.select, summary.cursor, partial(_put_summaries, local, summary, cursor=True))
        for summary in _SUMMARIES]
    tables.append((_SELECT, _RECORDINGS_CURSOR, lambda rows: _put_recordings(local, rows)))
    if meta:
        tables.insert(0, (_META_SELECT, _META_CURSOR, lambda rows: _put_meta(local, rows)))
    # The first batch of each in one round trip (a pull follows every batch of reports).
    with pg.pipeline():
        firsts = [pg.execute(select, (pbx.name, _cursor(local, cursor), BATCH))
                  for select, cursor, _ in tables]
    copied = 0
    for (select, cursor, put), first in zip(tables, firsts):
        copied += _pull(pg, local, pbx, select, put, first.fetchall())
    return copied


def _begin(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey) -> None:
    """A new replica: the recordings and the numbers there are now are copied by
    fills; pulls bring what changes from here on."""
    newest = []
    for table in ("recordings", "numbers"):
        row = pg.execute(f"SELECT COALESCE(MAX(changed), 0) FROM recfs.{table} WHERE pbx = %s",
                         (pbx.name,)).fetchone()
        newest.append(int(row[0]) if row else 0)
    with _transaction(local):
        _set_meta(local, _RECORDINGS_CURSOR, newest[0])
        _set_meta(local, _NUMBERS.cursor, newest[1])
        _set_meta(local, _STATE, "lazy")
    log.info("new local replica of PBX %s: directories are copied as they are first read, "
             "the rest meanwhile", pbx.name)


def _pull(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey, select: str,
          put: Callable[[list[tuple[Any, ...]]], None], rows: list[tuple[Any, ...]]) -> int:
    """*rows*: the first batch (changed first); the next ones are asked for."""
    copied = 0
    while rows:
        with _transaction(local):
            put(rows)
        copied += len(rows)
        if len(rows) < BATCH:
            break
        rows = pg.execute(select, (pbx.name, int(rows[-1][0]), BATCH)).fetchall()
    return copied


def _put_recordings(local: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    local.executemany(_UPSERT, [row[1:] for row in rows])
    _set_meta(local, _RECORDINGS_CURSOR, int(rows[-1][0]))


def _put_summaries(local: sqlite3.Connection, summary: _Summary, rows: list[tuple[Any, ...]],
                   *, cursor: bool) -> None:
    """*rows*: (changed, columns...) when *cursor* (a pull), else (columns...)."""
    now = time.time()
    local.executemany(summary.upsert, [(*(row[1:] if cursor else row), now) for row in rows])
    if cursor:
        _set_meta(local, summary.cursor, int(rows[-1][0]))


_META_SELECT = ("SELECT changed, key, value FROM recfs.meta WHERE pbx = %s AND changed > %s "
                "ORDER BY changed LIMIT %s")


def _put_meta(local: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    local.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                      [(key, value) for _, key, value in rows])
    _set_meta(local, _META_CURSOR, int(rows[-1][0]))


# -- filling a new replica ------------------------------------------------------------

_RECORDINGS_FROM = (f"SELECT {_COLUMNS} FROM recfs.recordings WHERE pbx = %s AND {{where}} "
                    f"AND ino > %s ORDER BY ino LIMIT %s")
_NUMBERS_FROM = ("SELECT number, count, last_call FROM recfs.numbers WHERE pbx = %s AND "
                 "{where} AND number > %s ORDER BY number LIMIT %s")


def _sources(key: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """What the part *key* is made of: (table, condition, its arguments), each copied
    in the order of its key (ino, or number)."""
    kind, _, value = key.partition(":")
    if kind == "day":
        return [("recordings", "day = %s", (value,))]
    if kind == "number":
        return [("recordings", "caller = %s", (value,)), ("recordings", "callee = %s", (value,)),
                ("numbers", "number = %s", (value,))]
    if kind == "numbers":
        return [("numbers", "true", ())]
    raise ValueError(f"no such part of a catalog: {key!r}")


def fill(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey, key: str) -> None:
    """Copy the part *key* of the catalog ("day:2024-06-10", "number:2001" or
    "numbers"), unless the replica has it already."""
    if complete(local):
        return
    while not _fill_batch(pg, local, pbx, key):
        pass


def fill_step(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey) -> bool:
    """One batch of what a lazy replica still lacks (the newest day first, then the
    numbers); True once it is complete."""
    if complete(local):
        return True
    row = local.execute(
        "SELECT day FROM days d WHERE NOT EXISTS (SELECT 1 FROM replica_fill f "
        "WHERE f.key = 'day:' || d.day AND f.done) ORDER BY day DESC LIMIT 1").fetchone()
    if row is not None:
        _fill_batch(pg, local, pbx, f"day:{row[0]}")
        return False
    if not _fill_batch(pg, local, pbx, "numbers"):
        return False
    with _transaction(local):
        _set_meta(local, _STATE, "complete")
        local.execute("DELETE FROM replica_fill")
    return True


def _fill_batch(pg: psycopg.Connection[Any], local: sqlite3.Connection, pbx: PbxKey,
                key: str) -> bool:
    """Copy the next batch of part *key*; True when the part is all here."""
    row = local.execute("SELECT done, after FROM replica_fill WHERE key = ?", (key,)).fetchone()
    if row is not None and row[0]:
        return True
    index_text, _, last = (row[1] if row is not None else "0:").partition(":")
    sources = _sources(key)
    index = int(index_text)
    table, where, args = sources[index]
    if table == "recordings":
        rows = pg.execute(_RECORDINGS_FROM.format(where=where),
                          (pbx.name, *args, int(last or -1), BATCH)).fetchall()
    else:
        rows = pg.execute(_NUMBERS_FROM.format(where=where),
                          (pbx.name, *args, last, BATCH)).fetchall()
    if rows:
        last = str(rows[-1][0])
    if len(rows) < BATCH:
        index, last = index + 1, ""
    done = index >= len(sources)
    with _transaction(local):
        if table == "recordings":
            local.executemany(_UPSERT, rows)
        else:
            _put_summaries(local, _NUMBERS, rows, cursor=False)
        local.execute("INSERT OR REPLACE INTO replica_fill VALUES (?, ?, ?)",
                      (key, int(done), f"{index}:{last}"))
    return done
