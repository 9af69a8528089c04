"""TLS towards the PBX: CA verification by default, `cafile=` for the PBX's own
certificate, `fingerprint=sha256:...` to pin exactly one certificate, `insecure`
only when asked.

Pinning is checked right after the TLS handshake and before a single request
byte is written, so a wrong server never sees the login (with the password hash),
a token or a random.

Every PBX connection runs on `_SocketBackend`, an httpcore network backend for trio
over a non-blocking socket (trio only waits for readiness) and an `ssl.SSLObject`
between two memory BIOs (`_Tls`). OpenSSL does all of TLS, with the same context
(CA or pin, SNI, host-name check); the socket's bytes are moved in and out of it
here, with one `recv` for all the records that have arrived: an `ssl.SSLSocket`
lets OpenSSL read the socket itself, two `read()`s per 16 KiB record (its header,
then the rest; Python's `ssl` has no read-ahead), which cost a download reader
0.19 ms per MiB more CPU (README, `wire`). Unlike trio's SSLStream (a MemoryBIO
too), a read here gathers every record there is in one call, and a download's body
is read by a worker thread (`SocketBody`), not on the thread that answers FUSE.

`PbxTransport` is the httpx transport on top: a public `httpcore.AsyncConnectionPool`
built on that backend, and the translation between httpx's and httpcore's requests,
responses and errors, so that nothing of httpx's own transport is reached into.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import socket
import ssl
import typing

import httpcore
import httpx
import trio

# What one read() may gather: whole TLS records already decrypted or waiting in
# the kernel, up to this many bytes, in one call (httpcore asks for 64 KiB); and
# the most ciphertext taken off the socket by one recv.
_READ_MAX = 256 * 1024


class TlsSessions(dict[tuple[ssl.SSLContext, tuple[str, int]], ssl.SSLSession]):
    """The last TLS session per (context, PBX address), offered to the next
    connection; and how many handshakes there were, and how many of them resumed."""

    handshakes = 0
    resumed = 0


class PinMismatch(httpcore.ConnectError):
    pass


def parse_fingerprint(text: str) -> bytes:
    """`sha256:AB:CD:...` or `sha256:abcd...` (colons optional) → 32 bytes."""
    algorithm, _, value = text.partition(":")
    if algorithm.lower() != "sha256":
        raise ValueError("fingerprint must be sha256:<64 hex digits>")
    digits = re.sub(r"[:\s]", "", value)
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digits):
        raise ValueError("fingerprint must be sha256:<64 hex digits>")
    return bytes.fromhex(digits)


def verification(cafile: str | None, insecure: bool, fingerprint: bytes | None
                 ) -> ssl.SSLContext | bool:
    """What httpx's `verify=` gets."""
    if insecure:
        return False
    if fingerprint is not None:
        # The pin replaces CA and host-name checks: it names the one certificate.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()


