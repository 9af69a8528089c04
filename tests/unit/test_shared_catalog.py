"""The shared catalog in a real PostgreSQL (tests/postgres.py): the writer's backend,
the local replicas, the ingest lock, schema ownership."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
import trio

from recfs.catalog import postgres as pg
from recfs.catalog.database import Catalog, file_ino
from recfs.catalog.postgres import CatalogBusy, PbxKey, PgSettings
from recfs.catalog.schema import SchemaError
from recfs.catalog.shared import CatalogReadOnly, SharedBackend
from recfs.catalog.watch import CatalogWatch
from recfs.catalog.writer import CatalogWriter
from recfs.pbx.reports import CallRecord
from tests.unit.test_catalog_writer import call

PBX = PbxKey("site-a", "")


def writer_for(url: str, path: Path, pbx: PbxKey = PBX, *, ingest: bool = True,
               interval: float = 0.05) -> CatalogWriter:
    replica = Catalog(path, namespace=pbx.namespace)
    backend = SharedBackend(PgSettings(url), pbx, replica, ingest=ingest, source="https://pbx",
                            follow_interval=interval)
    return CatalogWriter(replica, CatalogWatch(replica, interval=0.05), backend)


async def test_ingest_and_reader_replicas_hold_the_same_rows(pg_catalog, tmp_path):
    ingest = writer_for(pg_catalog, tmp_path / "ingest.sqlite")
    reader = writer_for(pg_catalog, tmp_path / "reader.sqlite", ingest=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(ingest.run)
        added = {}
        for i in range(50):
            rec = await ingest.add(call(i), utc_offset=7200)
            assert rec is not None and rec.ino == file_ino(rec.name)
            # Answered only once the ingest mount's own replica has it.
            assert ingest.catalog.by_ino(rec.ino) is not None
            added[rec.name] = rec.ino
        assert await ingest.add(call(3), utc_offset=7200) is None  # a report sent twice
        await ingest.set_size(added[call(7).name], 4242)
        await ingest.set_meta("probe", "x")
        await nursery.start(reader.run)  # starts later: copies what is there
        assert await ingest.add(call(99), utc_offset=7200) is not None
        with trio.fail_after(5):
            while reader.catalog.by_name(call(99).name) is None:
                await trio.sleep(0.02)
        with pytest.raises(CatalogReadOnly):
            await reader.set_size(added[call(1).name], 1)
        nursery.cancel_scope.cancel()
    mine, theirs = Catalog(tmp_path / "ingest.sqlite"), Catalog(tmp_path / "reader.sqlite")
    assert mine.count() == theirs.count() == 51
    for name, ino in added.items():
        a, b = mine.by_name(name), theirs.by_name(name)
        assert a is not None and b is not None
        assert (a.ino, a.day, a.mtime, a.size, a.call) == (b.ino, b.day, b.mtime, b.size, b.call) \
            == (ino, a.day, a.mtime, a.size, a.call)
    assert theirs.by_ino(added[call(7).name]).size == 4242  # type: ignore[union-attr]
    assert [d.key for d in mine.days()] == [d.key for d in theirs.days()]
    assert mine.known_bytes() == theirs.known_bytes() == 4242
    assert theirs.meta("probe") == "x" and theirs.meta("last_seen") == "2024-06-10 23:00:00"


async def test_a_second_ingest_mount_of_the_same_pbx_is_refused(pg_catalog, tmp_path):
    first = writer_for(pg_catalog, tmp_path / "a.sqlite")
    second = writer_for(pg_catalog, tmp_path / "b.sqlite")
    other_pbx = writer_for(pg_catalog, tmp_path / "c.sqlite", PbxKey("site-b", ""))
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        with pytest.raises(CatalogBusy, match="another ingest mount .*site-a"):
            await nursery.start(second.run)
        await nursery.start(other_pbx.run)  # another PBX: its own lock
        a = await first.add(call(1))
        b = await other_pbx.add(call(1))  # the same file name on another PBX
        assert a is not None and b is not None and a.ino != b.ino
        nursery.cancel_scope.cancel()
    # The first one gone, the lock is free again.
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        nursery.cancel_scope.cancel()


def test_the_ingest_lock_goes_with_a_killed_process(pg_catalog, tmp_path):
    """kill -9 of the lock's holder: the server sees its socket close."""
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from recfs.catalog.postgres import PgSettings, take_ingest_lock, bring_up_to_date, register_pbx, PbxKey
        db = PgSettings({pg_catalog!r}).connect()
        bring_up_to_date(db, "x")
        register_pbx(db, PbxKey("site-a", ""), "https://pbx")
        take_ingest_lock(db, "site-a")
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        db = PgSettings(pg_catalog).connect()
        with pytest.raises(CatalogBusy, match=f"pid {holder.pid}"):
            pg.take_ingest_lock(db, "site-a")
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 10
        while True:
            try:
                pg.take_ingest_lock(db, "site-a")
                break
            except CatalogBusy:
                assert time.monotonic() < deadline, "the lock outlived its holder"
                time.sleep(0.1)
    finally:
        holder.kill()


