"""The CDR CSV parser and the client's cdr/get_random + cdr/download (respx)."""

import httpx
import pytest
import respx

from recfs.pbx.cdr import CdrFormatError, parse_cdr_csv
from recfs.pbx.client import PbxClient, ReportTarget
from recfs.pbx.errors import PbxError

NAME1 = "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"
NAME2 = "20240610090000-1718002790.89-2001-2002-Internal.wav"
HEADER = ("callid,timestart,callfrom,callto,callduraction,talkduraction,srctrunkname,"
          "desttrunkname,status,type,pincode,recording,didnumber,agentringtime,sn")


def test_rows_by_header_name_with_bom_crlf_and_quoting():
    body = ("\ufeff" + HEADER + "\r\n"
            f'1718001234.88,2024-06-10 08:33:54,0612345678,2001,47,39,"SIP, Provider",,ANSWERED,'
            f"Inbound,,{NAME1},0201234567,,369900112233\r\n"
            "1718001300.90,2024-06-10 08:35:00,2001,2002,10,0,,,NO ANSWER,Internal,,,,,\r\n")
    rows = parse_cdr_csv(body.encode())
    assert [c.name for c in rows.calls] == [NAME1]
    call = rows.calls[0]
    assert (call.callid, call.timestart, call.caller, call.callee, call.trunk, call.did,
            call.pbx_serial) == ("1718001234.88", "2024-06-10 08:33:54", "0612345678", "2001",
                                 "SIP, Provider", "0201234567", "369900112233")
    assert rows.unrecorded == 1 and rows.malformed == [] and rows.rows == 2


def test_unknown_reordered_and_missing_columns():
    body = (" Recording ;x".replace(";", ",") + ",extra,CallID,TimeStart\n"
            f"{NAME2},1,whatever,1718002790.89,2024-06-10 09:00:00\n")
    rows = parse_cdr_csv(body.encode())
    assert [(c.name, c.callid, c.timestart, c.caller) for c in rows.calls] == [
        (NAME2, "1718002790.89", "2024-06-10 09:00:00", "")]


def test_malformed_rows_are_counted_and_the_rest_imported():
    body = (HEADER + "\n"
            f"1718001234.88,2024-06-10 08:33:54,0612345678,2001,47,39,,,ANSWERED,Inbound,,{NAME1},,,\n"
            "1,2024-06-10 08:34:00,a,b,1,1,,,ANSWERED,Inbound,,../../etc/passwd,,,\n"
            "1,2024-06-10 08:34:00,a,b,1,1,,,ANSWERED,Inbound,,.hidden.wav,,,\n"
            f"1,2,3,4,5,6,7,8,9,10,11,x.wav,13,14,15,16,17\n"
            "\n"
            f"1718002790.89,2024-06-10 09:00:00,2001,2002,5,5,,,ANSWERED,Internal,,{NAME2},,,\n")
    rows = parse_cdr_csv(body.encode())
    assert [c.name for c in rows.calls] == [NAME1, NAME2]
    assert [line for line, _ in rows.malformed] == [3, 4, 5]
    assert all(reason for _, reason in rows.malformed)


def test_bad_bytes_only_lose_their_row():
    good = f"1718001234.88,2024-06-10 08:33:54,0612,2001,1,1,,,ANSWERED,Inbound,,{NAME1},,,\n"
    bad = b"1,2024-06-10 08:34:00,\xff\xfe,b,1,1,,,ANSWERED,Inbound,,bad\xff.wav,,,\n"
    rows = parse_cdr_csv(HEADER.encode() + b"\n" + good.encode() + bad)
    assert [c.name for c in rows.calls] == [NAME1]
    assert len(rows.malformed) == 1


def test_empty_body_and_not_a_cdr_file():
    assert parse_cdr_csv(b"").calls == []
    assert parse_cdr_csv(HEADER.encode() + b"\r\n").rows == 0
    with pytest.raises(CdrFormatError):
        parse_cdr_csv(b"foo,bar\n1,2\n")


BASE = "https://pbx.test:8088"


def client(version):
    return PbxClient(BASE, "api", lambda: "secret", api_version=version,
                     target=ReportTarget(8260, "/recfs/report"))


@pytest.mark.parametrize("version,key", [("v2.0.0", "number"), ("v1.1.0", "extid")])
@respx.mock
async def test_cdr_download_uses_the_versions_filter_name(version, key):
    api = f"{BASE}/api/{version}"
    respx.post(f"{api}/login").mock(return_value=httpx.Response(200, json={"status": "Success", "token": "t" * 32}))
    rnd = respx.post(f"{api}/cdr/get_random").mock(return_value=httpx.Response(
        200, json={"status": "Success", "random": "r" * 32}))
    csv_body = b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n"
    dl = respx.get(f"{api}/cdr/download").mock(return_value=httpx.Response(200, content=csv_body))
    c = client(version)
    body = await c.cdr_download("2024-06-10 00:00:00", "2024-06-10 23:59:59")
    assert body == csv_body
    import json
    sent = json.loads(rnd.calls[0].request.content)
    assert sent == {"starttime": "2024-06-10 00:00:00", "endtime": "2024-06-10 23:59:59", key: "all"}
    params = dict(dl.calls[0].request.url.params)
    assert params == {"starttime": "2024-06-10 00:00:00", "endtime": "2024-06-10 23:59:59", key: "all",
                      "random": "r" * 32, "token": "t" * 32}
    await c.aclose()


@respx.mock
async def test_cdr_download_error_body_and_token_retry():
    api = f"{BASE}/api/v2.0.0"
    respx.post(f"{api}/login").mock(side_effect=[
        httpx.Response(200, json={"status": "Success", "token": "a" * 32}),
        httpx.Response(200, json={"status": "Success", "token": "b" * 32})])
    respx.post(f"{api}/cdr/get_random").mock(return_value=httpx.Response(
        200, json={"status": "Success", "random": "r" * 32}))
    dl = respx.get(f"{api}/cdr/download").mock(side_effect=[
        httpx.Response(200, json={"status": "Failed", "errno": "20006"}),
        httpx.Response(200, json={"status": "Failed", "errno": "10004"})])
    c = client("v2.0.0")
    with pytest.raises(PbxError) as caught:
        await c.cdr_download("2024-06-10 00:00:00", "2024-06-10 23:59:59")
    assert caught.value.errno == "10004"
    assert dl.calls[1].request.url.params["token"] == "b" * 32
    await c.aclose()