def _deadline(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def _reason(exc: BaseException) -> str:
    # Some ssl errors carry no text; their class name still says what happened.
    return str(exc) or type(exc).__name__


class _Tls:
    """OpenSSL's side of one connection: an `ssl.SSLObject` between two memory BIOs.
    Ciphertext goes in with `pull` and out with `push`; used by one thread at a time
    (the trio thread, or a download's reader thread while it owns the body)."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None,
                 session: ssl.SSLSession | None):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=server_hostname, session=session)
        self._unsent = b""  # taken out of `outgoing`, not accepted by the socket yet

    def read_into(self, view: memoryview) -> int:
        """Decrypt what the incoming BIO holds into *view*, one record at most;
        ssl.SSLWantReadError when it needs more."""
        # With a buffer, read() gives the count (typeshed says bytes).
        return typing.cast(int, self.obj.read(len(view), view))

    def pull(self, sock: socket.socket, buffer: memoryview) -> None:
        """What has arrived on *sock* (all of it, up to len(buffer)), into OpenSSL;
        the end of the connection as an EOF. BlockingIOError if nothing is there."""
        count = sock.recv_into(buffer)
        if count:
            self.incoming.write(buffer[:count])
        else:
            self.incoming.write_eof()

    def push(self, sock: socket.socket) -> bool:
        """Send what OpenSSL has written, in one `send` when the socket takes it;
        False if some is left (wait until writable, then push again)."""
        data = self._unsent + self.outgoing.read() if self.outgoing.pending else self._unsent
        if data:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            self._unsent = data[sent:]
        return not self._unsent


class _SocketStream(httpcore.AsyncNetworkStream):
    """A connected non-blocking socket, plain or with TLS (`_Tls`), driven from trio.

    Only one task uses a stream at a time (httpcore's connection lock), so no
    further locking. Every call is a trio checkpoint, also when the bytes are
    already there: a fast PBX must not starve the FUSE requests on the same loop."""

    def __init__(self, sock: socket.socket, backend: "_SocketBackend", peer: tuple[str, int],
                 tls: _Tls | None = None):
        self._sock = sock
        self._tls = tls
        self._backend = backend  # the pin, the session memory, the read buffers
        self._peer = peer
        self._closed = False

    # -- reading -------------------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        try:
            with trio.fail_after(_deadline(timeout)):
                if self._tls is not None:
                    data = await self._read_tls(sock, self._tls)
                else:
                    data = await self._read_plain(sock, max_bytes)
        except trio.TooSlowError:
            raise httpcore.ReadTimeout("timed out reading from the PBX") from None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise httpcore.ReadError(_reason(exc)) from exc
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def _read_plain(self, sock: socket.socket, max_bytes: int) -> bytes:
        while True:
            if self._closed:
                raise httpcore.ReadError("connection closed")
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    async def _read_tls(self, sock: socket.socket, tls: _Tls) -> bytes:
        """Whatever TLS records are there, up to _READ_MAX bytes (more than httpcore
        asks for: fewer, larger chunks for h11 and the cache writes).

        The buffers are the backend's, shared by its streams, rather than one per
        stream, which would be allocated and zeroed anew for every connection (and
        the PBX takes a new connection per request, two per recording). They are
        filled and copied out with no checkpoint in between, so no other stream's
        read can come in the middle."""
        view = memoryview(self._backend.buffer)
        cipher = memoryview(self._backend.cipher)
        limit = len(view)
        got = 0
        while got < limit:
            if self._closed:
                raise httpcore.ReadError("connection closed")
            try:
                n = tls.read_into(view[got:])
            except ssl.SSLWantReadError:
                tls.push(sock)  # an answer OpenSSL may owe (TLS 1.3 key update)
                try:
                    tls.pull(sock, cipher)
                except BlockingIOError:
                    if got:
                        break  # what there is now; the next call waits
                    await trio.lowlevel.wait_readable(sock)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a TCP close without one: an end of stream, as
                # trio's https_compatible SSLStream reports it. h11 decides whether
                # the body was complete.
                n = 0
            if n == 0:
                break
            got += n
        return bytes(view[:got])

    # -- writing -------------------------------------------------------------

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not buffer:
            return
        sock = self._sock
        tls = self._tls
        view = memoryview(buffer)
        try:
            with trio.fail_after(_deadline(timeout)):
                if tls is not None:
                    while view:  # into the outgoing BIO: all of it, encrypted
                        view = view[tls.obj.write(view):]
                    await self._push(tls)
                while view:
                    if self._closed:
                        raise httpcore.WriteError("connection closed")
                    try:
                        sent = sock.send(view)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
                        continue
                    view = view[sent:]
        except trio.TooSlowError:
            raise httpcore.WriteTimeout("timed out writing to the PBX") from None
        except (OSError, ValueError) as exc:
            raise httpcore.WriteError(_reason(exc)) from exc
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _push(self, tls: _Tls) -> None:
        while not tls.push(self._sock):
            if self._closed:
                raise OSError("connection closed")
            await trio.lowlevel.wait_writable(self._sock)

    # -- the rest ------------------------------------------------------------

    async def aclose(self) -> None:
        self._close_now()
        await trio.lowlevel.checkpoint()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        backend = self._backend
        key = (ssl_context, self._peer)
        session = backend.sessions.get(key)
        sock = self._sock
        try:
            tls = _Tls(ssl_context, server_hostname, session)
        except (OSError, ValueError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(_reason(exc)) from exc
        self._closed = True  # the socket now belongs to the TLS stream
        stream = _SocketStream(sock, backend, self._peer, tls)
        cipher = memoryview(backend.cipher)
        try:
            with trio.fail_after(_deadline(timeout)):
                while True:
                    try:
                        tls.obj.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await stream._push(tls)
                        try:
                            tls.pull(sock, cipher)
                        except BlockingIOError:
                            await trio.lowlevel.wait_readable(sock)
                await stream._push(tls)  # the handshake's last flight
        except trio.TooSlowError:
            await stream.aclose()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ValueError) as exc:
            await stream.aclose()
            raise httpcore.ConnectError(_reason(exc)) from exc
        except BaseException:  # cancelled: close without awaiting
            stream._close_now()
            raise
        if backend.pin is not None:
            der = tls.obj.getpeercert(binary_form=True)
            if der is None or hashlib.sha256(der).digest() != backend.pin:
                await stream.aclose()
                raise PinMismatch("the PBX's certificate does not match the pinned fingerprint")
        stream._session_key = key  # a session worth offering again
        backend.sessions.handshakes += 1
        backend.sessions.resumed += bool(tls.obj.session_reused)
        return stream

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = True
            self._keep_session()
            if self._tls is not None:
                # What OpenSSL still has to say, as an SSLSocket would have said it:
                # an alert after a failed handshake (best effort, no waiting).
                with contextlib.suppress(OSError):
                    self._tls.push(self._sock)
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    _session_key: tuple[ssl.SSLContext, tuple[str, int]] | None = None

    def _keep_session(self) -> None:
        """Remember the TLS session for the next connection to this PBX (read at
        the end: TLS 1.3 tickets arrive after the handshake)."""
        if self._session_key is None or self._tls is None:
            return
        tls = self._tls.obj
        try:
            if tls.session_reused:
                return  # the session already remembered is still good
            session = tls.session
        except (OSError, ValueError):
            return
        if session is not None:
            self._backend.sessions[self._session_key] = session

    def get_extra_info(self, info: str) -> typing.Any:
        sock = self._sock
        if info == "ssl_object":
            return self._tls.obj if self._tls is not None else None
        if info == "socket":
            return sock
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        if info == "is_readable":
            # As httpcore's own backends: readable on an idle connection means closed.
            if self._closed or (self._tls is not None and self._tls.incoming.pending):
                return True
            try:
                return bool(select.select([sock], [], [], 0)[0])
            except (OSError, ValueError):
                return True
        return None


class Interrupted(Exception):
    """`SocketBody.read_into` was woken by `SocketBody.wake` (the reader is asked to
    pause or stop)."""


# Ciphertext buffers of the reader threads (SocketBody), reused: a zeroed 256 KiB
# per download is measurable on small recordings.
_cipher_buffers: list[bytearray] = []


class SocketBody:
    """The rest of a response body of known length, read straight off a connection of
    `_SocketBackend` by a worker thread, past h11: what has arrived is taken off the
    socket in one `recv` and OpenSSL decrypts it into the caller's buffer with the
    GIL released, with no trio round trip per record.

    Taken only between two reads of httpcore's (h11 then holds none of the body: it
    hands out all it has buffered at once), and only while httpcore's connection
    lock keeps every other task off the connection; the connection is closed (by
    closing the response) only after the thread has returned. `read_into` runs in
    that one thread; `wake` may be called from any thread."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, remaining: int, timeout: float | None):
        assert isinstance(stream, _SocketStream)
        self._sock = stream._sock
        self._tls = stream._tls
        self._cipher = _cipher_buffers.pop() if _cipher_buffers else bytearray(_READ_MAX)
        self.remaining = remaining  # bytes of the body not read yet
        self._timeout_ms = -1 if timeout is None else max(1, int(timeout * 1000))
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._wake, select.POLLIN)

    def read_into(self, view: memoryview) -> int:
        """Fill *view* with what has arrived, waiting for at least one byte; 0 at the
        end of the body or of the connection. Raises TimeoutError after the read
        timeout without a byte, Interrupted when woken, OSError (ssl.SSLError) when
        the connection fails."""
        sock = self._sock
        tls = self._tls
        cipher = memoryview(self._cipher)
        limit = min(len(view), self.remaining)
        got = 0
        while got < limit:
            try:
                if tls is None:
                    n = sock.recv_into(view[got:limit])
                else:
                    n = tls.read_into(view[got:limit])
            except ssl.SSLWantReadError:
                assert tls is not None
                if not tls.push(sock):  # an answer OpenSSL owes (TLS 1.3 key update)
                    self._wait(select.POLLOUT)
                    continue
                try:
                    tls.pull(sock, cipher)
                    continue
                except BlockingIOError:
                    pass
                if got:
                    break
                self._wait(select.POLLIN)
                continue
            except BlockingIOError:
                if got:
                    break
                self._wait(select.POLLIN)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                n = 0  # as _read_tls: an end of stream; the caller checks the length
            if n == 0:
                break
            got += n
        self.remaining -= got
        return got

    def _wait(self, events: int) -> None:
        fd = self._sock.fileno()
        self._poll.register(fd, events)
        try:
            ready = self._poll.poll(self._timeout_ms)
        finally:
            self._poll.unregister(fd)
        if any(f == self._wake for f, _ in ready):
            os.eventfd_read(self._wake)
            raise Interrupted()
        if not ready:
            raise TimeoutError("timed out reading from the PBX")

    def wake(self) -> None:
        """Make the thread's current or next wait in read_into raise Interrupted."""
        os.eventfd_write(self._wake, 1)

    def clear(self) -> None:
        """Forget a wake-up that came after the reader had already stopped."""
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass

    def close(self) -> None:
        """After the reader thread has returned."""
        os.close(self._wake)
        _cipher_buffers.append(self._cipher)


