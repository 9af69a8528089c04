"""The little ASGI plumbing that recfs's HTTP servers share: hypercorn (serve_on)
for the metrics endpoint, and lifespan for the simulator. The report receiver runs
on recfs.http.server, which needs only bind_socket from here."""

from __future__ import annotations

import logging
import socket
from typing import Any, Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

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


async def serve_on(app, sock: socket.socket, stop: trio.Event, log_name: str, *,
                   task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve an ASGI app with hypercorn on an already bound socket until *stop*."""
    config = Config()
    # hypercorn adopts the descriptor; detach so that only it closes the socket.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(log_name)
    config.include_server_header = False
    config.keep_alive_timeout = 5
    config.read_timeout = 10
    config.graceful_timeout = 1
    await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status, mode="asgi")
