"""sd_notify(3) against a real unix datagram socket that stops reading, as a hung init would."""

from __future__ import annotations

import socket
import threading
import time

from smtpfilter.service import sdnotify


def test_a_notify_socket_nobody_reads_never_blocks_the_caller(tmp_path, monkeypatch):
    # The kernel queues at most net.unix.max_dgram_qlen (10 by default) unread datagrams; the
    # next sendto on a blocking socket waits for the reader forever. Before the fix the daemon's
    # periodic STATUS= froze its event loop there: no greeting, no SIGTERM.
    path = str(tmp_path / "notify")
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    results: list[bool] = []

    def send_many() -> None:
        for number in range(50):
            results.append(sdnotify.notify(f"STATUS={number}", wait=0))

    sender = threading.Thread(target=send_many, daemon=True)
    started = time.monotonic()
    sender.start()
    sender.join(10)
    try:
        assert not sender.is_alive(), f"notify blocked after {len(results)} datagrams"
        assert results[0] is True  # delivered while there was room
        assert results[-1] is False  # the queue is full: dropped, not waited for
        # A state change may wait, but only as long as it is allowed to.
        started = time.monotonic()
        assert sdnotify.notify("READY=1", wait=0.2) is False
        assert time.monotonic() - started < 2
        # Once the reader drains its queue, messages go through again.
        reader.setblocking(False)
        while True:
            try:
                reader.recv(4096)
            except BlockingIOError:
                break
        assert sdnotify.notify("READY=1") is True
        assert reader.recv(4096) == b"READY=1"
    finally:
        reader.close()


def test_without_systemd_notify_says_so(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
