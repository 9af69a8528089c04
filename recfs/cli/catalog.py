"""`recfs catalog copy SQLITE_FILE postgresql://...`: move a single server's catalog
into a shared one, keeping every inode number (a backup of the tree taken before and
after is the same backup).

The rows go in with PostgreSQL's COPY, in one transaction: a copy that fails leaves
nothing behind, and a PBX that already has rows in the shared catalog is refused
(two histories of one PBX must not be mixed). Run it with no mount writing the SQLite
file (stop the mount first), then mount the PBX with `-o catalog=URL,catalog_name=NAME`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time

import psycopg

from recfs.catalog import postgres as pg
from recfs.catalog.postgres import (RECORDING_COLUMNS, CatalogConfigError, CatalogUnavailable,
                                    PbxKey, PgSettings)
from recfs.catalog.schema import SCHEMA_VERSION, SchemaError, stored_version
from recfs.progress import terminal_progress

# The SQLite schema versions whose recordings the copy reads (3 only added an index).
COPIED_SCHEMAS = (2, SCHEMA_VERSION)

BATCH = 10_000


class CopyError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recfs catalog copy",
        description="Copy a SQLite catalog (STATE_DIR/catalog.sqlite) into a shared "
                    "PostgreSQL catalog, keeping inode numbers.")
    p.add_argument("sqlite_file")
    p.add_argument("url", metavar="postgresql://USER@HOST:PORT/DB")
    p.add_argument("--name", required=True,
                   help="the PBX's name in the shared catalog: what its ingest mount will "
                        "give as catalog_name= (default there: HOST-PORT of its URL)")
    p.add_argument("--namespace", default="",
                   help="for a PBX of a mount of several ([pbx.NAME] tables): its NAME "
                        "(its inode numbers were made with it)")
    p.add_argument("--password-file", help="the database password (else ~/.pgpass, PGPASSWORD)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def copy(source: sqlite3.Connection, settings: PgSettings, pbx: PbxKey, *,
         quiet: bool = False) -> int:
    """The rows of *source* into the shared catalog as *pbx*'s; how many."""
    total = source.execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
    # The PBX's own (last_seen, its UTC offset); not the file's schema version.
    meta = [(k, v) for k, v in source.execute("SELECT key, value FROM meta") if k != "schema"]
    db = settings.connect(application="recfs catalog copy")
    try:
        pg.bring_up_to_date(db, settings.shown)
        progress = terminal_progress("copy", enabled=not quiet, total=total, unit="rec")
        try:
            with db.transaction():
                # One COPY of every row: longer than the connection's statement timeout.
                db.execute("SET LOCAL statement_timeout = 0")
                if db.execute("SELECT 1 FROM recfs.recordings WHERE pbx = %s LIMIT 1",
                              (pbx.name,)).fetchone():
                    raise CopyError(f"PBX {pbx.name!r} has recordings in {settings.shown} already: "
                                    f"not mixing two histories of one PBX")
                pg.register_pbx(db, pbx, f"(copied from {source_path(source)})")
                columns = ", ".join(["pbx", *RECORDING_COLUMNS])
                rows = source.execute(f"SELECT {', '.join(RECORDING_COLUMNS)} FROM recordings "
                                      f"ORDER BY ino")
                with db.cursor().copy(f"COPY recfs.recordings ({columns}) FROM STDIN") as out:
                    while batch := rows.fetchmany(BATCH):
                        for row in batch:
                            out.write_row((pbx.name, *row))
                        progress.advance(len(batch))
                pg.summarise(db, pbx.name)
                for key, value in meta:
                    pg.write_meta(db, pbx, key, value)
        finally:
            progress.close()
    finally:
        db.close()
    return int(total)


def source_path(db: sqlite3.Connection) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row else "?"


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "copy":
        print("usage: recfs catalog copy SQLITE_FILE postgresql://USER@HOST:PORT/DB --name NAME",
              file=sys.stderr)
        return 2
    args = _parser().parse_args(argv[1:])
    if not pg.is_postgres_url(args.url):
        print(f"recfs: not a postgresql:// URL: {args.url!r}", file=sys.stderr)
        return 2
    settings = PgSettings(args.url, args.password_file)
    try:
        source = sqlite3.connect(f"file:{args.sqlite_file}?mode=ro", uri=True)
        check_version(source, args.sqlite_file)
    except (sqlite3.Error, SchemaError, CopyError) as exc:
        print(f"recfs: {args.sqlite_file}: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        copied = copy(source, settings, PbxKey(args.name, args.namespace), quiet=args.quiet)
    except (CatalogUnavailable, CopyError) as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 1
    except CatalogConfigError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"recfs: copy failed, nothing copied: {pg.reason(exc)}", file=sys.stderr)
        return 1
    finally:
        source.close()
    print(f"copied {copied} recordings of {args.name} into {settings.shown} in "
          f"{time.monotonic() - started:.1f} s; mount the PBX with "
          f"-o catalog={settings.shown},catalog_name={args.name}")
    return 0


def check_version(db: sqlite3.Connection, path: str) -> None:
    """The copy reads the columns of schema 2 on (3 only added an index): an older
    catalog must be opened by recfs (a mount, or `recfs backfill`) once first, which
    upgrades it in place; a newer one is refused."""
    version = stored_version(db)
    if version == 0:
        raise CopyError("not a recfs catalog (no recordings table)")
    oldest, newest = COPIED_SCHEMAS
    if version < oldest:
        raise CopyError(f"catalog schema {version}, this recfs copies {oldest} to {newest}: "
                        f"mount it once with this recfs to upgrade it, then copy")
    if version > newest:
        raise CopyError(f"catalog schema {version} was written by a newer recfs "
                        f"(this one knows up to {newest}): upgrade recfs")

