#!/usr/bin/env python3
"""P-Series benchmarks: recfs (-o api=p-series) against `recfs sim --series p`, with
a direct client as the baseline, measured side by side in one run.

    .venv/bin/python scripts/bench_pseries.py             # 100,000 recordings listed
    .venv/bin/python scripts/bench_pseries.py --quick     # 10,000

Needs /dev/fuse, and nginx for the reads (scripts/setup). Not part of the test
suite: it prints figures and ratios.

  listwalk  a mount of a PBX holding N recordings (an empty catalog): seconds until
            all N are in the tree with their sizes, and recording/list requests (the
            simulator holds at most 1,000 a page, whatever is asked)
  stream    reads against a PBX that is not the bottleneck: nginx in front of the
            simulator (scripts/nginx_front.py) sends the bytes of a resource URL, the
            simulator keeps every check (token, resource URL, its expiry).
            ttfb: open + first 4 KiB of an uncached recording, vs a direct client's
            recording/download + first byte of the resource URL (httpx, alternating).
            stream: uncached read of a 64 MiB recording (dd bs=1M), vs the same two
            steps with httpx and with curl from nginx, and with curl from the
            simulator alone (what the baseline was before nginx), rounds in
            rotating order so that none of them always goes first.

The baseline shares the one PBX with recfs and runs alternately with it, so the
server is the same for all and never serves two at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from benchlib import MiB, cpu_seconds, dd, seconds_for, timed  # noqa: E402
from nginx_front import ACCEL_PREFIX, NginxFront  # noqa: E402

UA = {"User-Agent": "bench"}


class Direct:
    """The P-Series download as any client does it, without recfs: recording/download
    for a resource URL, then a GET of that URL, a connection each (as the PBX wants)."""

    def __init__(self, sim):
        import httpx
        self.sim = sim
        self.http = httpx.Client(base_url=sim.url, timeout=60, headers=UA,
                                 verify=ssl.create_default_context(cafile=sim.cafile),
                                 limits=httpx.Limits(max_keepalive_connections=0))
        reply = self.http.post("/openapi/v1.0/get_token",
                               json={"username": sim.user, "password": sim.password}).json()
        self.token = reply["access_token"]

    def resource_url(self, name: str) -> str:
        return self.http.get("/openapi/v1.0/recording/download", params={
            "file": name, "access_token": self.token}).json()["download_resource_url"]

    def download(self, name: str, first_byte_only: bool = False) -> int:
        got = 0
        with self.http.stream("GET", self.resource_url(name),
                              params={"access_token": self.token}) as reply:
            for chunk in reply.iter_raw():
                got += len(chunk)
                if first_byte_only and got:
                    break
        return got

    def curl(self, name: str, out: str = "/dev/null") -> None:
        """The same two steps with curl, the body to *out*. The URLs go to curl on
        its standard input (-K -), not on its command line, where they would be in
        every `ps` while they are good."""
        def run(url: str, out: str) -> bytes:
            config = f'url = "{self.sim.url}{url}"\noutput = "{out}"\n'
            return subprocess.run(["curl", "-sS", "--fail", "-A", UA["User-Agent"],
                                   "--cacert", self.sim.cafile, "-K", "-"], input=config.encode(),
                                  capture_output=True, check=True).stdout

        query = urlencode({"file": name, "access_token": self.token})
        url = json.loads(run(f"/openapi/v1.0/recording/download?{query}", "-"))[
            "download_resource_url"]
        run(f"{url}?{urlencode({'access_token': self.token})}", out)

    def close(self) -> None:
        self.http.get("/openapi/v1.0/del_token", params={"access_token": self.token})
        self.http.close()


def line(name: str, figure: str, ratio: str = "") -> None:
    print(f"  {name:<50} {figure:<34} {ratio}", flush=True)


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
    sim = Sim(work / "small", "--series", "p", "--accel-redirect", ACCEL_PREFIX)
    front = mount = direct = slow = None
    try:
        front = NginxFront(sim, work / "nginx")
        fast = front.fronted()
        mount = Mount(fast, work / "small-m", "api=p-series", "prefetch=none", "readahead=0")
        direct, slow = Direct(fast), Direct(sim)
        reps = 7 if quick else 15
        print("time to first byte of an uncached open; PBX = nginx (TLS 1.2, Connection: "
              "close) in front of the simulator")
        cdrs = [sim.call(duration=5) for _ in range(reps * 2)]
        paths = [mount.wait_file(c) for c in cdrs]
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

        reps = 3 if quick else 7
        print(f"uncached streaming read of a 64 MiB recording; {reps} rounds in rotating order")
        out = work / "curl-out"

        def curl_to_file(name: str) -> None:
            direct.curl(name, str(out))
            out.unlink()

        clients = {"httpx nginx": direct.download, "curl nginx": direct.curl,
                   "curl nginx to a file": curl_to_file, "curl sim": slow.curl}
        times: dict[str, list[float]] = {k: [] for k in ["recfs", *clients]}
        cpu: list[float] = []
        size = 0
        for i in range(reps):
            names = list(times)
            cdrs = {k: sim.call(duration=seconds_for(64 * MiB)) for k in names}
            size = sim.recordings()[cdrs["recfs"]["recording"]]["size"]
            path = mount.wait_file(cdrs["recfs"], timeout=60)
            for k in names[i % len(names):] + names[:i % len(names)]:
                if k == "recfs":
                    before = cpu_seconds(mount.proc.pid)
                    times[k].append(timed(lambda: dd(path)))
                    cpu.append(cpu_seconds(mount.proc.pid) - before)
                    assert path.read_bytes() == sim.recording_bytes(cdrs[k]["recording"])
                else:
                    times[k].append(timed(lambda: clients[k](cdrs[k]["recording"])))
            for cdr in cdrs.values():  # 64 MiB each: keep the disk free
                sim.http.post("/sim/delete-recordings", json={
                    "names": [cdr["recording"]]}).raise_for_status()
        # The set-up, not the figures: the event socket went through nginx, and every
        # download that came through it (recfs's, httpx's, curl's) was sent by nginx.
        assert openapi(sim)["sockets_open"] >= 1
        handed = sim.log_path.read_text(errors="replace").count("(sent by the front server)")
        assert handed >= reps * 4, handed
        med = {k: statistics.median(v) for k, v in times.items()}
        speed = {k: size / t / MiB for k, t in med.items()}
        line("curl (download + resource GET) from the simulator",
             f"{speed['curl sim']:8.0f} MiB/s (median of {reps})", "the old baseline's server")
        line("curl (download + resource GET) from nginx", f"{speed['curl nginx']:8.0f} MiB/s",
             f"{speed['curl nginx'] / speed['curl sim']:.1f}x the simulator")
        line("httpx (download + resource GET) from nginx", f"{speed['httpx nginx']:8.0f} MiB/s",
             f"{speed['httpx nginx'] / speed['curl sim']:.1f}x the simulator")
        line("curl from nginx into a file (the page cache)",
             f"{speed['curl nginx to a file']:8.0f} MiB/s", "what a copy that keeps the bytes pays")
        line("recfs: dd bs=1M, never-read 64 MiB", f"{speed['recfs']:8.0f} MiB/s "
             f"({min(times['recfs']):.3f}-{max(times['recfs']):.3f} s)",
             f"ratio {speed['recfs'] / speed['curl nginx']:.2f} of curl, "
             f"{speed['recfs'] / speed['httpx nginx']:.2f} of httpx, "
             f"{speed['recfs'] / speed['curl nginx to a file']:.2f} of curl into a file")
        c = statistics.median(cpu)
        line("  recfs: CPU per 64 MiB recording", f"{c * 1000:8.0f} ms",
             f"{c * 1000 / (size / MiB):.2f} ms per MiB")
    finally:
        for client in (direct, slow):
            if client is not None:
                client.close()
        if mount is not None:
            mount.cleanup()
        if front is not None:
            front.close()
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
