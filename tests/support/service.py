"""``smtpfilter serve`` (or ``milter``) as a child process, run the way systemd runs it.

The process gets a real ``NOTIFY_SOCKET`` (a unix datagram socket this helper reads), so a test
waits for READY=1 exactly as systemd's Type=notify does instead of sleeping, and can check the
STATUS=, RELOADING=1 and STOPPING=1 messages. Its stderr (the log, as journald would get it) goes
to a file that tests poll with deadlines.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.unprivileged import drop_file_override

__all__ = ["REPO", "FilterProcess", "free_port", "poll"]

REPO = Path(__file__).resolve().parents[2]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_taken: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, chosen at random BELOW the kernel's ephemeral range.

    A port from bind(("127.0.0.1", 0)) comes from the ephemeral range, which the kernel also
    hands to outgoing connections: between our check and Postfix's bind(), one of them (our
    own mail flowing) could take it, and "postfix start" fails. Below the range only another
    listener can, and each port is checked free by binding it.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates:
        if port in _taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)  # never hand the same port to two listeners of one test run
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def poll(predicate, timeout: float, what: str, interval: float = 0.02):
    """Call ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child that runs this checkout's smtpfilter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


# What systemd does for a .socket unit (sd_listen_fds(3)): the socket as file descriptor 3,
# LISTEN_FDS=1 and LISTEN_PID set to the PID of the process that will use it; exec keeps both.
_SOCKET_ACTIVATION = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class FilterProcess:
    def __init__(
        self, config: Path, *, args: tuple[str, ...] = (), command: str = "serve"
    ) -> None:
        self.config = config
        self.args = args
        self.command = command  # serve, or another daemon: policy
        # Socket paths are limited to 108 bytes: keep them short, outside pytest's deep tmp_path.
        self._dir = Path(tempfile.mkdtemp(prefix="sf-"))
        self.log_path = self._dir / "stderr.log"
        self.notify_path = self._dir / "notify"
        self.notifications: list[str] = []
        self.process: subprocess.Popen | None = None
        self._notify: socket.socket | None = None
        # True: reads files as a service user would (mode 000 refused), see unprivileged.py.
        self.unprivileged = False

    # --- lifecycle -----------------------------------------------------------------------
    def start(
        self, timeout: float = 20.0, *, wait_ready: bool = True, listen_socket: socket.socket | None = None
    ) -> "FilterProcess":
        """Start it; with ``listen_socket``, hand that socket over as systemd's socket
        activation does."""
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))
        self._notify.setblocking(False)
        command = [sys.executable, "-m", "smtpfilter", self.command, "--config", str(self.config),
                   *self.args]
        pass_fds: tuple[int, ...] = ()
        if listen_socket is not None:
            pass_fds = (listen_socket.fileno(),)
            command = [sys.executable, "-c", _SOCKET_ACTIVATION, str(pass_fds[0]), *command]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=child_env(NOTIFY_SOCKET=str(self.notify_path)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=pass_fds,
                preexec_fn=drop_file_override if self.unprivileged else None,
            )
        if wait_ready:
            self.wait_notification("READY=1", timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit (a test then fails on the status)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def close(self) -> None:
        self.stop()
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        for path in (self.notify_path, self.log_path):
            path.unlink(missing_ok=True)
        try:
            self._dir.rmdir()
        except OSError:
            pass

    # --- what it said --------------------------------------------------------------------
    def drain(self) -> list[str]:
        """Every sd_notify message received so far."""
        while self._notify is not None:
            try:
                self.notifications.append(self._notify.recv(4096).decode())
            except BlockingIOError:
                break
        return self.notifications

    def wait_notification(self, prefix: str, timeout: float = 20.0, after: int = 0) -> str:
        """The first sd_notify message (from index ``after`` on) with a line starting ``prefix``."""

        def found() -> str | None:
            self.drain()
            for message in self.notifications[after:]:
                if any(line.startswith(prefix) for line in message.split("\n")):
                    return message
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"smtpfilter exited with status {self.process.returncode} before "
                    f"{prefix!r}; its log:\n{self.log()}"
                )
            return None

        return poll(found, timeout, f"sd_notify {prefix!r} (log:\n{self.log()})")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[re.Match]:
        regex = re.compile(pattern, re.MULTILINE)

        def found() -> list[re.Match] | None:
            matches = list(regex.finditer(self.log()))
            return matches if len(matches) >= count else None

        try:
            return poll(found, timeout, f"{count} log line(s) matching {pattern!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}; the log:\n{self.log()}") from None
