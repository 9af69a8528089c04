"""The simulator's pure parts: sessions, lock-out, randoms, faults, call planning,
report format and WAV output. No network."""

from __future__ import annotations

import datetime
import json
import random
import re
import shutil
import subprocess

import pytest

from tests.ci import unavailable

from recfs.pbx.errors import BAD_CREDENTIALS, LOCKED_OUT, NO_SUCH_FILE, SIM_BAD_RANDOM
from recfs.sim import wav
from recfs.sim.calls import CallFactory
from recfs.sim.faults import FaultError, Faults
from recfs.sim.reports import report_body
from recfs.sim.state import CDR_FIELDS, ApiFailure, ReportTarget, SimState, md5_hex

IP = "192.0.2.10"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> SimState:
    s = SimState({"api": "secret"}, clock=clock)
    s.add_recording("a.wav", 44)
    s.add_recording("b.wav", 44)
    return s


def login(state: SimState, password: str = "secret", ip: str = IP):
    return state.login("api", md5_hex(password), ip, ReportTarget(ip, 8260), "2.0.0")


def errno_of(call, *args, **kw) -> str:
    with pytest.raises(ApiFailure) as caught:
        call(*args, **kw)
    return caught.value.errno


# --- sessions -------------------------------------------------------------------


def test_token_is_32_lowercase_hex(state):
    assert re.fullmatch(r"[0-9a-f]{32}", login(state).token)


def test_token_sliding_expiry(state, clock):
    token = login(state).token
    for _ in range(3):
        clock.advance(1799)
        assert state.session(token).token == token  # each call restarts the 30 minutes
    clock.advance(1800)
    assert errno_of(state.session, token) == "20006"
    assert errno_of(state.session, token) == "20006"  # stays "timed out", not "unknown"


def test_touch_by_report_keeps_session(state, clock):
    session = login(state)
    clock.advance(1700)
    state.touch(session)
    clock.advance(1700)
    assert state.session(session.token) is session


def test_token_errnos(state):
    assert errno_of(state.session, None) == "20005"
    assert errno_of(state.session, "  ") == "20005"
    assert errno_of(state.session, "f" * 32) == "20004"
    session = login(state)
    state.logout(session)
    assert errno_of(state.session, session.token) == "20004"


def test_runtime_ttl_change_applies_to_live_sessions(state, clock):
    token = login(state).token
    state.token_ttl = 10
    clock.advance(10)
    assert errno_of(state.session, token) == "20006"


def test_expire_all_makes_tokens_unknown(state):
    session = login(state)
    state.expire_all()
    assert errno_of(state.session, session.token) == "20004"
    assert not state.is_alive(session)
    assert state.live_sessions() == []


# --- lock-out -------------------------------------------------------------------


def test_lockout_after_five_failures_and_its_end(state, clock):
    for _ in range(5):
        assert errno_of(login, state, "wrong") == BAD_CREDENTIALS
    assert errno_of(login, state) == LOCKED_OUT  # right password, still locked
    assert login(state, ip="192.0.2.99").alive  # other addresses are not locked
    clock.advance(599)
    assert errno_of(login, state) == LOCKED_OUT
    clock.advance(1)
    assert login(state).alive
    assert state.stats.failed_logins == 7


def test_success_resets_failure_count(state):
    for _ in range(4):
        errno_of(login, state, "wrong")
    login(state)
    for _ in range(4):
        assert errno_of(login, state, "wrong") == BAD_CREDENTIALS
    assert login(state).alive


def test_lockout_numbers_configurable(clock):
    s = SimState({"api": "pw"}, clock=clock, lockout_attempts=2, lockout_seconds=5)
    for _ in range(2):
        errno_of(login, s, "nope")
    assert errno_of(login, s, "pw") == LOCKED_OUT
    clock.advance(5)
    assert login(s, "pw").alive


def test_unknown_user_and_forced_errno(state):
    assert errno_of(state.login, "root", md5_hex("secret"), IP, ReportTarget(IP, 1), "") == BAD_CREDENTIALS
    for _ in range(10):  # a fault switch never counts towards a lock-out
        assert errno_of(state.login, "api", md5_hex("secret"), IP, ReportTarget(IP, 1), "", forced_errno="20007") == "20007"
    assert login(state).alive


