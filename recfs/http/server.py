"""The mount's HTTP/1.1 server: one ASGI application on a bound socket, in the
caller's trio loop. It serves the report receiver and the metrics endpoint (each on
its own socket); hypercorn is left only to the simulator.

Why recfs has a server of its own instead of a general one such as hypercorn:

- Cost per connection. The PBX opens a new connection for every report it pushes,
  and with a general server the per-connection machinery was most of the
  receiver's CPU. This one does only what the mount needs: HTTP/1.1 framing
  comes from h11 (nothing is parsed by hand here), and the application gets the
  plain ASGI `http` scope, so it stays an ordinary ASGI app that any ASGI server
  could run.
- A per-peer connection budget, which hypercorn lacks. When the caller says which
  peers it trusts (the PBX), all other peers share MAX_OUTSIDERS connections and
  are closed at once beyond that, so a flood of connections from elsewhere never
  keeps the PBX waiting. Trusted peers get up to MAX_CONNECTIONS at once (more
  wait in the kernel's backlog); without a trust test (the metrics endpoint),
  every peer does.
- Deadlines on the request head and body, so that a slow peer cannot hold a
  connection. The head must be complete within HEAD_TIMEOUT seconds and at most
  MAX_HEAD bytes (h11's limit, checked between reads of at most _CHUNK bytes),
  else 408 or 431 and close; an idle keep-alive connection is closed after
  KEEP_ALIVE seconds. The body's deadline and size cap are set by the application
  (recfs/ingest/receiver.py, BODY_DEADLINE), which reads the body through ASGI
  `receive`.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import unquote

import h11
import trio

from recfs.logs import LogBudget

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 5.0  # "a few seconds": a PBX sends its report head in one packet
KEEP_ALIVE = 5.0
GRACE = 1.0
MAX_CONNECTIONS = 512  # well under the usual 1024 descriptors
MAX_OUTSIDERS = 32
BACKLOG = 1024
_CHUNK = 16384  # also bounds how far a head may overshoot MAX_HEAD in one read
_LINGER = 2.0
_LINGER_BYTES = 1 << 20
_TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

_date = (0, b"")


def _http_date() -> bytes:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]


class _Closed(Exception):
    """The peer went away (or broke the protocol) mid-request."""


class _Connection:
    def __init__(self, sock: trio.socket.SocketType, client: tuple[str, int],
                 server: tuple[str, int], log: logging.Logger):
        self.sock = sock
        self.client = client
        self.server = server
        self.log = log
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.response: h11.Response | None = None
        self.response_done = False

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def _next_event(self):
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.sock.recv(_CHUNK)
            except OSError:
                data = b""
            self.h11.receive_data(data)

    async def serve(self, app) -> None:
        served = False
        while True:
            # The first request's head must be complete within HEAD_TIMEOUT; on a
            # kept-alive connection the next one must come within KEEP_ALIVE.
            with trio.move_on_after(KEEP_ALIVE if served else HEAD_TIMEOUT) as waited:
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as exc:
                    # Not h11's message: it may quote the request line (the secret).
                    await self._refuse(exc.error_status_hint or 400, "not valid HTTP/1.1")
                    return
            if waited.cancelled_caught:
                if self.h11.trailing_data[0]:
                    await self._refuse(408, "request head not complete in time")
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            served = True
            await self._run_app(app, event)
            if self.response_done and self.h11.our_state is h11.DONE \
                    and self.h11.their_state is h11.DONE:
                self.h11.start_next_cycle()
                self.response = None
                self.response_done = False
                continue
            return

    async def _run_app(self, app, request: h11.Request) -> None:
        path, _, query = request.target.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": self.server,
            "state": {},
        }
        try:
            await app(scope, self._receive, self._app_send)
        except _Closed:
            return
        except Exception:
            # Not the path: the receiver's carries the report secret.
            self.log.exception("the application failed on a %s request", scope["method"])
            if self.h11.our_state is h11.SEND_RESPONSE:
                await self._respond_error(500)
            return
        if not self.response_done and self.h11.our_state is h11.SEND_RESPONSE \
                and self.h11.their_state is not h11.ERROR:
            await self._respond_error(500)

    async def _receive(self) -> dict:
        """The request body as it arrives; once it has all been delivered (or the
        peer broke off), `http.disconnect`."""
        if self.h11.they_are_waiting_for_100_continue:
            try:
                await self._send(self.h11.send(h11.InformationalResponse(status_code=100,
                                                                         headers=[])))
            except OSError:
                return {"type": "http.disconnect"}
        if self.h11.their_state is not h11.SEND_BODY:
            return {"type": "http.disconnect"}
        try:
            event = await self._next_event()
        except h11.RemoteProtocolError:
            return {"type": "http.disconnect"}
        if isinstance(event, h11.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        if isinstance(event, h11.EndOfMessage):
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def _app_send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.response is not None:
                raise RuntimeError("response already started")
            headers = [(name, value) for name, value in message.get("headers", [])]
            headers.append((b"date", _http_date()))
            self.response = h11.Response(status_code=message["status"], headers=headers)
        elif kind == "http.response.body":
            if self.response is None or self.response_done:
                raise RuntimeError("response body without a start, or after the end")
            more = message.get("more_body", False)
            out = b""
            if self.h11.our_state is h11.SEND_RESPONSE:
                out += self.h11.send(self.response)
            body = message.get("body", b"")
            if body:
                out += self.h11.send(h11.Data(data=body))
            if not more:
                out += self.h11.send(h11.EndOfMessage())
                self.response_done = True
            try:
                await self._send(out)
            except OSError:
                raise _Closed() from None

    async def _respond_error(self, status: int) -> None:
        payload = f"{status}\n".encode()
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=[
                (b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"), (b"date", _http_date())]))
            data += self.h11.send(h11.Data(data=payload)) + self.h11.send(h11.EndOfMessage())
            self.response_done = True
            await self._send(data)
        except (h11.LocalProtocolError, OSError):
            pass

    async def _refuse(self, status: int, why: str) -> None:
        self.log.debug("closing a connection from %s:%d: %s", *self.client, why)
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._respond_error(status)

    async def close(self) -> None:
        """Close; when the peer may still be sending (a refused body), first stop
        writing and read what comes for a moment, so that the kernel does not answer
        the unread bytes with a reset that could destroy the reply in flight."""
        try:
            if self.response_done \
                    and self.h11.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
                self.sock.shutdown(socket.SHUT_WR)
                with trio.move_on_after(_LINGER):
                    drained = 0
                    while drained < _LINGER_BYTES:
                        data = await self.sock.recv(_CHUNK)
                        if not data:
                            break
                        drained += len(data)
        except OSError:
            pass
        finally:
            self.sock.close()


async def serve_asgi(app, sock: socket.socket, stop: trio.Event, log_name: str, *,
                     trusted: Callable[[str], bool] | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve *app* on the bound *sock* (adopted, closed here) until *stop*; then let
    requests in progress finish for GRACE seconds. *trusted*(peer address), when
    given, tells the peers that get the large connection budget."""
    log = logging.getLogger(log_name)
    listener = trio.socket.from_stdlib_socket(sock)
    listener.listen(BACKLOG)
    server = tuple(listener.getsockname()[:2])
    trusted_slots = trio.Semaphore(MAX_CONNECTIONS)
    outsider_slots = trio.Semaphore(MAX_OUTSIDERS)
    turned_away = LogBudget(log, "connections turned away: too many from untrusted peers")

    async def connection(conn_sock, client, slots: trio.Semaphore) -> None:
        conn = _Connection(conn_sock, client, server, log)
        try:
            await conn.serve(app)
        except Exception:
            log.exception("connection from %s:%d failed", *client)
        finally:
            try:
                await conn.close()  # closes the socket even when cancelled
            finally:
                slots.release()

    with listener:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as accepting:
                task_status.started()
                nursery.start_soon(_wait_then_cancel, stop, accepting)
                while True:
                    try:
                        conn_sock, address = await listener.accept()
                    except OSError as exc:
                        if exc.errno in _TRANSIENT_ACCEPT:
                            log.warning("cannot accept a connection: %s", exc)
                            await trio.sleep(0.1)
                            continue
                        raise
                    client = tuple(address[:2])
                    slots = trusted_slots
                    try:
                        if trusted is None or trusted(str(client[0])):
                            # Full: the accept loop waits, and later peers wait in
                            # the kernel's backlog.
                            await trusted_slots.acquire()
                        else:
                            slots = outsider_slots
                            outsider_slots.acquire_nowait()
                    except trio.WouldBlock:
                        turned_away.note("%s:%d", *client)
                        conn_sock.close()
                        continue
                    except BaseException:
                        conn_sock.close()
                        raise
                    nursery.start_soon(connection, conn_sock, client, slots)
            listener.close()  # new connections are refused from now on
            nursery.cancel_scope.deadline = trio.current_time() + GRACE


async def _wait_then_cancel(stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