async def test_writes_fail_while_the_database_is_down_and_resume_after(postgres, tmp_path):
    """Nothing is answered as written that is not committed; after a restart the same
    writer goes on, the lock taken again."""
    from tests.postgres import PostgresServer
    server = PostgresServer.start(tmp_path / "pg")
    try:
        url = server.new_database()
        writer = writer_for(url, tmp_path / "replica.sqlite")
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.add(call(1)) is not None
            await trio.to_thread.run_sync(server.crash)
            with pytest.raises(Exception):
                await writer.add(call(2))
            assert writer.catalog.by_name(call(1).name) is not None  # reads go on
            assert not writer.backend.available  # type: ignore[attr-defined]
            await trio.to_thread.run_sync(server.up)
            with trio.fail_after(20):
                while True:
                    try:
                        assert await writer.add(call(2)) is not None
                        break
                    except Exception:
                        await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        with psycopg.connect(url) as db:
            assert db.execute("SELECT COUNT(*) FROM recfs.recordings").fetchone() == (2,)
    finally:
        server.stop()


def test_schema_is_created_once_and_a_newer_one_refused(pg_catalog):
    db = PgSettings(pg_catalog).connect()
    first = pg.bring_up_to_date(db, "cat")
    assert pg.bring_up_to_date(db, "cat") == first  # idempotent: the same catalog
    assert pg.stored_version(db) == pg.SCHEMA_VERSION
    db.execute("UPDATE recfs.meta SET value = %s WHERE pbx = '' AND key = 'schema'",
               (str(pg.SCHEMA_VERSION + 1),))
    with pytest.raises(SchemaError, match="newer recfs"):
        pg.bring_up_to_date(db, "cat")


async def test_a_replica_of_another_catalog_is_emptied(postgres, tmp_path):
    one, two = postgres.new_database(), postgres.new_database()
    async with trio.open_nursery() as nursery:
        w = writer_for(one, tmp_path / "replica.sqlite")
        await nursery.start(w.run)
        await w.add(call(1))
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        w = writer_for(two, tmp_path / "replica.sqlite", ingest=False)
        await nursery.start(w.run)
        assert w.catalog.count() == 0
        nursery.cancel_scope.cancel()


