"""The simulator's HTTP face: an ASGI app speaking the S-Series API under
/api/{v}/ and a JSON admin API under /sim/. Served by hypercorn.

Faithful where the real PBX is unpleasant: always HTTP 200 with a JSON verdict,
one request per connection, GET-only downloads with no documented headers.
"""

from __future__ import annotations

import csv
import datetime
import http
import io
import ipaddress
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

import trio

from recfs.http.asgi import Receive, Send, not_http
from recfs.logs import redact
from recfs.pbx.errors import failure_body
from recfs.pbx.names import BadName, check_recording_name
from recfs.sim.calls import STATUSES, TYPES
from recfs.sim.faults import DownloadFaults, FaultError
from recfs.sim.simulator import Simulator
from recfs.sim.state import CDR_FIELDS, ApiFailure, ReportTarget

log = logging.getLogger("recfs.sim.api")

API_VERSIONS = ("v1.0.1", "v1.1.0", "v2.0.0")
SERVER_HEADER = b"Boa/0.94.14rc21"
BASE_HEADERS = [(b"server", SERVER_HEADER), (b"connection", b"close")]
CHUNK = 64 * 1024
MAX_REQUEST_BODY = 1 << 20

UNSUPPORTED = "10003"
PARAM_BLANK = "10004"
ONLY_JSON = "20000"
ONLY_POST = "20001"
WRONG_PORT = "20008"

_PBX_TIME = "%Y-%m-%d %H:%M:%S"



def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _AudioSource(Protocol):
    """An open recording (trio's async file)."""

    async def read(self, size: int = -1, /) -> bytes: ...


class SimulatedReset(Exception):
    """Raised inside the app on purpose: hypercorn then drops the connection."""


def redacted_target(path: str, query: str) -> str:
    return path + ("?" + redact(query) if query else "")


def _normal_ip(text: str) -> str:
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; reports must
    # go to a.b.c.d.
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def front_sends(scope: dict[str, Any]) -> bool:
    """Whether the request came through a front server that sends files named by
    X-Accel-Redirect: it says so in this header (as proxies tell Rack's Sendfile);
    SimConfig.accel_redirect."""
    return (b"x-sendfile-type", b"X-Accel-Redirect") in scope.get("headers", ())


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    client_ip: str
    body: bytes
    front_sends: bool = False  # front_sends(scope)

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiFailure(ONLY_JSON) from None
        if not isinstance(value, dict):
            raise ApiFailure(ONLY_JSON)
        return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def _required(source: dict[str, Any], *names: str) -> list[str]:
    values = [_text(source.get(name)) for name in names]
    if not all(values):
        raise ApiFailure(PARAM_BLANK)
    return values


def _port(value: Any) -> int:
    # The guide says "send it as a string"; a JSON number is refused like garbage.
    if not isinstance(value, str) or not value.strip().isdigit():
        raise ApiFailure(WRONG_PORT)
    port = int(value)
    if not 1 <= port <= 65535:
        raise ApiFailure(WRONG_PORT)
    return port


def _pbx_time(value: str) -> str:
    try:
        datetime.datetime.strptime(value, _PBX_TIME)
    except ValueError:
        raise ApiFailure(PARAM_BLANK) from None
    return value


