-- The shared catalog's schema 2, as recfs first made it (f00f524): the migration test starts here.
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
    callid TEXT NOT NULL DEFAULT '',
    timestart TEXT NOT NULL DEFAULT '',
    caller TEXT NOT NULL DEFAULT '',
    callee TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT '',
    duration TEXT NOT NULL DEFAULT '',
    talk_duration TEXT NOT NULL DEFAULT '',
    trunk TEXT NOT NULL DEFAULT '',
    did TEXT NOT NULL DEFAULT '',
    pbx_serial TEXT NOT NULL DEFAULT '',
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
    PERFORM pg_advisory_xact_lock(8243103984638754817);
    NEW.changed := nextval('recfs.changes');
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS recordings_changed ON recfs.recordings;
CREATE TRIGGER recordings_changed BEFORE INSERT OR UPDATE ON recfs.recordings
    FOR EACH ROW EXECUTE FUNCTION recfs.number_change();
DROP TRIGGER IF EXISTS meta_changed ON recfs.meta;
CREATE TRIGGER meta_changed BEFORE INSERT OR UPDATE ON recfs.meta
    FOR EACH ROW EXECUTE FUNCTION recfs.number_change();
