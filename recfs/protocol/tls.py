"""TLS towards the PBX: CA verification by default, `cafile=` for the PBX's own
certificate, `fingerprint=sha256:...` to pin exactly one certificate, `insecure`
only when asked.

Pinning is checked right after the TLS handshake and before a single request
byte is written, so a wrong server never sees the login (with the password hash),
a token or a random.
"""

from __future__ import annotations

import hashlib
import re
import ssl

import httpcore
import httpx


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


class _PinnedStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, pin: bytes):
        self._inner = inner
        self._pin = pin

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        ssl_object = stream.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None or hashlib.sha256(der).digest() != self._pin:
            await stream.aclose()
            raise PinMismatch("the PBX's certificate does not match the pinned fingerprint")
        return stream


class _PinningBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, pin: bytes):
        self._inner = httpcore.AnyIOBackend()
        self._pin = pin

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _PinnedStream(stream, self._pin)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not used for the PBX")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pinned_transport(pin: bytes, verify: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections check the pin after the handshake.

    httpx has no public hook for the network backend, so the transport's pool is
    replaced by an equivalent one built on the pinning backend (tested in
    tests/mount/test_tls.py: a change in httpx that breaks this fails there)."""
    transport = httpx.AsyncHTTPTransport(verify=verify)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=verify, max_keepalive_connections=0, http1=True, http2=False,
        network_backend=_PinningBackend(pin))
    return transport
