"""The catalog's schema: created new, or brought up from what an older recfs wrote,
in place and with every recording kept (inode numbers included)."""

from __future__ import annotations

import sqlite3

import pytest

from recfs.catalog.database import Catalog
from recfs.catalog.schema import SCHEMA_VERSION, SchemaError
from recfs.pbx.reports import CallRecord
from tests.catalog_util import v2_catalog, write_calls

# Version 1, as recfs 0.1 created it (schema text of that release).
V1_TABLES = """
CREATE TABLE IF NOT EXISTS recordings (
    ino INTEGER PRIMARY KEY,      -- the stable inode number: derived from the name
    name TEXT NOT NULL UNIQUE,
    day TEXT NOT NULL,            -- PBX-local YYYY-MM-DD: the directory
    epoch INTEGER,                -- UTC start of the call: mtime
    callid TEXT NOT NULL DEFAULT '', timestart TEXT NOT NULL DEFAULT '', caller TEXT NOT NULL DEFAULT '', callee TEXT NOT NULL DEFAULT '', type TEXT NOT NULL DEFAULT '', status TEXT NOT NULL DEFAULT '', duration TEXT NOT NULL DEFAULT '', talk_duration TEXT NOT NULL DEFAULT '', trunk TEXT NOT NULL DEFAULT '', did TEXT NOT NULL DEFAULT '', pbx_serial TEXT NOT NULL DEFAULT '',
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
V1_VIEWS = """
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

CALLS = [
    CallRecord(name="20240610083402-1718001234.88-0612345678-2001-Inbound.wav",
               callid="1718001234.88", timestart="2024-06-10 08:33:54", caller="0612345678",
               callee="2001", type="Inbound"),
    CallRecord(name="20240610093000-1718004600.2-2001-2002-Internal.wav",
               callid="1718004600.2", timestart="2024-06-10 09:30:00", caller="2001",
               callee="2002", type="Internal"),
    CallRecord(name="20240611120000-1718100000.3-2002-0700-Outbound.wav",
               callid="1718100000.3", timestart="2024-06-11 12:00:00", caller="2002",
               callee="0700", type="Outbound"),
]


