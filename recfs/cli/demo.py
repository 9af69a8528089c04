"""`recfs demo`: the built-in PBX simulator and a mount of it, in one process, with
all state in a temporary directory. For a first look without owning a PBX."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import trio

from recfs.service.config import build_options
from recfs.logs import setup_logging
from recfs.sim.config import SimConfig
from recfs.sim.server import SimulatorInfo, run_simulator

TRY_THIS = """
recfs demo: a simulated PBX at {url} makes a call every {every:.0f} s; each recording
appears under {mnt} (YYYY/MM/DD/<name>) within a second of its call ending.

Try, in another terminal:
  ls -lR {mnt}
  find {mnt} -name '*.wav' | head -1 | xargs sox --i          # WAV details
  find {mnt} -name '*.wav' | head -1 | xargs ffplay -nodisp -autoexit   # listen
  getfattr -d "$(find {mnt} -name '*.wav' | head -1)"          # the call's CDR
  rsync -aHX {mnt}/ /tmp/recfs-backup/                         # a backup (-H: the views are hard links)

State, cache and log live in {work}. Ctrl-C unmounts and cleans up.
"""


async def _demo(mountpoint: Path, work: Path, calls_per_minute: float, series: str) -> None:
    sim_config = SimConfig(data_dir=work / "pbx", calls_per_minute=calls_per_minute,
                           min_duration=5, max_duration=60, series=series)
    password_file = work / "password"
    async with trio.open_nursery() as nursery:
        info: SimulatorInfo = await nursery.start(run_simulator, sim_config)
        password_file.write_text(info.password + "\n")
        password_file.chmod(0o600)
        opts = build_options(info.base_url, str(mountpoint), {
            "user": info.user, "password_file": str(password_file),
            "cafile": str(info.ca_file), "listen": "127.0.0.1:0",
            "state_dir": str(work / "state"), "cache_dir": str(work / "cache"),
            "api": "p-series" if series == "p" else "s-series",
        }, environ={})
        from recfs.service.mount import serve_mount
        async with trio.open_nursery() as mount_nursery:
            await mount_nursery.start(serve_mount, opts)
            print(TRY_THIS.format(url=info.base_url, every=60 / max(calls_per_minute, 0.01),
                                  mnt=mountpoint, work=work), flush=True)
            # A few calls at once, so that there is something to look at right away
            # (once recfs listens: an S-Series PBX pushes only to live sessions, a
            # P-Series one announces calls only on open event sockets).
            with trio.move_on_after(10):
                while not (info.simulator.state.live_sessions() or info.simulator.watching):
                    await trio.sleep(0.1)
            for _ in range(3):
                await info.simulator.make_call()
        info.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recfs demo", description=__doc__)
    parser.add_argument("mountpoint", nargs="?", help="where to mount (default: a temporary directory)")
    parser.add_argument("--calls-per-minute", type=float, default=6.0)
    parser.add_argument("--series", choices=("s", "p"), default="s",
                        help="the simulated PBX: s = S-Series (default), p = P-Series (OpenAPI, "
                             "events over a WebSocket recfs opens)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    work = Path(tempfile.mkdtemp(prefix="recfs-demo-"))
    mountpoint = Path(args.mountpoint).resolve() if args.mountpoint else work / "recordings"
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        trio.run(_demo, mountpoint, work, args.calls_per_minute, args.series)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        print(f"recfs demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if os.path.ismount(mountpoint):
            os.system(f"fusermount3 -uz '{mountpoint}'")
        shutil.rmtree(work, ignore_errors=True)
    return 0
