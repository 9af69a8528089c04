"""The P-Series client's tokens and the recording list's paging, against respx (no
network), and event frames of every shape."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
import trio

from recfs.catalog.database import Catalog
from recfs.catalog.writer import CatalogWriter
from recfs.ingest.pipeline import Ingest
from recfs.ingest.recording_list import RecordingList
from recfs.pbx.client import LoginDeferred
from recfs.pbx.errors import PSeriesError
from recfs.pbx.clock import PbxClock
from recfs.pbx.precords import call_from_event, event_payload, listed_recording
from recfs.pbx.pseries import PSeriesClient
from recfs.pbx.reports import BadReport

BASE = "https://pbx.test:8088"
API = f"{BASE}/openapi/v1.0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tokens(n: int, life: int = 1800) -> httpx.Response:
    return httpx.Response(200, json={
        "errcode": 0, "errmsg": "SUCCESS", "access_token": f"A{n:031d}",
        "access_token_expire_time": life, "refresh_token": f"R{n:031d}",
        "refresh_token_expire_time": 86400})


def ok(**fields) -> httpx.Response:
    return httpx.Response(200, json={"errcode": 0, "errmsg": "SUCCESS", **fields})


def failure(code: int) -> httpx.Response:
    return httpx.Response(200, json={"errcode": code, "errmsg": "X"})


def make(clock: Clock | None = None, secret: str = "s3cret") -> PSeriesClient:
    return PSeriesClient(BASE, "client-id", lambda: secret, clock=clock or Clock())


def query(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(request.url)).query)


@respx.mock
async def test_get_token_once_then_the_token_only_in_the_query_string():
    get = respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    listing = respx.get(f"{API}/recording/list").mock(return_value=ok(total_number=0, data=[]))
    client = make()
    for _ in range(3):
        assert await client.list_recordings(1) == (0, [])
    assert get.call_count == 1 and listing.call_count == 3
    assert json.loads(get.calls[0].request.content) == {"username": "client-id",
                                                        "password": "s3cret"}
    for call in [*get.calls, *listing.calls]:
        assert call.request.headers["user-agent"] == "recfs"
        assert "authorization" not in call.request.headers
        assert b"A0000" not in call.request.content
    assert query(listing.calls[0].request)["access_token"] == ["A" + "0" * 30 + "1"]
    assert query(listing.calls[0].request)["order_by"] == ["desc"]


@respx.mock
async def test_refresh_before_expiry_and_the_old_token_revoked():
    clock = Clock()
    respx.post(f"{API}/get_token").mock(return_value=tokens(1, life=1800))
    refresh = respx.post(f"{API}/refresh_token").mock(return_value=tokens(2, life=1800))
    revoke = respx.get(f"{API}/del_token").mock(return_value=ok())
    client = make(clock)
    first = await client.login()
    clock.now += 800  # not due yet
    assert await client.login() == first and refresh.call_count == 0
    clock.now += 200  # past half of its life: due
    second = await client.login()
    assert second != first and refresh.call_count == 1 and client.refreshes == 1
    assert json.loads(refresh.calls[0].request.content) == {"refresh_token": "R" + "0" * 30 + "1"}
    assert query(revoke.calls[0].request)["access_token"] == [first]
    assert client.logins == 1


@respx.mock
async def test_refused_refresh_means_get_token_again():
    clock = Clock()
    get = respx.post(f"{API}/get_token").mock(side_effect=[tokens(1), tokens(2)])
    respx.post(f"{API}/refresh_token").mock(return_value=failure(10004))
    respx.get(f"{API}/del_token").mock(return_value=failure(10004))
    client = make(clock)
    await client.login()
    clock.now += 1700
    assert await client.login() == "A" + "0" * 30 + "2"
    assert get.call_count == 2


@respx.mock
async def test_expired_token_means_one_new_token_and_one_retry():
    respx.post(f"{API}/get_token").mock(side_effect=[tokens(1), tokens(2)])
    respx.post(f"{API}/refresh_token").mock(return_value=failure(10004))
    respx.get(f"{API}/del_token").mock(return_value=ok())
    listing = respx.get(f"{API}/recording/list").mock(
        side_effect=[failure(10004), ok(total_number=0, data=[])])
    client = make()
    assert await client.list_recordings(1) == (0, [])
    assert [query(c.request)["access_token"][0][-1] for c in listing.calls] == ["1", "2"]


@respx.mock
async def test_a_wrong_secret_stops_before_the_ip_block():
    clock = Clock()
    get = respx.post(f"{API}/get_token").mock(return_value=failure(-1))
    client = make(clock, secret="wrong")
    for _ in range(10):
        with pytest.raises((PSeriesError, LoginDeferred)):
            await client.login()
        clock.now += 1000  # past every pause
    assert get.call_count == 3  # the PBX blocks the address at 5
    assert client.guard.gave_up
    with pytest.raises(LoginDeferred):
        await client.login()


@respx.mock
async def test_garbage_answers_are_clear_errors():
    respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    route = respx.get(f"{API}/recording/list")
    client = make()
    for answer, words in [(httpx.Response(200, content=b"<html>"), "not JSON"),
                          (httpx.Response(200, json=[1]), "not an object"),
                          (httpx.Response(200, json={"x": 1}), "without an errcode"),
                          (ok(total_number="many", data=[]), "malformed list"),
                          (ok(total_number=3, data={"a": 1}), "malformed list")]:
        route.mock(return_value=answer)
        with pytest.raises(PSeriesError, match=words):
            await client.list_recordings(1)


@respx.mock
async def test_download_goes_through_the_resource_url_with_the_token():
    respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    step1 = respx.get(f"{API}/recording/download").mock(return_value=ok(
        file="x.wav", download_resource_url="/api/download/Recording-x-download-abc.wav"))
    audio = b"RIFF" + (40).to_bytes(4, "little") + b"WAVE" + bytes(36)
    step2 = respx.get(f"{BASE}/api/download/Recording-x-download-abc.wav").mock(
        return_value=httpx.Response(200, content=audio))
    client = make()
    async with client.download("x.wav") as body:
        data = body.head + b"".join([c async for c in body.chunks()])
    assert data == audio and body.announced_size == len(audio)
    assert query(step1.calls[0].request)["file"] == ["x.wav"]
    assert query(step2.calls[0].request)["access_token"] == ["A" + "0" * 30 + "1"]


@respx.mock
async def test_download_of_a_file_the_pbx_lost_is_final():
    respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    respx.get(f"{API}/recording/download").mock(return_value=failure(60001))
    client = make()
    with pytest.raises(PSeriesError) as info:
        async with client.download("x.wav"):
            pass
    assert info.value.file_gone and info.value.final


@respx.mock
async def test_a_resource_url_elsewhere_never_gets_the_token():
    respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    respx.get(f"{API}/recording/download").mock(return_value=ok(
        download_resource_url="https://evil.test/steal"))
    client = make()
    with pytest.raises(PSeriesError, match="elsewhere"):
        async with client.download("x.wav"):
            pass


def item(ident: int, size: int = 1000) -> dict:
    callid = f"{1718000000 + ident}.{ident}"
    return {"id": ident, "time": "10/06/2024 08:00:00", "uid": callid,
            "call_from": f"Evelyn<55{ident:02d}>", "call_to": "2001", "duration": 5,
            "size": size + ident, "call_type": "Inbound",
            "file": f"20240610080000-{callid}-55{ident:02d}-2001-Inbound.wav"}


class FakePbx:
    """A recording list that never gives more than `cap` items a page, newest
    first, as respx side effect."""

    def __init__(self, count: int, cap: int):
        self.items = [item(i) for i in range(count, 0, -1)]
        self.cap = cap
        self.pages: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        q = query(request)
        page, size = int(q["page"][0]), min(int(q["page_size"][0]), self.cap)
        self.pages.append(page)
        return ok(total_number=len(self.items),
                  data=self.items[(page - 1) * size: page * size])


@respx.mock
async def test_the_list_is_paged_by_what_came_back_and_walked_from_the_highest_id(tmp_path):
    respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    pbx = FakePbx(250, cap=100)
    respx.get(f"{API}/recording/list").mock(side_effect=pbx)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    writer = CatalogWriter(catalog)
    ingest = Ingest(writer, PbxClock(), on_new=lambda rec: None)
    listing = RecordingList(make(), ingest, writer, catalog, page_size=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        assert await listing.catch_up() == 250
        assert pbx.pages == [1, 2, 3]  # 500 asked, 100 given: three pages, not one
        assert catalog.count() == 250 and listing.last_id() == 250
        rec = catalog.by_name(item(7)["file"])
        assert rec is not None and rec.size == 1007  # the size from the list
        assert rec.call.caller == "5507" and rec.mtime == 1718000007
        assert rec.day == "2024-06-10"
        pbx.items[:0] = [item(252), item(251)]
        pbx.pages.clear()
        assert await listing.catch_up() == 2
        assert pbx.pages == [1]  # the rest is known
        # An event whose recording the list shows: the event's fields complete it.
        pbx.items[:0] = [item(253)]
        frame = json.dumps({"type": 30012, "sn": "SN1", "msg": json.dumps({
            "call_id": item(253)["uid"], "time_start": "2024-06-10 07:59:58",
            "call_from": "5553", "call_to": "2001", "status": "ANSWERED",
            "recording": item(253)["file"], "did_number": " "})})
        await listing.on_frame(frame)
        rec = catalog.by_name(item(253)["file"])
        assert rec is not None and rec.size == 1253 and rec.call.status == "ANSWERED"
        assert rec.call.pbx_serial == "SN1" and rec.call.did == ""
        # Garbage: counted and logged, nothing stored, nothing raised.
        for bad in ["not json", "[1]", '{"type": 30012, "msg": "{broken"}',
                    '{"type": 30012, "msg": 7}']:
            await listing.on_frame(bad)
        assert listing.stats.bad_events == 4 and catalog.count() == 253
        nursery.cancel_scope.cancel()
    catalog.close()


def test_list_items_and_events_are_checked_like_reports():
    with pytest.raises(BadReport):
        listed_recording({**item(1), "file": "../../etc/passwd"})
    with pytest.raises(BadReport):
        listed_recording({**item(1), "id": "x"})
    assert listed_recording({**item(1), "size": -5}).size is None
    kind, msg = event_payload(json.dumps({"type": 30012, "msg": {"recording": " "}}))
    assert kind == 30012 and call_from_event(msg) is None  # msg as an object; no recording
    with pytest.raises(BadReport):
        call_from_event({"recording": "a/b.wav"})


@respx.mock
async def test_mp3_recordings_are_downloaded_one_at_a_time():
    respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    step1 = respx.get(f"{API}/recording/download").mock(
        side_effect=lambda request: ok(download_resource_url="/api/download/"
                                       + query(request)["file"][0]))
    respx.get(url__startswith=f"{BASE}/api/download/").mock(
        return_value=httpx.Response(200, content=b"ID3" + bytes(100)))
    client = make()
    asked: list[str] = []

    async def fetch(name: str, hold: trio.Event) -> None:
        async with client.download(name):
            asked.append(name)
            await hold.wait()

    first_done, second_done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch, "a.mp3", first_done)
        await trio.sleep(0.05)
        nursery.start_soon(fetch, "b.mp3", second_done)
        nursery.start_soon(fetch, "c.wav", trio.Event())  # WAV: not held back
        await trio.sleep(0.05)
        assert sorted(asked) == ["a.mp3", "c.wav"] and step1.call_count == 2
        first_done.set()
        await trio.sleep(0.05)
        assert "b.mp3" in asked
        second_done.set()
        nursery.cancel_scope.cancel()


@respx.mock
async def test_the_token_keeper_refreshes_on_time_and_never_spins(autojump_clock):
    respx.post(f"{API}/get_token").mock(return_value=tokens(1, life=100))
    refresh = respx.post(f"{API}/refresh_token").mock(
        side_effect=[tokens(n, life=100) for n in range(2, 40)])
    respx.get(f"{API}/del_token").mock(return_value=ok())
    # A clock of its own (time.monotonic in the mount), not trio's.
    client = PSeriesClient(BASE, "client-id", lambda: "s3cret",
                           clock=lambda: trio.current_time() + 12345.0)
    with trio.move_on_after(301):
        await client.keep_tokens()
    # Due at half its life: at 50, 100, ..., 300 s.
    assert refresh.call_count == 6 and client.logins == 1
    assert len(respx.calls) == 1 + 6 + 6  # get_token, refreshes, and the old tokens revoked


@respx.mock
async def test_an_event_heard_during_a_walk_waits_for_the_next_one(tmp_path):
    """Its recording may be newer than the pages already read: stored now, it would
    have no size, and a stat would download it."""
    respx.post(f"{API}/get_token").mock(return_value=tokens(1))
    pbx = FakePbx(3, cap=100)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    writer = CatalogWriter(catalog)
    listing = RecordingList(make(), Ingest(writer, PbxClock(), on_new=lambda rec: None),
                            writer, catalog)
    late = listed_recording(item(4)).call

    def during_the_walk(request: httpx.Request) -> httpx.Response:
        answer = pbx(request)
        listing._heard[late.name] = late  # as on_frame does, while this page travels
        pbx.items.insert(0, item(4))
        return answer

    route = respx.get(f"{API}/recording/list").mock(side_effect=during_the_walk)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await listing.catch_up()
        assert catalog.by_name(late.name) is None  # not stored without its size
        route.mock(side_effect=pbx)
        await listing.catch_up()
        rec = catalog.by_name(late.name)
        assert rec is not None and rec.size == 1004
        nursery.cancel_scope.cancel()
    catalog.close()
