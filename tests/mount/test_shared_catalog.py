"""Beyond one machine: an ingest mount writing a real PostgreSQL catalog and a real
S3 archive (SeaweedFS), and a reader mount serving the same tree from them."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.mount.harness import RECFS, Mount, the_line, try_mount, wait_for
from tests.mount.test_archive import s3_options


def status(mount: Mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.recfs.mount"))


def tree(root) -> dict[str, os.stat_result]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.lstat(path)
    return found


def xattrs(path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


def archived_all(mount: Mount, cdrs: list[dict]) -> bool:
    """Every one of *cdrs* downloaded (its SHA-256 known) and nothing left to upload:
    a recording the prefetch has not reached yet is not pending either."""
    try:
        downloaded = all(os.getxattr(mount.file_of(cdr), "user.recfs.sha256") for cdr in cdrs)
    except OSError:
        return False
    return downloaded and status(mount)["archive"]["pending"] == 0


def test_reader_mount_serves_the_ingest_mounts_tree(sim, s3_bucket, pg_catalog, tmp_path):
    archive = s3_options(s3_bucket, tmp_path)
    ingest = Mount(sim, tmp_path / "ingest", f"catalog={pg_catalog}", *archive)
    cdrs = [sim.call(duration=2, caller=f"10{i}", callee="2001") for i in range(6)]
    for cdr in cdrs:
        ingest.wait_file(cdr)
    wait_for(lambda: archived_all(ingest, cdrs), 30, what="six uploads")
    downloads = sim.stats()["downloads"]

    # The reader: no PBX options, SOURCE is the catalog; the archive comes from it too.
    reader = Mount(sim, tmp_path / "reader", *archive[1:], catalog=pg_catalog)
    assert status(reader)["pbx"] is None
    assert status(reader)["catalog"]["role"] == "reader"
    shown = subprocess.run([*RECFS, "status", str(reader.path)], capture_output=True, text=True,
                           timeout=30).stdout
    assert "reader mount" in shown and "(reader, PBX 127.0.0.1-" in shown and "answering" in shown
    mine, theirs = tree(ingest.path), tree(reader.path)
    assert mine.keys() == theirs.keys() and len(mine) > 6
    for path, a in mine.items():
        b = theirs[path]
        assert (a.st_ino, a.st_mode, a.st_size, a.st_mtime, a.st_nlink, a.st_uid) == \
            (b.st_ino, b.st_mode, b.st_size, b.st_mtime, b.st_nlink, b.st_uid), path
        assert xattrs(ingest.path / path) == xattrs(reader.path / path), path
    for cdr in cdrs:
        data = reader.file_of(cdr).read_bytes()
        assert data == sim.recording_bytes(cdr["recording"])
        assert hashlib.sha256(data).hexdigest() == \
            os.getxattr(reader.file_of(cdr), "user.recfs.sha256").decode()
    assert sim.stats()["downloads"] == downloads  # the reader never asked the PBX

    # A new call appears on the reader within 2 s of its report being acknowledged.
    cdr = sim.call(duration=2)
    ingest.wait_file(cdr)
    started = time.monotonic()
    reader.wait_file(cdr, timeout=2.0)
    assert time.monotonic() - started < 2.0

    # Readers write nothing to the catalog: its rows are the ingest mount's.
    with psycopg.connect(pg_catalog) as db:
        rows = db.execute("SELECT COUNT(*) FROM recfs.recordings").fetchone()
        assert rows == (7,)


def test_one_ingest_mount_per_pbx(sim, pg_catalog, tmp_path):
    first = Mount(sim, tmp_path / "a", f"catalog={pg_catalog}", "catalog_name=site")
    mountpoint = tmp_path / "b" / "mnt"
    mountpoint.mkdir(parents=True)
    password = tmp_path / "pw"
    password.write_text(sim.password + "\n")
    password.chmod(0o600)
    done = subprocess.run(
        [*RECFS, "mount", sim.url, str(mountpoint), "-f", "-o",
         f"user={sim.user},password_file={password},cafile={sim.cafile},listen=127.0.0.1:0,"
         f"state_dir={tmp_path / 'b' / 'state'},cache_dir={tmp_path / 'b' / 'cache'},"
         f"catalog={pg_catalog},catalog_name=site"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 75, done.stderr
    assert "another ingest mount" in done.stderr and "only one may" in done.stderr
    assert not os.path.ismount(mountpoint)
    cdr = sim.call(duration=1)
    first.wait_file(cdr)  # the first goes on as if nothing happened
    # kill -9 of the first: the server sees its connection close, the lock is free,
    # and a standby takes over (systemd restarts it after exit 75).
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait()
    subprocess.run(["fusermount3", "-uz", str(first.path)], timeout=30)
    standby = Mount(sim, tmp_path / "c", f"catalog={pg_catalog}", "catalog_name=site")
    cdr = sim.call(duration=1)
    standby.wait_file(cdr, timeout=15)  # reports go to the standby's receiver now


def test_database_restart_under_a_stream_of_reports(sim, s3_bucket, postgres_own, tmp_path):
    """`pg_ctl -m immediate` while the PBX keeps reporting: reports are refused (the
    PBX sends them again), reads go on on both mounts, and afterwards every report the
    ingest mount acknowledged is on both."""
    url = postgres_own.new_database()
    archive = s3_options(s3_bucket, tmp_path)
    ingest = Mount(sim, tmp_path / "ingest", f"catalog={url}", *archive,
                   allowed_errors=[r"catalog commit of \d+ operation", r"catalog write failed"])
    first = [sim.call(duration=1) for _ in range(3)]
    for cdr in first:
        ingest.wait_file(cdr)
    wait_for(lambda: archived_all(ingest, first), 30, what="uploads")
    reader = Mount(sim, tmp_path / "reader", *archive[1:], catalog=url)
    for cdr in first:
        reader.file_of(cdr).read_bytes()  # into the reader's cache

    made: list[dict] = []
    stop = threading.Event()

    def calls() -> None:
        while not stop.is_set():
            try:
                made.append(sim.call(duration=1))
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    caller = threading.Thread(target=calls)
    caller.start()
    try:
        time.sleep(1)
        postgres_own.crash()
        # Down: cached reads on both mounts work, the tree is as it was.
        for cdr in first:
            assert ingest.file_of(cdr).read_bytes() == reader.file_of(cdr).read_bytes()
        wait_for(lambda: not status(reader)["catalog"]["available"], 10, what="reader notices")
        time.sleep(2)
        postgres_own.up()
        time.sleep(2)
    finally:
        stop.set()
        caller.join()
    assert len(made) > 20
    # The simulator re-sends unacknowledged reports: every call arrives.
    for cdr in made:
        ingest.wait_file(cdr, timeout=60)
    for cdr in made:
        reader.wait_file(cdr, timeout=10)
    assert status(reader)["catalog"]["available"] and status(ingest)["catalog"]["available"]


def test_a_new_hosts_reader_is_up_before_it_has_copied_the_catalog(sim, postgres_own, tmp_path):
    """A reader's first mount of a catalog of 100,000 recordings: up with the
    summaries alone, a directory copied when it is first read, a directory nobody has
    read cannot be listed while the database is down (EIO) and can once it is back,
    and in the background every recording arrives."""
    url = postgres_own.new_database()
    made = tmp_path / "made"
    subprocess.run([sys.executable, str(Path(__file__).parents[2] / "scripts" / "make_catalog.py"),
                    str(made), "--rows", "100000", "--years", "0.3"],
                   check=True, capture_output=True, timeout=120)
    done = subprocess.run([*RECFS, "catalog", "copy", str(made / "catalog.sqlite"), url,
                           "--name", "site", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    source = sqlite3.connect(f"file:{made / 'catalog.sqlite'}?mode=ro", uri=True)
    days = source.execute("SELECT day, count FROM days ORDER BY day").fetchall()

    def on_day(day: str) -> dict[str, int]:
        return dict(source.execute("SELECT name, ino FROM recordings WHERE day = ?", (day,)))

    (tmp_path / "archive").mkdir()
    reader = Mount(sim, tmp_path / "reader", f"archive=file://{tmp_path / 'archive'}",
                   catalog=url)
    (replica_path,) = reader.state_dir.rglob("replica.sqlite")
    replica = sqlite3.connect(f"file:{replica_path}?mode=ro", uri=True)
    assert status(reader)["recordings"] == 100_000
    assert not status(reader)["catalog"]["replica_complete"]
    assert replica.execute("SELECT COUNT(*) FROM recordings").fetchone()[0] < 100_000

    oldest = days[0][0]
    folder = reader.path.joinpath(*oldest.split("-"))
    assert {name: os.stat(folder / name).st_ino for name in os.listdir(folder)} == on_day(oldest)
    extension = reader.path / "by-number" / "2001"
    assert len(os.listdir(extension)) == source.execute(
        "SELECT count FROM numbers WHERE number = '2001'").fetchone()[0]

    postgres_own.crash()
    unread = reader.path.joinpath(*days[1][0].split("-"))
    with pytest.raises(OSError) as refused:
        os.listdir(unread)
    assert refused.value.errno == errno.EIO
    assert len(os.listdir(folder)) == days[0][1]  # copied already: no database needed
    postgres_own.up()

    def listed() -> bool:
        try:
            return set(os.listdir(unread)) == set(on_day(days[1][0]))
        except OSError:
            return False

    wait_for(listed, 30, what="the unread day, the database back")
    wait_for(lambda: status(reader)["catalog"]["replica_complete"], 180,
             what="the replica complete")
    assert replica.execute("SELECT COUNT(*) FROM recordings").fetchone()[0] == 100_000
    shown = subprocess.run([*RECFS, "status", str(reader.path)], capture_output=True, text=True,
                           timeout=30).stdout
    assert "copying" not in shown
    for day, count in days[::10]:
        assert len(os.listdir(reader.path.joinpath(*day.split("-")))) == count


def test_a_single_servers_catalog_moves_into_postgresql(sim, pg_catalog, tmp_path):
    """`recfs catalog copy`: the same inode numbers before and after; the PBX's
    history goes on in the shared catalog; a second copy is refused."""
    before = Mount(sim, tmp_path / "sqlite")
    cdrs = [sim.call(duration=1) for _ in range(4)]
    for cdr in cdrs:
        before.wait_file(cdr)
    inodes = {cdr["recording"]: os.stat(before.file_of(cdr)).st_ino for cdr in cdrs}
    assert before.unmount() == 0
    command = [*RECFS, "catalog", "copy", str(before.state_dir / "catalog.sqlite"), pg_catalog,
               "--name", "site", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "copied 4 recordings" in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "has recordings" in again.stderr

    after = Mount(sim, tmp_path / "shared", f"catalog={pg_catalog}", "catalog_name=site")
    for cdr in cdrs:
        assert os.stat(after.file_of(cdr)).st_ino == inodes[cdr["recording"]]
    cdr = sim.call(duration=1)
    after.wait_file(cdr)
    with psycopg.connect(pg_catalog) as db:
        assert db.execute("SELECT COUNT(*) FROM recfs.recordings WHERE pbx = 'site'"
                          ).fetchone() == (5,)


def test_a_catalog_that_does_not_answer_ends_the_mount_with_one_line(sim, postgres, tmp_path):
    """Ingest and reader mounts alike: exit 1 and a line naming the catalog, nothing
    mounted, no traceback; a password file readable by all: exit 78."""
    import socket
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"postgresql://recfs@127.0.0.1:{free.getsockname()[1]}/rec"
    done = try_mount(sim, tmp_path / "ingest", f"catalog={closed}")
    line = the_line(done, False, "catalog", closed, "is the database running", status=1)
    assert "Connection refused" in line
    done = try_mount(sim, tmp_path / "reader", source=closed)
    the_line(done, False, "catalog", closed, "is the database running", status=1)
    secret = tmp_path / "pgpass"
    secret.write_text("whatever\n")
    secret.chmod(0o644)
    done = try_mount(sim, tmp_path / "open", f"catalog={postgres.url('postgres')}",
                     f"catalog_password_file={secret}")
    the_line(done, False, "catalog_password_file", "readable by every user")


def test_a_mount_of_several_pbxs_shares_one_catalog(tmp_path):
    """Two PBXs in one ingest mount, one catalog for both; a reader mount shows the
    same two directories with the same inode numbers, from the archive."""
    from tests.mount.harness import Sim, pbx_tables
    from tests.postgres import PostgresServer
    server = PostgresServer.start(tmp_path / "pg")
    try:
        url = server.new_database()
        sims = {"main": Sim(tmp_path / "sim-main"), "branch": Sim(tmp_path / "sim-branch")}
        tables = pbx_tables(tmp_path, sims)
        archive = tmp_path / "archive"
        archive.mkdir()
        config = tmp_path / "all.toml"
        config.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                          f'cache_dir = "{tmp_path / "cache"}"\nlisten = "127.0.0.1:0"\n'
                          f'catalog = "{url}"\narchive = "file://{archive}"\n{tables}')
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        log = tmp_path / "ingest.log"  # -f: the log goes to stderr
        proc = subprocess.Popen([*RECFS, "mount", "recfs", str(mnt), "-f", "-o",
                                 f"config={config}"],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        reader = None
        try:
            wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, what="mount")
            calls = {name: [sim.call(duration=1) for _ in range(2)] for name, sim in sims.items()}
            for name, cdrs in calls.items():
                for cdr in cdrs:
                    path = mnt.joinpath(name, *cdr["timestart"][:10].split("-"), cdr["recording"])
                    wait_for(path.exists, 10, what=f"{name}'s recording")
            wait_for(lambda: all(status_of(mnt, name)["archive"]["pending"] == 0
                                 and status_of(mnt, name)["archive"]["uploaded"] >= 2
                                 for name in sims), 30, what="uploads")
            downloads = {name: sim.stats()["downloads"] for name, sim in sims.items()}
            reader = Mount(sims["main"], tmp_path / "reader", catalog=url)
            assert sorted(os.listdir(reader.path)) == ["branch", "main"]
            mine, theirs = tree(mnt), tree(reader.path)
            assert mine.keys() == theirs.keys()
            for path, a in mine.items():
                assert (a.st_ino, a.st_size, a.st_mtime) == \
                    (theirs[path].st_ino, theirs[path].st_size, theirs[path].st_mtime), path
            for name, cdrs in calls.items():
                for cdr in cdrs:
                    path = reader.path.joinpath(name, *cdr["timestart"][:10].split("-"),
                                                cdr["recording"])
                    assert path.read_bytes() == sims[name].recording_bytes(cdr["recording"])
            assert {name: sim.stats()["downloads"] for name, sim in sims.items()} == downloads
        finally:
            if reader is not None:
                reader.cleanup()
            subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30)
            proc.wait(30)
        text = log.read_text()
        assert "Traceback" not in text and " ERROR " not in text, text
    finally:
        server.stop()


def status_of(mnt, name: str) -> dict:
    return json.loads(os.getxattr(mnt, "user.recfs.mount"))["pbxs"][name]
