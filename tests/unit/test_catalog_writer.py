"""The catalog's one writer: every path that writes the catalog, at the same time."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import trio

from recfs.catalog import database
from recfs.catalog.database import Catalog
from recfs.catalog.watch import CatalogWatch
from recfs.catalog.writer import CatalogWriter
from recfs.pbx.reports import CallRecord


def call(i: int, prefix: str = "r") -> CallRecord:
    return CallRecord(name=f"20240610{i % 24:02d}0000-{1718000000 + i}.{i}-{prefix}{i}-2001-Inbound.wav",
                      callid=f"{1718000000 + i}.{i}", timestart=f"2024-06-10 {i % 24:02d}:00:00",
                      caller=f"{prefix}{i}", callee="2001", type="Inbound")


async def test_reports_backfill_sizes_and_meta_at_once_lose_nothing(tmp_path, monkeypatch):
    """The old GroupCommit ran back-fill and reports on one connection from two
    threads: one's BEGIN failed, its ROLLBACK ended the other's transaction."""
    threads: set[int] = set()
    real_insert = database.insert_calls

    def insert(db, calls, utc_offset, namespace="", sizes=None):
        threads.add(threading.get_ident())
        return real_insert(db, calls, utc_offset, namespace, sizes)

    monkeypatch.setattr("recfs.catalog.writer.insert_calls", insert)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    writer = CatalogWriter(catalog)
    added: dict[str, int] = {}
    sized: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def reporter(first: int) -> None:
            for i in range(first, first + 100):
                rec = await writer.add(call(i), utc_offset=7200)
                assert rec is not None
                added[rec.name] = rec.ino

        async def backfiller(batch: int) -> None:
            calls = [call(10_000 + batch * 300 + i, "b") for i in range(300)]
            for rec in await writer.add_many(calls, utc_offset=7200):
                assert rec is not None
                added[rec.name] = rec.ino
            await trio.sleep(0)

        async def sizer() -> None:
            for n in range(300):
                if added:
                    ino = list(added.values())[n % len(added)]
                    await writer.set_size(ino, 1000 + n)
                    sized[ino] = 1000 + n
                await trio.sleep(0)

        async def meta() -> None:
            for n in range(200):
                await writer.set_meta("probe", str(n))
                await trio.sleep(0)

        async with trio.open_nursery() as work:
            for first in range(0, 2000, 100):
                work.start_soon(reporter, first)
            for batch in range(5):
                work.start_soon(backfiller, batch)
            work.start_soon(sizer)
            work.start_soon(meta)
        nursery.cancel_scope.cancel()
    assert writer.stats.failed_commits == 0
    assert len(threads) == 1 and threading.get_ident() not in threads
    fresh = Catalog(tmp_path / "catalog.sqlite")
    assert fresh.count() == 3500 == len(added)
    for name, ino in added.items():
        rec = fresh.by_name(name)
        assert rec is not None and rec.ino == ino
    for ino, size in sized.items():
        assert fresh.by_ino(ino).size == size
    assert fresh.meta("probe") == "199"
    assert fresh.meta("pbx_utc_offset") == "7200"
    assert fresh.meta("last_seen") == "2024-06-10 23:00:00"


async def test_one_failing_operation_fails_alone(tmp_path, monkeypatch):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    writer = CatalogWriter(catalog)
    real = database.write_meta

    def write_meta(db, key, value):
        if key == "bad":
            raise sqlite3.IntegrityError("refused")
        real(db, key, value)

    monkeypatch.setattr("recfs.catalog.writer.write_meta", write_meta)
    results: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def attempt(key: str) -> None:
            try:
                await writer.set_meta(key, "1")
                results[key] = "ok"
            except sqlite3.Error as exc:
                results[key] = exc

        async with trio.open_nursery() as work:  # queued together: one transaction
            for key in ("a", "bad", "b"):
                work.start_soon(attempt, key)
            work.start_soon(writer.add, call(1))
        nursery.cancel_scope.cancel()
    assert results["a"] == results["b"] == "ok"
    assert isinstance(results["bad"], sqlite3.IntegrityError)
    fresh = Catalog(tmp_path / "catalog.sqlite")
    assert fresh.meta("a") == fresh.meta("b") == "1" and fresh.meta("bad") is None
    assert fresh.count() == 1


async def test_a_failed_commit_acknowledges_nothing(tmp_path, monkeypatch):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    writer = CatalogWriter(catalog)
    real_connect = catalog.connect

    class FailingCommit:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    monkeypatch.setattr(catalog, "connect", lambda: FailingCommit(real_connect()))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with pytest.raises(sqlite3.OperationalError):
            await writer.add(call(1))
        nursery.cancel_scope.cancel()
    assert writer.stats.failed_commits == 1
    assert Catalog(tmp_path / "catalog.sqlite").count() == 0


async def test_the_watch_sees_this_writer_at_once_and_other_processes_soon(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    watch = CatalogWatch(catalog, interval=0.05)
    writer = CatalogWriter(catalog, watch)
    other = CatalogWriter(Catalog(tmp_path / "catalog.sqlite"))  # "recfs backfill"
    changes = 0

    def changed() -> None:
        nonlocal changes
        changes += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await nursery.start(other.run)
        nursery.start_soon(watch.follow, changed)
        await trio.sleep(0.1)
        assert changes == 0
        await writer.add(call(1))
        with trio.fail_after(0.04):  # well before the next poll: the poke
            while changes < 1:
                await trio.sleep(0.001)
        await other.add(call(2))
        with trio.fail_after(1):
            while changes < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_writes_before_run_are_refused(tmp_path):
    writer = CatalogWriter(Catalog(tmp_path / "catalog.sqlite"))
    with pytest.raises(RuntimeError, match="not running"):
        await writer.add(call(1))
