"""A raw SMTP client for tests: exact command lines, pipelining, bytes on the wire under control.

Postfix's smtp client is what talks to the filter in production; this one lets a test send what
Postfix sends (XFORWARD, DSN parameters, pipelined MAIL/RCPT/DATA) and also what a hostile client
might (bare LF, NULs, overlong lines) and read every reply, multi-line ones whole.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {' / '.join(self.lines)}"


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.banner: Reply | None = None

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", *, banner: bool = True) -> "Client":
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        if banner:
            client.banner = await client.reply()
        return client

    async def reply(self, timeout: float = 10.0) -> Reply:
        lines = []
        while True:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)
            text = raw[:-2].decode("utf-8", "replace")
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(int(text[:3]), tuple(lines))

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.writer.write(data)

    async def cmd(self, line: str | bytes, timeout: float = 10.0) -> Reply:
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        self.writer.write(line + b"\r\n")
        return await self.reply(timeout)

    async def ehlo(self, name: str = "postfix.test") -> Reply:
        return await self.cmd(f"EHLO {name}")

    async def data(self, wire_body: bytes, timeout: float = 10.0) -> Reply:
        """DATA, then ``wire_body`` (already CRLF and dot-stuffed) and the final "."."""
        go = await self.cmd("DATA")
        if go.code != 354:
            return go
        self.writer.write(wire_body + b".\r\n")
        return await self.reply(timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    def abort(self) -> None:
        """Hang up the way a killed process with unread input does: a TCP reset (SO_LINGER 0),
        which the server sees as a lost connection at once, not as an end of input."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def shutdown_write(self) -> None:
        """shutdown(SHUT_WR): no more commands, but still reading replies (a half-close)."""
        self.writer.transport.write_eof()

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionError, OSError):
            data = b""
        await self.close()
        return data == b""


async def send_message(
    port: int,
    wire_body: bytes,
    *,
    mail_from: str = "sender@example.org",
    rcpts: tuple[str, ...] = ("rcpt@example.com",),
    xforward: tuple[str, ...] = (),
) -> Reply:
    """One whole transaction the way Postfix's smtp client does it; the reply to "."."""
    client = await Client.connect(port)
    try:
        await client.ehlo()
        for line in xforward:
            reply = await client.cmd(line)
            assert reply.code == 250, reply
        reply = await client.cmd(f"MAIL FROM:<{mail_from}>")
        if reply.code != 250:
            return reply
        for rcpt in rcpts:
            await client.cmd(f"RCPT TO:<{rcpt}>")
        result = await client.data(wire_body)
        await client.cmd("QUIT")
        return result
    finally:
        await client.close()
