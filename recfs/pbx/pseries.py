"""The P-Series (OpenAPI v1.0) client: tokens, the recording list, the two-step
download. ../shared/pbx-p-series.md is the contract.

Tokens: `get_token` once, `refresh_token` before the access token expires,
`get_token` again when the refresh is refused, `del_token` at unmount. The PBX
allows 8 valid access tokens per application, shared with the customer's other
integrations: recfs holds one, and for the moment of a refresh two at most (the
one replaced is revoked at once). A wrong secret goes through the same LoginGuard
as an S-Series password, which stops after 3 refusals: the PBX's IP block (70004)
comes after 5.

Every request carries a User-Agent; the token travels only in the query string.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from recfs.logs import forget_secret, register_secret
from recfs.pbx.client import LoginDeferred, LoginGuard, RecordingBody, describe, open_body
from recfs.pbx.errors import PSeriesError
from recfs.pbx.tls import TlsSessions, pbx_transport

log = logging.getLogger("recfs.pbx.pseries")

API_PREFIX = "/openapi/v1.0"
USER_AGENT = "recfs"
# Refresh when this share of the access token's life has passed, and at least this
# many seconds before its end.
REFRESH_AT = 0.5
REFRESH_MARGIN = 300.0
# How many recordings one list request asks for. The PBX's maximum is not
# documented: the walk never relies on getting this many.
PAGE_SIZE = 500
CHECK_INTERVAL = 5.0


def parse_reply(operation: str, raw: bytes, status: int) -> dict[str, Any]:
    """A P-Series answer body: the JSON object of a success, else PSeriesError."""
    try:
        reply = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise PSeriesError(operation, None,
                           f"PBX answered HTTP {status} with a body that is not JSON") from None
    if not isinstance(reply, dict):
        raise PSeriesError(operation, None, "PBX answered JSON that is not an object")
    errcode = reply.get("errcode")
    if errcode == 0:
        return reply
    if isinstance(errcode, (int, str)) and not isinstance(errcode, bool) \
            and str(errcode).lstrip("-").isdigit():
        errmsg = reply.get("errmsg")
        detail = errmsg[:100] if isinstance(errmsg, str) and errmsg.isprintable() else None
        raise PSeriesError(operation, str(errcode), detail)
    raise PSeriesError(operation, None, "PBX answered without an errcode")


def _lifetime(reply: dict[str, Any], key: str, default: float) -> float:
    value = reply.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


class PSeriesClient:
    """One P-Series PBX's API. `login()` makes sure a valid access token is held
    (the name the mount's first contact and status share with PbxClient)."""

    series = "p-series"

    def __init__(self, base_url: str, client_id: str, secret: Callable[[], str], *,
                 verify: ssl.SSLContext | bool = True, fingerprint: bytes | None = None,
                 io_timeout: float = 30.0, connect_timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.base_url = base_url.rstrip("/")
        self.username = client_id
        self._secret = secret
        self._clock = clock
        self.guard = LoginGuard(clock)
        self.verify = verify
        self.fingerprint = fingerprint
        self._access: str | None = None
        self._access_until = 0.0
        self._access_life = 1800.0
        self._refresh: str | None = None
        self._refresh_until = 0.0
        self._token_lock = trio.Lock()
        self._token_changed = trio.Event()
        self._mp3 = trio.Lock()  # the PBX downloads one MP3 recording at a time
        self.logins = 0  # get_token answered
        self.refreshes = 0  # refresh_token answered
        self.handshakes = 0  # recording/download asked
        self.last_interaction: float | None = None
        timeout = httpx.Timeout(io_timeout, connect=connect_timeout)
        self.tls: TlsSessions | None = None
        if transport is None:
            transport, self.tls = pbx_transport(verify, fingerprint)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport,
                                       headers={"User-Agent": USER_AGENT}, trust_env=False)

    # -- requests ------------------------------------------------------------------

    def url(self, endpoint: str) -> str:
        return f"{self.base_url}{API_PREFIX}/{endpoint}"

    async def _request(self, operation: str, method: str, endpoint: str, *,
                       token: str | None = None, params: dict[str, Any] | None = None,
                       body: dict[str, Any] | None = None) -> dict[str, Any]:
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        try:
            response = await self._http.request(method, self.url(endpoint), params=query or None,
                                                 json=body)
        except httpx.HTTPError as exc:
            raise PSeriesError(operation, None, describe(exc)) from None
        reply = parse_reply(operation, response.content, response.status_code)
        self.last_interaction = time.time()
        return reply

    # -- tokens ----------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._access is not None and self._clock() < self._access_until

    def _take_tokens(self, operation: str, reply: dict[str, Any]) -> None:
        access, refresh = reply.get("access_token"), reply.get("refresh_token")
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise PSeriesError(operation, None, "PBX answered success without the tokens")
        register_secret(access)
        register_secret(refresh)
        now = self._clock()
        self._access, self._refresh = access, refresh
        self._access_life = _lifetime(reply, "access_token_expire_time", 1800.0)
        self._access_until = now + self._access_life
        self._refresh_until = now + _lifetime(reply, "refresh_token_expire_time", 86400.0)
        self._token_changed.set()
        self._token_changed = trio.Event()

    async def _get_token(self) -> None:
        secret = self._secret()
        self.guard.check(secret)
        try:
            reply = await self._request("get_token", "POST", "get_token",
                                        body={"username": self.username, "password": secret})
            self._take_tokens("get_token", reply)
        except PSeriesError as exc:
            self.guard.failed(exc, secret)
            if exc.bad_credentials:
                log.error("%s: the PBX refused Client ID %s with this Client Secret (%s); "
                          "correct the secret (password_file=) or user=; not asking again "
                          "for %.0f s", self.base_url, self.username, exc, self.guard.wait)
            raise
        self.guard.succeeded()
        self.logins += 1
        log.info("got an access token from %s for Client ID %s", self.base_url, self.username)

    async def _refresh_tokens(self) -> bool:
        """A new pair for the refresh token; False when the PBX refused it."""
        old_access, old_refresh = self._access, self._refresh
        if old_refresh is None or self._clock() >= self._refresh_until:
            return False
        try:
            reply = await self._request("refresh_token", "POST", "refresh_token",
                                        body={"refresh_token": old_refresh})
            self._take_tokens("refresh_token", reply)
        except PSeriesError as exc:
            if exc.errno is None:
                raise  # the network: the refresh token may well still be good
            log.info("%s; getting a new token", exc)
            self._refresh = None
            return False
        self.refreshes += 1
        log.info("refreshed the access token of %s", self.base_url)
        if old_access is not None and old_access != self._access:
            await self._revoke(old_access)
        forget_secret(old_refresh)
        return True

    async def _revoke(self, token: str) -> None:
        """del_token, whatever the PBX did to the token already (a refresh may have
        revoked it): recfs never leaves a token of its own valid behind."""
        try:
            await self._request("del_token", "GET", "del_token", token=token)
        except PSeriesError as exc:
            log.debug("del_token: %s", exc)
        finally:
            forget_secret(token)

    async def login(self) -> str:
        """A valid access token: the one held, a refreshed one, or a new one."""
        async with self._token_lock:
            if self.logged_in and self._clock() < self._refresh_due():
                assert self._access is not None
                return self._access
            if not await self._refresh_tokens():
                if self._access is not None:
                    stale, self._access = self._access, None
                    await self._revoke(stale)
                await self._get_token()
            assert self._access is not None
            return self._access

    def _refresh_due(self) -> float:
        life = self._access_life
        return self._access_until - max(life * (1 - REFRESH_AT), min(REFRESH_MARGIN, life / 2))

    def drop_token(self, token: str) -> None:
        """The PBX said *token* is no longer valid: the next call refreshes or gets
        a new one."""
        if self._access == token:
            self._access_until = 0.0

    async def keep_tokens(self) -> None:
        """The background task: refresh before expiry; after a failure try again
        with the guard's back-off."""
        while True:
            try:
                await self.login()
                # The client's clock, not trio's: a delay, never a deadline.
                with trio.move_on_after(max(self._refresh_due() - self._clock(), 1.0)):
                    await self._token_changed.wait()
            except LoginDeferred:
                # The guard holds get_token back (a pause after a failure, or given
                # up on this secret): asking it again costs nothing on the network.
                await trio.sleep(CHECK_INTERVAL)
            except PSeriesError as exc:
                if not exc.bad_credentials:  # that one said so already, as an ERROR
                    log.warning("%s; next try in %.0f s", exc, max(self.guard.wait, CHECK_INTERVAL))
                await trio.sleep(CHECK_INTERVAL)

    async def call(self, operation: str, method: str, endpoint: str,
                   params: dict[str, Any] | None = None) -> dict[str, Any]:
        """An API call with the token; an expired token means one new token and one
        retry."""
        for attempt in (1, 2):
            token = await self.login()
            try:
                return await self._request(operation, method, endpoint, token=token, params=params)
            except PSeriesError as exc:
                if exc.token_problem and attempt == 1:
                    log.info("access token no longer valid (%s); getting another", exc.errno)
                    self.drop_token(token)
                    continue
                raise
        raise AssertionError("unreachable")

    async def logout(self) -> None:
        """At unmount: revoke the access token (and so its refresh token)."""
        token, self._access, self._refresh = self._access, None, None
        if token is not None:
            await self._revoke(token)
            log.info("revoked the access token of %s", self.base_url)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- recordings ---------------------------------------------------------------

    async def list_recordings(self, page: int, page_size: int = PAGE_SIZE
                              ) -> tuple[int, list[dict[str, Any]]]:
        """One page of the recording list, newest first: (total_number, items)."""
        reply = await self.call("recording_list", "GET", "recording/list",
                                {"page": page, "page_size": page_size, "sort_by": "id",
                                 "order_by": "desc"})
        total = reply.get("total_number", 0)
        data = reply.get("data") or []
        if isinstance(total, str) and total.isdigit():
            total = int(total)
        if not isinstance(total, int) or isinstance(total, bool) or total < 0 \
                or not isinstance(data, list):
            raise PSeriesError("recording_list", None, "PBX answered a malformed list")
        return total, [item for item in data if isinstance(item, dict)]

    def _resource_url(self, value: object) -> str:
        """The absolute URL of a download_resource_url: a path on the PBX, or a URL
        of the PBX itself (never another host: it gets the token)."""
        if not isinstance(value, str) or not value:
            raise PSeriesError("download", None, "PBX answered without a download_resource_url")
        if value.startswith("/") and not value.startswith("//"):
            return self.base_url + value
        ours, theirs = urlsplit(self.base_url), urlsplit(value)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
            raise PSeriesError("download", None, "download_resource_url points elsewhere")
        return value

    @asynccontextmanager
    async def download(self, name: str) -> AsyncIterator[RecordingBody]:
        """recording/download?file=NAME, then at once the GET of its resource URL,
        streamed and sniffed. An MP3 recording waits for the one before it."""
        mp3 = self._mp3 if name.lower().endswith(".mp3") else contextlib.nullcontext()
        async with mp3:
            for attempt in (1, 2):
                token = await self.login()
                self.handshakes += 1
                try:
                    reply = await self._request("download", "GET", "recording/download",
                                                token=token, params={"file": name})
                except PSeriesError as exc:
                    if exc.token_problem and attempt == 1:
                        self.drop_token(token)
                        continue
                    raise
                url = self._resource_url(reply.get("download_resource_url"))
                register_secret(url)
                try:
                    async with self._http.stream("GET", url,
                                                 params={"access_token": token}) as response:
                        body = await open_body(name, response)
                        if isinstance(body, bytes):
                            error = _failure("download", body)
                            if error.token_problem and attempt == 1:
                                self.drop_token(token)
                                continue
                            raise error
                        yield body
                        return
                except httpx.HTTPError as exc:
                    raise PSeriesError("download", None, describe(exc)) from None
                finally:
                    forget_secret(url)
            raise AssertionError("unreachable")


def _failure(operation: str, raw: bytes) -> PSeriesError:
    try:
        parse_reply(operation, raw, 200)
    except PSeriesError as exc:
        return exc
    return PSeriesError(operation, None, "PBX answered JSON instead of audio")
