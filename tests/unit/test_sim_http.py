"""The simulator over real HTTPS, in-process: hypercorn on 127.0.0.1:0, httpx as client."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from recfs.pbx.errors import NO_SUCH_FILE, SIM_BAD_RANDOM
from recfs.sim.state import CDR_FIELDS
from tests.sim_helpers import (
    PASSWORD,
    USER,
    ReportReceiver,
    download,
    get_random,
    http_client,
    login,
    make_call,
    md5,
    start_sim,
)


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory) -> Path:
    # One certificate for all tests: generating it is the slowest part of a start.
    return tmp_path_factory.mktemp("sim-cert")


@pytest.fixture
async def sim(nursery, tmp_path, cert_dir):
    info = await start_sim(nursery, data_dir=tmp_path / "pbx", cert_dir=cert_dir)
    yield info
    info.stop()


@pytest.fixture
async def client(sim):
    async with http_client(sim) as c:
        yield c


async def test_login_random_download_roundtrip(sim, client):
    cdr = await make_call(client, duration=4)
    name = cdr["recording"]
    assert name.endswith(f"-{cdr['callid']}-{cdr['callfrom']}-{cdr['callto']}-{cdr['type']}.wav")
    token = await login(client)
    random = await get_random(client, token, name)
    reply = await download(client, token, name, random)
    data = (sim.data_dir / "recordings" / name).read_bytes()
    assert reply.status_code == 200
    assert reply.content == data and len(data) == 44 + 4 * 16000
    assert reply.headers["content-length"] == str(len(data))
    assert reply.headers["server"] == "Boa/0.94.14rc21"
    assert reply.headers["connection"] == "close"
    # One shot: the same random again is refused, as JSON with HTTP 200.
    again = await download(client, token, name, random)
    assert again.status_code == 200 and again.json() == {"status": "Failed", "errno": SIM_BAD_RANDOM}
    stats = (await client.get("/sim/stats")).json()
    assert stats["downloads"] == {name: 1} and stats["get_random"] == {name: 1}  # refused ones not counted
    assert stats["downloads_completed"] == 1 and stats["downloads_active"] == 0
    listing = (await client.get("/sim/recordings")).json()
    assert listing == [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]


async def test_random_for_other_file_and_unknown_file(sim, client):
    a = (await make_call(client, duration=1))["recording"]
    b = (await make_call(client, duration=1))["recording"]
    token = await login(client, "v1.1.0", version="1.0.2")
    random = await get_random(client, token, a, "v1.1.0")
    wrong = await download(client, token, b, random, "v1.1.0")
    assert wrong.json()["errno"] == SIM_BAD_RANDOM
    missing = await client.post(
        "/api/v1.1.0/recording/get_random", params={"token": token}, json={"recording": "nope.wav"}
    )
    assert missing.json() == {"status": "Failed", "errno": NO_SUCH_FILE}


async def test_protocol_errors(sim, client):
    async def errno(method: str, path: str, **kw) -> str:
        reply = await client.request(method, path, **kw)
        assert reply.status_code == 200 and reply.headers["server"] == "Boa/0.94.14rc21"
        body = reply.json()
        assert body["status"] == "Failed"
        return body["errno"]

    good = {"username": USER, "password": md5(PASSWORD), "port": "8260"}
    assert await errno("GET", "/api/v2.0.0/login") == "20001"
    assert await errno("POST", "/api/v2.0.0/login", content=b"username=api") == "20000"
    assert await errno("POST", "/api/v9.9.9/login", json=good) == "10003"
    assert await errno("POST", "/elsewhere", json=good) == "10003"
    assert await errno("POST", "/api/v2.0.0/login", json={"username": USER, "port": "8260"}) == "10004"
    assert await errno("POST", "/api/v2.0.0/login", json={**good, "port": 8260}) == "20008"
    assert await errno("POST", "/api/v2.0.0/login", json={**good, "port": "http"}) == "20008"
    assert await errno("POST", "/api/v2.0.0/login", json={**good, "password": md5("nope")}) == "20003"
    assert await errno("POST", "/api/v2.0.0/heartbeat", json={}) == "20005"
    assert await errno("POST", "/api/v2.0.0/heartbeat", params={"token": "0" * 32}, json={}) == "20004"
    token = await login(client)
    assert await errno("POST", "/api/v2.0.0/recording/get_random", params={"token": token}, json={}) == "10004"
    # v2.0.0 names the CDR filter "number"; "extid" is v1.x.
    cdr_query = {"starttime": "2024-01-01 00:00:00", "endtime": "2024-01-02 00:00:00", "extid": "all"}
    assert await errno("POST", "/api/v2.0.0/cdr/get_random", params={"token": token}, json=cdr_query) == "10004"
    ok = await client.post("/api/v2.0.0/heartbeat", params={"token": token}, json={})
    assert ok.json() == {"status": "Success"}
    ok = await client.post("/api/v2.0.0/logout", params={"token": token}, json={})
    assert ok.json() == {"status": "Success"}
    assert await errno("POST", "/api/v2.0.0/heartbeat", params={"token": token}, json={}) == "20004"


async def test_v2_login_reply_and_lockout(nursery, tmp_path, cert_dir):
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir, lockout_attempts=2, lockout_seconds=0.5)
    async with http_client(info) as c:
        reply = (await c.post("/api/v2.0.0/login", json={"username": USER, "password": md5(PASSWORD), "port": "1"})).json()
        assert set(reply) == {"status", "token", "transport"} and reply["transport"] == "HTTP"
        reply = (await c.post("/api/v1.1.0/login", json={"username": USER, "password": md5(PASSWORD), "port": "1"})).json()
        assert set(reply) == {"status", "token"}
        bad = {"username": USER, "password": md5("x"), "port": "1"}
        for _ in range(2):
            assert (await c.post("/api/v1.1.0/login", json=bad)).json()["errno"] == "20003"
        good = {**bad, "password": md5(PASSWORD)}
        assert (await c.post("/api/v1.1.0/login", json=good)).json()["errno"] == "20002"
        await trio.sleep(0.5)
        assert (await c.post("/api/v1.1.0/login", json=good)).json()["status"] == "Success"
    info.stop()


async def test_connection_closes_after_one_response_and_tls12_only(sim):
    ctx = ssl.create_default_context(cafile=str(sim.ca_file))
    # https_compatible: a missing close_notify at the end is not an error.
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", sim.port, ssl_context=ctx, https_compatible=True)
    await stream.do_handshake()
    assert stream.version() == "TLSv1.2"
    await stream.send_all(b"GET /sim/stats HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():  # b"" = the server closed
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"connection: close" in data.lower()
    tls13 = ssl.create_default_context(cafile=str(sim.ca_file))
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises((trio.BrokenResourceError, ssl.SSLError, OSError)):
        s = await trio.open_ssl_over_tcp_stream("127.0.0.1", sim.port, ssl_context=tls13)
        await s.do_handshake()


async def test_report_resent_until_200(nursery, sim, client):
    receiver = ReportReceiver(answers=[500])
    port = await receiver.start(nursery)
    await login(client, port=str(port), url="/recfs/report", urltag="0", version="2.0.0")
    cdr = await make_call(client, duration=1)
    await receiver.wait_for(2)
    (h1, b1), (h2, b2) = receiver.received
    assert b1 == b2
    assert h1["content-type"] == "application/json" and h1["user-agent"] == "WebAPI"
    report = json.loads(b1)
    assert report["event"] == "NewCdr" and set(report) == {"event", *CDR_FIELDS}
    assert report["callid"] == cdr["callid"] and report["recording"] == cdr["recording"]
    await trio.sleep(0.5)  # acknowledged: no third copy
    assert len(receiver.received) == 2
    stats = (await client.get("/sim/stats")).json()
    assert (stats["reports_sent"], stats["reports_acked"]) == (2, 1)


async def test_legacy_reports_and_heartbeat_retarget(nursery, sim, client):
    first, second = ReportReceiver(), ReportReceiver()
    p1, p2 = await first.start(nursery), await second.start(nursery)
    token = await login(client, "v1.1.0", port=str(p1))  # no version: legacy format
    unrecorded = await make_call(client, status="NO ANSWER")
    await first.wait_for(1)
    body = first.received[0][1].decode()
    assert body.count('"action"') == 2 and '"recording"' not in body
    assert json.loads(body)["callid"] == unrecorded["callid"]
    reply = await client.post(
        "/api/v1.1.0/heartbeat", params={"token": token}, json={"port": str(p2), "url": "/new"}
    )
    assert reply.json()["status"] == "Success"
    await make_call(client, duration=1, drop_report=True)  # never pushed
    await make_call(client, duration=1)
    await second.wait_for(1)
    assert len(first.received) == 1 and len(second.received) == 1


async def test_cdr_csv_download(sim, client):
    calls = [await make_call(client, duration=1, caller="1005", callee="1006", type="Internal"),
             await make_call(client, status="BUSY", type="Outbound", caller="1007"),
             await make_call(client, duration=2, type="Inbound", callee="1005")]
    token = await login(client, "v1.1.0", version="1.0.2")
    query = {"starttime": "2000-01-01 00:00:00", "endtime": "2099-12-31 23:59:59", "extid": "1005"}
    reply = (await client.post("/api/v1.1.0/cdr/get_random", params={"token": token}, json=query)).json()
    assert reply["status"] == "Success" and reply["extid"] == "1005"
    csv_reply = await client.get("/api/v1.1.0/cdr/download", params={**query, "random": reply["random"], "token": token})
    rows = list(csv.DictReader(io.StringIO(csv_reply.text)))
    assert csv_reply.text.splitlines()[0] == ",".join(CDR_FIELDS)
    assert [r["callid"] for r in rows] == [calls[0]["callid"], calls[2]["callid"]]
    assert rows[0] == calls[0]
    # One shot here too.
    again = await client.get("/api/v1.1.0/cdr/download", params={**query, "random": reply["random"], "token": token})
    assert again.json()["errno"] == SIM_BAD_RANDOM
    # v2.0.0 spells the filter "number".
    token2 = await login(client)
    query2 = {"starttime": "2000-01-01 00:00:00", "endtime": "2099-12-31 23:59:59", "number": "all"}
    random2 = (await client.post("/api/v2.0.0/cdr/get_random", params={"token": token2}, json=query2)).json()["random"]
    everything = await client.get("/api/v2.0.0/cdr/download", params={**query2, "random": random2, "token": token2})
    assert len(list(csv.DictReader(io.StringIO(everything.text)))) == 3


async def test_download_faults(sim, client):
    name = (await make_call(client, duration=3))["recording"]
    data = (sim.data_dir / "recordings" / name).read_bytes()
    token = await login(client)

    async def fetch() -> httpx.Response:
        return await download(client, token, name, await get_random(client, token, name))

    await client.post("/sim/faults", json={"download_error": {"value": "10023", "times": 1}})
    assert (await fetch()).json() == {"status": "Failed", "errno": "10023"}
    assert (await fetch()).content == data  # times: 1 was used up

    await client.post("/sim/faults", json={"no_content_length": True})
    reply = await fetch()
    assert "content-length" not in reply.headers and reply.content == data
    await client.post("/sim/faults/clear")

    await client.post("/sim/faults", json={"truncate_after": 1000, "times": 1})
    random = await get_random(client, token, name)
    async with client.stream(
        "GET", "/api/v2.0.0/recording/download", params={"recording": name, "random": random, "token": token}
    ) as reply:
        assert reply.headers["content-length"] == str(len(data))
        got = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in reply.aiter_raw():
                got += chunk
    assert got == data[:1000]

    await client.post("/sim/faults", json={"html_error": True, "times": 1})
    page = await fetch()
    assert page.status_code == 200 and page.content.startswith(b"<HTML>")
    assert (await client.get("/sim/faults")).json() == {}


async def test_stall_counts_active_until_client_leaves(sim, client):
    name = (await make_call(client, duration=2))["recording"]
    token = await login(client)
    await client.post("/sim/faults", json={"stall_after": 100})
    random = await get_random(client, token, name)
    async with http_client(sim, timeout=httpx.Timeout(10, read=0.5)) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await download(impatient, token, name, random)
    with trio.fail_after(5):
        while (await client.get("/sim/stats")).json()["downloads_active"]:
            await trio.sleep(0.05)
    stats = (await client.get("/sim/stats")).json()
    assert stats["downloads_max_concurrent"] == 1 and stats["downloads_completed"] == 0


async def test_token_ttl_fault_and_expire_tokens(sim, client):
    token = await login(client)
    await client.post("/sim/faults", json={"token_ttl": 0.3})
    await trio.sleep(0.35)
    reply = await client.post("/api/v2.0.0/heartbeat", params={"token": token}, json={})
    assert reply.json()["errno"] == "20006"
    await client.post("/sim/faults/clear")
    token = await login(client)
    assert (await client.post("/sim/expire-tokens")).status_code == 200
    reply = await client.post("/api/v2.0.0/heartbeat", params={"token": token}, json={})
    assert reply.json()["errno"] == "20004"
    assert (await client.get("/sim/stats")).json()["sessions"] == 0


async def test_login_error_fault_and_admin_validation(sim, client):
    await client.post("/sim/faults", json={"login_error": "20007"})
    body = {"username": USER, "password": md5(PASSWORD), "port": "8260"}
    assert (await client.post("/api/v2.0.0/login", json=body)).json()["errno"] == "20007"
    assert (await client.post("/sim/faults", json={"throttle": "fast"})).status_code == 400
    assert (await client.post("/sim/call", json={"type": "Sideways"})).status_code == 400
    assert (await client.get("/sim/nothing")).status_code == 404


async def test_history_survives_restart(nursery, tmp_path, cert_dir):
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir)
    async with http_client(info) as c:
        first = await make_call(c, duration=1)
    info.stop()
    await trio.sleep(0.1)
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir)
    async with http_client(info) as c:
        second = await make_call(c, duration=1)
        assert [cdr["callid"] for cdr in (await c.get("/sim/cdrs")).json()] == [first["callid"], second["callid"]]
        assert len((await c.get("/sim/recordings")).json()) == 2
    assert int(second["callid"].split(".")[1]) == int(first["callid"].split(".")[1]) + 1
    info.stop()


async def test_automatic_calls(nursery, tmp_path, cert_dir):
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir, calls_per_minute=600, seed=3)
    with trio.fail_after(5):
        while info.simulator.state.stats.calls < 2:
            await trio.sleep(0.05)
    info.stop()


def test_cli_ready_file_and_sigterm(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "recfs.sim.cli", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
         "--calls-per-minute", "0", "--password", "pw", "--fault", "throttle=1000000", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["base_url"].startswith("https://127.0.0.1:") and info["password"] == "pw"
        ctx = ssl.create_default_context(cafile=info["ca_file"])
        token = httpx.post(
            info["base_url"] + "/api/v2.0.0/login", verify=ctx,
            json={"username": "api", "password": md5("pw"), "port": "8260"},
        ).json()["token"]
        faults = httpx.get(info["base_url"] + "/sim/faults", verify=ctx).json()
        assert faults == {"throttle": {"value": 1000000, "times": None}}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert info["base_url"] in out
    assert "/api/v2.0.0/login" in err and token not in err and token not in out
    assert not ready.exists()


# --- deleted recordings (the PBX's auto-cleanup) ----------------------------------


async def test_delete_recordings_admin_and_what_the_api_answers(sim, client):
    cdrs = [await make_call(client, duration=1) for _ in range(4)]
    names = [c["recording"] for c in cdrs]
    token = await login(client)
    early = await get_random(client, token, names[0])  # taken before the deletion

    reply = await client.post("/sim/delete-recordings", json={"names": [names[0], "nope.wav"]})
    assert reply.status_code == 200 and reply.json() == [names[0]]
    assert not (sim.data_dir / "recordings" / names[0]).exists()
    # Same answer as for a name it never had.
    gone = await client.post("/api/v2.0.0/recording/get_random", params={"token": token}, json={"recording": names[0]})
    assert gone.json() == {"status": "Failed", "errno": NO_SUCH_FILE}
    never = await client.post("/api/v2.0.0/recording/get_random", params={"token": token}, json={"recording": "x.wav"})
    assert never.json() == gone.json()
    # The random from before the deletion: HTTP 200 with the JSON failure, not audio.
    late = await download(client, token, names[0], early)
    assert late.status_code == 200 and late.headers["server"] == "Boa/0.94.14rc21"
    assert late.json() == {"status": "Failed", "errno": NO_SUCH_FILE}

    listing = [entry["name"] for entry in (await client.get("/sim/recordings")).json()]
    assert listing == sorted(names[1:])
    # The CDR history still names every recording, the deleted one too.
    assert [c["recording"] for c in (await client.get("/sim/cdrs")).json()] == names

    # The answer is oldest first by the call's start (callid: epoch.sequence);
    # random ring times can make a later call start earlier.
    def started(name: str) -> tuple[int, ...]:
        return tuple(int(part) for part in name.split("-")[1].split("."))

    newest_start = int(cdrs[3]["callid"].split(".")[0])
    reply = await client.post("/sim/delete-recordings", json={"older_than": newest_start})
    assert reply.json() == sorted((n for n in names[1:] if started(n)[0] < newest_start), key=started)
    reply = await client.post("/sim/delete-recordings", json={"all": True})
    assert names[3] in reply.json()
    assert (await client.get("/sim/recordings")).json() == []
    assert (await client.post("/sim/delete-recordings", json={"all": True})).json() == []
    stats = (await client.get("/sim/stats")).json()
    assert stats["recordings_deleted"] == 4 and stats["calls"] == 4
    assert stats["downloads"] == {}  # the refused download is not counted

    for bad in ({}, {"all": False}, {"names": "a.wav"}, {"names": [1]}, {"older_than": "yesterday"},
                {"all": True, "names": []}):
        assert (await client.post("/sim/delete-recordings", json=bad)).status_code == 400, bad
    assert (await client.get("/sim/delete-recordings")).status_code == 405


async def test_download_under_way_survives_deletion(sim, client):
    name = (await make_call(client, duration=2))["recording"]
    data = (sim.data_dir / "recordings" / name).read_bytes()
    token = await login(client)
    random = await get_random(client, token, name)
    await client.post("/sim/faults", json={"throttle": 64000, "times": 1})
    async with client.stream(
        "GET", "/api/v2.0.0/recording/download", params={"recording": name, "random": random, "token": token}
    ) as reply:
        got = b""
        async for chunk in reply.aiter_raw():
            if not got:
                assert (await client.post("/sim/delete-recordings", json={"names": [name]})).json() == [name]
            got += chunk
    assert got == data  # the file was open: as on a PBX, that body completes


async def test_missing_errno_20014(nursery, tmp_path, cert_dir):
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir, missing_errno="20014")
    async with http_client(info) as c:
        name = (await make_call(c, duration=1))["recording"]
        token = await login(c)
        early = await get_random(c, token, name)
        await c.post("/sim/delete-recordings", json={"names": [name]})
        for recording in (name, "never-there.wav", "../etc"):
            reply = await c.post("/api/v1.1.0/recording/get_random", params={"token": token},
                                 json={"recording": recording})
            assert reply.json() == {"status": "Failed", "errno": "20014"}
        late = await download(c, token, name, early)
        assert late.status_code == 200 and late.json() == {"status": "Failed", "errno": "20014"}
    info.stop()


async def test_keep_recordings_and_restart_keeps_them_deleted(nursery, tmp_path, cert_dir):
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir, keep_recordings=2)
    async with http_client(info) as c:
        cdrs = [await make_call(c, duration=1) for _ in range(2)]
        unrecorded = await make_call(c, status="BUSY")  # no recording: nothing to clean
        assert len((await c.get("/sim/recordings")).json()) == 2
        cdrs += [await make_call(c, duration=1) for _ in range(2)]
        names = [cdr["recording"] for cdr in cdrs]
        kept = info.simulator.state.recordings_oldest_first()
        assert len(kept) == 2 and set(kept) <= set(names)
        # Newest by the call's start (callid: epoch.sequence); a long ring can
        # make a later call start earlier.
        by_start = sorted(names, key=lambda n: tuple(int(part) for part in n.split("-")[1].split(".")))
        assert kept == by_start[2:]
        assert (await c.get("/sim/stats")).json()["recordings_deleted"] == 2
        history = (await c.get("/sim/cdrs")).json()
        assert [h["callid"] for h in history] == [cdrs[0]["callid"], cdrs[1]["callid"], unrecorded["callid"],
                                                  cdrs[2]["callid"], cdrs[3]["callid"]]
    info.stop()
    await trio.sleep(0.1)
    # A plain restart (no cleanup switch): the deleted recordings do not come back.
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir)
    async with http_client(info) as c:
        assert sorted(e["name"] for e in (await c.get("/sim/recordings")).json()) == sorted(kept)
        assert len((await c.get("/sim/cdrs")).json()) == 5
        token = await login(c)
        for name in set(names) - set(kept):
            reply = await c.post("/api/v2.0.0/recording/get_random", params={"token": token}, json={"recording": name})
            assert reply.json()["errno"] == NO_SUCH_FILE
    info.stop()


async def test_keep_days_checked_at_start(nursery, tmp_path, cert_dir):
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir)
    async with http_client(info) as c:
        names = [(await make_call(c, duration=0))["recording"] for _ in range(2)]
    info.stop()
    await trio.sleep(0.1)
    # Every call started at least 2 s ago (ring time): 1 s of retention is over.
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir, keep_days=1 / 86400)
    async with http_client(info) as c:
        with trio.fail_after(5):
            while (await c.get("/sim/recordings")).json():
                await trio.sleep(0.05)
        assert (await c.get("/sim/stats")).json()["recordings_deleted"] == 2
        assert [cdr["recording"] for cdr in (await c.get("/sim/cdrs")).json()] == names
    assert list((tmp_path / "recordings").glob("*.wav")) == []
    info.stop()


async def test_accel_redirect_hands_the_body_to_the_front_server_only(nursery, tmp_path, cert_dir):
    # Behind nginx (scripts/nginx_front.py) the simulator redeems the random and names
    # the file; a client that comes directly, and a download with a fault, still get
    # the bytes from the simulator.
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir,
                           accel_redirect="/_recordings/")
    front = {"X-Sendfile-Type": "X-Accel-Redirect"}
    async with http_client(info) as c:
        name = (await make_call(c, duration=1))["recording"]
        data = (info.data_dir / "recordings" / name).read_bytes()
        token = await login(c)
        params = {"recording": name, "random": await get_random(c, token, name), "token": token}
        reply = await c.get("/api/v2.0.0/recording/download", params=params, headers=front)
        assert reply.headers["x-accel-redirect"] == f"/_recordings/{name}" and reply.content == b""
        again = await c.get("/api/v2.0.0/recording/download", params=params, headers=front)
        assert again.json() == {"status": "Failed", "errno": SIM_BAD_RANDOM}  # still one-shot
        direct = await download(c, token, name, await get_random(c, token, name))
        assert "x-accel-redirect" not in direct.headers and direct.content == data
        await c.post("/sim/faults", json={"truncate_after": 100})
        params["random"] = await get_random(c, token, name)
        async with c.stream("GET", "/api/v2.0.0/recording/download", params=params,
                            headers=front) as cut:
            assert "x-accel-redirect" not in cut.headers
            with pytest.raises(httpx.RemoteProtocolError):  # the simulator's own body, cut
                await cut.aread()
        stats = (await c.get("/sim/stats")).json()
        assert stats["downloads"] == {name: 3} and stats["downloads_active"] == 0
    info.stop()


async def test_accel_redirect_for_a_p_series_resource_url(nursery, tmp_path, cert_dir, caplog):
    # The P-Series face behind nginx: the token and the resource URL are still the
    # simulator's to check; only a good pair through the front server is handed off.
    caplog.set_level(logging.INFO, logger="recfs.sim.openapi")
    info = await start_sim(nursery, data_dir=tmp_path, cert_dir=cert_dir, series="p",
                           accel_redirect="/_recordings/", resource_ttl=1.0)
    front = {"X-Sendfile-Type": "X-Accel-Redirect", "User-Agent": "test"}
    async with http_client(info, headers={"User-Agent": "test"}) as c:
        name = (await make_call(c, duration=1))["recording"]
        data = (info.data_dir / "recordings" / name).read_bytes()
        token = (await c.post("/openapi/v1.0/get_token",
                              json={"username": USER, "password": PASSWORD})).json()["access_token"]
        url = (await c.get("/openapi/v1.0/recording/download", params={
            "file": name, "access_token": token})).json()["download_resource_url"]
        reply = await c.get(url, params={"access_token": token}, headers=front)
        assert reply.headers["x-accel-redirect"] == f"/_recordings/{name}" and reply.content == b""
        bad = await c.get(url, params={"access_token": "0" * 32}, headers=front)
        assert "x-accel-redirect" not in bad.headers and bad.json()["errcode"] == 10004
        direct = await c.get(url, params={"access_token": token})
        assert "x-accel-redirect" not in direct.headers and direct.content == data
        await c.post("/sim/faults", json={"truncate_after": 100})
        async with c.stream("GET", url, params={"access_token": token}, headers=front) as cut:
            assert "x-accel-redirect" not in cut.headers
            with pytest.raises(httpx.RemoteProtocolError):  # the simulator's own body, cut
                await cut.aread()
        await trio.sleep(1.1)
        expired = await c.get(url, params={"access_token": token}, headers=front)
        assert "x-accel-redirect" not in expired.headers
        assert expired.json() == {"errcode": 40002, "errmsg": "RESOURCE EXPIRED"}
        stats = (await c.get("/sim/openapi")).json()
        assert stats["resource_gets"] == 3
        assert (await c.get("/sim/stats")).json()["downloads_active"] == 0
    info.stop()
    # The resource URL's secret is as good as the token while it lasts: neither is logged.
    handed = [r.getMessage() for r in caplog.records if "sent by the front server" in r.getMessage()]
    assert handed and all("-***.wav?access_token=***" in m for m in handed)
    secret = url.rsplit("-", 1)[1].split(".")[0]
    assert secret not in caplog.text and token not in caplog.text
