"""What reaches the receiver, and how hard recfs leans on the PBX."""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest

from tests.mount.harness import receiver_url, wait_for

GOOD = {"event": "NewCdr", "callid": "1718001234.88", "timestart": "2024-06-10 08:33:54",
        "callfrom": "0612345678", "callto": "2001", "type": "Inbound", "status": "ANSWERED",
        "recording": "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"}


def tree(mount) -> list[str]:
    """The date tree's files (the by-* views list the same files again)."""
    found = []
    for root, dirs, files in os.walk(mount.path):
        if root == str(mount.path):
            dirs[:] = [d for d in dirs if not d.startswith("by-")]
        found += [os.path.relpath(os.path.join(root, f), mount.path) for f in files]
    return sorted(found)


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"\xff\xfe\x00", json.dumps({**GOOD, "recording": "../../etc/passwd"}).encode(),
    json.dumps({**GOOD, "recording": "a/b.wav"}).encode(),
    json.dumps({**GOOD, "recording": "x\u0000y.wav"}).encode(),
    json.dumps({**GOOD, "recording": "x" * 300}).encode(),
    json.dumps({**GOOD, "recording": ".."}).encode(),
    json.dumps({**GOOD, "recording": "bell\u0007.wav"}).encode(),
])
def test_garbage_is_refused_and_changes_nothing(sim, mounted, body):
    url = receiver_url(mounted)
    before = tree(mounted)
    reply = httpx.post(url, content=body, headers={"content-type": "application/json"})
    assert 400 <= reply.status_code < 500
    assert tree(mounted) == before
    assert "refused a report" in mounted.log()


def test_unknown_events_and_duplicates_are_answered_200(sim, mounted):
    url = receiver_url(mounted)
    assert httpx.post(url, json={"event": "ExtensionStatus", "extension": "1001"}).status_code == 200
    assert httpx.post(url, json={"action": "NewCdr", "recording": ""}).status_code == 200
    for _ in range(3):
        assert httpx.post(url, json=GOOD).status_code == 200
    assert tree(mounted) == [f"2024/06/10/{GOOD['recording']}"]
    assert httpx.post(url, content=b"x" * 70_000).status_code == 413


def test_never_more_than_max_downloads_at_the_pbx(sim, mount_factory):
    mount = mount_factory("prefetch=none", "max_downloads=2")
    cdrs = [sim.call(duration=10) for _ in range(6)]
    paths = [mount.wait_file(c) for c in cdrs]
    sim.faults(throttle=400_000)
    results = {}

    def read(path):
        results[path] = path.read_bytes()

    threads = [threading.Thread(target=read, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for cdr, path in zip(cdrs, paths):
        assert results[path] == sim.recording_bytes(cdr["recording"])
    stats = sim.stats()
    assert stats["downloads_max_concurrent"] == 2
    assert sum(stats["downloads"].values()) == 6


def test_metadata_answers_while_the_pbx_is_down(sim, mount_factory):
    mount = mount_factory("prefetch=new")
    cdr = sim.call(duration=3)
    path = mount.wait_file(cdr)
    wait_for(lambda: any(mount.cache_dir.joinpath("complete").iterdir()), what="prefetch")
    sim.close()
    st = path.stat()
    assert st.st_size == 44 + 3 * 16000
    assert os.statvfs(mount.path).f_files >= 1
    assert path.read_bytes()[:4] == b"RIFF"  # cached: no PBX needed
