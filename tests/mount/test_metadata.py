"""What `stat`, `df` and the terminal say: directory times that are a function of
what a directory holds (the same after every remount, so rsync and restic see no
change), a `df` that shows what the mount holds, and a background mount that keeps
its log out of the terminal."""

from __future__ import annotations

import os
import subprocess
import time

from tests.mount.harness import wait_for


def _dir_times(mount, cdrs) -> dict[str, float]:
    paths = ["", "by-type", "by-number", "by-type/Inbound"]
    for cdr in cdrs:
        day = mount.file_of(cdr).parent.relative_to(mount.path)
        paths += [str(day), str(day.parent), str(day.parent.parent), f"by-number/{cdr['callfrom']}",
                  f"by-type/{cdr['type']}/{day}"]
    return {p: os.stat(mount.p(p)).st_mtime for p in sorted(set(paths))}


def test_directory_times_follow_the_calls_and_survive_remounts(sim, mount_factory):
    mount = mount_factory("prefetch=none")
    cdrs = [sim.call(type="Inbound"), sim.call(type="Inbound")]
    for cdr in cdrs:
        mount.wait_file(cdr)
    wait_for(lambda: os.path.exists(mount.p("by-number", cdrs[1]["callfrom"])), what="by-number")
    latest = max(int(c["callid"].split(".")[0]) for c in cdrs)
    # The kernel keeps a directory's attributes for up to a second (DIR_TIMEOUT).
    wait_for(lambda: all(os.stat(mount.p(d)).st_mtime == latest for d in ("", "by-type")), 3,
             what="the new mtimes")
    before = _dir_times(mount, cdrs)
    assert before[""] == latest  # the newest call in it, not the mount's start
    assert before["by-number"] == before["by-type"] == latest
    for cdr in cdrs:
        assert before[f"by-number/{cdr['callfrom']}"] == int(cdr["callid"].split(".")[0])
    assert mount.unmount() == 0
    time.sleep(1.1)  # a remount a second later: nothing may take the new time
    again = mount_factory("prefetch=none", name="m")  # the same state directory
    assert _dir_times(again, cdrs) == before
    assert again.unmount() == 0


def test_df_shows_the_recordings_and_their_bytes(sim, mount_factory):
    mount = mount_factory()  # prefetch=new: sizes are learned at once
    cdrs = [sim.call(), sim.call(), sim.call()]
    total = sum(len(sim.recording_bytes(c["recording"])) for c in cdrs)
    for cdr in cdrs:
        mount.wait_file(cdr)

    def blocks_cover_total() -> bool:
        st = os.statvfs(mount.path)
        return st.f_blocks * st.f_frsize >= total

    wait_for(blocks_cover_total, 20, what="df to count the downloaded recordings")
    st = os.statvfs(mount.path)
    assert st.f_blocks * st.f_frsize < total + 3 * st.f_frsize
    assert st.f_files >= 3
    df = subprocess.run(["df", "-B1", str(mount.path)], capture_output=True, text=True, check=True)
    assert df.stdout.splitlines()[1].split()[1] == str(st.f_blocks * st.f_frsize)
    assert mount.unmount() == 0


def test_a_background_mount_keeps_its_log_off_the_terminal(sim, tmp_path):
    from tests.mount.harness import Mount
    mount = Mount(sim, tmp_path / "bg", "prefetch=none", background=True)
    try:
        # The harness sends the command's own output into the log file: what the
        # terminal would have shown is what precedes the first log line of the mount.
        terminal = subprocess.run(["fusermount3", "-u", str(mount.path)], capture_output=True)
        assert terminal.returncode == 0
        wait_for(lambda: not os.path.ismount(mount.path), what="unmount")
        out = subprocess.run([*mount.argv], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "" and out.stderr == "", (out.stdout, out.stderr)
        assert " INFO " in mount.log()  # the log went to the file
    finally:
        mount.cleanup()
