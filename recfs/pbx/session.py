"""Keeping the PBX session alive: log in (respecting the login guard), heartbeat
well inside the 30-minute idle limit, log in again when the token died."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import trio

from recfs.pbx.client import LoginDeferred, PbxClient
from recfs.pbx.errors import PbxError

log = logging.getLogger("recfs.pbx.session")

CHECK_INTERVAL = 5.0


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
            # Heartbeat on time, or log in again at once when a call found the token
            # dead (without a session, the PBX pushes no reports).
            with trio.move_on_after(heartbeat_interval):
                await client.wait_session_lost()
            if client.logged_in:
                await client.heartbeat(ipaddr)
        except LoginDeferred:
            # The guard holds logins back (a pause after a failure, or given up on
            # these credentials); asking it again costs nothing on the network and
            # notices at once when the password file has been corrected.
            await trio.sleep(CHECK_INTERVAL)
        except PbxError as exc:
            if client.guard.gave_up:
                log.error("%s: not logging in again until the password file changes", exc)
            else:
                log.warning("%s; next try in %.0f s", exc, max(client.guard.wait, CHECK_INTERVAL))
            await trio.sleep(CHECK_INTERVAL)
        except OSError as exc:
            log.warning("cannot reach the PBX: %s; next try in 10 s", exc)
            await trio.sleep(10)