class _SocketBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend for trio over `_SocketStream`; *pin* is checked after each
    TLS handshake when given.

    The PBX closes every connection after one response, so each API call would
    cost a full TLS handshake (two per recording: get_random, download); the
    last session of each PBX address is offered again for an abbreviated one.
    The certificate checks (CA, host name or pin) are those of the session's
    first, full handshake, whose certificate the session carries; the pin is
    checked again on every connection all the same."""

    def __init__(self, pin: bytes | None = None):
        self.pin = pin
        self.sessions = TlsSessions()
        # For every stream's TLS reads on the trio thread (_read_tls, the handshake):
        # the plaintext gathered, and the ciphertext taken off the socket.
        self.buffer = bytearray(_READ_MAX)
        self.cipher = bytearray(_READ_MAX)

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            with trio.fail_after(_deadline(timeout)):
                # trio resolves the name and races the addresses (happy eyeballs);
                # the connected socket is then taken over from it.
                stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore.ConnectError(_reason(exc)) from exc
        sock = socket.socket(fileno=stream.socket.detach())
        try:
            sock.setblocking(False)
            for option in socket_options or ():
                sock.setsockopt(*option)
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(_reason(exc)) from exc
        return _SocketStream(sock, self, (host, port))

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not used for the PBX")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


# What each httpcore error becomes, as in httpx's own transport, so that callers
# of the client only ever see httpx.HTTPError: an error takes the entry of its most
# specific class here (the first of its MRO), e.g. PinMismatch → httpx.ConnectError.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.HTTPError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}

_HTTPCORE_ERRORS = tuple(_HTTPX_ERRORS)


@contextlib.contextmanager
def _as_httpx_errors() -> typing.Iterator[None]:
    try:
        yield
    except _HTTPCORE_ERRORS as exc:
        mapped = next(_HTTPX_ERRORS[cls] for cls in type(exc).__mro__ if cls in _HTTPX_ERRORS)
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    """httpcore's response body as httpx's, still streamed: each chunk is handed on
    as it arrives (recordings are tens of MiB)."""

    def __init__(self, stream: typing.AsyncIterable[bytes]):
        self._stream = stream

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        # Gives the connection back to the pool (here: closes it).
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with _as_httpx_errors():
                await aclose()


class PbxTransport(httpx.AsyncBaseTransport):
    """The httpx transport for one PBX: a public httpcore connection pool on
    `_SocketBackend`, HTTP/1.1 only, no keep-alive (the PBX closes after every
    response), no proxy. Timeouts come with each request (httpx puts the client's
    into the request's extensions, which httpcore reads)."""

    def __init__(self, ssl_context: ssl.SSLContext, pin: bytes | None = None,
                 max_connections: int = 100):
        self._backend = _SocketBackend(pin)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=max_connections,
            max_keepalive_connections=0, http1=True, http2=False,
            network_backend=self._backend)

    @property
    def sessions(self) -> TlsSessions:
        """The TLS session memory of this transport, with its handshake counts."""
        return self._backend.sessions

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                             target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            core_response = await self._pool.handle_async_request(core_request)
        assert isinstance(core_response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def pbx_transport(verify: ssl.SSLContext | bool, pin: bytes | None = None
                  ) -> tuple[PbxTransport, TlsSessions]:
    """The httpx transport for a PBX (every connection on `_SocketBackend`, the pin,
    if any, checked after the handshake) and its TLS session memory.

    *verify* is what `verification()` gives: a context, or False for no checks. No
    certificate settings are taken from the environment."""
    assert pin is None or isinstance(verify, ssl.SSLContext)
    context = verify if isinstance(verify, ssl.SSLContext) else \
        httpx.create_ssl_context(verify=verify, trust_env=False)
    transport = PbxTransport(context, pin)
    return transport, transport.sessions
