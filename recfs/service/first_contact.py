"""The first login, before the mount is ready: a configuration error ends the
command, an outage does not.

A mount logs in once before it tells anyone it is ready (serve_mount, through
`PbxService.first_contact`), through the same PbxClient and LoginGuard as every
later login, bounded by `io_timeout`. What comes back decides:

- **configuration errors** end the command (MountError: exit 1, nothing mounted,
  one line naming the option that fixes it): credentials the PBX refuses (errno
  20003), a certificate that fails verification or the pin, an address where no
  PBX API answers (TLS to a plain-HTTP server, plain HTTP to a TLS server, a web
  server that is not a PBX, a path the PBX does not know);
- **outages** mount anyway, since the catalog and the cache are useful without the
  PBX: connection refused, time-outs, DNS failures, a 5xx, a lock-out (errno
  20002, temporary by nature). One WARNING says so (on the terminal: in the
  foreground the log is stderr; a background mount's parent prints the WARNINGs
  its child logs before the mount is ready, see mount.run_in_background).

Refused credentials are remembered in `STATE_DIR/login-refused` (a salted scrypt
hash, never the password): a mount started again and again with the same wrong
password (a supervisor restarting it, a script in a loop) stops asking the PBX
after LoginGuard.MAX_BAD_CREDENTIALS refusals, so that it can never run into the
PBX's lock-out (5 consecutive failures block the address for 10 minutes).

Everything is classified from the outside of the client: PbxError's errno and text,
and the exceptions it was raised from (httpx -> httpcore -> ssl / OSError, or
recfs.pbx.tls.PinMismatch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
import trio

from recfs.pbx.client import LoginGuard, PbxClient
from recfs.pbx.pseries import PSeriesClient
from recfs.pbx.errors import BAD_CREDENTIALS, ERRNO_TEXT, P_FAILURE, PbxError, PSeriesError
from recfs.pbx.tls import PinMismatch
from recfs.service.config import MountOptions
from recfs.service.mountpoint import ConfigurationError, MountError

log = logging.getLogger("recfs.service.first_contact")

REFUSED_FILE = "login-refused"

# The PBX answered, but the API did not understand the request: not this API, or
# not this version of it (a path it does not know, api_version= wrong).
_NOT_THIS_API = frozenset({"10003", "10004", "20000", "20001", "20007"})
WRONG_PORT = "20008"

# HTTP answers that mean "the server is there, but busy or its back end is down".
_OUTAGE_STATUS = frozenset({500, 502, 503, 504})

# What OpenSSL says when the other side does not speak TLS at all.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                              "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL", "HTTP_REQUEST",
                              "HTTPS_PROXY_REQUEST"})

PROBE_TIMEOUT = 5.0
# Where a message says which certificate the server shows (once it has been asked).
SHOWN = "\x00shown\x00"


@dataclass(frozen=True)
class Verdict:
    """What a failed first login means."""

    configuration: bool  # True: end the command; False: an outage, mount anyway
    message: str  # configuration: the whole line; outage: what is wrong, without "serving ..."
    credentials: bool = False  # errno 20003: remember the refusal
    probe_tls: bool = False  # http:// and the server hung up: ask whether it speaks TLS
    certificate: bool = False  # a trust problem: say which certificate the server shows


class _Contactable(Protocol):
    async def first_contact(self) -> None: ...

    async def log_out(self) -> None: ...


async def contact_all(services: Iterable[_Contactable]) -> None:
    """Every PBX's first contact at once; one MountError naming every PBX whose
    configuration is wrong (one line each), after all of them have answered. The
    others are then logged out again: no PBX keeps pushing reports to a mount that
    never came up."""
    problems: list[str] = []
    configuration = True  # every problem is one of configuration
    fine: list[_Contactable] = []

    async def one(service: _Contactable) -> None:
        nonlocal configuration
        try:
            await service.first_contact()
        except MountError as exc:
            problems.append(str(exc))
            configuration &= isinstance(exc, ConfigurationError)
        else:
            fine.append(service)

    async with trio.open_nursery() as nursery:
        for service in services:
            nursery.start_soon(one, service)
    if problems:
        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                for service in fine:
                    nursery.start_soon(service.log_out)
        raise (ConfigurationError if configuration else MountError)("\n".join(problems))


async def first_contact(client: PbxClient | PSeriesClient, opts: MountOptions, name: str,
                        holdings: Callable[[], tuple[int, int]]) -> None:
    """Log in once. Returns when logged in, or when the PBX is merely unreachable
    (after a WARNING for the terminal); raises MountError for a configuration error.
    *holdings*: (recordings in the cache, recordings in the catalog), for the
    message of an outage."""
    prefix = f"pbx.{name}: " if name else ""  # the [pbx.NAME] table to correct
    memory = RefusalMemory(opts.resolved_state_dir() / REFUSED_FILE)
    password = opts.read_password()
    refused = memory.refusals(opts.user, password)
    if refused is not None and refused[0] >= LoginGuard.MAX_BAD_CREDENTIALS:
        count, when = refused
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
        raise ConfigurationError(
            f"{prefix}{opts.source}: the PBX refused user={opts.user} with this password "
            f"{count} times (errno {P_FAILURE if opts.api == 'p-series' else BAD_CREDENTIALS}, "
            f"last at {last}); recfs does not try it "
            f"again, so as never to trip the PBX's lock-out: correct {_password_option(opts)} "
            f"or user= (if the PBX's password was changed to match, delete {memory.path})")

    verdict: Verdict | None = None
    certificate: bytes | None = None
    with trio.move_on_after(opts.io_timeout):
        try:
            await client.login()
        except PbxError as exc:
            failure = exc
            verdict = classify(exc, opts)
            if verdict.probe_tls or verdict.certificate:
                # A TLS handshake only: does the server speak TLS, with which certificate?
                host, port = _host_port(opts.source)
                certificate = await tls_certificate(host, port, PROBE_TIMEOUT)
                if verdict.probe_tls:
                    verdict = classify(exc, opts, speaks_tls=certificate is not None)
        except OSError as exc:  # not through httpx: still the network
            verdict = Verdict(False, f"PBX {opts.source} not reachable "
                                     f"({exc.strerror or exc})")
        else:
            memory.forget()
            return
    if verdict is None:
        verdict = Verdict(False, f"PBX {opts.source} not reachable (no answer within "
                                 f"io_timeout={opts.io_timeout:g} s)")
    elif verdict.probe_tls:  # the time ran out while asking
        verdict = classify(failure, opts, speaks_tls=False)
    shown = f", the server shows {fingerprint_text(certificate)}" if certificate else ""
    message = verdict.message.replace(SHOWN, shown)
    if verdict.configuration:
        if verdict.credentials:
            memory.note(opts.user, password)
        raise ConfigurationError(prefix + message)
    cached, listed = holdings()
    log.warning("%s%s; serving %d cached recording%s (%d in the catalog); retrying", prefix,
                message, cached, "" if cached == 1 else "s", listed)


# -- classification -------------------------------------------------------------------

def classify(exc: PbxError, opts: MountOptions, *, speaks_tls: bool | None = None) -> Verdict:
    """What the first login's failure means (see the module's docstring).
    *speaks_tls*: for an http:// SOURCE whose server hung up, whether a TLS handshake
    with it succeeds (None: not asked yet)."""
    source = opts.source
    parts = urlsplit(source)
    errno_ = exc.errno
    if exc.bad_credentials:
        return Verdict(True, f"{source}: the PBX refused user={opts.user} with the password from "
                             f"{_password_source(opts)} (errno {errno_}: {exc.errno_text}): "
                             f"correct {_password_option(opts)} or user=", credentials=True)
    if exc.locked_out:
        return Verdict(False, f"PBX {source} refuses logins from this address for now (errno "
                              f"{errno_}: locked out after failed logins; it lasts 10 minutes)")
    if errno_ in _NOT_THIS_API and not isinstance(exc, PSeriesError):
        return Verdict(True, f"{source}: the PBX does not understand {_login_path(opts)} (errno "
                             f"{errno_}: {ERRNO_TEXT[errno_]}): check SOURCE (scheme://host:port, "
                             f"no path) and api_version= (v2.0.0, v1.1.0 or v1.0.1)")
    if errno_ == WRONG_PORT:
        return Verdict(True, f"{source}: the PBX refused the report port (errno {errno_}: "
                             f"{ERRNO_TEXT[errno_]}): check listen= (or report_url=)")
    if errno_ is not None:
        return Verdict(False, f"PBX {source} refused the login (errno {errno_}: "
                              f"{exc.errno_text})")

    chain = list(_causes(exc))
    if any(isinstance(e, PinMismatch) for e in chain):
        return Verdict(True, f"{source}: the PBX's certificate does not match "
                             f"fingerprint={opts.fingerprint} (nothing was sent to it{SHOWN}): "
                             f"check fingerprint= (has the PBX a new certificate?)",
                       certificate=True)
    verify = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if verify is not None:
        why = verify.verify_message or verify.reason or str(verify)
        if opts.cafile:
            return Verdict(True, f"{source}: the PBX's TLS certificate does not verify against "
                                 f"cafile={opts.cafile} ({why}{SHOWN}): give the PBX's own certificate "
                                 f"or its CA as cafile=, or pin it with fingerprint=sha256:...",
                           certificate=True)
        return Verdict(True, f"{source}: the PBX's TLS certificate is not trusted ({why}{SHOWN}): give "
                             f"it (or its CA) with -o cafile=FILE, or pin it with "
                             f"-o fingerprint=sha256:...", certificate=True)
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None and not isinstance(tls, (ssl.SSLEOFError, ssl.SSLZeroReturnError,
                                                ssl.SSLSyscallError)):
        reason = getattr(tls, "reason", None)
        if reason in _NOT_TLS_REASONS:
            return Verdict(True, f"{source}: the server at {parts.netloc} does not speak TLS "
                                 f"({reason}): is it plain HTTP, or not the PBX? Check SOURCE "
                                 f"(the PBX's API is https://PBX:8088 by default)")
        return Verdict(True, f"{source}: the TLS handshake with {parts.netloc} failed "
                             f"({reason or tls}): check SOURCE's host and port")

    timeout = next((e for e in chain if isinstance(e, httpx.TimeoutException)), None)
    if timeout is not None:
        return Verdict(False, f"PBX {source} not reachable ({_timeout_text(timeout)})")
    if any(isinstance(e, httpx.ConnectError) for e in chain):
        return Verdict(False, f"PBX {source} not reachable ({_os_reason(chain, parts.hostname)})")
    hung_up = any(isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
                  for e in chain)
    if hung_up:
        if parts.scheme == "http" and speaks_tls is None:
            return Verdict(False, "", probe_tls=True)
        if parts.scheme == "http" and speaks_tls:
            https = parts._replace(scheme="https").geturl()
            return Verdict(True, f"{source}: the server at {parts.netloc} speaks HTTPS, not plain "
                                 f"HTTP: use {https} as SOURCE (with cafile= or fingerprint= for "
                                 f"the PBX's certificate)")
        return Verdict(False, f"PBX {source} not reachable ({_os_reason(chain, parts.hostname)})")

    text = str(exc)
    status = _http_status(text)
    if status in _OUTAGE_STATUS:
        return Verdict(False, f"PBX {source} not reachable (it answered HTTP {status})")
    if "PBX answered" in text:
        what = text.split("PBX answered", 1)[1].strip()
        return Verdict(True, f"{source}: no PBX API answers there (POST {_login_path(opts)} got "
                             f"{what}): check SOURCE (scheme, host and port of the PBX's API, "
                             f"https://PBX:8088 by default) and api_version=")
    return Verdict(False, f"PBX {source} not reachable ({text})")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and what it was raised from, the whole chain (a PbxError is raised
    `from None` inside the `except` of an httpx error: that is its __context__),
    and the members of exception groups on the way (trio's happy eyeballs)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                todo.append(nxt)


def _os_reason(chain: list[BaseException], host: str | None) -> str:
    """The system's own words for why the connection failed: "Connection refused",
    "cannot resolve pbx.example (Name or service not known)"."""
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"cannot resolve {host} ({e.strerror or e})"
    for e in chain:
        if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
            return os.strerror(e.errno)
    for e in reversed(chain):
        if isinstance(e, httpx.HTTPError) and str(e):
            return str(e)
    return str(chain[0])


def _timeout_text(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    return "no answer in time"


def _http_status(text: str) -> int | None:
    """The status in the client's "PBX answered HTTP 501 with a body that is not JSON"."""
    marker = "answered HTTP "
    if marker not in text:
        return None
    digits = text.split(marker, 1)[1][:3]
    return int(digits) if digits.isdigit() else None


