"""A recording SMTP server playing Postfix's 10026 smtpd in tests.

Deliberately independent of smtpfilter's own SMTP code (a plain asyncio server, not our aiosmtpd
subclass): it records every command line and the DATA bytes exactly as they crossed the wire, so
tests can assert on what our filter really sent. It answers like Postfix's smtpd by default and
can be scripted to fail in every way a real 10026 can: refuse, answer 4xx/5xx at any command, hang,
close mid-DATA, or answer slowly.

It is as strict about command order as Postfix's smtpd (smtpd.c): a MAIL inside a transaction
gets ``503 5.5.1 Error: nested MAIL command``, RCPT before MAIL ``503 5.5.1 Error: need MAIL
command``, DATA without an accepted recipient ``503``/``554``, XFORWARD inside a transaction
``503``. A client that gets out of step with it therefore sees the 5xx Postfix would give.

``gate`` holds replies back: an async hook awaited before each reply is written, given the verb,
the transaction and a coroutine function that waits until more input (or EOF) arrives on that
connection. Tests use it to make 10026 slow at exactly one point of the dialogue.
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
Gate = Callable[[str, Transaction, Callable[[], Awaitable[None]]], Awaitable[None]]


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
        self.gate: Gate | None = None
        # Commands refused because they came out of order (what Postfix's smtpd answers with
        # 503): a client in step with us never causes one.
        self.out_of_order: list[bytes] = []
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
        in_mail = False  # Postfix smtpd's state: a MAIL was accepted and not yet ended

        async def more_input() -> None:
            """Until the client sent something more (or closed): StreamReader's own wait."""
            if not reader._buffer and not reader._eof:  # type: ignore[attr-defined]
                await reader._wait_for_data("gate")  # type: ignore[attr-defined]

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
                    if in_mail:
                        default = "503 5.5.1 Error: MAIL transaction in progress"
                    else:
                        txn.xforward.append(line)
                        default = "250 2.0.0 Ok"
                elif verb == "MAIL":
                    if in_mail:
                        default = "503 5.5.1 Error: nested MAIL command"
                    else:
                        txn.mail = line
                        default = "250 2.1.0 Ok"
                elif verb == "RCPT":
                    if not in_mail:
                        default = "503 5.5.1 Error: need MAIL command"
                    else:
                        txn.rcpts.append(line)
                        default = "250 2.1.5 Ok"
                elif verb == "DATA":
                    if not in_mail:
                        default = "503 5.5.1 Error: need MAIL command"
                    elif not txn.accepted_rcpts:
                        default = (
                            "554 5.5.1 Error: no valid recipients"
                            if txn.rcpts
                            else "503 5.5.1 Error: need RCPT command"
                        )
                    else:
                        default = "354 End data with <CR><LF>.<CR><LF>"
                elif verb == "RSET":
                    txn = Transaction()
                    in_mail = False
                    default = "250 2.0.0 Ok"
                elif verb == "QUIT":
                    await self._send(writer, reply or "221 2.0.0 Bye")
                    return
                else:
                    default = "502 5.5.2 Error: command not recognized"
                answer = reply or default
                if reply is None and default.startswith(("503", "554")):
                    self.out_of_order.append(line)
                if verb == "RCPT" and answer.startswith("2"):
                    txn.accepted_rcpts.append(line)
                if verb == "MAIL":
                    if answer.startswith("2"):
                        in_mail = True
                    elif not in_mail:
                        txn = Transaction()
                if self.gate is not None:
                    await self.gate(verb, txn, more_input)
                await self._send(writer, answer)
                if verb == "DATA" and answer.startswith("354"):
                    middata = self.script("MIDDATA", b"", txn) if self.script else None
                    if middata is Close:
                        await reader.read(100)  # take a little of the message, then hang up
                        return
                    if middata is Hang:
                        await asyncio.Event().wait()  # stop reading: the sender's buffers fill
                    data = await self._read_data(reader)
                    if data is None:
                        return  # closed mid-DATA: a real smtpd discards the message
                    in_mail = False  # the transaction ends with ".", whatever the answer
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
                    if self.gate is not None:
                        await self.gate("DOT", txn, more_input)
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
