"""The pipelining outbox of an SMTP session: replies to pipelined commands leave together.

A mixin of :class:`smtpfilter.frontdoors.smtp.session.FilterSMTP` (methods, not an object of its
own: every reply passes here, and a mixin costs no extra call or attribute hop). It relies on
aiosmtpd's ``_reader`` and ``_writer`` and on ``_outbox``, ``_pipelinable`` and ``_client_gone``,
which the session sets up.
"""

from __future__ import annotations

import asyncio

from smtpfilter.core import replies

__all__ = ["ClientGone", "PipeliningOutbox"]


class PipeliningOutbox:
    _outbox: list[bytes]
    _pipelinable: bool  # the reply being pushed answers MAIL, RCPT, RSET or XFORWARD
    _client_gone: bool
    _reader: asyncio.StreamReader
    _writer: asyncio.StreamWriter

    async def push(self, status: str | bytes) -> None:
        """Send a reply; replies to pipelined commands go out together (RFC 2920 §3.1).

        Postfix sends MAIL, RCPT... and DATA in one packet. While the next command is already
        buffered, the reply to a pipelinable command (MAIL, RCPT, RSET, XFORWARD) waits for the
        replies after it, so a group costs one send() instead of one per command. Every other
        reply (DATA's 354, EHLO, errors before a hang-up...) goes out at once with whatever
        waits, and a reply is never held while we would wait for the client.
        """
        if self._client_gone:
            raise ClientGone  # nobody to answer; ends aiosmtpd's command loop
        # Every reply, aiosmtpd's echoes of client text too, as printable ASCII lines.
        self._outbox.append(replies.encode_reply(status))
        hold, self._pipelinable = self._pipelinable, False
        # StreamReader keeps unread input in ``_buffer`` (aiosmtpd relies on it too).
        if hold and b"\n" in getattr(self._reader, "_buffer", b""):
            return
        await self.flush()

    async def flush(self) -> None:
        if not self._outbox:
            return
        if self._writer.transport.is_closing():
            # The client reset the connection while we worked on its command (the session's
            # cancellation reaches us only at our next await). asyncio ignores a write to a
            # closed transport but uvloop raises RuntimeError, which ended up logged as an
            # internal error: this is the end of the session, not a failure.
            self._outbox.clear()
            self._client_gone = True
            raise ClientGone
        data = b"".join(self._outbox)
        self._outbox.clear()
        self._writer.write(data)
        await self._writer.drain()


class ClientGone(ConnectionResetError):
    """Raised out of aiosmtpd's command loop when the client is gone (FilterSMTP.push).

    A ConnectionResetError, so that aiosmtpd's loop treats it as a lost connection (closes its
    writer, ends the loop) instead of passing it to handle_exception as a failure of ours."""
