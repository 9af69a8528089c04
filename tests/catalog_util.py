"""Writing a catalog from synchronous test code: the writer's own operation
(insert_calls), in a transaction of its own, on a connection of its own. Only for
tests that run no CatalogWriter beside it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from recfs.catalog.database import Catalog, Recording, insert_calls
from recfs.pbx.reports import CallRecord


def write_calls(catalog: Catalog, calls: list[CallRecord],
                utc_offset: int | None = None) -> list[Recording | None]:
    db = catalog.connect()
    try:
        db.execute("BEGIN IMMEDIATE")
        results = insert_calls(db, calls, utc_offset, catalog.namespace)
        db.execute("COMMIT")
    finally:
        db.close()
    return results


V2_SCHEMA = Path(__file__).parent / "data" / "sqlite_schema_v2.sql"
V2_COLUMNS = ("ino", "name", "day", "epoch", "added", "callid", "timestart", "caller",
              "callee", "type", "size", "sha256", "archive")


def v2_catalog(path: Path, rows: Iterable[tuple]) -> None:
    """A catalog as the release before schema 3 left it: its schema text, its
    triggers keeping the summaries; *rows* are values of V2_COLUMNS."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V2_SCHEMA.read_text())
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO recordings ({', '.join(V2_COLUMNS)}) "
                   f"VALUES ({', '.join('?' for _ in V2_COLUMNS)})", rows)
    db.execute("COMMIT")
    db.close()