def test_password_file_readable_by_everyone_is_refused(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    os.chmod(secret, 0o644)
    with pytest.raises(pg.CatalogConfigError, match="readable by every user"):
        PgSettings("postgresql://u@127.0.0.1:1/db", str(secret)).password()
    os.chmod(secret, 0o600)
    assert PgSettings("postgresql://u@127.0.0.1:1/db", str(secret)).password() == "hunter2"
    assert "hunter2" not in PgSettings("postgresql://u:hunter2@127.0.0.1:1/db").shown


async def test_every_writer_at_once_and_a_follower_misses_nothing(pg_catalog, tmp_path):
    """Reports, back-fill windows, sizes and meta from the ingest mount, a `recfs
    backfill` (another writer of the same PBX, no lock) and another PBX's ingest, all
    at once, while a reader follows: every acknowledged row is in PostgreSQL and in
    the reader's replica, with its latest size (the change numbers commit in order)."""
    ingest = writer_for(pg_catalog, tmp_path / "ingest.sqlite")
    backfill = CatalogWriter(Catalog(tmp_path / "backfill.sqlite"), None, SharedBackend(
        PgSettings(pg_catalog), PBX, Catalog(tmp_path / "backfill.sqlite"), ingest=True,
        exclusive=False, follow_interval=0.05))
    other = writer_for(pg_catalog, tmp_path / "other.sqlite", PbxKey("site-b", ""))
    reader = writer_for(pg_catalog, tmp_path / "reader.sqlite", ingest=False, interval=0.01)
    added: dict[str, int] = {}
    sized: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        for writer in (ingest, backfill, other, reader):
            await nursery.start(writer.run)

        async def reporter(first: int) -> None:
            for i in range(first, first + 50):
                rec = await ingest.add(call(i), utc_offset=0)
                assert rec is not None
                added[rec.name] = rec.ino

        async def backfiller(batch: int) -> None:
            calls = [call(10_000 + batch * 100 + i, "b") for i in range(100)]
            for rec in await backfill.add_many(calls, utc_offset=0):
                assert rec is not None
                added[rec.name] = rec.ino

        async def sizer() -> None:
            for n in range(200):
                if added:
                    ino = list(added.values())[n % len(added)]
                    await ingest.set_size(ino, 1000 + n)
                    sized[ino] = 1000 + n
                await trio.sleep(0)

        async def elsewhere() -> None:
            for i in range(300):
                assert await other.add(call(i, "o")) is not None

        async with trio.open_nursery() as work:
            for first in range(0, 500, 50):
                work.start_soon(reporter, first)
            for batch in range(4):
                work.start_soon(backfiller, batch)
            work.start_soon(sizer)
            work.start_soon(elsewhere)
            work.start_soon(lambda: ingest.set_meta("probe", "1"))
        with trio.fail_after(10):
            while reader.catalog.count() < len(added):
                await trio.sleep(0.05)
        await trio.sleep(0.3)  # and nothing more arrives than was written
        nursery.cancel_scope.cancel()
    assert len(added) == 900
    replica = Catalog(tmp_path / "reader.sqlite")
    assert replica.count() == 900
    for name, ino in added.items():
        rec = replica.by_name(name)
        assert rec is not None and rec.ino == ino
        assert rec.size == sized.get(ino)
    with psycopg.connect(pg_catalog) as db:
        assert db.execute("SELECT pbx, COUNT(*) FROM recfs.recordings GROUP BY pbx ORDER BY pbx"
                          ).fetchall() == [("site-a", 900), ("site-b", 300)]


def spread(i: int) -> CallRecord:
    """Calls over five days, two types, a few numbers (some callers call often)."""
    day, hour = 1 + i % 5, i % 24
    return CallRecord(name=f"2024060{day}{hour:02d}0000-{1717000000 + i}.{i}-c{i % 7}-200{i % 2}-"
                           f"{'Inbound' if i % 3 else 'Outbound'}.wav",
                      callid=f"{1717000000 + i}.{i}", timestart=f"2024-06-0{day} {hour:02d}:00:00",
                      caller=f"c{i % 7}", callee=f"200{i % 2}",
                      type="Inbound" if i % 3 else "Outbound")


def views_of(c: Catalog) -> dict[str, object]:
    """Everything a mount lists, from a catalog."""
    return {
        "days": [(d.key, d.recordings, d.last_call) for d in c.days()],
        "type_days": sorted((d.key, d.recordings, d.last_call) for d in c.type_days()),
        "numbers": sorted(n[1:] for n in c.numbers(limit=10_000)),
        "counts": (c.count(), c.known_bytes()),
        "entries": {day.key: [(r.ino, r.name, r.size) for r in c.day_entries(day.key, limit=10_000)]
                    for day in c.days()},
        "by_number": {n: [r.ino for r in c.number_entries(n, limit=10_000)]
                      for _, n, _ in c.numbers(limit=10_000)},
    }


async def test_a_new_replica_copies_directories_as_they_are_read(pg_catalog, tmp_path,
                                                                monkeypatch):
    """A new host's replica starts with the summaries only (PostgreSQL's triggers
    keep them as SQLite's do); a directory's recordings arrive when it is filled,
    in batches that resume where they stopped; what is written meanwhile, in filled
    directories or not, is pulled; filled to the end, it lists what a SQLite catalog
    fed the same calls lists."""
    from recfs.catalog import replica
    monkeypatch.setattr(replica, "BATCH", 7)
    plain = CatalogWriter(Catalog(tmp_path / "plain.sqlite"))
    ingest = writer_for(pg_catalog, tmp_path / "ingest.sqlite")
    other = writer_for(pg_catalog, tmp_path / "other.sqlite", PbxKey("site-b", ""))

    async def both(calls: list[CallRecord], size_every: int = 0) -> None:
        for writer in (plain, ingest):
            for rec in await writer.add_many(calls, utc_offset=0):
                assert rec is not None
                if size_every and rec.ino % size_every == 0:
                    await writer.set_size(rec.ino, rec.ino % 100_000)

    async with trio.open_nursery() as nursery:
        for writer in (plain, ingest, other):
            await nursery.start(writer.run)
        await both([spread(i) for i in range(120)], size_every=3)
        await other.add_many([spread(i) for i in range(40)])  # not this PBX's
        local_catalog = Catalog(tmp_path / "lazy.sqlite")
        local = local_catalog.connect(durable=False)
        db = PgSettings(pg_catalog).connect()
        replica.prepare(local, pg.bring_up_to_date(db, "cat"))
        replica.pull(db, local, PBX)
        assert not replica.complete(local)
        assert local.execute("SELECT COUNT(*) FROM recordings").fetchone()[0] == 0
        expected = views_of(plain.catalog)
        got = views_of(local_catalog)
        for key in ("days", "type_days", "counts"):
            assert got[key] == expected[key]

        replica.fill(db, local, PBX, "day:2024-06-03")
        assert views_of(local_catalog)["entries"]["2024-06-03"] == expected["entries"]["2024-06-03"]
        assert views_of(local_catalog)["entries"]["2024-06-01"] == []
        replica.fill(db, local, PBX, "number:c3")
        assert local_catalog.number("c3") == plain.catalog.number("c3")
        assert [r.ino for r in local_catalog.number_entries("c3", limit=1000)] == \
            expected["by_number"]["c3"]  # type: ignore[index]

        # Written meanwhile: into a filled day, an unfilled one, a new one.
        await both([spread(i) for i in (200, 202, 205, 1000)] + [
            CallRecord(name="20240607120000-1.1-c1-2000-Inbound.wav", callid="1.1",
                       timestart="2024-06-07 12:00:00", caller="c1", callee="2000",
                       type="Inbound")], size_every=1)
        replica.pull(db, local, PBX)
        steps = 0
        while not replica.fill_step(db, local, PBX):
            steps += 1
            if steps == 5:  # a restart in the middle: the next connection goes on
                local.close()
                local = local_catalog.connect(durable=False)
        assert steps > 10  # in batches
        assert replica.complete(local)
        assert views_of(local_catalog) == views_of(plain.catalog)
        db.close()
        local.close()
        nursery.cancel_scope.cancel()


async def test_a_replica_from_before_lazy_filling_is_taken_as_complete(pg_catalog, tmp_path):
    """The previous release's replicas were full copies with SQLite's summary
    triggers: kept as they are (complete), the triggers swapped for the replica's
    one, the summaries taken from PostgreSQL from then on."""
    from recfs.catalog import replica
    from recfs.catalog.schema import _TRIGGERS, _run
    ingest = writer_for(pg_catalog, tmp_path / "ingest.sqlite")
    async with trio.open_nursery() as nursery:
        await nursery.start(ingest.run)
        await ingest.add_many([spread(i) for i in range(30)], utc_offset=0)
        nursery.cancel_scope.cancel()
    old = Catalog(tmp_path / "ingest.sqlite").connect()  # made into what the old one was
    old.execute("DROP TRIGGER replica_participants")
    _run(old, _TRIGGERS)
    old.execute("DELETE FROM meta WHERE key IN ('replica_fill', 'replica_days', "
                "'replica_type_days', 'replica_numbers')")
    old.execute("UPDATE days SET count = count + 1000")  # its own sums: replaced by PostgreSQL's
    db = PgSettings(pg_catalog).connect()
    replica.prepare(old, pg.bring_up_to_date(db, "cat"))
    assert replica.complete(old)
    assert [r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")] \
        == ["replica_participants"]
    replica.pull(db, old, PBX)
    assert old.execute("SELECT SUM(count) FROM days").fetchone()[0] == 30
    db.close()
    old.close()


class _NoMeta:
    def get(self, key: str) -> str | None:
        return None

    def put(self, key: str, value: str) -> None:
        pass


def test_a_catalog_of_schema_2_is_upgraded_in_place(pg_catalog):
    """The shared catalog as recfs first made it (tests/data/pg_schema_v2.sql), with
    recordings: upgraded in one go, its summaries computed from them, and kept by
    the trigger from then on."""
    db = PgSettings(pg_catalog).connect()
    db.execute((Path(__file__).parent.parent / "data" / "pg_schema_v2.sql").read_text())
    db.execute("INSERT INTO recfs.meta (pbx, key, value) VALUES ('', 'schema', '2'), "
               "('', 'catalog_id', 'old-one')")
    for i, (day, type_, caller, size) in enumerate([
            ("2024-01-01", "Inbound", "a", 10), ("2024-01-01", "Outbound", "b", None),
            ("2024-01-02", "Inbound", "a", 5), ("2024-01-02", "", "a", None)]):
        db.execute("INSERT INTO recfs.recordings (ino, pbx, name, day, epoch, type, caller, "
                   "callee, size, added) VALUES (%s, 'p', %s, %s, %s, %s, %s, '2001', %s, 1.5)",
                   (i + 1, f"n{i}", day, 1000 + i, type_, caller, size))
    assert pg.bring_up_to_date(db, "cat") == "old-one"
    assert pg.stored_version(db) == pg.SCHEMA_VERSION == 3

    def summaries() -> tuple[list[tuple], list[tuple], list[tuple]]:
        return (db.execute("SELECT day, count, last_call, bytes FROM recfs.days ORDER BY day"
                           ).fetchall(),
                db.execute("SELECT type, day, count FROM recfs.type_days ORDER BY type, day"
                           ).fetchall(),
                db.execute("SELECT number, count, last_call FROM recfs.numbers ORDER BY number"
                           ).fetchall())

    assert summaries() == (
        [("2024-01-01", 2, 1001, 10), ("2024-01-02", 2, 1003, 5)],
        [("Inbound", "2024-01-01", 1), ("Inbound", "2024-01-02", 1),
         ("Outbound", "2024-01-01", 1)],
        [("2001", 4, 1003), ("a", 3, 1003), ("b", 1, 1001)])
    # From now on: a new call (its transaction adds it up), a size learnt (the trigger),
    # also of a recording its own transaction inserted.
    added = pg.Summaries("p")
    with db.transaction():
        (rec,) = pg.insert_calls(db, PbxKey("p", ""), [CallRecord(
            name="20240102000000-9.9-b-b-Inbound.wav", callid="9.9",
            timestart="2024-01-02 00:00:00", caller="b", callee="b", type="Inbound")],
            0, _NoMeta(), added)
        assert rec is not None and rec.day == "2024-01-02"
        db.execute("UPDATE recfs.recordings SET size = 3 WHERE ino = %s", (rec.ino,))
        added.flush(db)
    db.execute("UPDATE recfs.recordings SET size = 7 WHERE ino = 2")
    new_call = 1704153600  # 2024-01-02 00:00:00 UTC
    assert summaries() == (
        [("2024-01-01", 2, 1001, 17), ("2024-01-02", 3, new_call, 8)],
        [("Inbound", "2024-01-01", 1), ("Inbound", "2024-01-02", 2),
         ("Outbound", "2024-01-01", 1)],
        [("2001", 4, 1003), ("a", 3, 1003), ("b", 2, new_call)])
    db.close()


async def test_one_failing_operation_fails_alone(pg_catalog, tmp_path, monkeypatch):
    """No SAVEPOINT per operation in PostgreSQL: the batch is run again without the
    one that failed; the others are committed and answered."""
    real = pg.write_size

    def write_size(db, pbx, ino, size):
        if size == 13:
            raise ValueError("unlucky")
        real(db, pbx, ino, size)

    monkeypatch.setattr(pg, "write_size", write_size)
    writer = writer_for(pg_catalog, tmp_path / "replica.sqlite")
    outcomes: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        recs = await writer.add_many([call(i) for i in range(20)])

        async def size(n: int) -> None:
            rec = recs[n]
            assert rec is not None
            try:
                await writer.set_size(rec.ino, 13 if n == 7 else 100 + n)
                outcomes[n] = "ok"
            except ValueError as exc:
                outcomes[n] = exc

        async with trio.open_nursery() as work:  # one batch: all queued before it runs
            for n in range(20):
                work.start_soon(size, n)
        nursery.cancel_scope.cancel()
    assert isinstance(outcomes.pop(7), ValueError)
    assert set(outcomes.values()) == {"ok"} and len(outcomes) == 19
    with psycopg.connect(pg_catalog) as db:
        sizes = dict(db.execute("SELECT name, size FROM recfs.recordings").fetchall())
    assert sizes[call(7).name] is None
    assert all(sizes[call(n).name] == 100 + n for n in range(20) if n != 7)


def test_postgres_listens_and_talks_on_loopback_only(postgres, pg_catalog):
    """The tests' PostgreSQL: bound to 127.0.0.1, no other address in any of its
    sockets, while a client is connected."""
    from tests.servers import tcp_sockets
    with psycopg.connect(pg_catalog) as db:
        assert db.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        sockets = tcp_sockets(postgres.pids())
    assert any(state == "LISTEN" for _local, _remote, state in sockets)
    for local, remote, _state in sockets:
        assert local.startswith("127.0.0.1:"), sockets
        assert remote.startswith(("127.0.0.1:", "0.0.0.0:")), sockets