# --- randoms --------------------------------------------------------------------


def test_random_is_one_shot(state):
    r = state.issue_random(("recording", "a.wav"), IP)
    assert re.fullmatch(r"[0-9a-f]{32}", r)
    state.redeem_random(r, ("recording", "a.wav"), IP)
    assert errno_of(state.redeem_random, r, ("recording", "a.wav"), IP) == SIM_BAD_RANDOM


def test_random_expires_after_30_seconds(state, clock):
    r1 = state.issue_random(("recording", "a.wav"), IP)
    r2 = state.issue_random(("recording", "a.wav"), IP)
    clock.advance(29.9)
    state.redeem_random(r1, ("recording", "a.wav"), IP)
    clock.advance(0.1)
    assert errno_of(state.redeem_random, r2, ("recording", "a.wav"), IP) == SIM_BAD_RANDOM


def test_random_bound_to_its_file_and_spent_by_misuse(state):
    r = state.issue_random(("recording", "a.wav"), IP)
    assert errno_of(state.redeem_random, r, ("recording", "b.wav"), IP) == SIM_BAD_RANDOM
    assert errno_of(state.redeem_random, r, ("recording", "a.wav"), IP) == SIM_BAD_RANDOM
    assert errno_of(state.redeem_random, "0" * 32, ("recording", "a.wav"), IP) == SIM_BAD_RANDOM
    assert errno_of(state.redeem_random, None, ("recording", "a.wav"), IP) == SIM_BAD_RANDOM


def test_random_bound_to_requester_or_allowedip(state):
    r = state.issue_random(("recording", "a.wav"), IP)
    assert errno_of(state.redeem_random, r, ("recording", "a.wav"), "192.0.2.77") == SIM_BAD_RANDOM
    r = state.issue_random(("recording", "a.wav"), IP, allowed_ip="192.0.2.77")
    state.redeem_random(r, ("recording", "a.wav"), "192.0.2.77")


def test_cdr_random_bound_to_query(state):
    query = ("cdr", "2024-01-01 00:00:00", "2024-01-02 00:00:00", "all")
    r = state.issue_random(query, IP)
    assert errno_of(state.redeem_random, r, query[:3] + ("1001",), IP) == SIM_BAD_RANDOM
    r = state.issue_random(query, IP)
    state.redeem_random(r, query, IP)


def test_unknown_recording(state):
    assert errno_of(state.require_recording, "nope.wav") == NO_SUCH_FILE
    assert state.require_recording("a.wav") == 44


def test_cdrs_between_and_filter(state):
    rows = [
        {"callid": "1.1", "timestart": "2024-06-10 08:00:00", "callfrom": "1001", "callto": "2001"},
        {"callid": "2.2", "timestart": "2024-06-10 09:00:00", "callfrom": "0612", "callto": "1002"},
        {"callid": "3.3", "timestart": "2024-06-11 09:00:00", "callfrom": "1001", "callto": "1002"},
    ]
    for row in rows:
        state.add_cdr(row)
    ids = lambda found: [c["callid"] for c in found]  # noqa: E731
    assert ids(state.cdrs_between("2024-06-10 08:00:00", "2024-06-10 09:00:00", "all")) == ["1.1", "2.2"]
    assert ids(state.cdrs_between("2024-06-10 00:00:00", "2024-06-12 00:00:00", "1002")) == ["2.2", "3.3"]
    assert ids(state.cdrs_between("2024-06-10 08:00:01", "2024-06-12 00:00:00", "1001")) == ["3.3"]


def test_stats_reset_keeps_active_downloads(state):
    state.stats.download_started()
    state.stats.downloads["a.wav"] += 1
    state.stats.reset()
    assert state.stats_json()["downloads"] == {}
    assert state.stats.downloads_active == 1
    state.stats.download_ended(True)
    assert state.stats_json()["downloads_completed"] == 1


# --- faults ---------------------------------------------------------------------


