"""A P-Series PBX (`recfs sim --series p`) mounted for real with `-o api=p-series`:
sizes from the recording list, events over the WebSocket, tokens, and what the
PBX's API demands of every request (the simulator notes each violation)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time

import httpx
import pytest

from tests.mount.harness import (RECFS, Mount, Sim, free_port, metric, pbx_tables, try_mount,
                                 wait_for)

P_MOUNT = ("api=p-series", "prefetch=none", "event_heartbeat=1")


def p_sim(tmp_path, *extra: str, name: str = "psim") -> Sim:
    return Sim(tmp_path / name, "--series", "p", *extra)


def openapi(sim: Sim) -> dict:
    return sim.http.get("/sim/openapi").json()


def violations(sim: Sim) -> list[str]:
    return sim.http.get("/sim/violations").json()


@pytest.fixture
def psim(tmp_path):
    simulator = p_sim(tmp_path, "--ws-idle", "3")
    yield simulator
    simulator.close()


@pytest.fixture
def pmount(psim, tmp_path):
    """Mounts of psim, unmounted while it still runs (so that the tokens can be
    revoked)."""
    mounts: list[Mount] = []

    def make(*options: str, name: str = "m") -> Mount:
        mount = Mount(psim, tmp_path / name, *P_MOUNT, *options)
        mounts.append(mount)
        return mount

    yield make
    for mount in mounts:
        mount.cleanup()


def socket_open(sim: Sim, opened: int = 1) -> None:
    wait_for(lambda: openapi(sim)["sockets_open"] == 1
             and openapi(sim)["sockets_opened"] >= opened, 15, what="the event socket")


def listed(mount: Mount, cdr: dict) -> bool:
    path = mount.file_of(cdr)
    try:
        return path.name in os.listdir(path.parent)
    except FileNotFoundError:
        return False


def test_sizes_at_stat_need_no_download(psim, pmount, tmp_path):
    before = [psim.call(duration=2 + i) for i in range(5)]  # in the PBX before the mount
    mount = pmount()
    socket_open(psim)  # an event sent before that is gone (the list still brings its file)
    after = psim.call(duration=3)
    mount.wait_file(after)
    truth = psim.recordings()
    for cdr in [*before, after]:
        st = os.stat(mount.wait_file(cdr))
        assert st.st_size == truth[cdr["recording"]]["size"]
        assert st.st_mtime == int(cdr["callid"].split(".")[0])  # the call's UTC start
    stats = openapi(psim)
    assert stats["download_requests"] == 0 and stats["resource_gets"] == 0
    # The bytes: recording/download, then the resource URL; verified and cached.
    path = mount.file_of(before[0])
    assert path.read_bytes() == psim.recording_bytes(before[0]["recording"])
    assert path.read_bytes() == psim.recording_bytes(before[0]["recording"])
    stats = openapi(psim)
    assert stats["download_requests"] == 1 and stats["resource_gets"] == 1
    # xattrs from the list, completed by event 30012's fields.
    status = subprocess.run(["getfattr", "-n", "user.recfs.status", "--only-values",
                             str(mount.file_of(after))], capture_output=True, text=True)
    assert status.stdout == after["status"]
    assert violations(psim) == []


def listening_ports(pid: int) -> set[int]:
    """TCP ports process *pid* listens on (from /proc: its sockets in state LISTEN)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in open(table).read().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_event_puts_the_recording_in_the_tree_within_two_seconds(psim, pmount, tmp_path):
    mount = pmount()
    socket_open(psim)
    assert mount.proc is not None and listening_ports(mount.proc.pid) == set()  # no way in
    for _ in range(3):
        cdr = psim.call(duration=2)
        began = time.monotonic()
        wait_for(lambda: listed(mount, cdr), 2.0, interval=0.02, what="the new recording")
        assert time.monotonic() - began < 2.0
    assert openapi(psim)["events_sent"] == 3
    status = json.loads(os.getxattr(mount.path, "user.recfs.mount"))
    assert status["pbx"]["series"] == "p-series"
    assert status["pbx"]["events"]["socket"] == "open"
    assert status["pbx"]["events"]["received"] == 3


def test_calls_while_the_socket_is_dropped_and_refused_all_appear(psim, pmount, tmp_path):
    mount = pmount()
    socket_open(psim)
    psim.faults(ws_refuse=4, ws_drop=True)
    missed = [psim.call(duration=1) for _ in range(4)]
    assert openapi(psim)["events_sent"] == 0  # nobody was listening
    # Reopened once the PBX lets it (back-off), then the list brings what was missed.
    for cdr in missed:
        wait_for(lambda: listed(mount, cdr), 30, what="a recording made while the socket was down")
    socket_open(psim, opened=2)
    later = psim.call(duration=1)
    wait_for(lambda: listed(mount, later), 2.0, what="an event after the reconnect")
    assert openapi(psim)["sockets_refused"] >= 1
    assert "event socket of" in mount.log()


