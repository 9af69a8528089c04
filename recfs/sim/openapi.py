"""The simulator's P-Series face (`recfs sim --series p`): the OpenAPI v1.0 of
../shared/pbx-p-series.md under /openapi/v1.0/, the download resources under
/api/download/, the event WebSocket /openapi/v1.0/subscribe, and the simulator's
admin API under /sim/ (app.py's, plus what only this series has).

It shares the simulator's calls and recordings with the S-Series face: a call made
with POST /sim/call is listed, downloadable and announced (event 30012) here.

Choices where the contract says [unknown]:
- a request without User-Agent is answered errcode 10005 (and noted as a
  violation, GET /sim/violations), as is a token outside the query string
  (an Authorization header, or `access_token` in a JSON body);
- recording/list holds at most `list_max` items a page, whatever was asked;
- the recording list's `time` is "DD/MM/YYYY hh:mm:ss" (one display format);
- a download_resource_url works any number of times until it expires; the bytes
  come with Content-Length;
- an event socket whose token is not valid is accepted, answered errcode 10004
  and closed (code 1008); a refused one (fault ws_refuse) is rejected at the
  handshake (HTTP 403); a dropped one (fault ws_drop) is closed with 1011; a
  muted one (fault ws_mute) stays open and says nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import trio

from recfs.http.asgi import Receive, Send, lifespan
from recfs.pbx.errors import P_NOT_FOUND
from recfs.pbx.names import BadName, check_recording_name
from recfs.sim.app import SimApp, front_sends, redacted_target
from recfs.sim.calls import SERIAL
from recfs.sim.faults import FaultError
from recfs.sim.openapi_tokens import OpenApiFailure, OpenApiTokens, new_token
from recfs.sim.simulator import Simulator
from recfs.sim.state import call_started

log = logging.getLogger("recfs.sim.openapi")

PREFIX = "/openapi/v1.0/"
RESOURCE_PREFIX = "/api/download/"
ACCESS_DENIED = "10005"
NOT_EXISTED = "10001"
PARAMETER_ERROR = "40002"
MAX_BODY = 1 << 16
_NAME = datetime.datetime  # the name's stamp is "%Y%m%d%H%M%S"


# What a confused PBX (or a man in the middle) might send: not JSON, not an object,
# msg broken, a hostile recording name, a huge frame, an unknown event.
GARBAGE_EVENTS = (
    "not json at all",
    "[30012]",
    json.dumps({"type": 30012, "msg": "{broken"}),
    json.dumps({"type": 30012, "msg": 42}),
    json.dumps({"type": 30012, "msg": json.dumps({"recording": "../../etc/passwd",
                                                   "call_id": "1.1"})}),
    json.dumps({"type": 30012, "msg": json.dumps({"recording": "x" * 300 + ".wav"})}),
    json.dumps({"type": 30012, "msg": "x" * 70000}),
    json.dumps({"type": 30099, "msg": {"anything": True}}),
)


def _reply(payload: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"errcode": 0, "errmsg": "SUCCESS", **(payload or {})}


def _display_time(name: str) -> str:
    try:
        return _NAME.strptime(name[:14], "%Y%m%d%H%M%S").strftime("%d/%m/%Y %H:%M:%S")
    except ValueError:
        return ""


def _parts(name: str) -> dict[str, str]:
    """caller, callee, type from a simulator-style name."""
    stem = name.rsplit(".", 1)[0]
    fields = stem.split("-")
    if len(fields) >= 5:
        return {"call_from": fields[2], "call_to": fields[3], "call_type": fields[4],
                "uid": fields[1]}
    return {"call_from": "", "call_to": "", "call_type": "", "uid": ""}


def _int(query: dict[str, str], key: str, default: int) -> int:
    text = query.get(key, "")
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise OpenApiFailure(PARAMETER_ERROR, "PARAMETER ERROR")
    return int(text)


def _logged_path(path: str) -> str:
    """*path* for the log: a resource URL's secret (the part after its last "-") is as
    good as a token while the URL lasts."""
    if not path.startswith(RESOURCE_PREFIX):
        return path
    head, dash, tail = path.rpartition("-")
    return f"{head}{dash}***{os.path.splitext(tail)[1]}" if dash else RESOURCE_PREFIX + "***"


def _blank(value: str) -> str:
    return value if value else " "


def event_msg(cdr: dict[str, str]) -> dict[str, str]:
    """A call's 30012 "New CDR" fields; empty values are " " as on the PBX."""
    return {
        "call_id": cdr.get("callid", ""), "time_start": cdr.get("timestart", ""),
        "call_from": cdr.get("callfrom", ""), "call_to": cdr.get("callto", ""),
        "call_duration": cdr.get("callduraction", ""),
        "talk_duration": cdr.get("talkduraction", ""),
        "src_trunk_name": _blank(cdr.get("srctrunkname", "")),
        "dst_trunk_name": _blank(cdr.get("desttrunkname", "")),
        "pin_code": " ", "status": cdr.get("status", ""), "type": cdr.get("type", ""),
        "recording": _blank(cdr.get("recording", "")),
        "did_number": _blank(cdr.get("didnumber", "")), "agent_ring_time": " ",
    }


