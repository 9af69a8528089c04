"""recfs.http.server: the small HTTP/1.1 server the report receiver runs on."""

from __future__ import annotations

import trio

from recfs.http import server as http11
from recfs.http.asgi import bind_socket


async def echo_app(scope, receive, send):
    """Answers with the method, path and body it got; 413 past 1000 bytes; fails on /boom."""
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if len(body) > 1000:
            payload = b"too large\n"
            status = 413
            break
        if not message.get("more_body"):
            payload = f"{scope['method']} {scope['path']} {scope['client'][0]} ".encode() + body
            status = 200
            break
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def start(nursery, app=echo_app):
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop = trio.Event()
    await nursery.start(http11.serve_asgi, app, sock, stop, "test.http11")
    return port, stop


async def exchange(port: int, data: bytes) -> bytes:
    """Send *data*, then read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        reply = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                reply += chunk
        return reply


def post(path: str, body: bytes, close: bool = True) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


async def test_a_post_is_answered_and_the_connection_closed(nursery):
    port, stop = await start(nursery)
    reply = await exchange(port, post("/a%20b", b"hello"))
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"\r\n\r\nPOST /a b 127.0.0.1 hello")
    assert b"connection: close" in reply.lower()
    stop.set()


async def test_keep_alive_serves_requests_in_turn(nursery):
    port, stop = await start(nursery)
    reply = await exchange(port, post("/1", b"one", close=False) + post("/2", b"two"))
    assert reply.count(b"HTTP/1.1 200 ") == 2
    assert b"POST /1 127.0.0.1 one" in reply and reply.endswith(b"POST /2 127.0.0.1 two")
    stop.set()


async def test_chunked_bodies_are_reassembled(nursery):
    port, stop = await start(nursery)
    reply = await exchange(port, b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                 b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"abcde")
    stop.set()


async def test_garbage_and_oversized_heads_are_refused(nursery):
    port, stop = await start(nursery)
    assert (await exchange(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * http11.MAX_HEAD) + b"\r\n\r\n"
    assert (await exchange(port, huge)).startswith(b"HTTP/1.1 431 ")
    stop.set()


async def test_an_incomplete_head_is_cut_off(nursery, monkeypatch):
    monkeypatch.setattr(http11, "HEAD_TIMEOUT", 0.2)
    port, stop = await start(nursery)
    assert (await exchange(port, b"POST / HTTP/1.1\r\nHo")).startswith(b"HTTP/1.1 408 ")
    # A connection that never says anything is closed without a word.
    assert await exchange(port, b"") == b""
    stop.set()


async def test_an_early_refusal_reaches_a_client_still_sending(nursery):
    port, stop = await start(nursery)
    reply = await exchange(port, post("/big", b"x" * 500_000))
    assert reply.startswith(b"HTTP/1.1 413 ") and reply.endswith(b"too large\n")
    stop.set()


async def test_an_application_failure_is_a_500_and_the_server_carries_on(nursery):
    port, stop = await start(nursery)
    assert (await exchange(port, post("/boom", b""))).startswith(b"HTTP/1.1 500 ")
    assert (await exchange(port, post("/ok", b"!"))).startswith(b"HTTP/1.1 200 ")
    stop.set()


async def test_stop_ends_the_server():
    async with trio.open_nursery() as nursery:
        port, stop = await start(nursery)
        assert (await exchange(port, post("/", b""))).startswith(b"HTTP/1.1 200 ")
        stop.set()
    # The nursery exited: serve_asgi returned, and the port is closed.
    try:
        await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        pass
    else:
        raise AssertionError("still listening after stop")
