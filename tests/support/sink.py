"""A recording SMTP server playing Postfix's 10026 smtpd in tests.

Deliberately independent of smtpfilter's own SMTP code (a plain asyncio server, not our aiosmtpd
subclass): it records every command line and the DATA bytes exactly as they crossed the wire, so
tests can assert on what our filter really sent. It answers like Postfix's smtpd by default and
can be scripted to fail in every way a real 10026 can: refuse, answer 4xx/5xx at any command, hang,
close mid-DATA, or answer slowly.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Awaitable, Callable

DEFAULT_EXTENSIONS = [
    "PIPELINING",
    "SIZE 10240000",
    "ETRN",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "DSN",
    "SMTPUTF8",
    "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE",
]


class Hang:
    """Script value: read the command, never answer."""


class Close:
    """Script value: close the connection instead of answering."""


@dataclass
class Transaction:
    xforward: list[bytes] = field(default_factory=list)
    mail: bytes | None = None
    rcpts: list[bytes] = field(default_factory=list)
    accepted_rcpts: list[bytes] = field(default_factory=list)
    data: bytes | None = None  # wire bytes between 354 and the final ".", stuffing kept
    reply: str | None = None


@dataclass
class Connection:
    lines: list[bytes] = field(default_factory=list)
    ehlo: bytes | None = None
    transactions: list[Transaction] = field(default_factory=list)


Script = Callable[[str, bytes, Transaction], "str | type[Hang] | type[Close] | None"]


class Sink:
    """``await Sink().start()``; ``sink.port``; ``sink.messages`` (completed transactions)."""

    def __init__(self, extensions: list[str] | None = None) -> None:
        self.extensions = list(DEFAULT_EXTENSIONS if extensions is None else extensions)
        self.connections: list[Connection] = []
        self.messages: list[Transaction] = []
        self.script: Script | None = None
        self.greeting = "220 sink.test ESMTP Postfix"
        self.data_reply: Callable[[Transaction], str] | None = None
        self.byte_delay = 0.0  # answer "." one byte at a time, this far apart
        self._server: asyncio.base_events.Server | None = None
        self._queue_ids = itertools.count(1)
        self._writers: set[asyncio.StreamWriter] = set()
        self.arrived = asyncio.Event()

    async def start(self) -> "Sink":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[Transaction]:
        async def wait() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.messages

    # --- protocol ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = Connection()
        self.connections.append(conn)
        txn = Transaction()
        try:
            opening = self.script("CONNECT", b"", txn) if self.script else None
            if opening is Hang:
                await asyncio.Event().wait()
            if opening is Close:
                return
            if self.greeting is not None:
                await self._send(writer, opening or self.greeting)
            while True:
                try:
                    line = await reader.readuntil(b"\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                conn.lines.append(line)
                verb = line[:4].upper().decode("ascii", "replace")
                reply = self.script(verb, line, txn) if self.script else None
                if reply is Hang:
                    await asyncio.Event().wait()
                if reply is Close:
                    return
                if verb == "EHLO":
                    conn.ehlo = line
                    lines = ["sink.test", *self.extensions]
                    default = "\r\n".join(
                        f"250{'-' if i < len(lines) - 1 else ' '}{t}" for i, t in enumerate(lines)
                    )
                elif verb == "HELO":
                    default = "250 sink.test"
                elif verb == "XFOR":
                    txn.xforward.append(line)
                    default = "250 2.0.0 Ok"
                elif verb == "MAIL":
                    txn.mail = line
                    default = "250 2.1.0 Ok"
                elif verb == "RCPT":
                    txn.rcpts.append(line)
                    default = "250 2.1.5 Ok"
                elif verb == "DATA":
                    default = "354 End data with <CR><LF>.<CR><LF>"
                elif verb == "RSET":
                    txn = Transaction()
                    default = "250 2.0.0 Ok"
                elif verb == "QUIT":
                    await self._send(writer, reply or "221 2.0.0 Bye")
                    return
                else:
                    default = "502 5.5.2 Error: command not recognized"
                answer = reply or default
                if verb == "RCPT" and answer.startswith("2"):
                    txn.accepted_rcpts.append(line)
                if verb == "MAIL" and not answer.startswith("2"):
                    txn = Transaction()
                await self._send(writer, answer)
                if verb == "DATA" and answer.startswith("354"):
                    if self.script and self.script("MIDDATA", b"", txn) is Close:
                        await reader.read(100)  # take a little of the message, then hang up
                        return
                    data = await self._read_data(reader)
                    if data is None:
                        return  # closed mid-DATA: a real smtpd discards the message
                    txn.data = data
                    script_reply = self.script("DOT", data, txn) if self.script else None
                    if script_reply is Hang:
                        await asyncio.Event().wait()
                    if script_reply is Close:
                        return
                    final = script_reply or (
                        self.data_reply(txn)
                        if self.data_reply
                        else f"250 2.0.0 Ok: queued as Q{next(self._queue_ids)}"
                    )
                    txn.reply = final
                    if final.startswith("2"):
                        self.messages.append(txn)
                        self.arrived.set()
                    conn.transactions.append(txn)
                    await self._send(writer, final, slow=True)
                    txn = Transaction()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_data(self, reader: asyncio.StreamReader) -> bytes | None:
        """Everything up to CRLF.CRLF, exactly as sent (no unstuffing)."""
        data = bytearray(b"\r\n")
        while True:
            try:
                chunk = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            except asyncio.LimitOverrunError as error:
                chunk = await reader.readexactly(error.consumed)
            data += chunk
            if data.endswith(b"\r\n.\r\n"):
                return bytes(data[2:-3])

    async def _send(self, writer: asyncio.StreamWriter, text: str, slow: bool = False) -> None:
        payload = text.encode() + b"\r\n"
        if slow and self.byte_delay:
            for index in range(len(payload)):
                writer.write(payload[index : index + 1])
                await writer.drain()
                await asyncio.sleep(self.byte_delay)
            return
        writer.write(payload)
        await writer.drain()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition with a deadline (for state that has no event to wait on)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


__all__ = ["Close", "Connection", "Hang", "Sink", "Transaction", "wait_until", "Awaitable"]