def v1_catalog(path, views: bool = True) -> dict[str, int]:
    """A catalog as recfs 0.1 left it; the inode of each name."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V1_TABLES + (V1_VIEWS if views else ""))
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    for i, call in enumerate(CALLS):
        db.execute("INSERT INTO recordings (ino, name, day, epoch, added, callid, timestart, "
                   "caller, callee, type, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (1000 + i, call.name, call.timestart[:10], int(call.callid.split(".")[0]),
                    1_750_000_000.0 + i, call.callid, call.timestart, call.caller, call.callee,
                    call.type, 100 * (i + 1) if i != 1 else None))
    db.close()
    return {call.name: 1000 + i for i, call in enumerate(CALLS)}


def summaries(catalog: Catalog) -> dict[str, object]:
    return {
        "days": sorted(catalog.days()),
        "type_days": sorted(catalog.type_days()),
        "numbers": sorted((n, catalog.number(n)) for _c, n, _l in catalog.numbers(limit=100)),
        "bytes": catalog.known_bytes(),
        "count": catalog.count(),
    }


@pytest.mark.parametrize("views", [True, False], ids=["v1", "v1-before-views"])
def test_a_version_1_catalog_is_upgraded_in_place(tmp_path, views):
    inodes = v1_catalog(tmp_path / "old.sqlite", views)
    catalog = Catalog(tmp_path / "old.sqlite")
    assert catalog.meta("schema") == str(SCHEMA_VERSION)
    for name, ino in inodes.items():
        rec = catalog.by_name(name)
        assert rec.ino == ino  # a backup sees the same files
        assert (rec.sha256, rec.archive, rec.lost) == (None, None, False)  # not archived yet
    days = {d.key: d for d in catalog.days()}
    assert days["2024-06-10"].recordings == 2 and days["2024-06-10"].last_call == 1718004600
    assert days["2024-06-11"].last_call == 1718100000
    assert catalog.known_bytes() == 100 + 300
    assert catalog.number("2001") == (2, 1718004600)
    assert {t.key for t in catalog.type_days()} == {
        "Inbound/2024-06-10", "Internal/2024-06-10", "Outbound/2024-06-11"}
    # The same summaries as a catalog that was current from the start.
    new = Catalog(tmp_path / "new.sqlite")
    write_calls(new, CALLS)
    upgraded, fresh = summaries(catalog), summaries(new)
    for part in ("days", "type_days"):  # `newest` is when each was added: it differs
        upgraded[part] = [(s.key, s.recordings, s.last_call) for s in upgraded[part]]
        fresh[part] = [(s.key, s.recordings, s.last_call) for s in fresh[part]]
    fresh["bytes"] = upgraded["bytes"]  # the new one has no sizes yet
    assert upgraded == fresh
    # The triggers are the current ones: new rows keep the summaries right.
    catalog.close()
    write_calls(Catalog(tmp_path / "old.sqlite"), [CallRecord(
        name="20240611130000-1718103600.4-0700-2001-Inbound.wav", callid="1718103600.4",
        timestart="2024-06-11 13:00:00", caller="0700", callee="2001", type="Inbound")])
    again = Catalog(tmp_path / "old.sqlite")
    assert {d.key: d.last_call for d in again.days()}["2024-06-11"] == 1718103600
    assert again.number("0700") == (2, 1718103600)


def test_sizes_learned_later_count_in_the_known_bytes(tmp_path):
    catalog = Catalog(tmp_path / "c.sqlite")
    recs = write_calls(catalog, CALLS)
    db = catalog.connect()
    db.execute("UPDATE recordings SET size = 1000 WHERE ino = ?", (recs[0].ino,))
    db.execute("UPDATE recordings SET size = 250 WHERE ino = ?", (recs[2].ino,))
    db.execute("UPDATE recordings SET size = 1044 WHERE ino = ?", (recs[0].ino,))
    db.close()
    assert catalog.known_bytes() == 1044 + 250


def test_a_catalog_of_a_newer_recfs_is_refused(tmp_path):
    write_calls(Catalog(tmp_path / "c.sqlite"), CALLS[:1])
    db = sqlite3.connect(tmp_path / "c.sqlite", isolation_level=None)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(SchemaError, match="newer recfs"):
        Catalog(tmp_path / "c.sqlite")


def test_a_failed_upgrade_leaves_the_old_catalog_whole(tmp_path, monkeypatch):
    v1_catalog(tmp_path / "old.sqlite")

    def broken(db):
        db.execute("ALTER TABLE days ADD COLUMN last_call INTEGER NOT NULL DEFAULT 0")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("recfs.catalog.schema.MIGRATIONS", [broken])
    with pytest.raises(sqlite3.OperationalError):
        Catalog(tmp_path / "old.sqlite")
    db = sqlite3.connect(tmp_path / "old.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)
    assert "last_call" not in {row[1] for row in db.execute("PRAGMA table_info(days)")}


def old_catalog(path) -> dict[str, int]:
    """A schema-2 catalog of CALLS (the second one not dated); the inode of each name."""
    v2_catalog(path, [
        (2000 + i, call.name, call.timestart[:10],
         None if i == 1 else int(call.callid.split(".")[0]), 1_750_000_000.5 + i, call.callid,
         call.timestart, call.caller, call.callee, call.type, 100 * (i + 1), "ab" * 32, "archived")
        for i, call in enumerate(CALLS)])
    return {call.name: 2000 + i for i, call in enumerate(CALLS)}


def listing_plan(catalog: Catalog) -> str:
    """How SQLite runs the query Catalog.day_entries sends."""
    sent: list[str] = []
    catalog._db.set_trace_callback(sent.append)
    catalog.day_entries("2024-06-10")
    catalog._db.set_trace_callback(None)
    (query,) = sent
    return " ".join(row[-1] for row in catalog._db.execute(f"EXPLAIN QUERY PLAN {query}"))


def test_a_version_2_catalog_gets_the_listing_index_in_place(tmp_path):
    old_catalog(tmp_path / "beats.sqlite")
    beats: list[str] = []
    Catalog(tmp_path / "beats.sqlite", upgrading=lambda: beats.append("upgrading")).close()
    assert beats == ["upgrading"]  # told at once (then every few seconds while it runs)
    Catalog(tmp_path / "beats.sqlite", upgrading=lambda: beats.append("again")).close()
    assert beats == ["upgrading"]  # a current catalog is no upgrade
    inodes = old_catalog(tmp_path / "old.sqlite")
    before = sqlite3.connect(tmp_path / "old.sqlite")
    summary_tables = {t: sorted(before.execute(f"SELECT * FROM {t}"))
                      for t in ("days", "type_days", "numbers", "participants")}
    before.close()
    catalog = Catalog(tmp_path / "old.sqlite")
    assert catalog.meta("schema") == str(SCHEMA_VERSION) == "3"
    # A day is listed from the index alone; the index it replaces is gone.
    assert "COVERING INDEX recordings_listing" in listing_plan(catalog)
    indexes = {name for name, in catalog._db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "recordings_by_day" not in indexes
    for name, ino in inodes.items():
        rec = catalog.by_name(name)
        assert (rec.ino, rec.sha256, rec.archive) == (ino, "ab" * 32, "archived")
    after = {t: sorted(map(tuple, catalog._db.execute(f"SELECT * FROM {t}")))
             for t in summary_tables}
    assert after == summary_tables
    # What a listing shows is what the recording says, undated call included.
    for day in ("2024-06-10", "2024-06-11"):
        listed = catalog.day_entries(day)
        assert [(e.ino, e.name, e.mtime, e.size, e.caller, e.callee, e.type) for e in listed] == [
            (r.ino, r.name, r.mtime, r.size, r.call.caller, r.call.callee, r.call.type)
            for r in catalog.in_day(day)]
    assert catalog.day_entries("2024-06-10")[1].mtime == 1_750_000_001.5


def test_a_new_catalog_lists_days_from_the_index_alone(tmp_path):
    catalog = Catalog(tmp_path / "c.sqlite")
    write_calls(catalog, CALLS)
    assert "COVERING INDEX recordings_listing" in listing_plan(catalog)
    assert [e.name for e in catalog.day_entries("2024-06-10", limit=1)] == \
        [r.name for r in catalog.in_day("2024-06-10", limit=1)]
