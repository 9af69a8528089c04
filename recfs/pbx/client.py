"""The PBX API client: session (login, heartbeat, logout), API calls with the one
re-login the protocol asks for, and the get_random + download handshake.

Everything here speaks ../shared/pbx-api.md: HTTP 200 always, failure in the JSON
body, one request per connection, tokens that die after 30 idle minutes, randoms
that live 30 s and work once, and a lock-out after 5 failed logins that recfs must
never cause.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from recfs.logs import forget_secret, register_secret
from recfs.pbx.errors import BAD_CREDENTIALS, PbxError
from recfs.pbx.tls import SocketBody, TlsSessions, pbx_transport

log = logging.getLogger("recfs.pbx")

API_VERSIONS = ("v2.0.0", "v1.1.0", "v1.0.1")
# What `version` means at login: the *report format*, not the URL path version.
REPORT_FORMAT = {"v2.0.0": "2.0.0", "v1.1.0": "1.0.2", "v1.0.1": "1.0.2"}

# How many bytes of a download body decide whether it is audio or an error.
SNIFF_BYTES = 12


def normalise_api_version(value: str) -> str:
    version = value if value.startswith("v") else f"v{value}"
    if version not in API_VERSIONS:
        raise ValueError(f"api_version must be one of {', '.join(API_VERSIONS)}, not {value!r}")
    return version


def md5_hex(password: str) -> str:
    return hashlib.md5(password.encode("utf-8")).hexdigest()


class LoginDeferred(PbxError):
    """No login was sent: the guard says not now (waiting, or given up on these
    credentials). Nothing went over the network."""

    def __init__(self, operation: str, errno: str | None, detail: str | None = None,
                 texts: dict[str, str] | None = None):
        if texts is not None:  # the errno is of the series whose error it repeats
            self.TEXTS = texts
        super().__init__(operation, errno, detail)


@dataclass(frozen=True)
class ReportTarget:
    """Where the PBX should push reports, as registered at login and heartbeat."""

    port: int
    url: str = ""  # urltag 0: a path on the login's source IP; urltag 1: host:port/path
    urltag: str = "0"


class LoginGuard:
    """Decides when the next login attempt may go out.

    The PBX blocks an IP for 10 minutes after 5 consecutive failed logins, and that
    would block every other API client at the same address. recfs stops on its own
    after 3 refusals of the same credentials and waits for them to change; network
    errors (which the PBX never counted) only back off.
    """

    MAX_BAD_CREDENTIALS = 3
    BAD_CREDENTIALS_PAUSE = 60.0
    LOCKOUT_PAUSE = 610.0
    NETWORK_PAUSE_MAX = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.bad_credentials = 0
        self._refused_secret: str | None = None
        self._network_failures = 0
        self.not_before = 0.0
        self.last_error: PbxError | None = None

    def check(self, secret: str) -> None:
        """Raise instead of sending a login that would be unwise now."""
        if self._refused_secret is not None and secret != self._refused_secret:
            # New credentials (password file edited): start afresh.
            self.bad_credentials = 0
            self._refused_secret = None
            self.not_before = 0.0
        if self.bad_credentials >= self.MAX_BAD_CREDENTIALS:
            raise LoginDeferred(
                "login",
                BAD_CREDENTIALS,
                f"refused {self.bad_credentials} times; not retrying until the credentials "
                "change, so as never to trigger the PBX's lock-out",
            )
        wait = self.not_before - self._clock()
        if wait > 0:
            errno = self.last_error.errno if self.last_error else None
            raise LoginDeferred("login", errno, f"next attempt allowed in {wait:.0f} s",
                                self.last_error.TEXTS if self.last_error else None)

    def succeeded(self) -> None:
        self.bad_credentials = 0
        self._refused_secret = None
        self._network_failures = 0
        self.not_before = 0.0
        self.last_error = None

    def failed(self, error: PbxError, secret: str) -> None:
        self.last_error = error
        now = self._clock()
        if error.bad_credentials:
            self.bad_credentials += 1
            self._refused_secret = secret
            self.not_before = now + self.BAD_CREDENTIALS_PAUSE * self.bad_credentials
        elif error.locked_out:
            self.not_before = now + self.LOCKOUT_PAUSE
        elif error.errno is None:
            self._network_failures += 1
            self.not_before = now + min(2.0 ** (self._network_failures - 1), self.NETWORK_PAUSE_MAX)
        else:
            self.not_before = now + 30.0

    @property
    def gave_up(self) -> bool:
        return self.bad_credentials >= self.MAX_BAD_CREDENTIALS

    @property
    def wait(self) -> float:
        return max(0.0, self.not_before - self._clock())


@dataclass
class RecordingBody:
    """A download that has been sniffed and is audio (or at least not an error)."""

    name: str
    head: bytes  # the first bytes, already read off the wire
    content_length: int | None
    riff_size: int | None  # from the WAV header: the file's length, if it is a RIFF file
    _rest: AsyncIterator[bytes]
    # The rest of the body (after `head`) for a worker thread to read off the socket,
    # when its length is known (Content-Length, no transfer or content coding); else
    # None, and `chunks()` is the way.
    direct: SocketBody | None = None

    @property
    def announced_size(self) -> int | None:
        return self.content_length if self.content_length is not None else self.riff_size

    def read_into(self, view: memoryview) -> int:
        """In the reader thread (pump.py): `SocketBody.read_into`, with failures as PbxError
        (Interrupted passes: the reader was asked to pause or stop)."""
        assert self.direct is not None
        try:
            return self.direct.read_into(view)
        except OSError as exc:  # TimeoutError, ssl.SSLError, resets: named as httpx would
            text = str(exc) or type(exc).__name__
            error = httpx.ReadTimeout(text) if isinstance(exc, TimeoutError) else httpx.ReadError(text)
            raise PbxError("download", None, describe(error)) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body, after `head`."""
        async for chunk in self._rest:
            if chunk:
                yield chunk


