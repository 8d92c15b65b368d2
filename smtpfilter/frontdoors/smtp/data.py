"""The DATA reader of an SMTP session: the message as the wire bytes, read in chunks.

aiosmtpd reads DATA line by line (~6 µs per line) and holds ~4× the message; this reads chunks
and keeps the wire bytes (CRLF, dot-stuffed) that go on to 10026 unchanged. Only ``CRLF.CRLF``
ends the data (the SMTP smuggling fix of aiosmtpd 1.4.5, kept). The idle timer restarts on every
chunk.

A mixin of :class:`smtpfilter.frontdoors.smtp.session.FilterSMTP` (no extra call per message);
it relies on aiosmtpd's ``_reader`` and the session's ``refresh_timeout``.
"""

from __future__ import annotations

import asyncio

from smtpfilter.core.wire import END_OF_DATA

__all__ = ["DataReader"]

# Larger than anything a transport buffers between two reads (asyncio reads ≤ 256 KiB per
# data_received and the reader pauses the transport beyond 2 × its limit).
_READ_ALL = 1 << 22


class DataReader:
    _reader: asyncio.StreamReader

    async def _read_data(self, limit: int) -> bytearray | None:
        """The message in wire form, without the final ".": CRLF lines, still dot-stuffed.

        Returns None when it exceeded ``limit`` (read to the end and dropped: RFC 5321 §4.2.5
        has us answer only after the final "."); 0 is no limit. Bytes after the terminator (a
        command the client pipelined after ".") are given back to the command reader.
        """
        reader = self._reader
        limit = limit or (1 << 62)
        # Start with the CRLF that ended the DATA command line, so that "." + CRLF at once
        # (an empty message) is found by the same search as every other end of data.
        buf = bytearray(b"\r\n")
        scan_from = 0
        discarding = False
        while True:
            chunk = await reader.read(_READ_ALL)
            if not chunk:
                # EOF mid-DATA: the client is gone (aiosmtpd's eof_received cancels us too).
                raise ConnectionResetError("EOF during DATA")
            self.refresh_timeout()
            buf += chunk
            found = buf.find(END_OF_DATA, max(scan_from - 4, 0))
            if found < 0:
                if len(buf) > limit + 6:
                    discarding = True  # too big: keep only a tail that may hold the terminator
                    del buf[:-4]
                scan_from = len(buf)
                continue
            rest = found + len(END_OF_DATA)
            if rest < len(buf):
                # read() above took everything the reader had buffered (_READ_ALL exceeds what
                # a transport delivers between two reads), so appending keeps the byte order.
                _give_back(reader, bytes(buf[rest:]))
            if discarding:
                return None
            del buf[found + 2 :]  # keep the CRLF that ends the last line
            del buf[:2]
            return None if len(buf) > limit else buf


def _give_back(reader: asyncio.StreamReader, data: bytes) -> None:
    """Put bytes read past the end of the message back for the command reader.

    feed_data() refuses bytes once the end of input was seen (an ``assert``, so under
    ``python -O`` it would not even refuse): a client that pipelined commands after "." and
    then half-closed (RFC 9293 §3.6) is still owed their replies (FilterSMTP.eof_received).
    Its buffer is empty here (read() took it all), so appending to it is what feed_data does,
    minus the wake-up nobody waits for."""
    if getattr(reader, "_eof", False):
        reader._buffer.extend(data)  # type: ignore[attr-defined]
    else:
        reader.feed_data(data)
