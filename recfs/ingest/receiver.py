"""The report receiver: the HTTP endpoint the PBX pushes NewCdr reports to.

recfs.http.server (a small h11-based server: the PBX opens a connection per report,
and a general server's per-connection cost was most of the receiver's) serves it
in the mount's own trio loop; this module is the ASGI application, which any ASGI
server could run. Any path is accepted: the PBX posts to the
path registered at login, or to / when none was.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Awaitable, Callable

import trio

from recfs.http.asgi import not_http
from recfs.ingest.gate import ReportGate
from recfs.ingest.pipeline import Outcome
from recfs.http.server import serve_asgi
from recfs.logs import LogBudget
from recfs.pbx.reports import MAX_REPORT_BYTES

log = logging.getLogger("recfs.ingest.receiver")
_refused = LogBudget(log, "refused a request")

Handler = Callable[[bytes, str], Awaitable[tuple[Outcome, str]]]

# What the PBX is told: 200 stops its re-sending, so only what is committed (or can
# never be) gets it; 503 makes it send again; 400 says the report itself is wrong.
_HTTP = {Outcome.ADDED: 200, Outcome.KNOWN: 200, Outcome.UNRECORDED: 200,
         Outcome.IGNORED: 200, Outcome.REFUSED: 400, Outcome.NOT_STORED: 503}
BODY_DEADLINE = 5


class ReportApp:
    def __init__(self, handle: Handler, gate: ReportGate):
        self.handle = handle
        self.gate = gate

    async def __call__(self, scope, receive, send) -> None:
        if await not_http(scope, receive, send):
            return
        client = scope.get("client") or ("?", 0)
        peer = f"{client[0]}:{client[1]}"
        refusal = self.gate.refusal(str(client[0]), scope.get("path", ""))
        if refusal is not None:
            _refused.note("from %s: %s", peer, refusal)
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
        outcome, reason = await self.handle(bytes(body), peer)
        await _reply(send, _HTTP[outcome], reason or outcome.value)


async def _reply(send, status: int, text: str) -> None:
    payload = text.encode("utf-8", "replace") + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class ReportRouter:
    """One receiver for every PBX of a mount: the secret that ends the path names the
    PBX (each registered its own at login), whose ReportApp then checks the rest."""

    def __init__(self, apps: dict[str, ReportApp]):
        self.apps = apps

    async def __call__(self, scope, receive, send) -> None:
        if await not_http(scope, receive, send):
            return
        last = scope.get("path", "").rstrip("/").rsplit("/", 1)[-1]
        for secret, app in self.apps.items():
            if secrets.compare_digest(last, secret):
                await app(scope, receive, send)
                return
        client = scope.get("client") or ("?", 0)
        _refused.note("from %s:%s: wrong report path", client[0], client[1])
        await _reply(send, 403, "forbidden")

    def trusts(self, peer_ip: str) -> bool:
        """Whether *peer_ip* is any of the PBXs (the receiver's large connection budget)."""
        return any(app.gate.admits(peer_ip) for app in self.apps.values())


async def serve_reports(router: ReportRouter, sock: socket.socket, stop: trio.Event, *,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve on the bound *sock* until *stop* is set."""
    host, port = sock.getsockname()[:2]
    log.info("receiving PBX reports on %s:%d", host, port)
    await serve_asgi(router, sock, stop, "recfs.ingest.receiver.server", trusted=router.trusts,
                     task_status=task_status)