def _login_path(opts: MountOptions) -> str:
    if opts.api == "p-series":
        return f"{urlsplit(opts.source).path.rstrip('/')}/openapi/v1.0/get_token"
    return f"{urlsplit(opts.source).path.rstrip('/')}/api/{opts.api_version}/login"


def _password_option(opts: MountOptions) -> str:
    return "password_file=" if opts.password_file else "RECFS_PASSWORD"


def _password_source(opts: MountOptions) -> str:
    return f"password_file={opts.password_file}" if opts.password_file else "RECFS_PASSWORD"


def _host_port(source: str) -> tuple[str, int]:
    parts = urlsplit(source)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def fingerprint_text(der: bytes) -> str:
    """As fingerprint= takes it: sha256:AB:CD:..."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


async def tls_certificate(host: str, port: int, timeout: float) -> bytes | None:
    """The certificate (DER) the server at host:port shows in a TLS handshake, or
    None when no handshake completes. Nothing is verified and not one byte of HTTP
    is sent: this only asks whether the server speaks TLS."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context,
                                                         https_compatible=True)
        except (OSError, trio.BrokenResourceError):
            return None
        try:
            await stream.do_handshake()
            return stream.getpeercert(binary_form=True) or b""
        except (OSError, trio.BrokenResourceError):
            return None
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
    return None


