"""A private redis-server (or valkey-server) for tests: a child process on a free loopback port.

Debian's ``redis-server`` (bookworm: 7.0) or ``valkey-server`` (bookworm-backports: 8.0) runs
in the foreground with no persistence (``--save '' --appendonly no``) in a temporary directory,
bound to 127.0.0.1 only. It answers PING about 8 ms after exec. ``SMTPFILTER_REDIS_SERVER``
names another binary (a valkey-server, say). Without one the tests skip, except under CI=true,
where .ci/run must install it and a skip would hide that it did not.

Faults a test can cause: ``kill()`` (SIGKILL: connections are reset, connects refused),
``pause()``/``resume()`` (SIGSTOP/SIGCONT: the socket still accepts, nobody answers: what a
blackholed or swapped-out server looks like), ``start()`` again on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

from tests.support.service import free_port, poll

__all__ = ["RedisServer", "redis_binary", "redis_server", "require_redis"]


def redis_binary() -> str | None:
    named = os.environ.get("SMTPFILTER_REDIS_SERVER")
    if named:
        return named
    search = os.pathsep.join(["/usr/bin", "/usr/sbin", os.environ.get("PATH", "")])
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name, path=search)
        if path:
            return path
    return None


def require_redis() -> str:
    binary = redis_binary()
    if binary is not None:
        return binary
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no redis-server: .ci/run must install it (apt-get install redis-server)")
    pytest.skip("redis-server is not installed (apt-get install redis-server)")


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or require_redis()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="smtpfilter-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        process = self.process
        poll(lambda: _pong(self.port) or process.poll() is not None, 10, f"redis on {self.port}")
        if process.poll() is not None:
            raise AssertionError(f"{self.binary} exited {process.returncode}: {self.log()}")
        return self

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log")) as file:
                return file.read()[-3000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a stopped process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    """A running private redis-server; import this fixture into the test module."""
    server = RedisServer().start()
    yield server
    server.stop()
