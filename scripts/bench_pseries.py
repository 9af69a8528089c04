#!/usr/bin/env python3
"""P-Series benchmarks: recfs (-o api=p-series) against `recfs sim --series p`, with
a direct client as the baseline, measured side by side in one run.

    .venv/bin/python scripts/bench_pseries.py             # 100,000 recordings listed
    .venv/bin/python scripts/bench_pseries.py --quick     # 10,000

Needs /dev/fuse. Not part of the test suite: it prints figures and ratios.

  listwalk  a mount of a PBX holding N recordings (an empty catalog): seconds until
            all N are in the tree with their sizes, and recording/list requests (the
            simulator holds at most 1,000 a page, whatever is asked)
  ttfb      open + first 4 KiB of an uncached recording, vs a direct client's
            recording/download + first byte of the resource URL (httpx, the same
            simulator, alternating)
  stream    uncached read of a 20 MiB recording (dd bs=1M), vs the direct client
            fetching a recording of the same size

The baseline shares the one simulator with recfs and runs alternately with it, so
the server is the same for both and never serves the two at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from benchlib import MiB, dd, seconds_for, timed  # noqa: E402

UA = {"User-Agent": "bench"}


class Direct:
    """The P-Series download as any client does it, without recfs."""

    def __init__(self, sim):
        import httpx
        self.http = httpx.Client(base_url=sim.url, timeout=60, headers=UA,
                                 verify=ssl.create_default_context(cafile=sim.cafile),
                                 limits=httpx.Limits(max_keepalive_connections=0))
        reply = self.http.post("/openapi/v1.0/get_token",
                               json={"username": sim.user, "password": sim.password}).json()
        self.token = reply["access_token"]

    def download(self, name: str, first_byte_only: bool = False) -> int:
        url = self.http.get("/openapi/v1.0/recording/download", params={
            "file": name, "access_token": self.token}).json()["download_resource_url"]
        got = 0
        with self.http.stream("GET", url, params={"access_token": self.token}) as reply:
            for chunk in reply.iter_raw():
                got += len(chunk)
                if first_byte_only and got:
                    break
        return got

    def close(self) -> None:
        self.http.get("/openapi/v1.0/del_token", params={"access_token": self.token})
        self.http.close()


def line(name: str, figure: str, ratio: str = "") -> None:
    print(f"  {name:<44} {figure:>24}  {ratio}")


def fill(data_dir: Path, count: int) -> None:
    """*count* recordings on the simulator's disk before it starts: hard links of
    one small WAV, named as the simulator names them (one call a minute)."""
    from recfs.sim import wav
    recordings = data_dir / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    start = int(time.time()) - count * 60
    source = data_dir / "one.wav"
    for i in range(count):
        if i % 50_000 == 0:  # ext4 allows 65,000 links to a file
            source = data_dir / f"source-{i}.wav"
            wav.write_wav(str(source), "bench", 1)
        epoch = start + i * 60
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(epoch + 5))
        os.link(source, recordings / f"{stamp}-{epoch}.{i + 1}-10{i % 90 + 10}-2001-Inbound.wav")


def status(mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.recfs.mount"))


def openapi(sim) -> dict:
    return sim.http.get("/sim/openapi").json()


def listwalk(work: Path, count: int) -> None:
    from tests.mount.harness import Mount, Sim
    print(f"list walk of {count:,} recordings at mount (empty catalog)")
    fill(work / "big" / "data", count)
    sim = Sim(work / "big", "--series", "p")
    try:
        began = time.monotonic()
        mount = Mount(sim, work / "big-m", "api=p-series", "prefetch=none", "views=none")
        ready = time.monotonic() - began
        while status(mount)["recordings"] < count:
            time.sleep(0.1)
        took = time.monotonic() - began
        requests = openapi(sim)["list_requests"]
        line("mount ready (first token)", f"{ready:8.2f} s")
        line(f"all {count:,} in the catalog", f"{took:8.2f} s",
             f"{count / took:,.0f} recordings/s")
        line("recording/list requests", f"{requests:8d}",
             f"{count / max(requests, 1):,.0f} recordings a request")
        day = next(p for p in mount.path.rglob("*") if p.is_file())
        assert day.stat().st_size > 0
        stats = openapi(sim)
        assert stats["resource_gets"] == 0
        mount.cleanup()
    finally:
        sim.close()


def ttfb_and_stream(work: Path, quick: bool) -> None:
    from tests.mount.harness import Mount, Sim
    sim = Sim(work / "small", "--series", "p")
    try:
        mount = Mount(sim, work / "small-m", "api=p-series", "prefetch=none", "readahead=0")
        reps = 7 if quick else 15
        print("time to first byte of an uncached open")
        cdrs = [sim.call(duration=5) for _ in range(reps * 2)]
        paths = [mount.wait_file(c) for c in cdrs]
        direct = Direct(sim)
        rec, base = [], []

        def first(path: Path) -> None:
            with open(path, "rb", buffering=0) as f:
                assert f.read(4096)[:4] == b"RIFF"

        for i in range(reps):
            rec.append(timed(lambda: first(paths[2 * i])))
            base.append(timed(lambda: direct.download(cdrs[2 * i + 1]["recording"], True)))
        r, b = statistics.median(rec), statistics.median(base)
        line("recfs: open + read 4 KiB", f"{r * 1000:8.1f} ms (median of {reps})")
        line("direct: recording/download + first byte", f"{b * 1000:8.1f} ms",
             f"recfs {1000 * (r - b):+.1f} ms, ratio {r / b:.2f}")

        print("uncached streaming read of a 20 MiB recording")
        reps = 3 if quick else 7
        cdrs = [sim.call(duration=seconds_for(20 * MiB)) for _ in range(reps * 2)]
        paths = [mount.wait_file(c, timeout=60) for c in cdrs]
        rec, base = [], []
        for i in range(reps):
            runs = [lambda: rec.append(timed(lambda: dd(paths[2 * i]))),
                    lambda: base.append(timed(lambda: direct.download(cdrs[2 * i + 1]["recording"])))]
            for run in (runs if i % 2 == 0 else runs[::-1]):
                run()
        direct.close()
        for i in range(reps):
            assert paths[2 * i].read_bytes() == sim.recording_bytes(cdrs[2 * i]["recording"])
        size = paths[0].stat().st_size
        r, b = statistics.median(rec), statistics.median(base)
        line("recfs, dd bs=1M", f"{size / r / MiB:8.1f} MiB/s (median of {reps})")
        line("direct: httpx download + resource GET", f"{size / b / MiB:8.1f} MiB/s",
             f"ratio {b / r:.2f} (recfs / direct throughput)")
        mount.cleanup()
    finally:
        sim.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="listwalk,stream")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recfs-bench-p-"))
    try:
        for name in args.only.split(","):
            if name == "listwalk":
                listwalk(work, 10_000 if args.quick else 100_000)
            elif name == "stream":
                ttfb_and_stream(work, args.quick)
            else:
                raise SystemExit(f"unknown benchmark {name!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
