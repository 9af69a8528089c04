"""The report receiver: the HTTP endpoint the PBX pushes NewCdr reports to.

Hypercorn serves it in the mount's own trio loop; this module is only the ASGI
application and the server settings. Any path is accepted: the PBX posts to the
path registered at login, or to / when none was.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from recfs.asgi import lifespan, serve_on
from recfs.gate import ReportGate
from recfs.protocol.reports import MAX_REPORT_BYTES

log = logging.getLogger("recfs.receiver")

Handler = Callable[[bytes, str], Awaitable[tuple[int, str]]]
BODY_DEADLINE = 5


class ReportApp:
    def __init__(self, handle: Handler, gate: ReportGate):
        self.handle = handle
        self.gate = gate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        client = scope.get("client") or ("?", 0)
        peer = f"{client[0]}:{client[1]}"
        refusal = self.gate.refusal(str(client[0]), scope.get("path", ""))
        if refusal is not None:
            log.warning("refused a request from %s: %s", peer, refusal)
            await _reply(send, 403, "forbidden")
            return
        if scope["method"] != "POST":
            await _reply(send, 405, "only POST")
            return
        body = bytearray()
        # A client that dribbles its body holds a connection: the whole body must
        # arrive within BODY_DEADLINE, not merely some byte every few seconds.
        with trio.move_on_after(BODY_DEADLINE) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > MAX_REPORT_BYTES:
                    log.warning("refused a report from %s: larger than %d bytes", peer,
                                MAX_REPORT_BYTES)
                    await _reply(send, 413, "too large")
                    return
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            log.warning("refused a report from %s: body not complete within %d s", peer,
                        BODY_DEADLINE)
            await _reply(send, 408, "too slow")
            return
        status, reason = await self.handle(bytes(body), peer)
        await _reply(send, status, reason)


async def _reply(send, status: int, text: str) -> None:
    payload = text.encode("utf-8", "replace") + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def serve_reports(handle: Handler, gate: ReportGate, sock: socket.socket, stop: trio.Event, *,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve on the bound *sock* until *stop* is set."""
    host, port = sock.getsockname()[:2]
    log.info("receiving PBX reports on %s:%d", host, port)
    await serve_on(ReportApp(handle, gate), sock, stop, "recfs.receiver.server",
                   task_status=task_status)
