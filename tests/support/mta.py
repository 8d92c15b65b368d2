"""The MTA side of the milter protocol, raw: the packets Postfix 3.7 sends, in the order it
sends them (recorded from a real Postfix: CONNECT and HELO macros, MAIL, RCPT..., DATA's queue
id macro, one HEADER per field with its leading space, BODY chunks, EOM, ABORT after every
transaction), written by hand from milter8.c's layouts, not with our own encoder."""

from __future__ import annotations

import asyncio
import struct

__all__ = ["OFFER", "Mta", "connect_and_helo", "message", "raw"]


def raw(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!L", len(data) + 1) + cmd + data


OFFER = raw(b"O", struct.pack("!LLL", 6, 0x1FF, 0x1FFFFF))  # what Postfix 3.7 offers


def connect_and_helo(port: int = 4321, addr: bytes = b"192.0.2.7", name: bytes = b"mail.example",
                     helo: bytes = b"client.example") -> bytes:
    return b"".join([
        raw(b"D", b"C{client_addr}\x00" + addr + b"\x00{client_name}\x00" + name
            + b"\x00{client_port}\x00" + str(port).encode() + b"\x00j\x00mx.test\x00"),
        raw(b"C", name + b"\x004" + struct.pack("!H", port) + addr + b"\x00"),
        raw(b"D", b"H"),
        raw(b"H", helo + b"\x00"),
    ])


def message(sender: bytes = b"<s@example>", rcpts: tuple[bytes, ...] = (b"<r@example>",),
            headers: tuple[tuple[bytes, bytes], ...] = ((b"Subject", b" hello"),),
            body: bytes = b"", queue_id: bytes = b"ABC123", end: bool = True,
            auth: bytes | None = None) -> bytes:
    mail_macros = b"M{mail_addr}\x00" + sender.strip(b"<>") + b"\x00"
    if auth is not None:
        mail_macros += b"{auth_authen}\x00" + auth + b"\x00"
    out = [raw(b"D", mail_macros), raw(b"M", sender + b"\x00SIZE=10\x00")]
    for rcpt in rcpts:
        # "<addr> NOTIFY=NEVER": the address and each parameter, one string each.
        address = rcpt.split(b" ")[0]
        out += [raw(b"D", b"R{rcpt_addr}\x00" + address.strip(b"<>") + b"\x00"),
                raw(b"R", rcpt.replace(b" ", b"\x00") + b"\x00")]
    out.append(raw(b"D", b"Ti\x00" + queue_id + b"\x00"))
    for name, value in headers:
        out += [raw(b"D", b"Li\x00" + queue_id + b"\x00"), raw(b"L", name + b"\x00" + value + b"\x00")]
    if body:
        out.append(raw(b"B", body))
    if end:
        out += [raw(b"D", b"Ei\x00" + queue_id + b"\x00"), raw(b"E")]
    return b"".join(out)


class Mta:
    """Write packets, read reply packets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int | None = None, *, path: str | None = None) -> "Mta":
        if path is not None:
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, *packets: bytes) -> None:
        self.writer.write(b"".join(packets))
        await self.writer.drain()

    async def reply(self, timeout: float = 10.0) -> tuple[bytes, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(5), timeout)
        length = struct.unpack("!L", head[:4])[0]
        data = await asyncio.wait_for(self.reader.readexactly(length - 1), timeout)
        return head[4:5], data

    async def replies_until_final(self) -> list[tuple[bytes, bytes]]:
        """Every reply up to the final one of end of message (continue, accept, discard,
        tempfail, reject, replycode)."""
        out = []
        while True:
            cmd, data = await self.reply()
            out.append((cmd, data))
            if cmd in b"cadtry":
                return out

    async def negotiate(self) -> tuple[bytes, bytes]:
        await self.send(OFFER)
        return await self.reply()

    async def closed(self, timeout: float = 10.0) -> bool:
        return await asyncio.wait_for(self.reader.read(1), timeout) == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