@dataclass
class OpenApiStats:
    list_requests: int = 0
    download_requests: int = 0  # recording/download (step 1)
    resource_gets: int = 0  # the bytes (step 2)
    sockets_opened: int = 0
    sockets_open: int = 0
    sockets_refused: int = 0
    sockets_dropped: int = 0
    sockets_idle_closed: int = 0
    heartbeats: int = 0
    events_sent: int = 0


@dataclass(eq=False)
class _Socket:
    drop: trio.Event = field(default_factory=trio.Event)


class OpenApiApp:
    def __init__(self, sim: Simulator, admin: SimApp):
        """*admin*: the S-Series app, whose admin API (/sim/...) this one serves too."""
        self.sim = sim
        self.state = sim.state
        self.admin = admin
        config = sim.config
        self.tokens = OpenApiTokens({config.user: config.password}, clock=time.monotonic,
                                    issue=self.state.issued.append,
                                    access_ttl=config.token_ttl, refresh_ttl=config.refresh_ttl,
                                    cap=config.token_cap,
                                    block_attempts=config.lockout_attempts,
                                    block_seconds=config.lockout_seconds)
        self.stats = OpenApiStats()
        self.violations: list[str] = []
        self.refuse_until = 0.0
        self.muted = False  # fault ws_mute: open sockets say nothing any more
        self._sockets: set[_Socket] = set()
        self._ids: dict[str, int] = {}
        self._order: list[str] = []  # names by id
        self._seen = (-1, -1)
        self._live_cache: tuple[tuple[int, int, int], list[tuple[int, str]]] | None = None
        self._resources: dict[str, tuple[str, float]] = {}  # path → (name, issued)
        self._api = {
            ("POST", "get_token"): self.get_token,
            ("POST", "refresh_token"): self.refresh_token,
            ("GET", "del_token"): self.del_token,
            ("POST", "del_token"): self.del_token,
            ("GET", "recording/list"): self.recording_list,
            ("GET", "recording/search"): self.recording_search,
            ("GET", "recording/download"): self.recording_download,
        }
        self._own_admin = {
            ("POST", "/sim/faults"): self.admin_faults,
            ("POST", "/sim/expire-tokens"): self.admin_expire_tokens,
            ("GET", "/sim/violations"): self.admin_violations,
            ("GET", "/sim/openapi"): self.admin_openapi,
        }

    # --- ASGI plumbing ------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"].upper()
        if path == "/sim" or path.startswith("/sim/"):
            handler = self._own_admin.get((method, path.rstrip("/")))
            if handler is None:
                await self.admin(scope, receive, send)
                return
            body = await self._body(receive)
            try:
                parsed = json.loads(body) if body and body.strip() else {}
                if not isinstance(parsed, dict):
                    raise ValueError("body must be a JSON object")
                payload = await handler(parsed)
            except (ValueError, FaultError, TypeError) as error:
                await self._json(send, {"error": str(error)}, 400)
                return
            await self._json(send, payload)
            return
        query_text = scope.get("query_string", b"").decode("latin-1")
        query = {k: v[-1] for k, v in parse_qs(query_text, keep_blank_values=True).items()}
        client = scope.get("client")
        ip = client[0] if client else "0.0.0.0"
        where = f"{ip} {method} {redacted_target(_logged_path(path), query_text)}"
        body = await self._body(receive)
        outcome = "?"
        try:
            self._check_request(method, path, dict(scope.get("headers") or []), body)
            if path.startswith(RESOURCE_PREFIX) and method == "GET":
                outcome = await self._resource(path, query, front_sends(scope), receive, send)
                return
            if not path.startswith(PREFIX):
                raise OpenApiFailure(NOT_EXISTED, "INTERFACE NOT EXISTED")
            endpoint = self._api.get((method, path[len(PREFIX):]))
            if endpoint is None:
                raise OpenApiFailure(NOT_EXISTED, "INTERFACE NOT EXISTED")
            payload = await endpoint(query, body, ip)
            await self._json(send, _reply(payload))
            outcome = "SUCCESS"
        except OpenApiFailure as failure:
            outcome = f"errcode {failure.errcode}"
            await self._json(send, {"errcode": int(failure.errcode), "errmsg": failure.errmsg})
        finally:
            log.info("%s → %s", where, outcome)

    def _check_request(self, method: str, path: str, headers: dict[bytes, bytes],
                       body: bytes) -> None:
        """What every request must be: with a User-Agent, the token only in the
        query string. A violation is noted (for tests) and refused."""
        problems = []
        if not headers.get(b"user-agent", b"").strip():
            problems.append("no User-Agent")
        if b"authorization" in headers:
            problems.append("an Authorization header")
        if b"access_token" in body:
            problems.append("access_token in the body")
        if problems:
            self.violations.append(f"{method} {path}: {', '.join(problems)}")
            raise OpenApiFailure(ACCESS_DENIED, "ACCESS DENIED")

    @staticmethod
    async def _body(receive: Receive) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY:
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)

    @staticmethod
    async def _json(send: Send, payload: Any, status: int = 200) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # --- tokens -------------------------------------------------------------------

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise OpenApiFailure(PARAMETER_ERROR, "PARAMETER ERROR") from None
        if not isinstance(value, dict):
            raise OpenApiFailure(PARAMETER_ERROR, "PARAMETER ERROR")
        return value

    @staticmethod
    def _pair(pair: Any) -> dict[str, Any]:
        return {"access_token": pair.access, "access_token_expire_time": int(
                    pair.access_until - time.monotonic() + 0.5),
                "refresh_token": pair.refresh, "refresh_token_expire_time": int(
                    pair.refresh_until - time.monotonic() + 0.5)}

    async def get_token(self, query: dict[str, str], body: bytes, ip: str) -> dict[str, Any]:
        fields = self._json_body(body)
        forced = self.sim.faults.take("get_token_error")
        if forced is not None:
            raise OpenApiFailure(forced, "MAX LIMITATION EXCEEDED" if forced == "60002" else "FAILURE")
        pair = self.tokens.get_token(str(fields.get("username", "")),
                                     str(fields.get("password", "")), ip)
        return self._pair(pair)

    async def refresh_token(self, query: dict[str, str], body: bytes, ip: str) -> dict[str, Any]:
        fields = self._json_body(body)
        return self._pair(self.tokens.refresh(str(fields.get("refresh_token", ""))))

    async def del_token(self, query: dict[str, str], body: bytes, ip: str) -> dict[str, Any]:
        self.tokens.delete(query.get("access_token"))
        return {}

    # --- recordings -------------------------------------------------------------------

    def _live(self) -> list[tuple[int, str]]:
        """(id, name) of every recording there, newest first."""
        stats = self.state.stats
        key = (stats.calls, stats.recordings_deleted, len(self.state.recordings))
        if self._live_cache is not None and self._live_cache[0] == key:
            return self._live_cache[1]
        new = [name for name in self.state.recordings_oldest_first() if name not in self._ids]
        for name in new:
            self._ids[name] = len(self._order) + 1
            self._order.append(name)
        live = [(self._ids[name], name) for name in reversed(self._order)
                if name in self.state.recordings]
        self._live_cache = (key, live)
        return live

    def _item(self, ident: int, name: str) -> dict[str, Any]:
        started = call_started(name)
        return {"id": ident, "time": _display_time(name), "duration": 0,
                "size": self.state.recordings[name], "file": name,
                "uid": _parts(name)["uid"], **{k: v for k, v in _parts(name).items() if k != "uid"},
                "call_time": int(started) if started is not None else 0}

    def _page(self, query: dict[str, str], rows: list[tuple[int, str]]) -> dict[str, Any]:
        page = _int(query, "page", 1)
        size = min(_int(query, "page_size", 20), self.sim.config.list_max)
        if query.get("sort_by", "id") not in ("id", "time") or \
                query.get("order_by", "desc") not in ("asc", "desc"):
            raise OpenApiFailure(PARAMETER_ERROR, "PARAMETER ERROR")
        if query.get("order_by", "desc") == "asc":
            rows = rows[::-1]
        chosen = rows[(page - 1) * size: page * size]
        return {"total_number": len(rows), "data": [self._item(i, n) for i, n in chosen]}

    async def recording_list(self, query: dict[str, str], body: bytes, ip: str) -> dict[str, Any]:
        self.tokens.check(query.get("access_token"))
        self.stats.list_requests += 1
        return self._page(query, self._live())

    async def recording_search(self, query: dict[str, str], body: bytes, ip: str) -> dict[str, Any]:
        self.tokens.check(query.get("access_token"))
        self.stats.list_requests += 1
        start = _int(query, "start_time", 1) if query.get("start_time") else 0
        end = _int(query, "end_time", 1) if query.get("end_time") else None
        ids = {int(i) for i in query.get("ids", "").split(",") if i.strip().isdigit()}
        rows = [(i, n) for i, n in self._live()
                if start <= (call_started(n) or 0) and (end is None or (call_started(n) or 0) <= end)
                and (not ids or i in ids)]
        return self._page(query, rows)

    async def recording_download(self, query: dict[str, str], body: bytes, ip: str
                                 ) -> dict[str, Any]:
        self.tokens.check(query.get("access_token"))
        self.stats.download_requests += 1
        name = query.get("file", "")
        if not name and query.get("id", "").isdigit():
            ident = int(query["id"])
            name = self._order[ident - 1] if 0 < ident <= len(self._order) else ""
        try:
            check_recording_name(name)
        except BadName:
            raise OpenApiFailure(P_NOT_FOUND, "DATA NOT FOUND") from None
        if name not in self.state.recordings:
            raise OpenApiFailure(P_NOT_FOUND, "DATA NOT FOUND")
        stem, _, ext = name.rpartition(".")
        secret = new_token(16)
        self.state.issued.append(secret)
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        path = f"{RESOURCE_PREFIX}Recording-{stem}-download-{stamp}-{secret}.{ext or 'wav'}"
        now = time.monotonic()
        self._resources = {p: v for p, v in self._resources.items()
                           if now - v[1] < self.sim.config.resource_ttl}
        self._resources[path] = (name, now)
        return {"file": name, "download_resource_url": path}

    async def _resource(self, path: str, query: dict[str, str], via_front: bool,
                        receive: Receive, send: Send) -> str:
        self.tokens.check(query.get("access_token"))
        found = self._resources.get(path)
        if found is None or time.monotonic() - found[1] >= self.sim.config.resource_ttl:
            raise OpenApiFailure(PARAMETER_ERROR, "RESOURCE EXPIRED")
        name = found[0]
        if name not in self.state.recordings:
            raise OpenApiFailure(P_NOT_FOUND, "DATA NOT FOUND")
        try:
            source = await trio.open_file(self.sim.store.path_of(name), "rb")
        except (BadName, OSError):
            raise OpenApiFailure(P_NOT_FOUND, "DATA NOT FOUND") from None
        async with source:
            size = os.fstat(source.fileno()).st_size
            self.stats.resource_gets += 1
            self.state.stats.downloads[name] += 1
            faults = self.sim.faults.take_download()
            return await self.admin.send_recording(source, name, size, faults, via_front,
                                                   receive, send)

    # --- the event socket ------------------------------------------------------------

    async def _websocket(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = dict(scope.get("headers") or [])
        path = scope["path"]
        if not headers.get(b"user-agent", b"").strip():
            self.violations.append(f"WEBSOCKET {path}: no User-Agent")
        if path != PREFIX + "subscribe" or time.monotonic() < self.refuse_until:
            self.stats.sockets_refused += 1
            await send({"type": "websocket.close", "code": 1008})
            log.info("event socket refused")
            return
        query_text = scope.get("query_string", b"").decode("latin-1")
        query = {k: v[-1] for k, v in parse_qs(query_text).items()}
        await send({"type": "websocket.accept"})
        lock = trio.Lock()

        async def say(text: str) -> None:
            async with lock:
                await send({"type": "websocket.send", "text": text})

        try:
            self.tokens.check(query.get("access_token"))
        except OpenApiFailure as failure:
            await say(json.dumps({"errcode": int(failure.errcode), "errmsg": failure.errmsg}))
            await send({"type": "websocket.close", "code": 1008})
            return
        socket = _Socket()
        self._sockets.add(socket)
        self.stats.sockets_opened += 1
        self.stats.sockets_open += 1
        calls = self.sim.watch_calls()
        try:
            async with trio.open_nursery() as nursery:
                subscribed = trio.Event()
                nursery.start_soon(self._forward, calls, subscribed, say)
                why = await self._listen(receive, say, subscribed, socket)
                nursery.cancel_scope.cancel()
            if why is not None:
                with trio.move_on_after(1):
                    await send({"type": "websocket.close", "code": why})
        finally:
            await calls.aclose()
            self._sockets.discard(socket)
            self.stats.sockets_open -= 1

    async def _listen(self, receive: Receive, say: Any, subscribed: trio.Event,
                      socket: _Socket) -> int | None:
        """Frames from the client until it leaves (None) or the PBX closes the
        socket (the close code)."""
        async with trio.open_nursery() as nursery:
            dropped: list[int] = []

            async def drop_on_demand() -> None:
                await socket.drop.wait()
                dropped.append(1011)
                nursery.cancel_scope.cancel()

            nursery.start_soon(drop_on_demand)
            while True:
                with trio.move_on_after(self.sim.config.ws_idle) as idle:
                    message = await receive()
                if idle.cancelled_caught:
                    self.stats.sockets_idle_closed += 1
                    log.info("event socket idle for %.0f s: closed", self.sim.config.ws_idle)
                    nursery.cancel_scope.cancel()
                    return 1000
                if message["type"] == "websocket.disconnect":
                    nursery.cancel_scope.cancel()
                    return None
                text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
                if text.strip() == "heartbeat":
                    self.stats.heartbeats += 1
                    if not self.muted:
                        await say("heartbeat response")
                    continue
                try:
                    topics = json.loads(text).get("topic_list")
                except (ValueError, AttributeError):
                    topics = None
                if not isinstance(topics, list):
                    await say(json.dumps({"errcode": int(PARAMETER_ERROR),
                                          "errmsg": "PARAMETER ERROR"}))
                    continue
                if 30012 in topics:
                    subscribed.set()
                await say(json.dumps(_reply()))
        self.stats.sockets_dropped += 1
        log.info("event socket dropped (fault ws_drop)")
        return dropped[0] if dropped else 1011

    async def _forward(self, calls: trio.MemoryReceiveChannel[dict[str, str]],
                       subscribed: trio.Event, say: Any) -> None:
        async for cdr in calls:
            if not subscribed.is_set() or self.muted:
                continue  # not subscribed (yet), or muted: the event is gone
            frame = {"type": 30012, "sn": cdr.get("sn") or SERIAL,
                     "msg": json.dumps(event_msg(cdr))}
            if self.sim.faults.take("bad_events"):
                for garbage in GARBAGE_EVENTS:
                    await say(garbage)
            await say(json.dumps(frame))
            self.stats.events_sent += 1

    # --- admin ---------------------------------------------------------------------

    async def admin_faults(self, body: dict[str, Any]) -> Any:
        """The simulator's faults, plus this series' socket switches: `ws_drop`
        (close every open event socket now), `ws_refuse: SECONDS` (refuse new
        ones for that long) and `ws_mute: true|false` (open sockets stay open but
        answer nothing, events included: a PBX gone without closing them)."""
        rest = dict(body)
        mute = rest.pop("ws_mute", None)
        if mute is not None:
            self.muted = bool(mute)
        drop = rest.pop("ws_drop", None)
        refuse = rest.pop("ws_refuse", None)
        if refuse is not None:
            if isinstance(refuse, bool) or not isinstance(refuse, (int, float)) or refuse < 0:
                raise ValueError("ws_refuse must be a number of seconds >= 0")
        if rest:
            self.sim.set_faults(rest)
        if refuse is not None:
            self.refuse_until = time.monotonic() + float(refuse)
        if drop:
            for socket in list(self._sockets):
                socket.drop.set()
        return self.sim.faults.snapshot()

    async def admin_expire_tokens(self, body: dict[str, Any]) -> Any:
        self.tokens.expire_all()
        self.state.expire_all()
        return {"status": "Success"}

    async def admin_violations(self, body: dict[str, Any]) -> Any:
        return list(self.violations)

    async def admin_openapi(self, body: dict[str, Any]) -> Any:
        tokens = self.tokens.stats
        return {"valid_tokens": self.tokens.valid_count(), "max_valid_tokens": tokens.max_valid,
                "get_token": tokens.get_token, "refresh_token": tokens.refresh_token,
                "del_token": tokens.del_token, "failed_get_token": tokens.failed_get_token,
                **vars(self.stats)}
