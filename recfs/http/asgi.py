"""The little ASGI plumbing that recfs's HTTP applications share: binding the
listening socket (bind_socket), and telling non-HTTP scopes apart (not_http, with
lifespan for the simulator, which runs on hypercorn). The mount's own endpoints,
the report receiver and the metrics, are served by recfs.http.server."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def not_http(scope: dict[str, Any], receive: Receive, send: Send) -> bool:
    """True when the scope is not an HTTP request (lifespan, websocket): it has then
    been dealt with here, and the application has nothing to do."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    return scope["type"] != "http"


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's startup and shutdown: recfs's apps have nothing to do then."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before anything else starts, so that a taken port is a clear error at
    mount time and port 0 tells the real port (to register at login, or to print)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock

