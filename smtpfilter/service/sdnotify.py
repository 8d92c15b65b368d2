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


def notify(message: str, *, wait: float = 1.0) -> bool:
    """Send ``message`` (e.g. "READY=1") to systemd; False when not under systemd, or when it
    could not be sent within ``wait`` seconds.

    Bounded, because it runs on the event loop: a datagram to a unix socket blocks while the
    reader's queue is full (net.unix.max_dgram_qlen, 10 by default), and a reader that stops
    reading (a busy or hung init, a supervisor that only wanted READY=1) froze the whole daemon,
    SIGTERM included, until Postfix's clients timed out waiting for our greeting (seen under
    bench/milter_bench.py). State changes (READY=1, RELOADING=1, STOPPING=1) may wait a second:
    systemd acts on them. The periodic STATUS= passes ``wait=0`` and is dropped when it would
    wait at all; the next one comes a few seconds later.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(wait)  # 0: non-blocking
            sock.sendto(message.encode(), address)
    except OSError:  # TimeoutError and BlockingIOError (the queue stayed full) among them
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
