"""recfs's own connections to the PBX (pbx/tls.py) against the simulator over
real HTTPS in-process: bodies arrive whole and streamed, TLS sessions are resumed,
the pin is checked on every connection, a silent PBX times out, and errors come out
as httpx's."""

from __future__ import annotations

import hashlib
import ssl

import httpx
import pytest
import trio

from recfs.pbx.tls import _READ_MAX, PbxTransport, pbx_transport, verification
from recfs.sim.tls import client_context
from tests.sim_helpers import download, get_random, http_client, login, make_call, start_sim


@pytest.fixture
async def sim(nursery, tmp_path):
    info = await start_sim(nursery, data_dir=tmp_path / "pbx", cert_dir=tmp_path / "cert")
    yield info
    info.stop()


def pin_of(sim) -> bytes:
    der = ssl.PEM_cert_to_DER_cert(open(sim.ca_file).read())
    return hashlib.sha256(der).digest()


async def fetch_twice(sim, transport) -> list[bytes]:
    async with http_client(sim) as admin:
        cdr = await make_call(admin, duration=6)
    bodies = []
    async with httpx.AsyncClient(base_url=sim.base_url, transport=transport, timeout=10) as pbx:
        token = await login(pbx)
        for _ in range(2):
            random = await get_random(pbx, token, cdr["recording"])
            reply = await download(pbx, token, cdr["recording"], random)
            bodies.append(reply.content)
    expected = (sim.data_dir / "recordings" / cdr["recording"]).read_bytes()
    assert bodies == [expected, expected]
    return bodies


async def test_bodies_arrive_whole_and_sessions_are_resumed(sim):
    transport, sessions = pbx_transport(client_context(sim.ca_file))
    await fetch_twice(sim, transport)
    # login, and get_random + download twice: five connections, the PBX closing each.
    assert sessions.handshakes == 5
    assert sessions.resumed >= 3


async def test_concurrent_downloads_on_one_transport_keep_their_own_bytes(sim):
    # The streams of a transport share one read buffer (tls.py): reads that
    # interleave must still each hand over only their own bytes.
    transport, _sessions = pbx_transport(client_context(sim.ca_file))
    async with http_client(sim) as admin:
        calls = [await make_call(admin, duration=40 + 3 * i) for i in range(4)]  # 640 kB and up
    bodies: dict[str, bytes] = {}
    async with httpx.AsyncClient(base_url=sim.base_url, transport=transport, timeout=10) as pbx:
        token = await login(pbx)

        async def fetch(name: str) -> None:
            chunks = []
            random = await get_random(pbx, token, name)
            async with pbx.stream("GET", "/api/v2.0.0/recording/download", params={
                    "recording": name, "random": random, "token": token}) as reply:
                async for chunk in reply.aiter_raw():
                    chunks.append(chunk)
                    await trio.sleep(0)  # let the other transfers read in between
            bodies[name] = b"".join(chunks)

        async with trio.open_nursery() as transfers:
            for cdr in calls:
                transfers.start_soon(fetch, cdr["recording"])
    for cdr in calls:
        name = cdr["recording"]
        assert bodies[name] == (sim.data_dir / "recordings" / name).read_bytes(), name


async def test_the_pin_is_checked_on_resumed_connections_too(sim):
    transport, sessions = pbx_transport(verification(None, False, pin_of(sim)), pin_of(sim))
    await fetch_twice(sim, transport)
    assert sessions.resumed >= 3
    wrong, wrong_sessions = pbx_transport(verification(None, False, b"\0" * 32), b"\0" * 32)
    # The session memory is per transport: a wrong pin never gets a session to offer.
    async with httpx.AsyncClient(base_url=sim.base_url, transport=wrong) as pbx:
        with pytest.raises(httpx.ConnectError, match="pinned fingerprint"):
            await pbx.post("/api/v2.0.0/login", json={})
    assert wrong_sessions.handshakes == 0 and not wrong_sessions


async def test_a_silent_server_times_out(nursery):
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted = []

    async def accept_and_say_nothing():
        sock, _ = await listener.accept()
        accepted.append(sock)

    nursery.start_soon(accept_and_say_nothing)
    transport, _ = pbx_transport(ssl.create_default_context())
    async with httpx.AsyncClient(transport=transport, timeout=0.5) as pbx:
        with trio.fail_after(5):
            with pytest.raises(httpx.ConnectTimeout):
                await pbx.get(f"https://127.0.0.1:{port}/")
            with pytest.raises(httpx.ReadTimeout):
                await pbx.get(f"http://127.0.0.1:{port}/")
    listener.close()