def sniff(head: bytes) -> tuple[str, int | None]:
    """Classify the first bytes of a download body: ('wav', riff_size),
    ('json', None), ('html', None) or ('other', None)."""
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "json", None
    if stripped[:1] == b"<":
        return "html", None
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav", int.from_bytes(head[4:8], "little") + 8
    return "other", None


async def open_body(name: str, response: httpx.Response) -> RecordingBody | bytes:
    """A download's streamed response, sniffed: the audio (its first bytes read), or
    the bytes of a JSON error body (both series answer failures with HTTP 200 and
    JSON). PbxError for an HTML page or an empty body."""
    head = b""
    raw = response.aiter_bytes()
    async for chunk in raw:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    kind, riff_size = sniff(head)
    if kind == "json":
        async for chunk in raw:
            head += chunk
            if len(head) > 65536:
                break
        return head
    if kind == "html":
        raise PbxError("download", None, "PBX answered an HTML page, not audio")
    if not head:
        raise PbxError("download", None, "PBX answered an empty body")
    return RecordingBody(name, head, _content_length(response), riff_size, raw)


def describe(exc: BaseException) -> str:
    """A transport error as a person can act on it. httpx's own message is often
    empty (a TLS failure under trio, for one); the cause underneath says what broke."""
    parts = [type(exc).__name__]
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and text not in parts:
            parts.append(text)
            break
        current = current.__cause__ or current.__context__
    return ": ".join(parts)


def parse_failure(operation: str, raw: bytes) -> PbxError:
    """Turn a failure body into a PbxError that names the errno."""
    try:
        body = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return PbxError(operation, None, "PBX answered neither success nor a JSON error")
    if not isinstance(body, dict):
        return PbxError(operation, None, "PBX answered JSON that is not an object")
    errno = body.get("errno")
    return PbxError(operation, str(errno) if errno is not None else None,
                    None if errno is not None else "PBX answered without an errno")


