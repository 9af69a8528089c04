"""The PBX client's protocol handling, against respx (no network)."""

import hashlib
import json

import httpx
import pytest
import respx

from recfs.pbx.client import LoginGuard, PbxClient, ReportTarget, sniff
from recfs.pbx.errors import PbxError

BASE = "https://pbx.test:8088"
API = f"{BASE}/api/v2.0.0"
TOKEN1 = "a" * 32
TOKEN2 = "b" * 32
RANDOM = "c" * 32


def wav(n_data: int) -> bytes:
    header = b"RIFF" + (36 + n_data).to_bytes(4, "little") + b"WAVEfmt " + bytes(20) + b"data"
    header += n_data.to_bytes(4, "little")
    return header + bytes(range(256)) * (n_data // 256) + bytes(n_data % 256)


def make_client(password="secret", **kw):
    return PbxClient(BASE, "api", lambda: password, target=ReportTarget(8260, "/recfs/report"), **kw)


def ok(**fields):
    return httpx.Response(200, json={"status": "Success", **fields})


def failed(errno):
    return httpx.Response(200, json={"status": "Failed", "errno": errno})


@respx.mock
async def test_login_sends_md5_port_and_report_version():
    route = respx.post(f"{API}/login").mock(return_value=ok(token=TOKEN1))
    client = make_client()
    await client.login()
    sent = json.loads(route.calls[0].request.content)
    assert sent == {"username": "api", "password": hashlib.md5(b"secret").hexdigest(),
                    "port": "8260", "version": "2.0.0", "url": "/recfs/report", "urltag": "0"}
    assert client.logged_in


@respx.mock
async def test_v1_path_and_report_format():
    route = respx.post(f"{BASE}/api/v1.1.0/login").mock(return_value=ok(token=TOKEN1))
    client = make_client(api_version="1.1.0")
    await client.login()
    assert json.loads(route.calls[0].request.content)["version"] == "1.0.2"


@pytest.mark.parametrize("errno", ["20004", "20005", "20006"])
@respx.mock
async def test_dead_token_means_one_login_and_one_retry(errno):
    respx.post(f"{API}/login").mock(side_effect=[ok(token=TOKEN1), ok(token=TOKEN2)])
    hb = respx.post(f"{API}/heartbeat").mock(side_effect=[failed(errno), ok()])
    client = make_client()
    await client.heartbeat("10.0.0.1")
    assert client.logins == 2
    assert [c.request.url.params["token"] for c in hb.calls] == [TOKEN1, TOKEN2]


@respx.mock
async def test_token_error_twice_is_an_error_not_a_loop():
    respx.post(f"{API}/login").mock(return_value=ok(token=TOKEN1))
    respx.post(f"{API}/heartbeat").mock(return_value=failed("20006"))
    client = make_client()
    with pytest.raises(PbxError, match="errno 20006"):
        await client.heartbeat("10.0.0.1")
    assert client.logins == 2


@respx.mock
async def test_bad_credentials_never_reach_the_lockout():
    clock = [0.0]
    route = respx.post(f"{API}/login").mock(return_value=failed("20003"))
    client = make_client(clock=lambda: clock[0])
    for _ in range(20):
        with pytest.raises(PbxError):
            await client.login()
        clock[0] += 3600
    assert route.call_count == LoginGuard.MAX_BAD_CREDENTIALS < 5
    # A corrected password is tried again.
    client._password = lambda: "corrected"
    route.mock(return_value=ok(token=TOKEN1))
    await client.login()
    assert client.logged_in


@respx.mock
async def test_login_backs_off_between_failures():
    clock = [0.0]
    route = respx.post(f"{API}/login").mock(return_value=failed("20003"))
    client = make_client(clock=lambda: clock[0])
    with pytest.raises(PbxError):
        await client.login()
    with pytest.raises(PbxError, match="next attempt allowed"):
        await client.login()
    assert route.call_count == 1


@respx.mock
async def test_unknown_errno_is_named():
    respx.post(f"{API}/login").mock(return_value=failed("29999"))
    with pytest.raises(PbxError, match="errno 29999 \\(unknown error number\\)"):
        await make_client().login()


@respx.mock
async def test_garbage_answer_is_a_clear_error():
    respx.post(f"{API}/login").mock(return_value=httpx.Response(200, text="<html>oops</html>"))
    with pytest.raises(PbxError, match="not JSON"):
        await make_client().login()


async def _download(client, name="r.wav"):
    async with client.download(name) as body:
        data = body.head
        async for chunk in body.chunks():
            data += chunk
        return body, data


@pytest.mark.parametrize("with_length", [True, False])
@respx.mock
async def test_download_is_handshake_then_get(with_length):
    audio = wav(5000)
    respx.post(f"{API}/login").mock(return_value=ok(token=TOKEN1))
    gr = respx.post(f"{API}/recording/get_random").mock(
        return_value=ok(recording="r.wav", random=RANDOM))
    async def pieces():
        for i in range(0, len(audio), 1000):
            yield audio[i:i + 1000]

    headers = {"content-length": str(len(audio))} if with_length else {}
    dl = respx.get(f"{API}/recording/download").mock(
        return_value=httpx.Response(200, content=pieces(), headers=headers))
    body, data = await _download(make_client())
    assert data == audio
    assert body.announced_size == len(audio)
    assert body.content_length == (len(audio) if with_length else None)
    assert body.riff_size == len(audio)
    assert json.loads(gr.calls[0].request.content) == {"recording": "r.wav"}
    params = dl.calls[0].request.url.params
    assert (params["recording"], params["random"], params["token"]) == ("r.wav", RANDOM, TOKEN1)


@respx.mock
async def test_download_json_error_names_errno_and_hides_secrets():
    respx.post(f"{API}/login").mock(return_value=ok(token=TOKEN1))
    respx.post(f"{API}/recording/get_random").mock(return_value=ok(random=RANDOM))
    respx.get(f"{API}/recording/download").mock(return_value=failed("10023"))
    with pytest.raises(PbxError) as info:
        await _download(make_client())
    assert "errno 10023 (audio file does not exist)" in str(info.value)
    assert TOKEN1 not in str(info.value) and RANDOM not in str(info.value)


@respx.mock
async def test_download_token_error_restarts_with_fresh_random():
    respx.post(f"{API}/login").mock(side_effect=[ok(token=TOKEN1), ok(token=TOKEN2)])
    gr = respx.post(f"{API}/recording/get_random").mock(
        side_effect=[ok(random=RANDOM), ok(random="d" * 32)])
    audio = wav(100)
    respx.get(f"{API}/recording/download").mock(
        side_effect=[failed("20006"), httpx.Response(200, content=audio)])
    _body, data = await _download(make_client())
    assert data == audio
    assert gr.call_count == 2


@respx.mock
async def test_download_html_page_is_an_error():
    respx.post(f"{API}/login").mock(return_value=ok(token=TOKEN1))
    respx.post(f"{API}/recording/get_random").mock(return_value=ok(random=RANDOM))
    respx.get(f"{API}/recording/download").mock(
        return_value=httpx.Response(200, text="<html><body>500</body></html>"))
    with pytest.raises(PbxError, match="HTML"):
        await _download(make_client())


def test_sniff():
    assert sniff(wav(10)[:12]) == ("wav", 54)
    assert sniff(b'  {"status"') == ("json", None)
    assert sniff(b"<!DOCTYPE html>") == ("html", None)
    assert sniff(b"ID3\x03\x00") == ("other", None)


@respx.mock
async def test_hostile_names_are_url_encoded_when_sent_back():
    name = "a b&token=x#frag?q=1%2F+é.wav"
    respx.post(f"{API}/login").mock(return_value=ok(token=TOKEN1))
    gr = respx.post(f"{API}/recording/get_random").mock(return_value=ok(random=RANDOM))
    dl = respx.get(f"{API}/recording/download").mock(
        return_value=httpx.Response(200, content=wav(10)))
    await _download(make_client(), name)
    assert json.loads(gr.calls[0].request.content) == {"recording": name}
    request = dl.calls[0].request
    assert request.url.params["recording"] == name
    assert request.url.params["token"] == TOKEN1  # the name could not inject a parameter
    assert b"&token=x" not in request.url.raw_path and b"#" not in request.url.raw_path
