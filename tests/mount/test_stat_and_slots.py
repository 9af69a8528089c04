"""What metadata and abandoned reads cost at the PBX, on real mounts of a throttled
simulator: a stat learns a size for one handshake and the response's first bytes
(never the whole recording), and reads nobody waits for any more give their
transfer slots to the reader who comes next."""

from __future__ import annotations

import os
import re
import subprocess
import time

from tests.mount.harness import wait_for

RATE = 1_000_000  # bytes per second and download: a PBX on a slow link
SECOND = 16000  # bytes of audio per second of call (8 kHz, 16-bit mono)


def sent_since(sim, offset: int) -> int:
    """Bytes of recordings the simulator sent since its log was *offset* bytes long:
    whole bodies, and those the client hung up on."""
    text = sim.log_path.read_bytes()[offset:].decode(errors="replace")
    whole = sum(int(n) for n in re.findall(r"→ audio (\d+) bytes", text))
    cut = sum(int(n) for n in re.findall(r"client went away after (\d+) of \d+ bytes", text))
    return whole + cut


def settle(sim) -> None:
    """Until no download is running at the PBX (lingering ones have ended)."""
    wait_for(lambda: sim.stats()["downloads_active"] == 0, 15, what="downloads to end")


def test_ls_l_of_unknown_sizes_costs_one_handshake_each_and_few_bytes(sim, mounted):
    count = 8
    cdrs = [sim.call(duration=120 + i) for i in range(count)]  # about 1.9 MB each
    paths = [mounted.wait_file(c) for c in cdrs]  # listed: sizes still unknown
    truth = {name: entry["size"] for name, entry in sim.recordings().items()}
    total = sum(truth[c["recording"]] for c in cdrs)
    sim.faults(throttle=RATE)
    sim.http.post("/sim/reset-stats").raise_for_status()
    log_offset = sim.log_path.stat().st_size

    began = time.monotonic()
    listing = subprocess.run(["ls", "-l", str(paths[0].parent)], capture_output=True,
                             text=True, check=True).stdout
    took = time.monotonic() - began
    shown = {fields[-1]: int(fields[4]) for fields in
             (line.split() for line in listing.splitlines()[1:])}
    assert shown == {c["recording"]: truth[c["recording"]] for c in cdrs}
    # One handshake each, in well under the time one whole recording takes.
    assert took < total / count / RATE, took
    stats = sim.stats()
    assert sum(stats["get_random"].values()) == count
    assert all(stats["get_random"].get(c["recording"]) == 1 for c in cdrs)
    settle(sim)
    stats = sim.stats()
    assert stats["downloads_completed"] == 0
    assert stats["downloads_max_concurrent"] <= 2
    sent = sent_since(sim, log_offset)
    assert 0 < sent < total // 10, (sent, total)
    assert os.listdir(mounted.cache_dir / "complete") == []
    assert os.listdir(mounted.cache_dir / "partial") == []

    # The sizes are in the catalog: from now on a listing costs the PBX nothing,
    # after a remount too.
    assert mounted.unmount() == 0
    mounted.start()
    sim.http.post("/sim/reset-stats").raise_for_status()
    again = subprocess.run(["ls", "-l", str(paths[0].parent)], capture_output=True,
                           text=True, check=True).stdout
    assert again == listing
    du = subprocess.run(["du", "-sb", str(paths[0].parent)], capture_output=True, text=True,
                        check=True).stdout
    assert int(du.split()[0]) >= total
    assert sim.stats()["get_random"] == {}

    # Reading one still gives every byte (a fresh handshake: nothing was kept).
    assert paths[3].read_bytes() == sim.recording_bytes(cdrs[3]["recording"])


def test_abandoned_reads_leave_their_slots_to_the_next_reader(sim, mount_factory):
    mount = mount_factory("prefetch=none", "max_downloads=2")
    size_seconds = 4 * RATE // SECOND  # 4 s apiece at RATE
    cdrs = [sim.call(duration=size_seconds + i) for i in range(3)]
    paths = [mount.wait_file(c) for c in cdrs]
    whole = sim.recordings()[cdrs[2]["recording"]]["size"] / RATE
    sim.faults(throttle=RATE)
    sim.http.post("/sim/reset-stats").raise_for_status()

    for path in paths[:2]:  # two readers that look at the header and give up
        head = subprocess.run(["head", "-c", "4096", str(path)], capture_output=True, check=True)
        assert head.stdout[:4] == b"RIFF" and len(head.stdout) == 4096

    began = time.monotonic()
    with open(paths[2], "rb", buffering=0) as f:
        first = f.read(4096)
        first_byte = time.monotonic() - began
        rest = b"".join(iter(lambda: f.read(1 << 20), b""))
    took = time.monotonic() - began
    assert first + rest == sim.recording_bytes(cdrs[2]["recording"])
    # Not behind the two downloads nobody reads (each would take `whole` seconds).
    assert first_byte < whole / 4, (first_byte, whole)
    assert took < whole * 1.5, (took, whole)
    stats = sim.stats()
    assert stats["downloads_max_concurrent"] <= 2, stats
    # The open after each lookup shared the lookup's transfer: one handshake each.
    assert [stats["get_random"].get(c["recording"]) for c in cdrs] == [1, 1, 1]
    settle(sim)
    assert sim.stats()["downloads_completed"] == 1
    assert len(os.listdir(mount.cache_dir / "complete")) == 1
    assert os.listdir(mount.cache_dir / "partial") == []
