"""Property-based tests: whatever arrives from the network, nothing crashes, nothing
unsafe is stored, and the catalog stays intact."""

from __future__ import annotations

import json
import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfs.catalog.database import Catalog
from recfs.pbx.cdr import CdrFormatError, parse_cdr_csv
from recfs.pbx.client import parse_failure, sniff
from recfs.pbx.errors import PbxError
from recfs.pbx.names import check_recording_name
from recfs.pbx.reports import BadReport, call_from_cdr, decode_report, event_name
from tests.catalog_util import write_calls

FIELDS = ["event", "action", "callid", "timestart", "callfrom", "callto", "callduraction",
          "talkduraction", "srctrunkname", "desttrunkname", "status", "type", "recording",
          "didnumber", "sn"]
GOOD = {"event": "NewCdr", "callid": "1718001234.88", "timestart": "2024-06-10 08:33:54",
        "callfrom": "0612345678", "callto": "2001", "status": "ANSWERED", "type": "Inbound",
        "recording": "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5)
hostile_text = (st.text(alphabet=st.sampled_from(list(string.printable) + ["\0", "é", "\u202e",
                                                                          "\x85", "\u2028"]),
                        max_size=300)
                | st.sampled_from([".", "..", "a/b.wav", "../x", "x" * 256, "é" * 128]))
reports = st.fixed_dictionaries(
    {}, optional={k: st.one_of(hostile_text, json_values, st.just(GOOD.get(k, ""))) for k in FIELDS})


def mutate(base: bytes, data) -> bytes:
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(0, 8))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[pos:pos + data.draw(st.integers(1, 10))]
        else:
            raw[pos:pos] = data.draw(st.binary(max_size=10))
    return bytes(raw)


def assert_safe(call) -> None:
    assert check_recording_name(call.name) == call.name
    assert "/" not in call.name and "\0" not in call.name and call.name not in (".", "..")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", call.day)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_report_parser(body):
    try:
        report = decode_report(body)
    except BadReport:
        return
    event_name(report)
    try:
        call = call_from_cdr(report)
    except BadReport:
        return
    if call is not None:
        assert_safe(call)


@settings(max_examples=2000, deadline=None)
@given(st.data())
def test_mutated_reports_are_accepted_safely_or_refused(data):
    body = mutate(json.dumps(GOOD).encode(), data)
    try:
        call = call_from_cdr(decode_report(body))
    except BadReport:
        return
    if call is not None:
        assert_safe(call)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(reports, max_size=20))
def test_catalog_stays_intact_under_random_reports(tmp_path_factory, batch):
    catalog = Catalog(tmp_path_factory.mktemp("cat") / "catalog.sqlite")
    accepted = set()
    for report in batch:
        try:
            call = call_from_cdr(report)
        except BadReport:
            continue
        if call is None:
            continue
        assert_safe(call)
        write_calls(catalog, [call])
        accepted.add(call.name)
    assert catalog._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert catalog.count() == len(accepted)
    for name in accepted:
        rec = catalog.by_name(name)
        assert rec is not None and catalog.by_ino(rec.ino) == rec
    catalog.close()


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
def test_the_download_sniffer_classifies_any_bytes(head):
    kind, size = sniff(head)
    assert kind in ("wav", "json", "html", "other")
    assert (size is not None) == (kind == "wav")
    if kind == "wav":
        assert head.startswith(b"RIFF") and size >= 8


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_any_failure_body_becomes_a_clear_pbx_error(body):
    error = parse_failure("download", body)
    assert isinstance(error, PbxError)
    assert str(error).startswith("PBX download failed")


CSV_HEADER = ("callid,timestart,callfrom,callto,callduraction,talkduraction,srctrunkname,"
              "desttrunkname,status,type,pincode,recording,didnumber,agentringtime,sn\n")
CSV_ROW = ("1718001234.88,2024-06-10 08:33:54,0612345678,2001,47,39,SIP,,ANSWERED,Inbound,,"
           "20240610083402-1718001234.88-0612345678-2001-Inbound.wav,0201234567,,369900112233\n")


@settings(max_examples=2000, deadline=None)
@given(st.data())
def test_random_and_mutated_cdr_csv_never_crash_the_parser(data):
    if data.draw(st.booleans()):
        body = data.draw(st.binary(max_size=1500))
    else:
        body = mutate((CSV_HEADER + CSV_ROW * 3).encode(), data)
    try:
        rows = parse_cdr_csv(body)
    except CdrFormatError:
        return
    for call in rows.calls:
        assert_safe(call)