# -- refused credentials, across restarts -----------------------------------------------

class RefusalMemory:
    """Which credentials the PBX refused (errno 20003) at a mount's first login, and
    how often in a row: {"salt", "key", "count", "last"} in a file of the state
    directory. `key` is scrypt(user, password) with the salt: it tells whether the
    credentials are the same ones, and nothing else about them."""

    def __init__(self, path: Path):
        self.path = path

    def refusals(self, user: str, password: str) -> tuple[int, float] | None:
        """(refusals in a row, time of the last one) for these credentials, or None
        when the remembered refusals were of other credentials (or of none)."""
        record = self._load()
        if record is None or record.get("key") != _key(record["salt"], user, password):
            return None
        return int(record.get("count", 0)), float(record.get("last", 0))

    def note(self, user: str, password: str) -> None:
        record = self._load()
        if record is not None and record.get("key") == _key(record["salt"], user, password):
            record["count"] = int(record.get("count", 0)) + 1
        else:
            salt = secrets.token_hex(16)
            record = {"salt": salt, "key": _key(salt, user, password), "count": 1}
        record["last"] = time.time()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(temp, self.path)
        except OSError as exc:
            log.warning("cannot remember the refused login in %s: %s", self.path, exc.strerror)

    def forget(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc.strerror)

    def _load(self) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("salt"), str):
            return None
        try:
            bytes.fromhex(record["salt"])
        except ValueError:
            return None
        return record


def _key(salt: str, user: str, password: str) -> str:
    secret = f"{user}\0{password}".encode()
    return hashlib.scrypt(secret, salt=bytes.fromhex(salt), n=2**14, r=8, p=1).hex()
