"""Keeping the PBX session alive: log in (respecting the login guard), heartbeat
well inside the 30-minute idle limit, log in again when the token died."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import trio

from recfs.protocol.client import PbxClient
from recfs.protocol.errors import PbxError

log = logging.getLogger("recfs.session")


async def local_address_towards(url: str) -> str:
    """The local IP the kernel would use to reach the PBX (a UDP connect sends
    nothing): the `ipaddr` a heartbeat reports."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 8088
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _type, _proto, _name, address = infos[0]
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        await sock.connect(address)
        return sock.getsockname()[0]


async def keep_session(client: PbxClient, heartbeat_interval: float) -> None:
    ipaddr: str | None = None
    while True:
        try:
            if not client.logged_in:
                await client.login()
            if ipaddr is None:
                ipaddr = await local_address_towards(client.base_url)
            await trio.sleep(heartbeat_interval)
            await client.heartbeat(ipaddr)
        except PbxError as exc:
            # Given up on these credentials: only an edited password file helps,
            # and guard.check() notices that without asking the PBX.
            pause = 60.0 if client.guard.gave_up else max(client.guard.wait, 5.0)
            log.warning("%s; next try in %.0f s", exc, pause)
            await trio.sleep(pause)
        except OSError as exc:
            log.warning("cannot reach the PBX: %s; next try in 10 s", exc)
            await trio.sleep(10)
