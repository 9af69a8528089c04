-- The catalog's SQLite schema, version 2, as recfs created it (from sqlite_master):
-- tests/unit/test_catalog_schema.py upgrades a catalog made from it.
CREATE TABLE recordings (
    ino INTEGER PRIMARY KEY,      -- the stable inode number: derived from the name
    name TEXT NOT NULL UNIQUE,
    day TEXT NOT NULL,            -- PBX-local YYYY-MM-DD: the directory
    epoch INTEGER,                -- UTC start of the call: mtime
    callid TEXT NOT NULL DEFAULT '', timestart TEXT NOT NULL DEFAULT '', caller TEXT NOT NULL DEFAULT '', callee TEXT NOT NULL DEFAULT '', type TEXT NOT NULL DEFAULT '', status TEXT NOT NULL DEFAULT '', duration TEXT NOT NULL DEFAULT '', talk_duration TEXT NOT NULL DEFAULT '', trunk TEXT NOT NULL DEFAULT '', did TEXT NOT NULL DEFAULT '', pbx_serial TEXT NOT NULL DEFAULT '',
    size INTEGER,                 -- exact byte size once known, else NULL
    added REAL NOT NULL,
    sha256 TEXT, archive TEXT, archive_tries INTEGER NOT NULL DEFAULT 0, archive_next REAL, archive_error TEXT, lost INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX recordings_by_day ON recordings(day, ino);
CREATE INDEX recordings_by_type_day ON recordings(type, day, ino);
CREATE TABLE days (
    day TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    newest REAL NOT NULL,
    last_call INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE numbers (      -- rowid: the listing cursor of by-number/
    number TEXT NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    newest REAL NOT NULL,
    last_call INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE participants (
    number TEXT NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (number, ino)
) WITHOUT ROWID;
CREATE TABLE type_days (
    type TEXT NOT NULL,
    day TEXT NOT NULL,
    count INTEGER NOT NULL,
    newest REAL NOT NULL,
    last_call INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (type, day)
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TRIGGER recordings_summaries AFTER INSERT ON recordings BEGIN
    INSERT INTO days(day, count, newest, last_call, bytes)
        VALUES (NEW.day, 1, NEW.added, COALESCE(NEW.epoch, CAST(NEW.added AS INTEGER)),
                COALESCE(NEW.size, 0))
        ON CONFLICT(day) DO UPDATE SET count = count + 1, newest = excluded.newest,
            last_call = max(last_call, excluded.last_call), bytes = bytes + excluded.bytes;
    INSERT INTO participants(number, ino) SELECT NEW.caller, NEW.ino WHERE NEW.caller != ''
        ON CONFLICT DO NOTHING;
    INSERT INTO participants(number, ino) SELECT NEW.callee, NEW.ino WHERE NEW.callee != ''
        ON CONFLICT DO NOTHING;
    INSERT INTO numbers(number, count, newest, last_call)
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
CREATE INDEX recordings_archive_queue ON recordings(archive_next)
    WHERE archive = 'pending';
CREATE INDEX recordings_archive_conflicts ON recordings(ino)
    WHERE archive = 'conflict';
CREATE INDEX recordings_lost ON recordings(ino) WHERE lost = 1;
INSERT INTO meta VALUES ('schema', '2');