def test_tokens_expired_behind_its_back_reads_still_work(psim, pmount, tmp_path):
    cdrs = [psim.call(duration=2) for _ in range(2)]
    mount = pmount()
    first = mount.wait_file(cdrs[0])
    assert first.read_bytes() == psim.recording_bytes(cdrs[0]["recording"])
    psim.http.post("/sim/expire-tokens").raise_for_status()
    second = mount.wait_file(cdrs[1])
    assert second.read_bytes() == psim.recording_bytes(cdrs[1]["recording"])
    # The socket stays open; the list behind the next event needs a new token.
    later = psim.call(duration=1)
    wait_for(lambda: listed(mount, later), 5, what="a recording after the tokens died")
    stats = openapi(psim)
    assert stats["get_token"] == 2
    assert stats["max_valid_tokens"] <= 2
    assert violations(psim) == []


def test_quiet_longer_than_the_idle_limit_keeps_the_socket(psim, pmount, tmp_path):
    mount = pmount()
    socket_open(psim)
    time.sleep(7)  # the simulator cuts sockets silent for 3 s
    stats = openapi(psim)
    assert stats["sockets_idle_closed"] == 0 and stats["sockets_opened"] == 1
    assert stats["heartbeats"] >= 5
    cdr = psim.call(duration=1)
    wait_for(lambda: listed(mount, cdr), 2.0, what="an event after a quiet spell")


def test_the_idle_limit_is_real(psim):
    """The check above can fail: a client that sends nothing is cut."""
    from tests.mount.idle_client import silent_socket_closed_after
    closed_after = silent_socket_closed_after(psim)
    assert 2.5 < closed_after < 6, closed_after


def test_tokens_refreshed_before_expiry_never_more_than_two(tmp_path):
    sim = p_sim(tmp_path, "--token-ttl", "4")
    mount = None
    try:
        cdr = sim.call(duration=2)
        mount = Mount(sim, tmp_path / "m", *P_MOUNT)
        time.sleep(9)
        stats = openapi(sim)
        assert stats["refresh_token"] >= 3 and stats["get_token"] == 1
        assert stats["max_valid_tokens"] <= 2
        path = mount.wait_file(cdr)
        assert path.read_bytes() == sim.recording_bytes(cdr["recording"])
        assert mount.unmount() == 0
        assert openapi(sim)["valid_tokens"] == 0
        status_after = openapi(sim)
        assert status_after["del_token"] >= 1
        assert violations(sim) == []
    finally:
        if mount is not None:
            mount.cleanup()
        sim.close()


def test_unmount_leaves_no_token_and_no_violation(psim, pmount, tmp_path):
    mount = pmount()
    socket_open(psim)
    cdr = psim.call(duration=1)
    mount.wait_file(cdr).read_bytes()
    assert openapi(psim)["valid_tokens"] == 1
    assert mount.unmount() == 0
    assert openapi(psim)["valid_tokens"] == 0
    assert violations(psim) == []


def test_a_file_the_pbx_lost_fails_fast(psim, pmount, tmp_path):
    mount = pmount()
    cdr = psim.call(duration=2)
    path = mount.wait_file(cdr)
    size = os.stat(path).st_size
    assert size > 0
    psim.http.post("/sim/delete-recordings", json={"names": [cdr["recording"]]}).raise_for_status()
    for _ in range(2):
        with pytest.raises(OSError) as info:
            path.read_bytes()
        assert info.value.errno == errno.ENODATA
    assert openapi(psim)["download_requests"] == 1  # no pointless retries
    assert "the PBX no longer has it (errno 60001)" in mount.log()


def test_a_wrong_secret_is_refused_without_reaching_the_ip_block(psim, pmount, tmp_path):
    for attempt in range(4):
        done = try_mount(psim, tmp_path / "bad", "api=p-series", password="wrong-secret",
                         foreground=True)
        assert done.returncode == 78, done
    assert "refused user=api" in done.stderr or "refused user=api" in done.stdout + done.stderr
    stats = openapi(psim)
    assert stats["failed_get_token"] == 3  # then recfs stops asking: the PBX blocks at 5
    # The right secret still works from this address: it was never blocked.
    mount = pmount(name="good")
    cdr = psim.call(duration=1)
    mount.wait_file(cdr)


def test_get_token_rate_limited_at_mount_comes_up_anyway(psim, pmount, tmp_path):
    psim.faults(get_token_error={"value": "60002", "times": 1})
    cdr = psim.call(duration=1)
    mount = pmount()
    wait_for(lambda: listed(mount, cdr), 60, what="the catalog once the PBX lets recfs in")


