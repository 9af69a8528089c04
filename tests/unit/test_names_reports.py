import json

import pytest

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
