"""The archive on real mounts: every verified recording goes to a real S3 store
(SeaweedFS on loopback) or a directory, reads of archived recordings never ask the
PBX, the PBX's auto-cleanup loses nothing, and wrong bytes are never served from the
cache."""

from __future__ import annotations

import errno
import hashlib
import os
import time

import pytest

from tests.mount.harness import Mount, read_after_recovery, wait_for


def credentials_file(bucket, directory) -> str:
    path = directory / "archive.credentials"
    path.write_text(f"[default]\naws_access_key_id = {bucket.access_key}\n"
                    f"aws_secret_access_key = {bucket.secret_key}\n")
    path.chmod(0o600)
    return str(path)


def s3_options(bucket, directory, prefix: str = "calls") -> list[str]:
    return [f"archive=s3://{bucket.name}/{prefix}", f"archive_endpoint={bucket.endpoint}",
            f"archive_credentials={credentials_file(bucket, directory)}"]


def object_key(cdr: dict, prefix: str = "calls") -> str:
    return f"{prefix}/{cdr['timestart'][:10].replace('-', '/')}/{cdr['recording']}"


def status(mount) -> dict:
    import json
    return json.loads(os.getxattr(mount.path, "user.recfs.mount"))


def archived(mount, count: int) -> bool:
    backlog = status(mount)["archive"]
    return backlog["pending"] == 0 and backlog["uploaded"] + 0 >= count


