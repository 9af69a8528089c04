import json

import pytest

from recfs.pbx import clock
from recfs.pbx.names import BadName, check_recording_name
from recfs.pbx.reports import BadReport, CallRecord, call_from_cdr, decode_report, event_name

GOOD = "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"


@pytest.mark.parametrize("name", [GOOD, "a b.wav", "é.wav", "x" * 200 + ".wav"])
def test_good_names_pass(name):
    assert check_recording_name(name) == name


@pytest.mark.parametrize("name", [
    "", ".", "..", "a/b.wav", "../../etc/passwd", "a\0b", "a\nb.wav", "a\x7fb", ".hidden",
    "é" * 128, 42, None, ["x"],
])
def test_bad_names_refused(name):
    with pytest.raises(BadName):
        check_recording_name(name)


def test_v1_report_example_from_the_protocol_page():
    body = json.dumps({
        "action": "NewCdr", "callid": "1718001234.88", "timestart": "2024-06-10 08:33:54",
        "callfrom": "0612345678", "callto": "2001", "srctrunkname": "SIP-Provider",
        "callduraction": "47", "talkduraction": "39", "status": "ANSWERED", "type": "Inbound",
        "recording": GOOD, "didnumber": "0201234567", "sn": "369900112233"}).encode()
    report = decode_report(body)
    assert event_name(report) == "NewCdr"
    call = call_from_cdr(report)
    assert call == CallRecord(name=GOOD, callid="1718001234.88", timestart="2024-06-10 08:33:54",
                              caller="0612345678", callee="2001", type="Inbound",
                              status="ANSWERED", duration="47", talk_duration="39",
                              trunk="SIP-Provider", did="0201234567", pbx_serial="369900112233")
    assert call.day == "2024-06-10"
    assert call.epoch == 1718001234


def test_v2_event_key_and_duplicate_keys_last_wins():
    body = b'{"event":"NewCdr","recording":"first.wav","recording":"' + GOOD.encode() + b'"}'
    report = decode_report(body)
    assert event_name(report) == "NewCdr"
    assert call_from_cdr(report).name == GOOD


def test_unrecorded_call_gives_none():
    assert call_from_cdr({"event": "NewCdr", "recording": ""}) is None
    assert call_from_cdr({"event": "NewCdr"}) is None


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b"\xff\xfe{}", b"{" * 70000])
def test_garbage_bodies_refused(body):
    with pytest.raises(BadReport):
        decode_report(body)


def test_hostile_recording_refused():
    with pytest.raises(BadReport):
        call_from_cdr({"recording": "../../etc/passwd"})
    with pytest.raises(BadReport):
        call_from_cdr({"recording": GOOD, "callfrom": {"nested": 1}})


def test_day_falls_back_to_name_then_callid():
    assert CallRecord(name="20231231235959-1.2-a-b-Internal.wav").day == "2023-12-31"
    assert CallRecord(name="odd.wav", callid="1718001234.1").day == "2024-06-10"
    assert CallRecord(name="odd.wav", timestart="2024-13-45 00:00:00").day == "1970-01-01"


def test_epoch_is_the_callid_and_never_the_host_zone(host_tz):
    timestart = "2024-06-10 08:33:54"
    assert CallRecord(name=GOOD, callid="1718001234.88", timestart=timestart).epoch == 1718001234
    assert CallRecord(name=GOOD, callid="1718001234", timestart="garbage").epoch == 1718001234
    # A PBX-local stamp alone does not say which instant it is: no guess from the
    # host's zone (the catalog dates such a call with the PBX's learned offset).
    assert CallRecord(name="odd.wav", timestart=timestart).epoch is None
    assert CallRecord(name=GOOD, callid="not-a-callid", timestart=timestart).epoch is None
    assert CallRecord(name="odd.wav").epoch is None


def test_day_from_each_source_whatever_the_host_zone(host_tz):
    # timestart first: the PBX-local date, even where the name's stamp is a few
    # seconds later and already on the next day.
    assert CallRecord(name="20240611000003-1718056799.1-a-b-Internal.wav", callid="1718056799.1",
                      timestart="2024-06-10 23:59:59").day == "2024-06-10"
    # else the name's leading stamp (PBX-local too)
    assert CallRecord(name="20240611000003-1718056799.1-a-b-Internal.wav").day == "2024-06-11"
    assert CallRecord(name="20240611000003-x.wav", timestart="2024-06-10 25:00:00").day == "2024-06-11"
    # else the callid's UTC date (22:30 UTC on the 10th)
    assert CallRecord(name="odd.wav", callid="1718058600.1").day == "2024-06-10"
    assert CallRecord(name="odd.wav", callid="1718058600.1", timestart="2024-02-30 10:00:00",
                      ).day == "2024-06-10"
    # else nothing dates it
    assert CallRecord(name="odd.wav").day == clock.UNKNOWN_DAY == "1970-01-01"
    assert CallRecord(name="99991399000000-odd.wav").day == "1970-01-01"


def test_clock_day_and_epoch_rules(host_tz):
    assert clock.call_day("2024-06-11 00:30:00") == "2024-06-11"
    assert clock.call_day("", "20240611003005-x.wav") == "2024-06-11"
    # From the callid alone: in PBX time once the offset is known (00:30 in UTC+2).
    assert clock.call_day("", "odd.wav", "1718058600.1") == "2024-06-10"
    assert clock.call_day("", "odd.wav", "1718058600.1", 7200) == "2024-06-11"
    assert clock.call_epoch("1718058600.1", "2024-06-11 00:30:00", None) == 1718058600
    assert clock.call_epoch("", "2024-06-11 00:30:00", 7200) == 1718058600
    assert clock.call_epoch("", "2024-06-11 00:30:00", -36000) == 1718058600 + 36000 + 7200
    assert clock.call_epoch("", "2024-06-11 00:30:00", None) is None
    assert clock.call_epoch("", "2024-06-31 00:30:00", 7200) is None  # no such day
    assert clock.callid_epoch("1718001234.88") == 1718001234
    assert clock.callid_epoch("17180012.88") is None
    assert clock.callid_epoch(1718001234) is None  # JSON number: not what the PBX sends


@pytest.mark.parametrize("text,ok", [
    ("2024-06-10 08:33:54", True),
    ("2024-02-29 23:59:59", True),
    ("2023-02-29 12:00:00", False),
    ("2024-13-01 00:00:00", False),
    ("2024-06-10 24:00:00", False),
    ("2024-06-10 08:33:54 ", False),
    ("2024-6-10 08:33:54", False),
    ("1969-12-31 23:59:59", False),
    ("", False),
    (None, False),
])
def test_parse_stamp(text, ok):
    parsed = clock.parse_stamp(text)
    assert (parsed is not None) == ok
    if ok:
        assert clock.format_local(parsed) == text == clock.format_local(clock.parse_local(text))
