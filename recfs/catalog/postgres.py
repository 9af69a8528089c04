"""The shared catalog in PostgreSQL: how to reach it, its schema, and its writes.

Several mounts on several hosts share one PostgreSQL catalog: one ingest mount per
PBX writes it, reader mounts only follow it. Every mount keeps a local SQLite
replica of its PBXs' rows (recfs/catalog/replica.py) and answers the filesystem from
that, so that a lookup never waits for the network and the tree stays whole while
the database is down. PostgreSQL is the truth: a report is acknowledged after its
row committed here.

Tables (schema `recfs`):
- `recordings`: what the SQLite catalog's `recordings` holds, plus `pbx` (whose
  recording) and `changed`, a number from one sequence given to every insert and
  update by a trigger. The same trigger takes a transaction-level advisory lock
  first, so transactions that write recordings commit one after another, in the
  order of their numbers: a follower that has seen number N committed has seen
  everything below N. Followers ask for `changed > last seen`, that is all.
- `meta`: per PBX (pbx '' for the catalog's own: schema version, catalog id), with
  `changed` numbers of the same sequence.
- `pbxs`: the PBXs that ingest into this catalog, with the inode namespace each uses.
- `days`, `type_days`, `numbers`: per PBX, the summaries a listing needs (what the
  SQLite catalog's triggers keep), with `changed` numbers of the same sequence. What
  new recordings add is summed up by the transaction that inserts them and written
  once before its COMMIT (`Summaries`): a burst of reports would otherwise update
  today's row once per report. A size learnt later goes in by a trigger. A replica copies them first, whole (thousands of
  rows, even for millions of recordings), and the recordings of a directory only
  when someone looks into it (recfs/catalog/replica.py): a new host's reader mount
  is up in a second, whatever the catalog holds.

Schema versions (`meta.schema` of pbx ''; their own, not the SQLite file's):
2. recordings, meta, pbxs (the first shared catalog: it started at the SQLite
   schema's version then).
3. the summaries, and the indexes that find a directory's recordings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import psycopg

from recfs.catalog.database import Recording, call_epoch, file_ino
from recfs.catalog.schema import CALL_COLUMNS, SchemaError
from recfs.pbx import clock as pbx_clock
from recfs.pbx.clock import META_KEY as OFFSET_KEY
from recfs.pbx.reports import CallRecord

log = logging.getLogger("recfs.catalog.postgres")

CONNECT_TIMEOUT = 5  # seconds; libpq's connect_timeout
# A statement that takes longer has met a database that is not answering.
STATEMENT_TIMEOUT_MS = 30_000

# The columns a replica copies, in this order (recfs/catalog/replica.py).
RECORDING_COLUMNS = ["ino", "name", "day", "epoch", *[c for c in CALL_COLUMNS if c != "name"],
                     "size", "added", "sha256", "archive", "archive_tries", "archive_next",
                     "archive_error", "lost"]


class CatalogUnavailable(Exception):
    """The database cannot be reached, or refused us: temporary."""


class CatalogBusy(Exception):
    """Another ingest mount writes this PBX into the catalog."""


def is_postgres_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class PgSettings:
    """Where the catalog lives. The password comes from *password_file* or libpq's
    own means (PGPASSFILE, ~/.pgpass, PGPASSWORD), never from the URL's text in a
    message: `shown` is the URL without it."""

    url: str
    password_file: str | None = None

    @property
    def shown(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{port}{parts.path}"

    @property
    def has_inline_password(self) -> bool:
        return urlsplit(self.url).password is not None

    def password(self) -> str | None:
        if not self.password_file:
            return None
        try:
            if os.stat(self.password_file).st_mode & 0o004:
                raise CatalogConfigError(
                    f"catalog_password_file {self.password_file} is readable by every user: "
                    f"chmod o-r it (e.g. chmod 600) first")
            return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CatalogConfigError(f"cannot read catalog_password_file {self.password_file}: "
                                     f"{exc.strerror}") from None

    def connect(self, *, application: str = "recfs") -> psycopg.Connection[Any]:
        """A new connection in autocommit mode (transactions are explicit);
        CatalogUnavailable when the database does not answer or refuses us."""
        extra: dict[str, Any] = {}
        password = self.password()
        if password is not None:
            extra["password"] = password
        try:
            return psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                application_name=application, keepalives=1, keepalives_idle=10,
                keepalives_interval=5, keepalives_count=3,
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", **extra)
        except psycopg.Error as exc:
            raise CatalogUnavailable(f"catalog {self.shown}: {reason(exc)}") from None


class CatalogConfigError(ValueError):
    """An option about the catalog is wrong: the mount cannot start."""


def reason(exc: BaseException) -> str:
    """psycopg's message, first line, without anything that could hold a secret:
    libpq's messages name the host, port and user, never the password."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("connection failed: ", "")


