"""The fault table (docs/faults.md), rows not covered by test_content.py: each PBX
fault has one defined outcome, on a real mount against the simulator's switches."""

from __future__ import annotations

import errno
import time

import pytest

from tests.mount.harness import Mount, read_after_recovery, wait_for


def cache_files(mount) -> list:
    return list(mount.cache_dir.joinpath("complete").glob("*"))


def expect_eio(path) -> None:
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO


def test_html_error_page_is_eio_and_never_cached(sim, mounted):
    cdr = sim.call(duration=2)
    path = mounted.wait_file(cdr)
    sim.faults(html_error=True)
    expect_eio(path)
    assert cache_files(mounted) == []
    assert "HTML page, not audio" in mounted.log()
    sim.clear_faults()
    assert read_after_recovery(path) == sim.recording_bytes(cdr["recording"])


@pytest.mark.parametrize("errno_", ["10024", "20006"], ids=["used-or-expired-random",
                                                             "token-expired-mid-download"])
def test_a_refused_download_is_retried_with_a_fresh_handshake(sim, mounted, errno_):
    cdr = sim.call(duration=2)
    path = mounted.wait_file(cdr)
    sim.faults(download_error={"value": errno_, "times": 1})
    assert path.read_bytes() == sim.recording_bytes(cdr["recording"])
    stats = sim.stats()
    assert stats["get_random"][cdr["recording"]] == 2  # never a reused random


@pytest.mark.parametrize("gone", ["10023", "20014"])
def test_no_such_file_is_final_and_the_recording_lost(sim, mounted, gone):
    """The PBX's answer that it no longer has the file (auto-cleanup; 20014 on
    K2/S1000-era firmware): without an archive copy the recording is lost, its reads
    fail at once with ENODATA, and the PBX is not asked again."""
    cdr = sim.call(duration=2)
    path = mounted.wait_file(cdr)
    sim.faults(download_error=gone)
    for _ in range(2):
        with pytest.raises(OSError) as info:
            path.read_bytes()
        assert info.value.errno == errno.ENODATA
    assert sim.stats()["get_random"][cdr["recording"]] == 1  # no pointless retries
    assert f"the PBX no longer has it (errno {gone})" in mounted.log()


def test_connection_refused_fails_fast_and_recovers(sim, tmp_path):
    mount = Mount(sim, tmp_path / "down", "prefetch=none", "io_timeout=5")
    try:
        cdr = sim.call(duration=2)
        path = mount.wait_file(cdr)
        sim.proc.terminate()
        sim.proc.wait(10)
        started = time.monotonic()
        expect_eio(path)
        assert time.monotonic() - started < 30
        assert os_listing_works(path)
    finally:
        mount.cleanup()
    assert "Traceback" not in mount.log()


def os_listing_works(path) -> bool:
    import os
    return path.name in os.listdir(path.parent)


def test_lockout_makes_reads_fail_fast_without_more_logins(sim, tmp_path):
    sim.faults(login_error="20002")
    mount = Mount(sim, tmp_path / "locked", "prefetch=none")
    try:
        wait_for(lambda: "errno 20002" in mount.log(), 20, what="the lock-out in the log")
        cdr = sim.call(duration=2)  # no session: no report; the file is not listed
        failed = sim.stats()["failed_logins"]
        assert failed == 1
        time.sleep(2)
        assert sim.stats()["failed_logins"] == failed, "recfs must wait out a lock-out"
        assert cdr["recording"]
    finally:
        mount.cleanup()


def test_a_wrong_password_is_tried_once_then_the_corrected_one_is_used(sim, tmp_path):
    mount = Mount(sim, tmp_path / "pw", "prefetch=none")
    try:
        cdr = sim.call(duration=2)
        path = mount.wait_file(cdr)  # listed, not downloaded (prefetch=none)
        password_file = mount.workdir / "password"
        password_file.write_text("wrong\n")
        # The PBX forgets the session; the next call to it (this read's get_random)
        # finds the token dead and logs in again, with the wrong password.
        sim.http.post("/sim/expire-tokens").raise_for_status()
        with pytest.raises(OSError) as raised:
            path.read_bytes()
        assert raised.value.errno == errno.EIO
        wait_for(lambda: sim.stats()["failed_logins"] >= 1, 10, what="a failed login")
        time.sleep(3)
        assert sim.stats()["failed_logins"] == 1, "no hurried second try with the same password"
        password_file.write_text(sim.password + "\n")
        wait_for(lambda: sim.stats()["logins"] >= 2, 20, what="login with the corrected password")
        assert read_after_recovery(path) == sim.recording_bytes(cdr["recording"])
    finally:
        mount.cleanup()
    assert "Traceback" not in mount.log()