class SimApp:
    def __init__(self, sim: Simulator):
        self.sim = sim
        self.state = sim.state
        self._api = {
            "login": self.login,
            "heartbeat": self.heartbeat,
            "logout": self.logout,
            "recording/get_random": self.recording_random,
            "recording/download": self.recording_download,
            "cdr/get_random": self.cdr_random,
            "cdr/download": self.cdr_download,
        }
        self._admin = {
            ("POST", "/sim/call"): self.admin_call,
            ("GET", "/sim/stats"): self.admin_stats,
            ("GET", "/sim/issued-secrets"): self.admin_issued_secrets,
            ("POST", "/sim/reset-stats"): self.admin_reset_stats,
            ("GET", "/sim/faults"): self.admin_get_faults,
            ("POST", "/sim/faults"): self.admin_set_faults,
            ("POST", "/sim/faults/clear"): self.admin_clear_faults,
            ("POST", "/sim/expire-tokens"): self.admin_expire_tokens,
            ("GET", "/sim/recordings"): self.admin_recordings,
            ("POST", "/sim/delete-recordings"): self.admin_delete_recordings,
            ("GET", "/sim/cdrs"): self.admin_cdrs,
        }

    # --- ASGI plumbing ------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if await not_http(scope, receive, send):
            return
        body = await self._read_body(receive)
        client = scope.get("client")
        query_text = scope.get("query_string", b"").decode("latin-1")
        request = Request(
            method=scope["method"].upper(),
            path=scope["path"],
            query={k: v[-1] for k, v in parse_qs(query_text, keep_blank_values=True).items()},
            client_ip=_normal_ip(client[0]) if client else "0.0.0.0",
            body=body if body is not None else b"",
            front_sends=front_sends(scope),
        )
        where = f"{request.client_ip} {request.method} {redacted_target(request.path, query_text)}"
        if request.path == "/sim" or request.path.startswith("/sim/"):
            await self._admin_request(request, send, where)
            return
        outcome = "?"
        try:
            if body is None:
                raise ApiFailure(ONLY_JSON)  # larger than any real API call
            outcome = await self._api_request(request, receive, send, scope)
        except ApiFailure as failure:
            outcome = f"Failed errno {failure.errno}"
            await self._json(send, failure_body(failure.errno))
        except SimulatedReset:
            outcome = "connection reset (fault)"
            raise
        finally:
            log.info("%s → %s", where, outcome)

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(parts)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_REQUEST_BODY:
                parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts) if size <= MAX_REQUEST_BODY else None

    @staticmethod
    async def _respond(send: Send, body: bytes, content_type: bytes, status: int = 200) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *BASE_HEADERS,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _json(self, send: Send, payload: Any, status: int = 200) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        await self._respond(send, body, b"application/json", status)

    # --- PBX API ----------------------------------------------------------------

    async def _api_request(self, request: Request, receive: Receive, send: Send, scope: dict[str, Any]) -> str:
        parts = request.path.split("/", 3)  # "", "api", version, endpoint
        if len(parts) != 4 or parts[1] != "api" or parts[2] not in API_VERSIONS:
            raise ApiFailure(UNSUPPORTED)
        handler = self._api.get(parts[3])
        if handler is None:
            raise ApiFailure(UNSUPPORTED)
        downloads = ("recording/download", "cdr/download")
        allowed = ("GET", "POST") if parts[3] in downloads else ("POST",)
        if request.method not in allowed:
            raise ApiFailure(ONLY_POST)
        return await handler(request, parts[2], receive, send)

    async def login(self, request: Request, version: str, receive: Receive, send: Send) -> str:
        body = request.json()
        username, password = _required(body, "username", "password")
        if _text(body.get("port")) == "":
            raise ApiFailure(PARAM_BLANK)
        port = _port(body.get("port"))
        target = self._target(
            request.client_ip,
            port,
            _text(body.get("url")),
            _text(body.get("urltag", body.get("urlflag"))) or "0",
        )
        report_version = _text(body.get("version"))
        forced = self.sim.faults.take("login_error")
        session = self.state.login(
            username, password, request.client_ip, target, report_version, forced_errno=forced
        )
        reply = {"status": "Success", "token": session.token}
        if version == "v2.0.0":
            reply["transport"] = "HTTP"
        await self._json(send, reply)
        return f"Success (user {username}, reports {report_version or 'legacy'} to {target.url})"

    @staticmethod
    def _target(host: str, port: int, url: str, urltag: str) -> ReportTarget:
        if urltag == "1":
            if not url:
                raise ApiFailure(PARAM_BLANK)
            return ReportTarget(host, port, "/", absolute=url)
        return ReportTarget(host, port, url or "/")

    async def heartbeat(self, request: Request, version: str, receive: Receive, send: Send) -> str:
        session = self.state.session(request.query.get("token"))
        body = request.json()
        current = session.target
        # Absent fields keep what the session had; the PBX re-registers the target.
        port = _port(body["port"]) if _text(body.get("port")) else current.port
        host = _normal_ip(_text(body.get("ipaddr"))) or current.host
        urltag = _text(body.get("urltag", body.get("urlflag"))) or ("1" if current.absolute else "0")
        url = _text(body.get("url"))
        if not url:
            url = (current.absolute or "") if urltag == "1" else ("" if current.absolute else current.path)
        session.target = self._target(host, port, url, urltag)
        self.state.stats.heartbeats += 1
        await self._json(send, {"status": "Success"})
        return "Success"

    async def logout(self, request: Request, version: str, receive: Receive, send: Send) -> str:
        session = self.state.session(request.query.get("token"))
        request.json()
        self.state.logout(session)
        await self._json(send, {"status": "Success"})
        return "Success"

    async def recording_random(self, request: Request, version: str, receive: Receive, send: Send) -> str:
        self.state.session(request.query.get("token"))
        body = request.json()
        (name,) = _required(body, "recording")
        try:
            check_recording_name(name)
        except BadName:
            # As for any name it does not have (unknown or deleted).
            raise ApiFailure(self.state.missing_errno) from None
        self.state.require_recording(name)
        allowed_ip = _normal_ip(_text(body.get("allowedip"))) or None
        random_value = self.state.issue_random(("recording", name), request.client_ip, allowed_ip)
        self.state.stats.get_random[name] += 1
        await self._json(send, {"status": "Success", "recording": name, "random": random_value})
        return f"Success ({name})"

    async def recording_download(self, request: Request, version: str, receive: Receive, send: Send) -> str:
        self.state.session(request.query.get("token"))
        name, random_value = _required(request.query, "recording", "random")
        self.state.redeem_random(random_value, ("recording", name), request.client_ip)
        # A random taken before the recording was deleted is still good; the
        # file is not: HTTP 200 with the JSON failure, as on the PBX.
        self.state.require_recording(name)
        try:
            source = await trio.open_file(self.sim.store.path_of(name), "rb")
        except (BadName, OSError):
            raise ApiFailure(self.state.missing_errno) from None
        # Opened before answering: a deletion from here on does not cut the body.
        async with source:
            size = os.fstat(source.fileno()).st_size
            self.state.stats.downloads[name] += 1
            faults = self.sim.faults.take_download()
            return await self.send_recording(source, name, size, faults, request.front_sends,
                                             receive, send)

    async def send_recording(
        self,
        source: _AudioSource,
        name: str,
        size: int,
        faults: DownloadFaults,
        front_sends: bool,
        receive: Receive,
        send: Send,
    ) -> str:
        """The bytes of *name*, once the series' own checks (random, token, resource
        URL) have passed: named to the front server when the request came through one
        (Request.front_sends) and no fault is due, since a fault is the simulator's
        to act out; otherwise streamed from *source* by the simulator itself."""
        prefix = self.sim.config.accel_redirect
        if prefix is not None and front_sends and faults == DownloadFaults():
            return await self._hand_off(prefix + quote(name), size, send)
        return await self.stream_recording(source, size, faults, receive, send)

    async def _hand_off(self, location: str, size: int, send: Send) -> str:
        """The front server sends the file (SimConfig.accel_redirect); counted as a
        download that completed, which is what the front server will make of it."""
        stats = self.state.stats
        stats.download_started()
        try:
            headers = [(b"x-accel-redirect", location.encode()), (b"content-length", b"0"),
                       *BASE_HEADERS]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            stats.download_ended(True)
        return f"audio {size} bytes (sent by the front server)"

    async def stream_recording(
        self,
        source: _AudioSource,
        size: int,
        faults: DownloadFaults,
        receive: Receive,
        send: Send,
    ) -> str:
        if faults.download_error is not None:
            await self._json(send, failure_body(faults.download_error))
            return f"Failed errno {faults.download_error} (fault download_error)"
        if faults.html_error is not None:
            status = faults.html_error
            shown = 500 if status == 200 else status
            title = f"{shown} {_reason(shown)}".encode()
            # Boa's own error page; with status 200 only the body tells it apart.
            page = (
                b"<HTML><HEAD><TITLE>" + title + b"</TITLE></HEAD>\n<BODY><H1>" + title + b"</H1>\n"
                b"The server encountered an internal error and could not complete your request.\n"
                b"</BODY></HTML>\n"
            )
            await self._respond(send, page, b"text/html", faults.html_error)
            return f"HTML error page, HTTP {faults.html_error} (fault html_error)"

        # Where the body stops, and how; the smallest limit wins.
        cut, how = size, "complete"
        for kind, limit in (
            ("reset", faults.reset_after),
            ("truncate", faults.truncate_after),
            ("stall", faults.stall_after),
        ):
            if limit is not None and limit < cut:
                cut, how = limit, kind

        headers = [(b"content-type", b"application/octet-stream"), *BASE_HEADERS]
        if not faults.no_content_length:
            headers.append((b"content-length", str(size).encode()))
        stats = self.state.stats
        stats.download_started()
        sent, completed = 0, False
        try:
            async with trio.open_nursery() as nursery:
                disconnected = trio.Event()
                nursery.start_soon(self._watch_disconnect, receive, disconnected, nursery.cancel_scope)
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                rate = faults.throttle or 0
                chunk_size = min(CHUNK, max(256, rate // 10)) if rate else CHUNK
                began = trio.current_time()
                while sent < cut:
                    chunk = await source.read(min(chunk_size, cut - sent))
                    if not chunk:
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent += len(chunk)
                    if rate:
                        await trio.sleep_until(began + sent / rate)
                if how == "stall":
                    await disconnected.wait()
                nursery.cancel_scope.cancel()
            # Outside the watcher's scope: ending the body makes hypercorn report a
            # disconnect, which must not cancel the send that caused it.
            # A client that has every byte may hang up before the body's formal end.
            completed = how == "complete" and sent == size
            if how == "complete" and not disconnected.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            stats.download_ended(completed)
        if completed:
            return f"audio {sent} bytes"
        if disconnected.is_set():
            return f"client went away after {sent} of {size} bytes"
        if how == "reset":
            raise SimulatedReset(f"reset after {sent} bytes")
        # truncate: leave the body unfinished; hypercorn closes the connection.
        return f"truncated after {sent} of {size} bytes (fault)"

    @staticmethod
    async def _watch_disconnect(receive: Receive, disconnected: trio.Event, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()
        scope.cancel()

    def _cdr_filter_key(self, version: str) -> str:
        return "number" if version == "v2.0.0" else "extid"

    async def cdr_random(self, request: Request, version: str, receive: Receive, send: Send) -> str:
        self.state.session(request.query.get("token"))
        body = request.json()
        key = self._cdr_filter_key(version)
        start, end, who = _required(body, "starttime", "endtime", key)
        _pbx_time(start), _pbx_time(end)
        allowed_ip = _normal_ip(_text(body.get("allowedip"))) or None
        random_value = self.state.issue_random(("cdr", start, end, who), request.client_ip, allowed_ip)
        self.state.stats.cdr_get_random += 1
        await self._json(
            send, {"status": "Success", "starttime": start, "endtime": end, key: who, "random": random_value}
        )
        return "Success"

    async def cdr_download(self, request: Request, version: str, receive: Receive, send: Send) -> str:
        self.state.session(request.query.get("token"))
        key = self._cdr_filter_key(version)
        start, end, who, random_value = _required(request.query, "starttime", "endtime", key, "random")
        self.state.redeem_random(random_value, ("cdr", start, end, who), request.client_ip)
        rows = self.state.cdrs_between(start, end, who)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CDR_FIELDS, extrasaction="ignore", lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        body = text.getvalue().encode("utf-8")
        if self.sim.faults.peek("cdr_bom"):
            body = b"\xef\xbb\xbf" + body
        self.state.stats.cdr_downloads += 1
        await self._respond(send, body, b"text/csv")
        return f"CSV {len(rows)} CDRs"

    # --- admin API (not part of the PBX protocol) --------------------------------------

    async def _admin_request(self, request: Request, send: Send, where: str) -> None:
        handler = self._admin.get((request.method, request.path.rstrip("/")))
        if handler is None:
            known = {path for _, path in self._admin}
            status = 405 if request.path.rstrip("/") in known else 404
            await self._json(send, {"error": "no such admin endpoint"}, status)
            log.info("%s → admin %d", where, status)
            return
        try:
            body: Any = json.loads(request.body) if request.body.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            payload = await handler(body)
        except (ValueError, FaultError, TypeError) as error:
            await self._json(send, {"error": str(error)}, 400)
            log.info("%s → admin 400 %s", where, error)
            return
        await self._json(send, payload)
        log.info("%s → admin 200", where)

    async def admin_call(self, body: dict[str, Any]) -> Any:
        details: dict[str, Any] = {}
        if "duration" in body:
            duration = body["duration"]
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
                raise ValueError("duration must be a number of seconds >= 0")
            details["duration"] = int(duration)
        for field in ("caller", "callee"):
            if field in body:
                value = body[field]
                if not isinstance(value, str) or not value or "-" in value:
                    raise ValueError(f"{field} must be a non-empty string without '-'")
                details[field] = value
        if "type" in body:
            if body["type"] not in TYPES:
                raise ValueError(f"type must be one of {', '.join(TYPES)}")
            details["call_type"] = body["type"]
        if "status" in body:
            if body["status"] not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}")
            details["status"] = body["status"]
        # On request, a call is recorded unless told otherwise: callers of this
        # endpoint almost always want a file to fetch.
        details["recorded"] = bool(body.get("recorded", True))
        try:
            return await self.sim.make_call(drop_report=bool(body.get("drop_report", False)), **details)
        except BadName as error:
            raise ValueError(str(error)) from None

    async def admin_stats(self, body: dict[str, Any]) -> Any:
        return self.state.stats_json()

    async def admin_issued_secrets(self, body: dict[str, Any]) -> Any:
        return list(self.state.issued)

    async def admin_reset_stats(self, body: dict[str, Any]) -> Any:
        self.state.stats.reset()
        return self.state.stats_json()

    async def admin_get_faults(self, body: dict[str, Any]) -> Any:
        return self.sim.faults.snapshot()

    async def admin_set_faults(self, body: dict[str, Any]) -> Any:
        self.sim.set_faults(body)
        return self.sim.faults.snapshot()

    async def admin_clear_faults(self, body: dict[str, Any]) -> Any:
        self.sim.clear_faults()
        return self.sim.faults.snapshot()

    async def admin_expire_tokens(self, body: dict[str, Any]) -> Any:
        self.state.expire_all()
        return {"status": "Success"}

    async def admin_recordings(self, body: dict[str, Any]) -> Any:
        names = list(self.state.recordings)
        return await trio.to_thread.run_sync(self.sim.store.listing, names)

    async def admin_delete_recordings(self, body: dict[str, Any]) -> Any:
        """Delete recordings now, as the auto-cleanup would (CDRs stay). Exactly
        one of {"names": [...]}, {"older_than": EPOCH} (call started before it,
        UTC), {"all": true}. Answers the names deleted, oldest first."""
        forms = [key for key in ("names", "older_than", "all") if key in body]
        if len(forms) != 1 or set(body) != set(forms):
            raise ValueError('give exactly one of "names", "older_than" or "all"')
        if "names" in body:
            names = body["names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("names must be a list of recording names")
        elif "older_than" in body:
            epoch = body["older_than"]
            if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
                raise ValueError("older_than must be a UTC epoch in seconds")
            names = self.state.recordings_started_before(float(epoch))
        else:
            if body["all"] is not True:
                raise ValueError('"all" must be true')
            names = list(self.state.recordings)
        return await self.sim.delete_recordings(names, "on request")

    async def admin_cdrs(self, body: dict[str, Any]) -> Any:
        return self.state.cdrs