# -- schema ------------------------------------------------------------------------

_CHANGE_LOCK = 0x7265_6366_7300_0001  # "recfs" + 1: the commit-order lock
_SCHEMA_LOCK = 0x7265_6366_7300_0002  # creating or migrating the schema


def _advisory_key(text: str) -> int:
    """A signed 64-bit advisory lock key for *text*."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big",
                          signed=True)


_CALL_DDL = ",\n    ".join(f"{c} TEXT NOT NULL DEFAULT ''" for c in CALL_COLUMNS if c != "name")

_TABLES = f"""
CREATE SCHEMA IF NOT EXISTS recfs;
CREATE SEQUENCE IF NOT EXISTS recfs.changes;
CREATE TABLE IF NOT EXISTS recfs.meta (
    pbx TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    changed BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (pbx, key)
);
CREATE TABLE IF NOT EXISTS recfs.pbxs (
    pbx TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,     -- what the PBX's inode numbers are derived with
    source TEXT NOT NULL,        -- its URL, for people (never a password)
    archive TEXT,                -- where its ingest mount archives (a reader reads there)
    holder TEXT,                 -- the ingest mount that last took it: host, pid, since
    added DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS recfs.recordings (
    ino BIGINT PRIMARY KEY,
    pbx TEXT NOT NULL,
    name TEXT NOT NULL,
    day TEXT NOT NULL,
    epoch BIGINT,
    {_CALL_DDL},
    size BIGINT,
    added DOUBLE PRECISION NOT NULL,
    sha256 TEXT,
    archive TEXT,
    archive_tries INTEGER NOT NULL DEFAULT 0,
    archive_next DOUBLE PRECISION,
    archive_error TEXT,
    lost INTEGER NOT NULL DEFAULT 0,
    changed BIGINT NOT NULL DEFAULT 0,
    UNIQUE (pbx, name)
);
CREATE INDEX IF NOT EXISTS recordings_changes ON recfs.recordings (pbx, changed);
CREATE OR REPLACE FUNCTION recfs.number_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({_CHANGE_LOCK});
    NEW.changed := nextval('recfs.changes');
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS recordings_changed ON recfs.recordings;
CREATE TRIGGER recordings_changed BEFORE INSERT OR UPDATE ON recfs.recordings
    FOR EACH ROW EXECUTE FUNCTION recfs.number_change();
DROP TRIGGER IF EXISTS meta_changed ON recfs.meta;
CREATE TRIGGER meta_changed BEFORE INSERT OR UPDATE ON recfs.meta
    FOR EACH ROW EXECUTE FUNCTION recfs.number_change();
"""

# A call's time in the summaries, as the SQLite schema's _MTIME has it (floor: CAST
# rounds in PostgreSQL, truncates in SQLite).
_CALL_TIME = "COALESCE({r}.epoch, floor({r}.added)::BIGINT)"

# Version 3: the summaries. `changed` of a summary row comes from the same sequence,
# under the same commit-order lock, as the recordings'.
_SUMMARIES = f"""
CREATE TABLE IF NOT EXISTS recfs.days (
    pbx TEXT NOT NULL,
    day TEXT NOT NULL,
    count BIGINT NOT NULL,
    last_call BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    changed BIGINT NOT NULL,
    PRIMARY KEY (pbx, day)
);
CREATE TABLE IF NOT EXISTS recfs.type_days (
    pbx TEXT NOT NULL,
    type TEXT NOT NULL,
    day TEXT NOT NULL,
    count BIGINT NOT NULL,
    last_call BIGINT NOT NULL,
    changed BIGINT NOT NULL,
    PRIMARY KEY (pbx, type, day)
);
CREATE TABLE IF NOT EXISTS recfs.numbers (
    pbx TEXT NOT NULL,
    number TEXT NOT NULL,
    count BIGINT NOT NULL,
    last_call BIGINT NOT NULL,
    changed BIGINT NOT NULL,
    PRIMARY KEY (pbx, number)
);
CREATE INDEX IF NOT EXISTS days_changes ON recfs.days (pbx, changed);
CREATE INDEX IF NOT EXISTS type_days_changes ON recfs.type_days (pbx, changed);
CREATE INDEX IF NOT EXISTS numbers_changes ON recfs.numbers (pbx, changed);
-- A directory's recordings, in inode order (what a replica copies on first sight).
CREATE INDEX IF NOT EXISTS recordings_days ON recfs.recordings (pbx, day, ino);
CREATE INDEX IF NOT EXISTS recordings_callers ON recfs.recordings (pbx, caller, ino);
CREATE INDEX IF NOT EXISTS recordings_callees ON recfs.recordings (pbx, callee, ino);
-- The next change number, as recfs.number_change gives one (Summaries.flush).
CREATE OR REPLACE FUNCTION recfs.next_change() RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({_CHANGE_LOCK});
    RETURN nextval('recfs.changes');
END $$;
-- A size learnt (downloaded, or listed by a P-Series PBX) after the insert. An
-- upsert: the transaction that inserted the recording may not have written its
-- Summaries yet (it does before COMMIT, adding the count to this row).
CREATE OR REPLACE FUNCTION recfs.count_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO recfs.days AS s (pbx, day, count, last_call, bytes, changed)
        VALUES (NEW.pbx, NEW.day, 0, 0, COALESCE(NEW.size, 0) - COALESCE(OLD.size, 0),
                NEW.changed)
        ON CONFLICT (pbx, day) DO UPDATE SET bytes = s.bytes + excluded.bytes,
            changed = excluded.changed;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS recordings_bytes ON recfs.recordings;
CREATE TRIGGER recordings_bytes AFTER UPDATE OF size ON recfs.recordings
    FOR EACH ROW WHEN (OLD.size IS DISTINCT FROM NEW.size)
    EXECUTE FUNCTION recfs.count_bytes();
"""

# The summaries of the PBXs whose recordings `{where}` selects, from the recordings
# themselves (a migration; the end of a `recfs catalog copy`).
_SUMMARISE = f"""
INSERT INTO recfs.days (pbx, day, count, last_call, bytes, changed)
    SELECT pbx, day, COUNT(*), MAX({_CALL_TIME.format(r="r")}), COALESCE(SUM(size), 0),
           MAX(changed)
    FROM recfs.recordings r WHERE {{where}} GROUP BY pbx, day;
INSERT INTO recfs.type_days (pbx, type, day, count, last_call, changed)
    SELECT pbx, type, day, COUNT(*), MAX({_CALL_TIME.format(r="r")}), MAX(changed)
    FROM recfs.recordings r WHERE {{where}} AND type <> '' GROUP BY pbx, type, day;
INSERT INTO recfs.numbers (pbx, number, count, last_call, changed)
    SELECT pbx, number, COUNT(*), MAX(call), MAX(changed) FROM (
        SELECT pbx, caller AS number, ino, {_CALL_TIME.format(r="r")} AS call, changed
            FROM recfs.recordings r WHERE {{where}} AND caller <> ''
        UNION
        SELECT pbx, callee, ino, {_CALL_TIME.format(r="r")}, changed
            FROM recfs.recordings r WHERE {{where}} AND callee <> '') p
    GROUP BY pbx, number;
"""

SCHEMA_VERSION = 3


def summarise(db: psycopg.Connection[Any], pbx: str | None) -> None:
    """Compute the summaries of *pbx* (None: of every PBX), which has none yet."""
    where = "true" if pbx is None else "pbx = %(pbx)s"
    for statement in _SUMMARISE.format(where=where).split(";"):
        if statement.strip():
            db.execute(statement, {"pbx": pbx} if pbx is not None else None)


def _version_2_to_3(db: psycopg.Connection[Any]) -> None:
    db.execute(_SUMMARIES)
    summarise(db, None)


# MIGRATIONS[n] brings version n to n + 1.
MIGRATIONS: dict[int, Callable[[psycopg.Connection[Any]], None]] = {2: _version_2_to_3}


def stored_version(db: psycopg.Connection[Any]) -> int:
    """0 for a database without recfs's tables."""
    present = db.execute("SELECT to_regclass('recfs.meta')").fetchone()
    if present is None or present[0] is None:
        return 0
    row = db.execute("SELECT value FROM recfs.meta WHERE pbx = '' AND key = 'schema'").fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise SchemaError(f"the catalog's schema version is unreadable: {row[0]!r}") from None


def bring_up_to_date(db: psycopg.Connection[Any], shown: str) -> str:
    """Create or migrate the schema, in one transaction (PostgreSQL's DDL is
    transactional: a failure leaves what was there); the catalog's id. Two mounts
    starting at once take turns (an advisory lock)."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        version = stored_version(db)
        if version > SCHEMA_VERSION:
            raise SchemaError(f"{shown} was written by a newer recfs (catalog schema {version}; "
                              f"this recfs knows up to {SCHEMA_VERSION}): upgrade recfs")
        if version == 0:
            db.execute(_TABLES)
            db.execute(_SUMMARIES)
            _set_meta(db, "", "catalog_id", str(uuid.uuid4()))
        else:
            for step in range(version, SCHEMA_VERSION):
                log.info("catalog %s: schema %d to %d", shown, step, step + 1)
                # Summing up millions of recordings takes longer than a statement may.
                db.execute("SET LOCAL statement_timeout = 0")
                MIGRATIONS[step](db)
        if version != SCHEMA_VERSION:
            _set_meta(db, "", "schema", str(SCHEMA_VERSION))
        row = db.execute("SELECT value FROM recfs.meta WHERE pbx = '' AND key = 'catalog_id'"
                         ).fetchone()
        assert row is not None
        return str(row[0])


def _set_meta(db: psycopg.Connection[Any], pbx: str, key: str, value: str) -> None:
    db.execute("INSERT INTO recfs.meta (pbx, key, value) VALUES (%s, %s, %s) "
               "ON CONFLICT (pbx, key) DO UPDATE SET value = excluded.value "
               "WHERE recfs.meta.value IS DISTINCT FROM excluded.value", (pbx, key, value))


# -- the PBXs ---------------------------------------------------------------------


@dataclass(frozen=True)
class PbxKey:
    """A PBX in the shared catalog: *name* (its rows' `pbx`), *namespace* (what its
    inode numbers are made with: "" in a mount of one PBX, as with SQLite)."""

    name: str
    namespace: str


@dataclass(frozen=True)
class PbxEntry:
    key: PbxKey
    archive: str | None  # the archive URL its ingest mount uses (s3://BUCKET/PREFIX...)


def register_pbx(db: psycopg.Connection[Any], pbx: PbxKey, source: str,
                 archive: str | None = None) -> None:
    """Say in the catalog that *pbx* ingests here (and where it archives)."""
    parts = urlsplit(source)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # no user:password
    db.execute("INSERT INTO recfs.pbxs (pbx, namespace, source, archive, added) "
               "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (pbx) DO UPDATE "
               "SET source = excluded.source, archive = excluded.archive",
               (pbx.name, pbx.namespace, shown, archive, time.time()))
    row = db.execute("SELECT namespace FROM recfs.pbxs WHERE pbx = %s", (pbx.name,)).fetchone()
    if row is not None and row[0] != pbx.namespace:
        # Its inode numbers were made with the other namespace: new ones must match.
        raise CatalogConfigError(
            f"PBX {pbx.name!r} is in the catalog as part of "
            f"{'a mount of several PBXs' if row[0] else 'a mount of one PBX'}; mount it the "
            f"same way (its inode numbers depend on it)")


def pbxs(db: psycopg.Connection[Any]) -> list[PbxEntry]:
    """The PBXs ingested into the catalog, by name."""
    if stored_version(db) == 0:
        return []
    return [PbxEntry(PbxKey(name, namespace), archive) for name, namespace, archive in
            db.execute("SELECT pbx, namespace, archive FROM recfs.pbxs ORDER BY pbx")]


def take_ingest_lock(db: psycopg.Connection[Any], pbx: str) -> None:
    """Hold the PBX's ingest lock for the life of *db*'s session (released when the
    connection ends: also when the process is killed, the server sees the socket
    close); CatalogBusy naming who holds it."""
    got = db.execute("SELECT pg_try_advisory_lock(%s)", (_advisory_key("ingest:" + pbx),)
                     ).fetchone()
    if got is None or not got[0]:
        row = db.execute("SELECT holder FROM recfs.pbxs WHERE pbx = %s", (pbx,)).fetchone()
        holder = f" ({row[0]})" if row and row[0] else ""
        raise CatalogBusy(f"another ingest mount{holder} writes PBX {pbx!r} into this catalog; "
                          f"only one may (a reader mount serves the same tree without the PBX)")
    db.execute("UPDATE recfs.pbxs SET holder = %s WHERE pbx = %s",
               (f"{socket.gethostname()} pid {os.getpid()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}", pbx))


# -- writes (the writer thread's operations; see recfs/catalog/writer.py) ------------

# Plain text, composed once (the column names are recfs's own): psycopg prepares it
# after a few runs, and composing an sql.SQL at every run costs as much as the run.
_INSERT = (f"INSERT INTO recfs.recordings (ino, pbx, day, epoch, added, size, "
           f"{', '.join(CALL_COLUMNS)}) "
           f"VALUES (%s, %s, %s, %s, %s, %s, {', '.join('%s' for _ in CALL_COLUMNS)}) "
           f"ON CONFLICT DO NOTHING RETURNING ino")


def _known_callid(db: psycopg.Connection[Any], pbx: str, name: str) -> str | None:
    row = db.execute("SELECT callid FROM recfs.recordings WHERE pbx = %s AND name = %s",
                     (pbx, name)).fetchone()
    return None if row is None else str(row[0])


def _insert(db: psycopg.Connection[Any], pbx: PbxKey, call: CallRecord,
            utc_offset: int | None, size: int | None) -> Recording | None:
    epoch = call_epoch(call, utc_offset)
    added = time.time()
    day = pbx_clock.call_day(call.timestart, call.name, call.callid, utc_offset)
    values = [getattr(call, c) for c in CALL_COLUMNS]
    for salt in range(16):
        ino = file_ino(call.name, salt, pbx.namespace)
        # One statement in the usual case (a new name, a free inode); ino is below
        # 2**63: PostgreSQL's BIGINT holds it as it is.
        if db.execute(_INSERT, [ino, pbx.name, day, epoch, added, size, *values]).fetchone():
            return Recording(ino, day, float(epoch if epoch is not None else added), size,
                             added, call)
        known = _known_callid(db, pbx.name, call.name)
        if known is not None:  # reports come twice: the first one wins
            if size is not None:
                # A P-Series list names the size of a recording an event announced first.
                db.execute("UPDATE recfs.recordings SET size = %s WHERE pbx = %s AND name = %s "
                           "AND size IS NULL", (size, pbx.name, call.name))
            if known and call.callid and known != call.callid:
                log.warning("refused %s for call %s: the name belongs to call %s already",
                            call.name, call.callid, known)
            return None
        # else another name has this inode: the next salt
    raise RuntimeError(f"no free inode number for {call.name!r}")


class Summaries:
    """What the recordings a transaction inserts add to the summaries of its PBX,
    written by `flush` just before the COMMIT: one upsert per summary table and
    transaction (a batch of reports is one transaction, mostly of one day)."""

    def __init__(self, pbx: str):
        self.pbx = pbx
        self.clear()

    def clear(self) -> None:
        self.days: dict[str, list[int]] = {}  # day: [count, last_call, bytes]
        self.type_days: dict[tuple[str, str], list[int]] = {}  # (type, day): [count, last_call]
        self.numbers: dict[str, list[int]] = {}  # number: [count, last_call]

    def add(self, rec: Recording) -> None:
        # The call's time as the SQLite schema's _MTIME: its start, else when it was added.
        call = int(rec.mtime)
        counted = [self.days.setdefault(rec.day, [0, 0, 0])]
        counted[0][2] += rec.size or 0
        if rec.call.type:
            counted.append(self.type_days.setdefault((rec.call.type, rec.day), [0, 0]))
        for number in {rec.call.caller, rec.call.callee} - {""}:
            counted.append(self.numbers.setdefault(number, [0, 0]))
        for summary in counted:
            summary[0] += 1
            summary[1] = max(summary[1], call)

    def flush(self, db: psycopg.Connection[Any]) -> None:
        if self.days:
            days, counts = list(self.days), list(self.days.values())
            db.execute(_ADD_DAYS, (self.pbx, days, *_columns(counts, 3)))
        if self.type_days:
            keys, counts = list(self.type_days), list(self.type_days.values())
            db.execute(_ADD_TYPE_DAYS, (self.pbx, [k[0] for k in keys], [k[1] for k in keys],
                                        *_columns(counts, 2)))
        if self.numbers:
            numbers, counts = list(self.numbers), list(self.numbers.values())
            db.execute(_ADD_NUMBERS, (self.pbx, numbers, *_columns(counts, 2)))
        self.clear()


def _columns(rows: list[list[int]], width: int) -> list[list[int]]:
    return [[row[i] for row in rows] for i in range(width)]


_ADD_DAYS = """
INSERT INTO recfs.days AS s (pbx, day, count, last_call, bytes, changed)
    SELECT %s, u.day, u.count, u.last_call, u.bytes, recfs.next_change()
    FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[])
        AS u(day, count, last_call, bytes)
    ON CONFLICT (pbx, day) DO UPDATE SET count = s.count + excluded.count,
        last_call = greatest(s.last_call, excluded.last_call),
        bytes = s.bytes + excluded.bytes, changed = excluded.changed"""
_ADD_TYPE_DAYS = """
INSERT INTO recfs.type_days AS s (pbx, type, day, count, last_call, changed)
    SELECT %s, u.type, u.day, u.count, u.last_call, recfs.next_change()
    FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])
        AS u(type, day, count, last_call)
    ON CONFLICT (pbx, type, day) DO UPDATE SET count = s.count + excluded.count,
        last_call = greatest(s.last_call, excluded.last_call), changed = excluded.changed"""
_ADD_NUMBERS = """
INSERT INTO recfs.numbers AS s (pbx, number, count, last_call, changed)
    SELECT %s, u.number, u.count, u.last_call, recfs.next_change()
    FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS u(number, count, last_call)
    ON CONFLICT (pbx, number) DO UPDATE SET count = s.count + excluded.count,
        last_call = greatest(s.last_call, excluded.last_call), changed = excluded.changed"""


class MetaView(Protocol):
    """The PBX's meta as the writing transaction sees it (what it wrote, else what
    the replica holds)."""

    def get(self, key: str) -> str | None: ...
    def put(self, key: str, value: str) -> None: ...


def insert_calls(db: psycopg.Connection[Any], pbx: PbxKey, calls: list[CallRecord],
                 utc_offset: int | None, meta: MetaView, summaries: Summaries,
                 sizes: list[int | None] | None = None) -> list[Recording | None]:
    """As recfs/catalog/database.py's insert_calls, into the shared catalog; what the
    new recordings add to the summaries goes to *summaries* (the caller flushes it
    before the COMMIT). A meta value already there is not written again: each write
    is a row version, a change number and a copy to every replica, and a burst of
    reports carries the same offset and nearly the same last_seen."""
    known_sizes = sizes if sizes is not None else [None] * len(calls)
    results = [_insert(db, pbx, call, utc_offset, size) for call, size in zip(calls, known_sizes)]
    for rec in results:
        if rec is not None:
            summaries.add(rec)
    newest = max((c.timestart for c in calls if pbx_clock.parse_stamp(c.timestart) is not None),
                 default="")
    if newest and newest > (meta.get("last_seen") or ""):
        db.execute("INSERT INTO recfs.meta (pbx, key, value) VALUES (%s, 'last_seen', %s) "
                   "ON CONFLICT (pbx, key) DO UPDATE SET value = excluded.value "
                   "WHERE recfs.meta.value < excluded.value", (pbx.name, newest))
        meta.put("last_seen", newest)
    if utc_offset is not None and meta.get(OFFSET_KEY) != str(utc_offset):
        _set_meta(db, pbx.name, OFFSET_KEY, str(utc_offset))
        meta.put(OFFSET_KEY, str(utc_offset))
    return results


def write_size(db: psycopg.Connection[Any], pbx: PbxKey, ino: int, size: int) -> None:
    db.execute("UPDATE recfs.recordings SET size = %s WHERE ino = %s AND size IS DISTINCT FROM %s",
               (size, ino, size))


def write_meta(db: psycopg.Connection[Any], pbx: PbxKey, key: str, value: str) -> None:
    _set_meta(db, pbx.name, key, value)


def write_content(db: psycopg.Connection[Any], pbx: PbxKey, ino: int, size: int, sha256: str,
                  archive: bool) -> None:
    db.execute("UPDATE recfs.recordings SET size = %s, sha256 = %s, lost = 0, archive = CASE "
               "WHEN %s AND archive IS NULL THEN 'pending' ELSE archive END WHERE ino = %s",
               (size, sha256, archive, ino))


def write_archived(db: psycopg.Connection[Any], pbx: PbxKey, ino: int, state: str,
                   error: str | None = None) -> None:
    db.execute("UPDATE recfs.recordings SET archive = %s, archive_error = %s, archive_tries = 0, "
               "archive_next = NULL WHERE ino = %s", (state, error, ino))


def write_archive_retry(db: psycopg.Connection[Any], pbx: PbxKey, ino: int, error: str,
                        next_try: float) -> None:
    db.execute("UPDATE recfs.recordings SET archive_tries = archive_tries + 1, "
               "archive_error = %s, archive_next = %s WHERE ino = %s", (error, next_try, ino))


def write_lost(db: psycopg.Connection[Any], pbx: PbxKey, ino: int) -> None:
    db.execute("UPDATE recfs.recordings SET lost = 1 WHERE ino = %s", (ino,))
