"""Who may push reports: only the PBX's own addresses, and only on a path that
carries the secret recfs registered at login.

A forged report could plant names in the tree and make recfs ask the PBX for
files that do not exist; a report from the right host but without the secret
means someone else on that host (or a spoofer) is guessing.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
from pathlib import Path
from urllib.parse import urlsplit

import trio

from recfs.logs import register_secret

# Seconds between two resolutions of SOURCE's host name.
SOURCE_RECHECK = 600.0

log = logging.getLogger("recfs.ingest.gate")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SECRET_FILE = "report-secret"


def load_secret(state_dir: Path) -> str:
    """The path secret, kept in the state directory: stable across remounts, so
    that reports the PBX re-sends after a restart of recfs still find their way."""
    path = state_dir / SECRET_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if len(value) < 32 or not value.isalnum():
        value = secrets.token_hex(16)
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(value + "\n")
    register_secret(value)
    return value


def parse_networks(text: str) -> list[Network]:
    networks = []
    for item in filter(None, (part.strip() for part in text.replace(";", ",").split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"report_from: {item!r} is not an address or CIDR") from None
    return networks


class ReportGate:
    def __init__(self, secret: str, networks: list[Network] | None = None,
                 source: str | None = None):
        self.secret = secret
        self._fixed = networks is not None
        self.networks: list[Network] = list(networks or [])
        self._source_host = urlsplit(source).hostname if source else None

    async def learn_source_addresses(self) -> None:
        """Resolve SOURCE's host name (unless report_from was given). Called at
        start and every SOURCE_RECHECK seconds after (recfs/service/pbx_service.py),
        so a PBX that changed address is followed."""
        if self._fixed or not self._source_host:
            return
        try:
            infos = await trio.socket.getaddrinfo(self._source_host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve %s (%s): reports are refused until it resolves",
                        self._source_host, exc)
            return
        networks = sorted({ipaddress.ip_network(info[4][0]) for info in infos}, key=str)
        if networks != self.networks:
            log.info("accepting reports from %s", ", ".join(map(str, networks)))
            self.networks = networks

    def admits(self, peer_ip: str) -> bool:
        """Whether *peer_ip* is one of the PBX's addresses."""
        try:
            address = ipaddress.ip_address(peer_ip.split("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def refusal(self, peer_ip: str, path: str) -> str | None:
        """Why a request must be refused, or None if it may be a report."""
        if not self.admits(peer_ip):
            return f"{peer_ip} is not the PBX"
        if not secrets.compare_digest(path.rstrip("/").rsplit("/", 1)[-1], self.secret):
            return "wrong report path"
        return None
