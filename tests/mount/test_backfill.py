"""No recording lost: reports the PBX dropped come back through CDR back-fill, at
mount and by the periodic re-check; a PBX that is down at mount time is caught up
with once it is back."""

from __future__ import annotations

import os
import subprocess

from tests.mount.harness import Sim


def listed(mount, cdr) -> bool:
    path = mount.file_of(cdr)
    try:
        return path.name in os.listdir(path.parent)
    except FileNotFoundError:
        return False


def test_dropped_reports_appear_at_mount(sim, mount_factory):
    before = sim.call(duration=2, drop_report=True)  # before recfs ever ran: empty catalog
    mount = mount_factory("prefetch=none", "backfill_interval=3600")
    mount.wait_file(before, timeout=30)
    seen = sim.call(duration=2)
    mount.wait_file(seen)
    assert mount.unmount() == 0
    missed = [sim.call(duration=2, drop_report=True) for _ in range(3)]
    unrecorded = sim.call(duration=2, recorded=False, drop_report=True)
    mount = mount_factory("prefetch=none", "backfill_interval=3600")
    for cdr in missed:
        mount.wait_file(cdr, timeout=30)
    names = {p.name for p in mount.path.rglob("*.wav")}
    assert names == {c["recording"] for c in [before, seen, *missed]}
    assert unrecorded["recording"] == ""
    # The back-filled file is the PBX's recording, byte for byte.
    assert mount.file_of(missed[0]).read_bytes() == sim.recording_bytes(missed[0]["recording"])
    assert "back-fill (gap)" in mount.log()


def test_periodic_recheck_finds_a_dropped_report_without_remount(sim, mount_factory):
    mount = mount_factory("prefetch=none", "backfill_interval=2")
    first = sim.call(duration=2)
    mount.wait_file(first)
    downloads = sim.stats()["cdr_downloads"]
    dropped = sim.call(duration=2, drop_report=True)
    mount.wait_file(dropped, timeout=30)
    assert sim.stats()["cdr_downloads"] > downloads


def test_v1_api_backfill(tmp_path):
    sim = Sim(tmp_path / "sim1", "--fault", "cdr_bom=1")
    try:
        from tests.mount.harness import Mount
        dropped = sim.call(duration=2, drop_report=True)
        mount = Mount(sim, tmp_path / "m1", "prefetch=none", "api_version=v1.1.0")
        try:
            mount.wait_file(dropped, timeout=30)
            assert mount.unmount() == 0
            assert mount.problems() == [], mount.log()
        finally:
            mount.cleanup()
    finally:
        sim.close()


def test_pbx_down_at_mount_then_back(tmp_path):
    sim = Sim(tmp_path / "sim")
    from tests.mount.harness import Mount
    mounts = []
    try:
        cached = sim.call(duration=2)
        known = sim.call(duration=2)
        m1 = Mount(sim, tmp_path / "m", "prefetch=none")
        mounts.append(m1)
        assert m1.wait_file(cached).read_bytes() == sim.recording_bytes(cached["recording"])
        m1.wait_file(known)
        assert m1.unmount() == 0
        missed = sim.call(duration=2, drop_report=True)
        port = sim.url.rsplit(":", 1)[1]
        sim.close()  # the PBX is down

        m2 = Mount(sim, tmp_path / "m", "prefetch=none")  # same state: the catalog
        mounts.append(m2)
        path = m2.wait_file(cached)  # served from the catalog and the cache
        assert path.stat().st_mtime == int(cached["callid"].split(".")[0])
        assert path.read_bytes() == sim.recording_bytes(cached["recording"])
        uncached = m2.wait_file(known)
        done = subprocess.run(["cat", str(uncached)], capture_output=True, timeout=30)
        assert done.returncode != 0 and b"Input/output error" in done.stderr

        sim2 = Sim(tmp_path / "sim", "--listen", f"127.0.0.1:{port}")  # back, same data
        try:
            m2.wait_file(missed, timeout=90)
            assert uncached.read_bytes() == sim2.recording_bytes(known["recording"])
            assert m2.unmount() == 0
            for m in mounts:
                assert m.problems() == [], m.log()
                assert sim2.password not in m.log()
        finally:
            sim2.close()
    finally:
        for m in mounts:
            m.cleanup()
