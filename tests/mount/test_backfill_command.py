"""`recfs backfill`: history on demand, malformed CDR rows reported, the rest imported."""

from __future__ import annotations

import json
import sqlite3
import subprocess

from tests.mount.harness import RECFS, Mount, Sim


def run_backfill(sim, workdir, *args):
    password_file = workdir / "password"
    password_file.write_text(sim.password + "\n")
    password_file.chmod(0o600)
    opts = ",".join([f"user={sim.user}", f"password_file={password_file}", f"cafile={sim.cafile}",
                     f"state_dir={workdir / 'state'}"])
    return subprocess.run([*RECFS, "backfill", sim.url, *args, "-o", opts],
                          capture_output=True, text=True, timeout=120)


def test_backfill_command_imports_and_reports_malformed_rows(tmp_path):
    sim = Sim(tmp_path / "sim")
    calls = [sim.call(duration=2, drop_report=True) for _ in range(3)]
    sim.call(duration=2, recorded=False, drop_report=True)
    port = sim.url.rsplit(":", 1)[1]
    sim.close()
    template = calls[0]
    bad = [dict(template, recording="../../etc/passwd.wav", callid="1.1"),
           dict(template, recording="bell\u0007.wav", callid="1.2"),
           dict(template, recording="x" * 300 + ".wav", callid="1.3")]
    with open(tmp_path / "sim" / "data" / "cdrs.jsonl", "a", encoding="utf-8") as f:
        for cdr in bad:
            f.write(json.dumps(cdr) + "\n")
    sim = Sim(tmp_path / "sim", "--listen", f"127.0.0.1:{port}", "--fault", "cdr_bom=1")
    try:
        day = template["timestart"][:10]
        work = tmp_path / "bf"
        work.mkdir()
        done = run_backfill(sim, work, "--since", day, "--until", day)
        assert done.returncode == 0, done.stderr
        assert "3 new, 0 already known, 1 without recording, 3 malformed row(s)" in done.stdout, done.stdout
        assert done.stdout.count("malformed: CDRs from") == 3
        assert sim.password not in done.stdout + done.stderr
        db = sqlite3.connect(work / "state" / "catalog.sqlite")
        names = {row[0] for row in db.execute("SELECT name FROM recordings")}
        db.close()
        assert names == {c["recording"] for c in calls}

        again = run_backfill(sim, work, "--since", day, "--until", day, "--window-hours", "1")
        assert again.returncode == 0, again.stderr
        assert "0 new, 3 already known" in again.stdout

        # The mount of that state serves them.
        mount = Mount(sim, work, "prefetch=none", "backfill_interval=3600")
        try:
            for cdr in calls:
                mount.wait_file(cdr)
            assert mount.unmount() == 0
            assert mount.problems() == [], mount.log()
        finally:
            mount.cleanup()
    finally:
        sim.close()


def test_backfill_command_bad_dates_and_down_pbx(tmp_path):
    sim = Sim(tmp_path / "sim")
    try:
        work = tmp_path / "bf"
        work.mkdir()
        assert run_backfill(sim, work, "--since", "yesterday").returncode == 2
        done = run_backfill(sim, work, "--since", "2024-06-10", "--until", "2024-06-01")
        assert done.returncode == 2 and "before" in done.stderr
    finally:
        sim.close()
    done = run_backfill(sim, work, "--since", "2024-06-10", "--until", "2024-06-10")
    assert done.returncode == 1 and "back-fill stopped" in done.stderr