def test_recordings_outlive_the_pbx(sim, s3_bucket, tmp_path):
    """The PBX's auto-cleanup, played: archived, deleted on the simulator, read back
    on a fresh cache with zero PBX downloads."""
    first = Mount(sim, tmp_path / "a", *s3_options(s3_bucket, tmp_path))  # prefetch=new
    cdrs = [sim.call(duration=3) for _ in range(3)]
    for cdr in cdrs:
        first.wait_file(cdr)
    wait_for(lambda: archived(first, 3), 30, what="three uploads")
    s3 = s3_bucket.client()
    for cdr in cdrs:
        head = s3.head_object(Bucket=s3_bucket.name, Key=object_key(cdr))
        body = sim.recording_bytes(cdr["recording"])
        assert head["ContentLength"] == len(body)
        assert head["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
        assert head["Metadata"]["callid"] == cdr["callid"]
        assert os.getxattr(first.file_of(cdr), "user.recfs.sha256").decode() == \
            hashlib.sha256(body).hexdigest()
    assert first.unmount() == 0
    originals = {c["recording"]: sim.recording_bytes(c["recording"]) for c in cdrs}
    sim.http.post("/sim/delete-recordings", json={"all": True}).raise_for_status()
    downloads_before = sim.stats()["downloads"]
    # A fresh cache: every byte must come from the archive.
    again = Mount(sim, tmp_path / "a", *s3_options(s3_bucket, tmp_path), "prefetch=none",
                  "cache_dir=" + str(tmp_path / "fresh-cache"))
    for cdr in cdrs:
        assert again.file_of(cdr).read_bytes() == originals[cdr["recording"]]
    assert sim.stats()["downloads"] == downloads_before
    assert again.unmount() == 0


def test_a_recording_the_pbx_lost_before_archiving_fails_fast(sim, s3_bucket, tmp_path):
    mount = Mount(sim, tmp_path / "l", *s3_options(s3_bucket, tmp_path), "prefetch=none")
    cdr = sim.call(duration=2)
    path = mount.wait_file(cdr)
    sim.http.post("/sim/delete-recordings", json={"names": [cdr["recording"]]}).raise_for_status()
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    assert caught.value.errno == errno.ENODATA
    wait_for(lambda: status(mount)["archive"]["lost"] == 1, 10, what="lost in the status")
    randoms = sum(sim.stats()["get_random"].values())
    started = time.monotonic()
    with pytest.raises(OSError) as again:
        path.read_bytes()  # at once, and without asking the PBX again
    assert again.value.errno == errno.ENODATA and time.monotonic() - started < 1
    assert sum(sim.stats()["get_random"].values()) == randoms
    assert mount.unmount() == 0


def test_changed_bytes_in_the_store_are_never_served_from_the_cache(sim, s3_bucket, tmp_path):
    first = Mount(sim, tmp_path / "c", *s3_options(s3_bucket, tmp_path))
    cdr = sim.call(duration=3)
    first.wait_file(cdr)
    wait_for(lambda: archived(first, 1), 30, what="the upload")
    assert first.unmount() == 0
    original = sim.recording_bytes(cdr["recording"])
    s3 = s3_bucket.client()
    key = object_key(cdr)
    head = s3.head_object(Bucket=s3_bucket.name, Key=key)
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    s3.put_object(Bucket=s3_bucket.name, Key=key, Body=bytes(tampered), Metadata=head["Metadata"])
    again = Mount(sim, tmp_path / "c", *s3_options(s3_bucket, tmp_path), "prefetch=none",
                  "cache_dir=" + str(tmp_path / "fresh-cache"),
                  allowed_errors=[r"archive object .* has other bytes than were archived"])
    path = again.file_of(cdr)
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    assert caught.value.errno == errno.EIO
    assert key in again.log()
    # The next read asks the PBX, which still has it: the right bytes, and cached.
    assert read_after_recovery(path) == original
    assert path.read_bytes() == original
    assert again.unmount() == 0


def test_a_store_down_at_mount_time_is_caught_up_later(sim, s3_bucket, tmp_path):
    from urllib.parse import urlsplit
    from tests.servers import FaultyLink
    target = urlsplit(s3_bucket.endpoint)
    link = FaultyLink((target.hostname, target.port))

    class ThroughLink:
        name, endpoint = s3_bucket.name, link.endpoint
        access_key, secret_key = s3_bucket.access_key, s3_bucket.secret_key

    link.down()
    try:
        mount = Mount(sim, tmp_path / "d", *s3_options(ThroughLink, tmp_path),
                      "io_timeout=5")
        assert "not reachable" in mount.log()
        cdrs = [sim.call(duration=3) for _ in range(2)]
        for cdr in cdrs:  # the mount serves the PBX meanwhile
            assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
        wait_for(lambda: status(mount)["archive"]["pending"] == 2, 20, what="a backlog of 2")
        wait_for(lambda: status(mount)["archive"]["retrying"] >= 1, 60, what="a failed upload")
        link.up()
        wait_for(lambda: archived(mount, 2), 120, what="the backlog to be uploaded")
        s3 = s3_bucket.client()
        for cdr in cdrs:
            s3.head_object(Bucket=s3_bucket.name, Key=object_key(cdr))
        assert mount.unmount() == 0
    finally:
        link.close()


def test_a_directory_archive(sim, tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    mount = Mount(sim, tmp_path / "f", f"archive=file://{root}")
    cdr = sim.call(duration=2)
    mount.wait_file(cdr)
    wait_for(lambda: archived(mount, 1), 30, what="the upload")
    stored = root / cdr["timestart"][:10].replace("-", "/") / cdr["recording"]
    assert stored.read_bytes() == sim.recording_bytes(cdr["recording"])
    assert mount.unmount() == 0


def test_wrong_store_credentials_end_the_mount_command(sim, s3_bucket, tmp_path):
    from recfs.service.mountpoint import EX_CONFIG
    from tests.mount.harness import try_mount
    creds = tmp_path / "bad.credentials"
    creds.write_text("[default]\naws_access_key_id = nobody\naws_secret_access_key = s3cr3t-V4lue\n")
    creds.chmod(0o600)
    done = try_mount(sim, tmp_path / "w", f"archive=s3://{s3_bucket.name}",
                     f"archive_endpoint={s3_bucket.endpoint}", f"archive_credentials={creds}")
    assert done.returncode == EX_CONFIG and "archive_credentials" in done.stderr, done.stderr
    assert "s3cr3t-V4lue" not in done.stderr and "nobody" not in done.stderr
