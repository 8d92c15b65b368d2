"""systemd's two small protocols, done here in a few lines (the Python packages that wrap them are
unmaintained or need libsystemd):

- sd_notify(3): one datagram to $NOTIFY_SOCKET ("READY=1", "STATUS=...").
- sd_listen_fds(3): sockets handed over by a .socket unit, from file descriptor 3 on, when
  $LISTEN_PID is our PID and $LISTEN_FDS says how many.
"""

from __future__ import annotations

import os
import socket

__all__ = ["listen_sockets", "notify"]

SD_LISTEN_FDS_START = 3


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


def listen_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed us (socket activation), or [].

    As sd_listen_fds(3) with unset_environment: the variables are removed so that a child
    process never mistakes them for its own, and the descriptors are made close-on-exec.
    """
    pid, count = os.environ.pop("LISTEN_PID", None), os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    try:
        if int(pid) != os.getpid():
            return []  # meant for another process (our parent)
        number = int(count)
    except ValueError:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + number):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
