"""Several PBXs in one mount: a directory each, with its own session, report path,
catalog and cache; one PBX being down does not disturb the other."""

from __future__ import annotations

import json
import os
import subprocess

from tests.mount.harness import RECFS, Sim, pbx_tables, wait_for


def test_two_pbxs_one_mount(tmp_path):
    sims = {"main": Sim(tmp_path / "sim-main"), "branch": Sim(tmp_path / "sim-branch")}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    tables = pbx_tables(tmp_path, sims)
    config = tmp_path / "all.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\ncache_dir = "{tmp_path / "cache"}"\n'
                      f'listen = "127.0.0.1:0"\nprefetch = "new"\n{tables}')
    log = tmp_path / "recfs.log"
    proc = subprocess.Popen([*RECFS, "mount", "recfs", str(mnt), "-f", "-o", f"config={config}"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, what="mount")
        assert sorted(os.listdir(mnt)) == ["branch", "main"]
        # Both simulators run with the same seed, so the same call made on both in the
        # same second has the same recording name (a second boundary between the two
        # calls tells them apart: try again).
        for _attempt in range(5):
            calls = {name: sim.call(duration=2) for name, sim in sims.items()}
            if calls["main"]["recording"] == calls["branch"]["recording"]:
                break
        paths = {}
        for name, cdr in calls.items():
            day = mnt.joinpath(name, *cdr["timestart"][:10].split("-"))
            wait_for(lambda: day.exists() and cdr["recording"] in os.listdir(day), 10,
                     what=f"{name}'s recording")
            paths[name] = day / cdr["recording"]
            assert paths[name].read_bytes() == sims[name].recording_bytes(cdr["recording"])
        # The same recording name on two PBXs must still be two files with two inodes.
        assert paths["main"].name == paths["branch"].name
        assert paths["main"].stat().st_ino != paths["branch"].stat().st_ino
        assert (tmp_path / "state" / "main" / "catalog.sqlite").exists()
        assert (tmp_path / "state" / "branch" / "catalog.sqlite").exists()
        status = json.loads(subprocess.run([*RECFS, "status", str(mnt), "--json"],
                                           capture_output=True, text=True, check=True).stdout)
        assert set(status["pbxs"]) == {"main", "branch"}
        assert all(part["pbx"]["logged_in"] for part in status["pbxs"].values())

        # One PBX goes down: the other carries on, reports and downloads included.
        sims["branch"].close()
        cdr = sims["main"].call(duration=2)
        day = mnt.joinpath("main", *cdr["timestart"][:10].split("-"))
        wait_for(lambda: cdr["recording"] in os.listdir(day), 10, what="main's next recording")
        assert (day / cdr["recording"]).read_bytes() == \
            sims["main"].recording_bytes(cdr["recording"])
        assert paths["branch"].read_bytes()[:4] == b"RIFF"  # cached before it went down
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30)
        code = proc.wait(30)
        for sim in sims.values():
            sim.close()
    assert code == 0
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text
