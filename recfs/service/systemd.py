"""Telling systemd how the mount is doing (Type=notify units): READY=1 once the
mount is usable, STOPPING=1 on the way down. A no-op outside systemd."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


# How long systemd is to wait for the next sign of life while the mount is starting.
EXTEND_SECONDS = 30


def extend_start() -> None:
    """Long work before READY=1 (an upgrade of a big catalog: schema.py calls this
    every few seconds while it runs) is no reason for systemd's start timeout to kill
    the mount, and with it the upgrade, again at every restart."""
    notify(f"EXTEND_TIMEOUT_USEC={EXTEND_SECONDS * 1_000_000}\nSTATUS=upgrading the catalog")
