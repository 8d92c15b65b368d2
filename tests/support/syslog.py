"""A syslog socket (what /dev/log is) for the tests of ``log.target: syslog``: the filter's
real SysLogHandler and formatter send to it, and the test reads what arrived."""

from __future__ import annotations

import asyncio
import re
import socket
import tempfile
from pathlib import Path

__all__ = ["Syslog"]


class Syslog:
    """A syslog socket (what /dev/log is) that a test reads datagrams from."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sf-log-"))
        self.path = self.directory / "log"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.seen: list[str] = []

    @property
    def config(self) -> str:
        return f"log: {{target: syslog, syslog_socket: {self.path}}}\n"

    async def until(self, pattern: str, timeout: float = 10) -> str:
        """The first datagram (from now on, or already seen) that matches ``pattern``."""
        loop = asyncio.get_running_loop()
        for line in self.seen:
            if re.search(pattern, line):
                return line
        async with asyncio.timeout(timeout):
            while True:
                line = (await loop.sock_recv(self.sock, 65536)).decode("utf-8")
                self.seen.append(line)
                if re.search(pattern, line):
                    return line

    async def count(self, pattern: str, wanted: int, timeout: float = 10) -> list[str]:
        """Wait until ``wanted`` datagrams seen so far match ``pattern``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.seen if re.search(pattern, line)]
                if len(found) >= wanted:
                    return found
                self.seen.append((await loop.sock_recv(self.sock, 65536)).decode("utf-8"))

    async def datagram(self, timeout: float = 10) -> bytes:
        """The next datagram as it arrived, bytes and all (not recorded in ``seen``)."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.directory.rmdir()