class PbxClient:
    def __init__(
        self,
        base_url: str,
        username: str,
        password: Callable[[], str],
        *,
        api_version: str = "v2.0.0",
        target: ReportTarget,
        verify: ssl.SSLContext | bool = True,
        fingerprint: bytes | None = None,
        io_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.api_version = normalise_api_version(api_version)
        self.target = target
        self.guard = LoginGuard(clock)
        self._token: str | None = None
        self._login_lock = trio.Lock()
        self._session_lost = trio.Event()  # set when the token dies; keep_session waits on it
        self._generation = 0  # bumped at each successful login
        self.logins = 0
        self.handshakes = 0
        self.last_interaction: float | None = None
        self._io_timeout = io_timeout
        timeout = httpx.Timeout(io_timeout, connect=connect_timeout)
        self.tls: TlsSessions | None = None
        if transport is None:
            # Every PBX connection on recfs's own trio backend (OpenSSL on the
            # socket; pbx/tls.py), with the pin checked when there is one. The
            # transport owns TLS and the pool (no keep-alive: the PBX closes after
            # every response), so the client takes no verify= or limits=.
            transport, self.tls = pbx_transport(verify, fingerprint)
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "recfs"},
            # No proxy, netrc or certificate settings from the environment: what
            # reaches the PBX, and how it is verified, is what the mount says.
            trust_env=False,
        )

    # -- session -------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._token is not None

    def _url(self, endpoint: str) -> str:
        return f"{self.base_url}/api/{self.api_version}/{endpoint}"

    async def _post(self, operation: str, endpoint: str, body: dict[str, Any],
                    token: str | None) -> dict[str, Any]:
        params = {"token": token} if token is not None else None
        try:
            response = await self._http.post(self._url(endpoint), json=body, params=params)
        except httpx.HTTPError as exc:
            raise PbxError(operation, None, describe(exc)) from None
        raw = response.content
        try:
            reply = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise PbxError(operation, None,
                           f"PBX answered HTTP {response.status_code} with a body that is not JSON") from None
        if not isinstance(reply, dict):
            raise PbxError(operation, None, "PBX answered JSON that is not an object")
        if reply.get("status") != "Success":
            raise parse_failure(operation, raw)
        self.last_interaction = time.time()
        return reply

    async def login(self) -> None:
        """Log in unless another task already did so while we waited for the lock."""
        generation = self._generation
        async with self._login_lock:
            if self._generation != generation and self._token is not None:
                return
            password = self._password()
            self.guard.check(password)
            body = {
                "username": self.username,
                "password": md5_hex(password),
                "port": str(self.target.port),
                "version": REPORT_FORMAT[self.api_version],
            }
            if self.target.url:
                body["url"] = self.target.url
                body["urltag"] = self.target.urltag
            try:
                reply = await self._post("login", "login", body, None)
            except PbxError as exc:
                self.guard.failed(exc, password)
                raise
            token = reply.get("token")
            if not isinstance(token, str) or not token:
                error = PbxError("login", None, "PBX answered Success without a token")
                self.guard.failed(error, password)
                raise error
            register_secret(token)
            self._token = token
            self._session_lost = trio.Event()
            self._generation += 1
            self.logins += 1
            self.guard.succeeded()
            log.info("logged in to %s as %s (API %s)", self.base_url, self.username, self.api_version)

    def _drop_token(self, token: str | None) -> None:
        if token is not None and self._token == token:
            self._token = None
            self._session_lost.set()

    async def wait_session_lost(self) -> None:
        """Return once the current token has died (the PBX said so to some call)."""
        await self._session_lost.wait()

    async def call(self, operation: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """An API call with a token; a dead token means one login and one retry."""
        for attempt in (1, 2):
            if self._token is None:
                await self.login()
            token = self._token
            try:
                return await self._post(operation, endpoint, body, token)
            except PbxError as exc:
                if exc.token_problem and attempt == 1:
                    log.info("token no longer valid (errno %s); logging in again", exc.errno)
                    self._drop_token(token)
                    continue
                raise
        raise AssertionError("unreachable")

    async def heartbeat(self, ipaddr: str) -> None:
        body = {"ipaddr": ipaddr, "port": str(self.target.port),
                "url": self.target.url, "urltag": self.target.urltag}
        await self.call("heartbeat", "heartbeat", body)

    async def logout(self) -> None:
        token = self._token
        if token is None:
            return
        self._token = None
        try:
            await self._post("logout", "logout", {}, token)
            log.info("logged out of %s", self.base_url)
        finally:
            forget_secret(token)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- recordings ------------------------------------------------------------

    async def _handshake(self, name: str) -> tuple[str, str]:
        self.handshakes += 1
        reply = await self.call("get_random", "recording/get_random", {"recording": name})
        random = reply.get("random")
        if not isinstance(random, str) or not random:
            raise PbxError("get_random", None, "PBX answered Success without a random")
        register_secret(random)
        token = self._token
        assert token is not None
        return random, token

    @asynccontextmanager
    async def download(self, name: str) -> AsyncIterator[RecordingBody]:
        """get_random, then at once the download GET, streamed and sniffed.

        A random is never fetched ahead and never reused: every call (and the one
        retry after a token error) starts with a fresh handshake.
        """
        for attempt in (1, 2):
            random, token = await self._handshake(name)
            params = {"recording": name, "random": random, "token": token}
            try:
                async with self._http.stream("GET", self._url("recording/download"),
                                             params=params) as response:
                    body = await open_body(name, response)
                    if isinstance(body, bytes):
                        error = parse_failure("download", body)
                        if error.token_problem and attempt == 1:
                            self._drop_token(token)
                            continue
                        raise error
                    length = body.content_length
                    stream = response.extensions.get("network_stream")
                    if length is not None and length >= len(body.head) and self.tls is not None \
                            and stream is not None:
                        body.direct = SocketBody(stream, length - len(body.head), self._io_timeout)
                    try:
                        yield body
                    finally:
                        if body.direct is not None:
                            body.direct.close()
                    return
            except httpx.HTTPError as exc:
                raise PbxError("download", None, describe(exc)) from None
            finally:
                forget_secret(random)
        raise AssertionError("unreachable")


    # -- CDR history -----------------------------------------------------------

    @property
    def cdr_filter_key(self) -> str:
        """The extension filter's name: `number` on v2.0.0, `extid` on v1.x."""
        return "number" if self.api_version == "v2.0.0" else "extid"

    async def cdr_download(self, starttime: str, endtime: str, extension: str = "all") -> bytes:
        """The CDR CSV for PBX-local [starttime, endtime] ("YYYY-MM-DD hh:mm:ss"):
        cdr/get_random, then at once the download GET with the same filter values."""
        key = self.cdr_filter_key
        for attempt in (1, 2):
            reply = await self.call("cdr_get_random", "cdr/get_random",
                                    {"starttime": starttime, "endtime": endtime, key: extension})
            random = reply.get("random")
            if not isinstance(random, str) or not random:
                raise PbxError("cdr_get_random", None, "PBX answered Success without a random")
            register_secret(random)
            token = self._token
            params = {"starttime": starttime, "endtime": endtime, key: extension,
                      "random": random, "token": token}
            try:
                async with self._http.stream("GET", self._url("cdr/download"),
                                             params=params) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_CDR_BYTES:
                            raise PbxError("cdr_download", None,
                                           f"CDR file larger than {MAX_CDR_BYTES} bytes; use a shorter range")
            except httpx.HTTPError as exc:
                raise PbxError("cdr_download", None, describe(exc)) from None
            finally:
                forget_secret(random)
            head = bytes(body[:64]).lstrip(b"\xef\xbb\xbf").lstrip()
            if head.startswith(b"{"):
                error = parse_failure("cdr_download", bytes(body))
                if error.token_problem and attempt == 1:
                    self._drop_token(token)
                    continue
                raise error
            if head.startswith(b"<"):
                raise PbxError("cdr_download", None, "PBX answered an HTML page, not CSV")
            self.last_interaction = time.time()
            return bytes(body)
        raise AssertionError("unreachable")


MAX_CDR_BYTES = 256 * 1024 * 1024


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or "chunked" in response.headers.get("transfer-encoding", "").lower():
        return None
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None  # the length of the encoded body, not of the file
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None