def test_one_mount_holds_an_s_series_and_a_p_series_pbx(tmp_path):
    """A migration: the old S-Series PBX and the new P-Series one side by side,
    `api = "p-series"` in the new one's [pbx.NAME] table; `recfs status` says which
    is which."""
    sims = {"old": Sim(tmp_path / "sim-old"), "new": p_sim(tmp_path, name="sim-new")}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    tables = pbx_tables(tmp_path, sims, {"new": 'api = "p-series"\n'})
    config = tmp_path / "all.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\ncache_dir = "{tmp_path / "cache"}"\n'
                      f'listen = "127.0.0.1:0"\nprefetch = "none"\n{tables}')
    log = tmp_path / "recfs.log"
    proc = subprocess.Popen([*RECFS, "mount", "recfs", str(mnt), "-f", "-o", f"config={config}"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, what="mount")
        socket_open(sims["new"])
        for name, sim in sims.items():
            cdr = sim.call(duration=2)
            day = mnt.joinpath(name, *cdr["timestart"][:10].split("-"))
            wait_for(lambda: day.exists() and cdr["recording"] in os.listdir(day), 10,
                     what=f"{name}'s recording")
            assert (day / cdr["recording"]).read_bytes() == sim.recording_bytes(cdr["recording"])
        status = json.loads(subprocess.run([*RECFS, "status", str(mnt), "--json"],
                                           capture_output=True, text=True, check=True).stdout)
        series = {name: part["pbx"]["series"] for name, part in status["pbxs"].items()}
        assert series == {"old": "s-series", "new": "p-series"}
        text = subprocess.run([*RECFS, "status", str(mnt)], capture_output=True, text=True,
                              check=True).stdout
        assert "p-series" in text and "event socket" in text
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30)
        code = proc.wait(30)
        assert openapi(sims["new"])["valid_tokens"] == 0
        for sim in sims.values():
            sim.close()
    assert code == 0
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text


def test_backfill_reads_the_recording_list(psim, tmp_path):
    cdrs = [psim.call(duration=1) for _ in range(3)]
    password = tmp_path / "secret"
    password.write_text(psim.password + "\n")
    password.chmod(0o600)
    opts = (f"api=p-series,user={psim.user},password_file={password},cafile={psim.cafile},"
            f"state_dir={tmp_path / 'state'},log_file={tmp_path / 'backfill.log'}")
    argv = [*RECFS, "backfill", psim.url, "--since", "2020-01-01", "-q", "-o", opts]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "3 new, 0 already known" in done.stdout
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "0 new" in again.stdout and openapi(psim)["list_requests"] == 2
    assert openapi(psim)["valid_tokens"] == 0  # revoked at the end of each run
    # What the mount then serves, with the sizes from the list.
    mount = Mount(psim, tmp_path / "m", *P_MOUNT, f"state_dir={tmp_path / 'state'}")
    try:
        path = mount.wait_file(cdrs[0])
        assert os.stat(path).st_size == psim.recordings()[cdrs[0]["recording"]]["size"]
        assert openapi(psim)["resource_gets"] == 0
    finally:
        mount.cleanup()


def test_garbage_events_are_skipped_and_nothing_is_lost(psim, pmount, tmp_path):
    """Malformed frames, hostile names, a frame too large: each a WARNING, none an
    ERROR; the socket stays open and the real events still count. Metrics say so."""
    port = free_port()
    mount = pmount(f"metrics=127.0.0.1:{port}")
    socket_open(psim)
    psim.faults(bad_events=True)
    cdrs = [psim.call(duration=1) for _ in range(2)]
    for cdr in cdrs:
        wait_for(lambda: listed(mount, cdr), 5, what="a real event's recording")
    assert openapi(psim)["sockets_opened"] == 1
    log = mount.log()
    assert "ignored an event" in log and "not JSON" in log
    assert "passwd" not in "".join(os.listdir(mount.path))
    scrape = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert metric(scrape, "recfs_pbx_info", '{series="p-series"}') == 1
    assert metric(scrape, "recfs_events_socket_open") == 1
    assert metric(scrape, "recfs_events_received_total") >= 2
    assert metric(scrape, "recfs_events_socket_drops_total") == 0


def test_a_socket_gone_silent_is_reopened(psim, pmount, tmp_path):
    """A PBX that stops answering without closing the socket (heartbeats unanswered,
    events lost): after two heartbeats and 10 s recfs counts it dead, reopens it, and
    the list brings what was said meanwhile."""
    mount = pmount()
    socket_open(psim)
    psim.faults(ws_mute=True)
    lost = psim.call(duration=1)
    time.sleep(2)
    assert not listed(mount, lost)
    # Reopened (the new socket is muted too, but its subscription is answered and
    # the list read).
    wait_for(lambda: listed(mount, lost), 20, what="the recording of the muted socket's time")
    assert openapi(psim)["sockets_opened"] == 2
    assert "nothing from the PBX for 12 s" in mount.log()
    psim.faults(ws_mute=False)
    later = psim.call(duration=1)
    wait_for(lambda: listed(mount, later), 2.0, what="an event once the PBX speaks again")
