"""Writing a catalog from synchronous test code: the writer's own operation
(insert_calls), in a transaction of its own, on a connection of its own. Only for
tests that run no CatalogWriter beside it."""

from __future__ import annotations

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