def test_faults_times_and_forms():
    f = Faults()
    f.merge({"truncate_after": {"value": 100, "times": 2}, "throttle": "5000"})
    assert f.take_download().truncate_after == 100
    assert f.take_download().truncate_after == 100
    third = f.take_download()
    assert third.truncate_after is None and third.throttle == 5000
    f.merge({"no_content_length": True, "times": 1})
    assert f.take_download().no_content_length
    assert not f.take_download().no_content_length
    f.merge({"throttle": None})
    assert f.snapshot() == {}


def test_faults_cli_form_and_errors():
    f = Faults()
    f.parse_cli("download_error=10023,times=3")
    f.parse_cli("html_error")
    f.parse_cli("token_ttl=60")
    assert f.snapshot() == {
        "download_error": {"value": "10023", "times": 3},
        "html_error": {"value": 200, "times": None},
        "token_ttl": {"value": 60.0, "times": None},
    }
    with pytest.raises(FaultError):
        f.parse_cli("nonsense=1")
    with pytest.raises(FaultError):
        f.merge({"throttle": 5, "login_error": "abc"})
    assert "throttle" not in f.snapshot()  # all or nothing


# --- calls and reports ----------------------------------------------------------


def test_planned_calls_look_like_the_pbx():
    factory = CallFactory(utc_offset_minutes=120, next_sequence=7, rng=random.Random(1))
    ended = 1718001300.0
    for _ in range(200):
        planned = factory.plan(ended)
        cdr = planned.cdr
        assert set(cdr) == set(CDR_FIELDS) and all(isinstance(v, str) for v in cdr.values())
        start_epoch, seq = cdr["callid"].split(".")
        start = datetime.datetime.fromtimestamp(int(start_epoch), datetime.timezone.utc)
        assert cdr["timestart"] == (start + datetime.timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
        assert int(start_epoch) + int(cdr["callduraction"]) == int(ended)
        if cdr["recording"]:
            assert cdr["status"] == "ANSWERED"
            assert 3 <= int(cdr["talkduraction"]) <= 120
            assert planned.recording_seconds == int(cdr["talkduraction"])
            stamp, callid, caller, callee, rest = cdr["recording"].split("-")
            assert (callid, caller, callee, rest) == (cdr["callid"], cdr["callfrom"], cdr["callto"], cdr["type"] + ".wav")
            recorded_at = datetime.datetime.strptime(stamp, "%Y%m%d%H%M%S")
            started_at = datetime.datetime.strptime(cdr["timestart"], "%Y-%m-%d %H:%M:%S")
            assert 2 <= (recorded_at - started_at).total_seconds() <= 12
        else:
            assert planned.recording_seconds == 0
        if cdr["type"] == "Inbound":
            assert cdr["didnumber"] and cdr["srctrunkname"]
    assert factory.sequence == 207


def test_sequence_continues_after_history():
    assert CallFactory.next_sequence_after([{"callid": "1718001234.88"}, {"callid": "junk"}]) == 89


def test_report_formats():
    cdr = dict.fromkeys(CDR_FIELDS, "")
    cdr.update(callid="1.2", recording="x.wav", desttrunkname="SIP")
    v2 = json.loads(report_body(cdr, "2.0.0"))
    assert v2["event"] == "NewCdr" and set(v2) == {"event", *CDR_FIELDS} and v2["pincode"] == ""
    v1 = json.loads(report_body(cdr, "1.0.2"))
    assert v1 == {"action": "NewCdr", "callid": "1.2", "recording": "x.wav", "desttrunkname": "SIP"}
    legacy_text = report_body(cdr, "").decode()
    assert legacy_text.count('"action"') == 2  # the repeated key of old firmware
    assert json.loads(legacy_text)["dstrunkname"] == "SIP"


# --- WAV ------------------------------------------------------------------------


def test_wav_header_and_determinism(tmp_path):
    data = wav.make_wav("1718001234.88", 3)
    assert len(data) == 44 + 3 * 16000
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert int.from_bytes(data[4:8], "little") == len(data) - 8
    assert data == wav.make_wav("1718001234.88", 3)
    assert data != wav.make_wav("1718001234.89", 3)
    path = tmp_path / "x.wav"
    assert wav.write_wav(str(path), "1718001234.88", 3) == len(data)
    assert path.read_bytes() == data


def test_long_wav_is_written_whole(tmp_path):
    # Written in pieces, not built in memory: the pieces must add up to the same file.
    path = tmp_path / "long.wav"
    size = wav.write_wav(str(path), "seed", 1400)  # > 20 MiB
    assert size == path.stat().st_size == 44 + 1400 * 16000 > 20 * 1024 * 1024
    assert path.read_bytes() == wav.make_wav("seed", 1400)


def test_wav_is_playable(tmp_path):
    if not (shutil.which("sox") and shutil.which("ffprobe")):
        unavailable("sox and ffprobe (scripts/setup installs them)")
    path = tmp_path / "call.wav"
    wav.write_wav(str(path), "1718001234.88", 7)
    info = subprocess.run(["sox", "--i", str(path)], capture_output=True, text=True, check=True).stdout
    assert "Sample Rate    : 8000" in info and "Channels       : 1" in info and "16-bit" in info
    assert "00:00:07.00" in info
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    stream = json.loads(probe)["streams"][0]
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == ("pcm_s16le", "8000", 1)
    assert float(stream["duration"]) == 7.0


# --- deleted recordings (the PBX's auto-cleanup) ----------------------------------

DAY = 86400


def rec_name(epoch: int, seq: int) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{stamp}-{epoch}.{seq}-1001-1002-Internal.wav"


@pytest.fixture
def aged(clock: FakeClock) -> tuple[SimState, list[str]]:
    """Five recordings, one a day, oldest first, each with its CDR."""
    s = SimState({"api": "secret"}, clock=clock)
    names = [rec_name(1_700_000_000 + i * DAY, i + 1) for i in range(5)]
    for name in reversed(names):  # insertion order must not matter
        s.add_recording(name, 44)
    for name in names:
        s.add_cdr({"callid": name.split("-")[1], "recording": name})
    return s, names


def test_keep_count_selects_all_but_the_newest(aged):
    s, names = aged
    assert s.recordings_oldest_first() == names
    assert s.recordings_to_clean(keep_count=2) == names[:3]
    assert s.recordings_to_clean(keep_count=5) == []
    assert s.recordings_to_clean(keep_count=0) == names
    assert s.recordings_to_clean() == []  # both rules off


def test_keep_days_selects_calls_older_than_d_days(aged):
    s, names = aged
    newest = 1_700_000_000 + 4 * DAY
    assert s.recordings_to_clean(keep_days=2, now=newest) == names[:2]  # exactly 2 days: kept
    assert s.recordings_to_clean(keep_days=2, now=newest + 10) == names[:3]
    assert s.recordings_to_clean(keep_days=0.5, now=newest + 10) == names[:4]
    assert s.recordings_to_clean(keep_days=30, now=newest) == []
    # Both rules: the union, oldest first.
    assert s.recordings_to_clean(keep_count=4, keep_days=3, now=newest + 10) == names[:2]
    assert s.recordings_to_clean(keep_count=1, keep_days=3, now=newest + 10) == names[:4]
    assert s.recordings_started_before(1_700_000_000 + DAY + 1) == names[:2]


def test_same_second_calls_age_by_sequence(clock):
    s = SimState({"api": "secret"}, clock=clock)
    later, earlier = rec_name(1_700_000_000, 10), rec_name(1_700_000_000, 9)
    s.add_recording(later, 44)
    s.add_recording(earlier, 44)
    s.add_recording("odd.wav", 44)  # no callid in the name: the oldest of all
    assert s.recordings_oldest_first() == ["odd.wav", earlier, later]
    assert s.recordings_to_clean(keep_count=1) == ["odd.wav", earlier]


def test_removed_recording_keeps_its_cdr_and_is_missing(aged):
    s, names = aged
    for name in s.recordings_to_clean(keep_count=3):
        assert s.remove_recording(name)
    assert not s.remove_recording(names[0])  # already gone: not counted twice
    assert sorted(s.recordings) == names[2:]
    assert [c["recording"] for c in s.cdrs] == names  # the history still names them
    assert errno_of(s.require_recording, names[0]) == NO_SUCH_FILE
    assert s.stats_json()["recordings_deleted"] == 2


def test_missing_errno_is_configurable(clock):
    s = SimState({"api": "secret"}, clock=clock, missing_errno="20014")
    s.add_recording("a.wav", 44)
    assert errno_of(s.require_recording, "nope.wav") == "20014"
    s.remove_recording("a.wav")
    assert errno_of(s.require_recording, "a.wav") == "20014"


def test_cli_cleanup_switches():
    from recfs.sim.cli import _parser, config_from_args

    config = config_from_args(_parser().parse_args([]))
    assert (config.keep_recordings, config.keep_days, config.missing_errno) == (None, None, NO_SUCH_FILE)
    config = config_from_args(
        _parser().parse_args(["--keep-recordings", "100", "--keep-days", "0.5", "--missing-errno", "20014"])
    )
    assert (config.keep_recordings, config.keep_days, config.missing_errno) == (100, 0.5, "20014")
    for bad in (["--keep-recordings", "-1"], ["--keep-days", "0"], ["--keep-days", "nan"],
                ["--missing-errno", "gone"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(bad)


async def test_simulator_cleanup_deletes_files_durably_and_keeps_cdrs(tmp_path):
    from recfs.sim.config import SimConfig
    from recfs.sim.simulator import Simulator

    now = [1_700_000_000.0]
    config = SimConfig(calls_per_minute=0, keep_recordings=2, seed=1)
    sim = Simulator(config, tmp_path, wall_clock=lambda: now[0])
    cdrs = []
    for _ in range(4):
        now[0] += 3600
        cdrs.append(await sim.make_call(duration=1))
    names = [c["recording"] for c in cdrs]
    assert sorted(sim.state.recordings) == sorted(names[2:])  # newest two kept
    assert sorted(p.name for p in (tmp_path / "recordings").iterdir()) == sorted(names[2:])
    assert [c["recording"] for c in sim.state.cdrs] == names
    assert sim.state.stats.recordings_deleted == 2

    # Restarted with the age rule only: the deleted ones stay deleted, the CDR
    # history is whole, and recordings older than a day go at the first check.
    now[0] += DAY - 3600 + 60  # the third call is now a day and a minute old
    config = SimConfig(calls_per_minute=0, keep_days=1, seed=1)
    again = Simulator(config, tmp_path, wall_clock=lambda: now[0])
    assert sorted(again.state.recordings) == sorted(names[2:])
    assert [c["recording"] for c in again.state.cdrs] == names
    assert await again.cleanup() == [names[2]]
    assert list(again.state.recordings) == [names[3]]
    assert not (tmp_path / "recordings" / names[2]).exists()
    # A deletion on request goes the same way; unknown names are skipped.
    assert await again.delete_recordings([names[3], names[0], "nope.wav"], "test") == [names[3]]
    assert again.state.recordings == {} and len(again.state.cdrs) == 4


async def test_recording_that_cannot_be_unlinked_stays(tmp_path, monkeypatch):
    import pathlib

    from recfs.sim.config import SimConfig
    from recfs.sim.simulator import Simulator

    sim = Simulator(SimConfig(calls_per_minute=0, seed=2), tmp_path)
    stuck, other = [(await sim.make_call(duration=1))["recording"] for _ in range(2)]
    unlink = pathlib.Path.unlink

    def refuse(self: pathlib.Path, missing_ok: bool = False) -> None:
        if self.name == stuck:
            raise PermissionError(13, "Permission denied", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", refuse)
    assert await sim.delete_recordings([stuck, other], "test") == [other]
    assert list(sim.state.recordings) == [stuck]  # still on disk, so still served
    assert sim.state.require_recording(stuck) > 0
    assert sim.state.stats.recordings_deleted == 1
    assert (tmp_path / "recordings" / stuck).exists()