async def test_the_transport_is_our_own_on_public_api_and_streams(sim, monkeypatch):
    # pbx_transport builds recfs's own transport on a public httpcore pool: it must
    # neither build httpx's transport (to replace its private pool) nor need it.
    original = httpx.AsyncHTTPTransport

    class Forbidden(original):
        def __init__(self, *args, **kwargs):
            raise AssertionError("pbx_transport must not build httpx.AsyncHTTPTransport")

    monkeypatch.setattr(httpx, "AsyncHTTPTransport", Forbidden)
    transport, sessions = pbx_transport(client_context(sim.ca_file))
    assert type(transport) is PbxTransport and not isinstance(transport, original)
    assert transport.sessions is sessions

    async with http_client(sim) as admin:
        cdr = await make_call(admin, duration=300)  # 4.8 MB
    expected = (sim.data_dir / "recordings" / cdr["recording"]).read_bytes()
    chunks = []
    async with httpx.AsyncClient(base_url=sim.base_url, transport=transport, timeout=10) as pbx:
        token = await login(pbx)
        random = await get_random(pbx, token, cdr["recording"])
        async with pbx.stream("GET", "/api/v2.0.0/recording/download", params={
                "recording": cdr["recording"], "random": random, "token": token}) as reply:
            assert reply.status_code == 200
            async for chunk in reply.aiter_raw():
                assert not reply.is_closed  # handed on while the rest still arrives
                chunks.append(chunk)
    assert b"".join(chunks) == expected
    # Streamed as it came off the socket, never gathered first.
    assert len(chunks) > len(expected) // _READ_MAX
    assert max(map(len, chunks)) <= _READ_MAX
    assert sessions.handshakes == 3  # login, get_random, download: on recfs's backend


async def _serve_once(nursery, answer: bytes) -> int:
    """A plain-HTTP server that answers one request with *answer*, then closes."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()

    async def answer_once():
        sock, _ = await listener.accept()
        with sock, listener:
            await sock.recv(65536)
            await sock.send(answer)

    nursery.start_soon(answer_once)
    return listener.getsockname()[1]


async def test_httpcore_errors_come_out_as_httpx_errors(nursery):
    transport, _ = pbx_transport(ssl.create_default_context())
    async with httpx.AsyncClient(transport=transport, timeout=5) as pbx:
        port = await _serve_once(nursery, b"not HTTP at all\r\n\r\n")
        with pytest.raises(httpx.RemoteProtocolError):
            await pbx.get(f"http://127.0.0.1:{port}/")
        # The body's own errors too, raised while it is streamed.
        port = await _serve_once(
            nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        async with pbx.stream("GET", f"http://127.0.0.1:{port}/") as reply:
            assert reply.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                async for _chunk in reply.aiter_raw():
                    pass
        with pytest.raises(httpx.ConnectError):
            await pbx.get(f"http://127.0.0.1:{_closed_port()}/")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_body_of_known_length_is_read_off_the_socket_by_a_thread(sim):
    # RecordingBody.direct (content/pump.py reads it): the bytes after the sniffed head,
    # exactly Content-Length of them; a wake-up interrupts a read that waits; a body
    # of unknown length is left to httpx.
    from recfs.pbx.client import PbxClient, ReportTarget
    from recfs.pbx.tls import Interrupted
    from tests.sim_helpers import PASSWORD, USER

    async with http_client(sim) as admin:
        name = (await make_call(admin, duration=40))["recording"]
        client = PbxClient(sim.base_url, USER, lambda: PASSWORD, target=ReportTarget(9),
                           verify=client_context(sim.ca_file), io_timeout=5)
        expected = (sim.data_dir / "recordings" / name).read_bytes()
        buffer = memoryview(bytearray(1 << 20))

        def rest(body) -> bytes:
            out = bytearray()
            while n := body.read_into(buffer):
                out += buffer[:n]
            return bytes(out)

        async with client.download(name) as body:
            assert body.direct is not None
            assert body.head + await trio.to_thread.run_sync(rest, body) == expected
        await admin.post("/sim/faults", json={"stall_after": 100_000, "times": 1})
        async with client.download(name) as body:
            assert body.direct is not None
            async with trio.open_nursery() as nursery:
                got: list[object] = []

                def until_woken() -> None:
                    try:
                        rest(body)
                    except Interrupted as exc:
                        got.append(exc)

                nursery.start_soon(trio.to_thread.run_sync, until_woken)
                await trio.sleep(0.3)
                body.direct.wake()
            assert len(got) == 1
        await admin.post("/sim/faults", json={"no_content_length": True, "times": 1})
        async with client.download(name) as body:
            assert body.direct is None
            assert body.head + b"".join([c async for c in body.chunks()]) == expected
        await client.logout()
        await client.aclose()
