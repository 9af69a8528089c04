"""recfs mounted for real against the simulator over HTTPS on loopback."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time

import pytest

from tests.mount.harness import read_after_recovery, wait_for


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recordings_appear_with_exact_size_mtime_and_content(sim, mounted):
    cdr = sim.call(duration=4)
    started = time.monotonic()
    path = mounted.wait_file(cdr, timeout=5)
    assert time.monotonic() - started < 1.0, "a recording must appear within 1 s of its report"
    truth = sim.recordings()[cdr["recording"]]
    st = path.stat()
    assert st.st_size == truth["size"] == 44 + 4 * 16000
    assert int(st.st_mtime) == int(cdr["callid"].split(".")[0])
    assert oct(st.st_mode & 0o777) == "0o444"
    copy = mounted.workdir / "copy.wav"
    subprocess.run(["cp", str(path), str(copy)], check=True)
    assert sha256(copy) == truth["sha256"]
    md5 = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, check=True)
    assert md5.stdout.split()[0] == hashlib.md5(sim.recording_bytes(cdr["recording"])).hexdigest()


def test_sox_and_ffprobe_read_the_files(sim, mounted):
    cdr = sim.call(duration=3)
    path = mounted.wait_file(cdr)
    info = subprocess.run(["sox", "--i", str(path)], capture_output=True, text=True, check=True)
    assert "Sample Rate    : 8000" in info.stdout and "Channels       : 1" in info.stdout
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels",
         "-of", "default=nw=1", str(path)], capture_output=True, text=True, check=True)
    assert "codec_name=pcm_s16le" in probe.stdout and "sample_rate=8000" in probe.stdout
    assert "duration=3" in subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1",
         str(path)], capture_output=True, text=True, check=True).stdout


def test_one_handshake_and_one_download_then_the_cache(sim, mounted):
    cdr = sim.call(duration=5)
    path = mounted.wait_file(cdr)
    name = cdr["recording"]
    before = sim.stats()
    assert before["downloads"].get(name, 0) == 0  # listing and lookup cost nothing
    data = path.read_bytes()
    after = sim.stats()
    assert after["get_random"].get(name) == 1 and after["downloads"].get(name) == 1
    wait_for(lambda: any(mounted.cache_dir.joinpath("complete").iterdir()), what="cache file")
    # Dropping the kernel's page cache makes the second read really come to recfs.
    subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
    assert path.read_bytes() == data == sim.recording_bytes(name)
    again = sim.stats()
    assert again["get_random"].get(name) == 1 and again["downloads"].get(name) == 1


def test_concurrent_readers_share_one_download(sim, mounted):
    cdr = sim.call(duration=20)  # 320 kB
    path = mounted.wait_file(cdr)
    sim.faults(throttle=200_000)
    results = []

    def read():
        results.append(path.read_bytes())

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    truth = sim.recording_bytes(cdr["recording"])
    assert results == [truth] * 3
    stats = sim.stats()
    assert stats["downloads"][cdr["recording"]] == 1
    assert stats["get_random"][cdr["recording"]] == 1


def test_read_is_answered_before_the_download_finishes(sim, mounted):
    cdr = sim.call(duration=60)  # 960 kB at 100 kB/s: about 10 s
    path = mounted.wait_file(cdr)
    sim.faults(throttle=100_000)
    with open(path, "rb", buffering=0) as f:
        first = f.read(4096)
        stats = sim.stats()
        assert stats["downloads_active"] == 1, "the first bytes came only after the whole file"
        assert first == sim.recording_bytes(cdr["recording"])[:4096]
        # A seek back and forth within what has arrived, then to the end.
        f.seek(44)
        assert f.read(100) == sim.recording_bytes(cdr["recording"])[44:144]


def test_pbx_error_gives_eio_and_caches_nothing(sim, mounted):
    cdr = sim.call(duration=3)
    path = mounted.wait_file(cdr)
    sim.faults(download_error="10003")  # a final errno that is not "no such file"
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO
    assert list(mounted.cache_dir.joinpath("complete").iterdir()) == []
    assert "errno 10003" in mounted.log()
    sim.clear_faults()
    assert read_after_recovery(path) == sim.recording_bytes(cdr["recording"])


def test_expired_token_is_renewed_without_the_reader_noticing(sim, mounted):
    cdr = sim.call(duration=3)
    path = mounted.wait_file(cdr)
    sim.http.post("/sim/expire-tokens").raise_for_status()
    logins = sim.stats()["logins"]
    assert path.read_bytes() == sim.recording_bytes(cdr["recording"])
    assert sim.stats()["logins"] == logins + 1


def test_writes_fail_with_erofs(sim, mounted):
    cdr = sim.call(duration=3)
    path = mounted.wait_file(cdr)
    attempts = [
        lambda: open(path, "r+b"),
        lambda: open(path.parent / "new.wav", "wb"),
        lambda: os.mkdir(path.parent / "dir"),
        lambda: os.unlink(path),
        lambda: os.rename(path, path.parent / "x.wav"),
        lambda: os.truncate(path, 0),
        lambda: os.chmod(path, 0o666),
        lambda: os.setxattr(path, "user.x", b"1"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS


def test_unmount_exits_zero_and_logs_out(sim, mounted):
    sim.call(duration=3)
    wait_for(lambda: sim.stats()["logins"] >= 1, what="login")
    assert mounted.unmount() == 0
    assert sim.stats()["logouts"] == 1


def test_sigterm_unmounts_cleanly(sim, mounted):
    mounted.proc.terminate()
    assert mounted.proc.wait(30) == 0
    assert not os.path.ismount(mounted.path)


def test_inodes_and_cache_survive_a_remount(sim, mount_factory):
    mount = mount_factory("prefetch=none")
    cdr = sim.call(duration=3)
    path = mount.wait_file(cdr)
    data = path.read_bytes()
    before = {p: os.stat(p).st_ino for p in (path, path.parent, path.parent.parent)}
    wait_for(lambda: any(mount.cache_dir.joinpath("complete").iterdir()), what="cache file")
    assert mount.unmount() == 0
    mount.start()
    assert {p: os.stat(p).st_ino for p in before} == before
    assert path.read_bytes() == data
    assert sim.stats()["downloads"][cdr["recording"]] == 1


def test_background_mount_returns_when_ready(sim, mount_factory):
    mount = mount_factory("prefetch=none", background=True)
    cdr = sim.call(duration=3)
    assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
    mount.unmount()


def test_prefetch_new_fetches_in_the_background(sim, mount_factory):
    mount = mount_factory()  # prefetch=new is the default
    cdr = sim.call(duration=3)
    wait_for(lambda: sim.stats()["downloads"].get(cdr["recording"]) == 1, what="prefetch")
    path = mount.wait_file(cdr)
    wait_for(lambda: any(mount.cache_dir.joinpath("complete").iterdir()), what="cache file")
    assert path.stat().st_size == sim.recordings()[cdr["recording"]]["size"]
    assert path.read_bytes() == sim.recording_bytes(cdr["recording"])
    assert sim.stats()["downloads"][cdr["recording"]] == 1


def test_rsync_copies_the_tree(sim, mounted):
    cdrs = [sim.call(duration=2 + i) for i in range(3)]
    for cdr in cdrs:
        mounted.wait_file(cdr)
    target = mounted.workdir / "backup"
    subprocess.run(["rsync", "-a", f"{mounted.path}/", f"{target}/"], check=True, timeout=120)
    for cdr in cdrs:
        copy = target.joinpath(*cdr["timestart"][:10].split("-"), cdr["recording"])
        assert copy.read_bytes() == sim.recording_bytes(cdr["recording"])
        assert int(copy.stat().st_mtime) == int(cdr["callid"].split(".")[0])


@pytest.mark.parametrize("version", ["v1.1.0", "v1.0.1"])
def test_older_api_versions(sim, mount_factory, version):
    mount = mount_factory("prefetch=none", f"api_version={version}")
    cdr = sim.call(duration=2)
    assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])


def test_getfattr_shows_the_cdr(sim, mounted):
    cdr = sim.call(duration=2)
    path = mounted.wait_file(cdr)
    out = subprocess.run(["getfattr", "-d", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert f'user.recfs.caller="{cdr["callfrom"]}"' in out
    assert f'user.recfs.callid="{cdr["callid"]}"' in out


@pytest.mark.parametrize("fault", [{"no_content_length": True}, {}])
def test_with_and_without_content_length(sim, mounted, fault):
    cdr = sim.call(duration=6)
    path = mounted.wait_file(cdr)
    sim.faults(throttle=300_000, **fault)
    with open(path, "rb") as f:
        # The size comes from the WAV header when the PBX sends no Content-Length.
        assert os.fstat(f.fileno()).st_size == 44 + 6 * 16000
        assert f.read() == sim.recording_bytes(cdr["recording"])


def test_owner_and_umask_options(sim, mount_factory):
    mount = mount_factory("prefetch=none", "uid=1234", "gid=5678", "umask=027")
    cdr = sim.call(duration=2)
    path = mount.wait_file(cdr)
    st, dst = path.stat(), path.parent.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 5678, 0o440)
    assert (dst.st_uid, dst.st_gid, dst.st_mode & 0o777) == (1234, 5678, 0o550)
