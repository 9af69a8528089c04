"""`recfs archive`: every catalogued recording into the archive (from the cache where
it is there, else from the PBX), and `--verify` reading every object back; against a
real simulator, a real mount beside the command, and a real S3 store (SeaweedFS) or
a directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

from tests.mount.harness import RECFS, Mount, Sim, free_port, wait_for
from tests.servers import S3Bucket


def credentials(work: Path, bucket: S3Bucket) -> Path:
    path = work / "archive.credentials"
    path.write_text(f"[default]\naws_access_key_id = {bucket.access_key}\n"
                    f"aws_secret_access_key = {bucket.secret_key}\n")
    path.chmod(0o600)
    return path


def s3_options(work: Path, bucket: S3Bucket, prefix: str = "calls") -> list[str]:
    return [f"archive=s3://{bucket.name}/{prefix}", f"archive_endpoint={bucket.endpoint}",
            f"archive_credentials={credentials(work, bucket)}"]


def run_archive(sim: Sim, mount: Mount, archive: list[str], *args: str,
                timeout: float = 120) -> subprocess.CompletedProcess:
    """`recfs archive` with the mount's own state and cache (the mount keeps running)."""
    opts = ",".join([f"user={sim.user}", f"password_file={mount.workdir / 'password'}",
                     f"cafile={sim.cafile}", f"state_dir={mount.state_dir}",
                     f"cache_dir={mount.cache_dir}", *archive])
    done = subprocess.run([*RECFS, "archive", sim.url, *args, "-o", opts],
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


def catalog_rows(mount: Mount) -> dict[str, tuple[str | None, int, str | None, int | None]]:
    """name → (archive, lost, sha256, size), as the catalog has them."""
    db = sqlite3.connect(mount.state_dir / "catalog.sqlite")
    try:
        return {row[0]: row[1:] for row in db.execute(
            "SELECT name, archive, lost, sha256, size FROM recordings")}
    finally:
        db.close()


def key_of(cdr: dict, prefix: str = "") -> str:
    year, month, day = cdr["timestart"][:10].split("-")
    return "/".join(p for p in (prefix, year, month, day, cdr["recording"]) if p)


def delete_on_pbx(sim: Sim, *names: str) -> None:
    reply = sim.http.post("/sim/delete-recordings", json={"names": list(names)})
    reply.raise_for_status()


def downloads(sim: Sim, name: str) -> int:
    return int(sim.stats()["downloads"].get(name, 0))


def test_archive_to_s3_then_verify(sim, mount_factory, s3_bucket, tmp_path):
    mount = mount_factory("prefetch=none")
    cdrs = [sim.call(duration=2, caller="0612345678", callee="2001", type="Inbound")
            for _ in range(3)] + [sim.call(duration=3, type="Outbound")]
    for cdr in cdrs:
        mount.wait_file(cdr)
    # One recording is read through the mount: it is in the cache, and the archive
    # command takes it from there, not from the PBX.
    cached = cdrs[0]
    path = mount.file_of(cached)
    assert path.read_bytes() == sim.recording_bytes(cached["recording"])
    ino = os.stat(path).st_ino
    wait_for(lambda: (mount.cache_dir / "complete" / f"{ino:016x}.wav").exists(),
             what="the read recording in the cache")
    before = downloads(sim, cached["recording"])

    archive = s3_options(tmp_path, s3_bucket)
    done = run_archive(sim, mount, archive)
    assert done.returncode == 0, done.stdout + done.stderr
    sizes = sum(len(sim.recording_bytes(c["recording"])) for c in cdrs)
    assert (f"archive: 4 uploaded ({sizes / 2**20:.1f} MiB), 0 already there, 0 conflicts, "
            "0 lost on the PBX, 0 failed") in done.stdout, done.stdout
    assert downloads(sim, cached["recording"]) == before, "the cached file was downloaded again"
    for cdr in cdrs[1:]:
        assert downloads(sim, cdr["recording"]) >= 1

    # Every object: the PBX's bytes, recfs's SHA-256 and the CDR fields as metadata.
    client = s3_bucket.client()
    listed = client.list_objects_v2(Bucket=s3_bucket.name)
    # (recfs's own probe object, .recfs-no-overwrite, is not a recording)
    assert sorted(o["Key"] for o in listed.get("Contents", [])
                  if "/.recfs-" not in o["Key"]) == \
        sorted(key_of(c, "calls") for c in cdrs)
    for cdr in cdrs:
        data = sim.recording_bytes(cdr["recording"])
        got = client.get_object(Bucket=s3_bucket.name, Key=key_of(cdr, "calls"))
        assert got["Body"].read() == data
        meta = got["Metadata"]
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        for field, reported in (("callid", "callid"), ("caller", "callfrom"),
                                ("callee", "callto"), ("type", "type"),
                                ("timestart", "timestart")):
            assert meta[field] == cdr[reported], (field, meta)
    rows = catalog_rows(mount)
    for cdr in cdrs:
        state, lost, sha256, size = rows[cdr["recording"]]
        data = sim.recording_bytes(cdr["recording"])
        assert (state, lost, sha256, size) == ("archived", 0, hashlib.sha256(data).hexdigest(),
                                               len(data))

    # Nothing left to do.
    again = run_archive(sim, mount, archive, "-q")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "archive: 0 uploaded (0.0 MiB), 0 already there, 0 conflicts, 0 lost on the PBX, " \
           "0 failed" in again.stdout, again.stdout

    checked = run_archive(sim, mount, archive, "--verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verify: 4 ok, 0 missing, 0 corrupt; 0 lost and not archived" in checked.stdout

    # An object changed behind recfs's back (its metadata still says the old SHA-256).
    victim = cdrs[2]
    old = client.head_object(Bucket=s3_bucket.name, Key=key_of(victim, "calls"))
    client.put_object(Bucket=s3_bucket.name, Key=key_of(victim, "calls"),
                      Body=b"RIFF not the recording", Metadata=old["Metadata"])
    checked = run_archive(sim, mount, archive, "--verify")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "verify: 3 ok, 0 missing, 1 corrupt; 0 lost and not archived" in checked.stdout
    assert f"  corrupt: {key_of(victim, 'calls')}: " in checked.stdout, checked.stdout

    # A recording the PBX deleted before it was archived: lost, listed, exit 1.
    gone = sim.call(duration=2)
    mount.wait_file(gone)
    delete_on_pbx(sim, gone["recording"])
    done = run_archive(sim, mount, archive)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "archive: 0 uploaded (0.0 MiB), 0 already there, 0 conflicts, 1 lost on the PBX, " \
           "0 failed" in done.stdout, done.stdout
    assert f"  lost on the PBX: {gone['recording']}" in done.stdout
    assert catalog_rows(mount)[gone["recording"]][:2] == (None, 1)
    # Known lost: not asked for again; still reported.
    asked = sim.stats()["get_random"].get(gone["recording"], 0)
    done = run_archive(sim, mount, archive, "-q")
    assert done.returncode == 1 and "1 lost on the PBX" in done.stdout, done.stdout
    assert sim.stats()["get_random"].get(gone["recording"], 0) == asked
    checked = run_archive(sim, mount, archive, "--verify")
    assert checked.returncode == 1
    assert "verify: 3 ok, 0 missing, 1 corrupt; 1 lost and not archived" in checked.stdout
    assert f"  lost and not archived: {gone['recording']}" in checked.stdout

    # No secret on the terminal, ever.
    for text in (done.stdout + done.stderr, checked.stdout + checked.stderr):
        for secret in (sim.password, s3_bucket.secret_key, s3_bucket.access_key):
            assert secret not in text
    assert mount.unmount() == 0


def test_archive_to_a_directory_conflicts_and_missing(sim, mount_factory, tmp_path):
    mount = mount_factory("prefetch=none")
    cdrs = [sim.call(duration=2) for _ in range(3)]
    for cdr in cdrs:
        mount.wait_file(cdr)
    root = tmp_path / "archive"
    root.mkdir()
    archive = [f"archive=file://{root}"]
    # Someone else's file already at one recording's key: a conflict, never overwritten.
    taken = root / key_of(cdrs[1])
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's bytes")

    done = run_archive(sim, mount, archive)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "archive: 2 uploaded" in done.stdout and "1 conflicts" in done.stdout, done.stdout
    assert f"  conflict: {cdrs[1]['recording']}: " in done.stdout
    assert taken.read_bytes() == b"someone else's bytes"
    rows = catalog_rows(mount)
    assert rows[cdrs[1]["recording"]][0] == "conflict"
    for cdr in (cdrs[0], cdrs[2]):
        data = sim.recording_bytes(cdr["recording"])
        stored = root / key_of(cdr)
        assert stored.read_bytes() == data
        sidecar = json.loads(stored.with_name(stored.name + ".meta.json").read_text())
        assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
        assert sidecar["metadata"]["callid"] == cdr["callid"]
        assert rows[cdr["recording"]][0] == "archived"

    # The person moves the stranger away: the next run archives the recording.
    taken.unlink()
    done = run_archive(sim, mount, archive, "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "archive: 1 uploaded" in done.stdout and "0 conflicts" in done.stdout, done.stdout
    assert taken.read_bytes() == sim.recording_bytes(cdrs[1]["recording"])

    checked = run_archive(sim, mount, archive, "--verify", "-q")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verify: 3 ok, 0 missing, 0 corrupt; 0 lost and not archived" in checked.stdout

    # One object removed, one damaged.
    (root / key_of(cdrs[0])).unlink()
    damaged = root / key_of(cdrs[2])
    damaged.chmod(0o644)
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    checked = run_archive(sim, mount, archive, "--verify")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "verify: 1 ok, 1 missing, 1 corrupt; 0 lost and not archived" in checked.stdout
    assert f"  missing: {key_of(cdrs[0])}" in checked.stdout
    assert f"  corrupt: {key_of(cdrs[2])}: SHA-256 " in checked.stdout
    assert mount.unmount() == 0


def test_archive_configuration_errors(sim, mount_factory, s3_bucket, tmp_path):
    mount = mount_factory("prefetch=none")
    cdr = sim.call(duration=1)
    mount.wait_file(cdr)

    done = run_archive(sim, mount, [])
    assert done.returncode == 2 and "no archive configured" in done.stderr, done.stderr

    missing = run_archive(sim, mount, [f"archive=file://{tmp_path / 'nowhere'}"])
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    bad_key = wrong / "archive.credentials"
    bad_key.write_text(f"[default]\naws_access_key_id = {s3_bucket.access_key}\n"
                       "aws_secret_access_key = not-the-secret-key\n")
    bad_key.chmod(0o600)
    refused = run_archive(sim, mount, [f"archive=s3://{s3_bucket.name}",
                                       f"archive_endpoint={s3_bucket.endpoint}",
                                       f"archive_credentials={bad_key}"])
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("recfs: ")]
    assert len(lines) == 1 and "archive_credentials" in lines[0], refused.stderr
    assert "not-the-secret-key" not in refused.stderr + refused.stdout

    down = run_archive(sim, mount, [f"archive=s3://{s3_bucket.name}",
                                    f"archive_endpoint=http://127.0.0.1:{free_port()}",
                                    f"archive_credentials={credentials(tmp_path, s3_bucket)}",
                                    "io_timeout=5"])
    assert down.returncode == 1 and "store not reachable" in down.stderr, down.stderr
    assert s3_bucket.secret_key not in down.stderr + down.stdout

    # Nothing was marked in the catalog by any of them.
    assert catalog_rows(mount)[cdr["recording"]][0] is None
    assert mount.unmount() == 0


def test_archive_one_pbx_of_several_without_a_mount(sim, tmp_path):
    """A catalog filled by `recfs backfill` (no mount at all), in a config of several
    PBXs: --pbx names the one, and its name is part of every key."""
    cdrs = [sim.call(duration=1, drop_report=True) for _ in range(2)]
    password = tmp_path / "password"
    password.write_text(sim.password + "\n")
    password.chmod(0o600)
    root = tmp_path / "archive"
    root.mkdir()
    config = tmp_path / "all.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\ncache_dir = "{tmp_path / "cache"}"\n'
                      f'archive = "file://{root}"\n'
                      f'[pbx.head]\nsource = "{sim.url}"\nuser = "{sim.user}"\n'
                      f'password_file = "{password}"\ncafile = "{sim.cafile}"\n'
                      f'[pbx.other]\nsource = "https://127.0.0.1:{free_port()}"\n'
                      f'password_file = "{password}"\n')
    day = cdrs[0]["timestart"][:10]
    filled = subprocess.run([*RECFS, "backfill", "recfs", "--pbx", "head", "--since", day,
                             "-o", f"config={config}"], capture_output=True, text=True, timeout=120)
    assert filled.returncode == 0, filled.stderr

    def archive(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*RECFS, "archive", "recfs", *args, "-o", f"config={config}"],
                              capture_output=True, text=True, timeout=120)

    unnamed = archive()
    assert unnamed.returncode == 2 and "--pbx" in unnamed.stderr, unnamed.stderr
    done = archive("--pbx", "head")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "archive: 2 uploaded" in done.stdout, done.stdout
    for cdr in cdrs:
        assert (root / "head" / key_of(cdr)).read_bytes() == sim.recording_bytes(cdr["recording"])
    checked = archive("--pbx", "head", "--verify")
    assert checked.returncode == 0 and "verify: 2 ok" in checked.stdout, checked.stdout
    assert sim.password not in done.stdout + done.stderr + checked.stdout + checked.stderr
