"""sd_notify(3): one datagram to $NOTIFY_SOCKET. The protocol is a single sendto(); the Python
packages that wrap it are unmaintained or need libsystemd, so it is done here in a few lines."""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(message: str) -> bool:
    """Send ``message`` (e.g. "READY=1") to systemd; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True
