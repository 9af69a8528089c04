"""The P-Series event WebSocket: `/openapi/v1.0/subscribe?access_token=`, opened
by recfs (the PBX needs no way in to recfs), subscribed to 30012 "New CDR".

The PBX closes a socket that has not heard from its client for 60 s: recfs sends
`heartbeat` every `heartbeat` seconds. A socket that drops (or cannot be opened)
is opened again with back-off and a token fresh from the client; after every
successful subscription `on_open` runs (the catch-up from the recording list),
since events sent while no socket was open are gone.

TLS is the API's: the same verification, and the pin checked after the handshake,
before the upgrade request (which carries the token) is written.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
import trio_websocket

from recfs.pbx.errors import PbxError, PSeriesError
from recfs.pbx.precords import EVENT_NEW_CDR
from recfs.pbx.pseries import API_PREFIX, USER_AGENT, PSeriesClient, parse_reply

log = logging.getLogger("recfs.pbx.events")

TOPICS = [EVENT_NEW_CDR]
HEARTBEAT_REPLY = "heartbeat response"
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


class SocketState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    DOWN = "down"


@dataclass
class SocketStats:
    state: SocketState = SocketState.CONNECTING
    opened: int = 0  # subscriptions that succeeded
    drops: int = 0
    events: int = 0
    bad_frames: int = 0
    last_event: float | None = None
    last_error: str | None = None


class SocketFailed(Exception):
    pass


# What ends a socket without being a bug: reconnect.
_EXPECTED = (SocketFailed, PbxError, OSError, trio.BrokenResourceError,
             trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, trio.TooSlowError)


def _expected(exc: BaseException) -> BaseException | None:
    """The failure inside *exc* (trio wraps a nursery's in a group) when every part
    of it is expected; None when something else (a bug) is in there."""
    if isinstance(exc, BaseExceptionGroup):
        parts = [_expected(inner) for inner in exc.exceptions]
        return None if any(p is None for p in parts) or not parts else parts[0]
    return exc if isinstance(exc, _EXPECTED) else None


def _context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class EventSocket:
    def __init__(self, client: PSeriesClient, on_event: Callable[[str], Awaitable[None]],
                 on_open: Callable[[], Awaitable[None]], *, heartbeat: float = 20.0,
                 open_timeout: float = 10.0):
        """*on_event* gets the text of each frame but heartbeat replies;
        *on_open* runs after each successful subscription, beside the socket."""
        self.client = client
        self.on_event = on_event
        self.on_open = on_open
        self.heartbeat = heartbeat
        self.open_timeout = open_timeout
        self.stats = SocketStats()

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            self.stats.state = SocketState.CONNECTING
            failure: BaseException | None = None
            try:
                await self._session()
            except Exception as exc:
                failure = _expected(exc)
                if failure is None:
                    raise
            opened = self.stats.state == SocketState.OPEN
            self._down(failure)
            if opened:
                backoff = BACKOFF_FIRST
            log.info("event socket of %s closed; opening it again in %.0f s",
                     self.client.base_url, backoff)
            await trio.sleep(backoff)
            if not opened:
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _down(self, exc: BaseException | None) -> None:
        if self.stats.state == SocketState.OPEN:
            self.stats.drops += 1
        self.stats.state = SocketState.DOWN
        if exc is not None:
            text = str(exc) or type(exc).__name__
            self.stats.last_error = text
            log.warning("event socket of %s: %s", self.client.base_url, text)

    async def _connect(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        parts = urlsplit(self.client.base_url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        stream = await trio.open_tcp_stream(host, port)
        if parts.scheme != "https":
            return stream
        tls = trio.SSLStream(stream, _context(self.client.verify), server_hostname=host,
                             https_compatible=True)
        try:
            await tls.do_handshake()
            pin = self.client.fingerprint
            if pin is not None:
                der = tls.getpeercert(binary_form=True) or b""
                if hashlib.sha256(der).digest() != pin:
                    raise SocketFailed("the PBX's certificate does not match fingerprint= "
                                       "(nothing was sent to it)")
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls

    async def _session(self) -> None:
        """One socket, from opening to its end (always an exception)."""
        token = await self.client.login()
        path = urlsplit(self.client.base_url).path.rstrip("/")
        resource = f"{path}{API_PREFIX}/subscribe?access_token={token}"
        host = urlsplit(self.client.base_url).netloc
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.open_timeout):
                stream = await self._connect()
                try:
                    ws = await trio_websocket.wrap_client_stream(
                        nursery, stream, host, resource,
                        extra_headers=[(b"User-Agent", USER_AGENT.encode())])
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
            try:
                with trio.fail_after(self.open_timeout):
                    await ws.send_message(json.dumps({"topic_list": TOPICS}))
                    answer = await ws.get_message()
                try:
                    parse_reply("subscribe", answer.encode() if isinstance(answer, str)
                                else answer, 200)
                except PSeriesError as exc:
                    if exc.token_problem:
                        self.client.drop_token(token)
                    raise
                self.stats.state = SocketState.OPEN
                self.stats.opened += 1
                log.info("event socket of %s open, subscribed to %s", self.client.base_url,
                         ", ".join(map(str, TOPICS)))
                nursery.start_soon(self._heartbeats, ws)
                nursery.start_soon(self.on_open)
                await self._receive(ws)
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()

    async def _heartbeats(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            await trio.sleep(self.heartbeat)
            await ws.send_message("heartbeat")

    async def _receive(self, ws: trio_websocket.WebSocketConnection) -> None:
        # Every heartbeat is answered: a socket silent for longer is dead (a PBX
        # gone without closing it, a NAT that forgot it).
        silence = self.heartbeat * 2 + 10
        while True:
            try:
                with trio.fail_after(silence):
                    frame = await ws.get_message()
            except trio.TooSlowError:
                raise SocketFailed(f"nothing from the PBX for {silence:.0f} s") from None
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
                said = f"{reason.code} {reason.name}" if reason is not None else "no reason given"
                raise SocketFailed(f"closed by the PBX ({said})") from None
            if isinstance(frame, bytes):
                frame = frame.decode("utf-8", "replace")
            if frame.strip() == HEARTBEAT_REPLY:
                continue
            self.stats.events += 1
            self.stats.last_event = time.time()
            await self.on_event(frame)
