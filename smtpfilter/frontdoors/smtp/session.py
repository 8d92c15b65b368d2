"""The SMTP session: aiosmtpd, plus what a Postfix content filter needs (the glue).

aiosmtpd speaks SMTP; this subclass adds only what it lacks and leaves every decision to the
transaction handler (frontdoors/smtp/transaction.py). The grammar of MAIL, RCPT and XFORWARD
is in esmtp.py, the DATA reader in data.py, the pipelining outbox in outbox.py:

- EHLO announces exactly what we can honour: PIPELINING, SIZE, ENHANCEDSTATUSCODES, 8BITMIME,
  DSN, SMTPUTF8, XFORWARD (to authorised clients only), STARTTLS only with a certificate. No AUTH.
- XFORWARD (XFORWARD_README), which aiosmtpd does not know.
- MAIL/RCPT parsed from the raw argument, each parameter kept exactly as received (esmtp.py).
- DATA read in chunks as the wire bytes (data.py); the idle timer covers our scan and 10026's
  reply afterwards (aiosmtpd's would run through both).
- Replies to pipelined commands sent together (outbox.py).
- A connection gate: clients outside ``allow_clients`` get 554, sessions beyond the limit 421.
- Whether a session sits idle (no transaction, waiting for its next command) and since when,
  so that at the session limit the longest-idle one makes room for a newcomer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Session, syntax
from aiosmtpd.smtp import Envelope as AiosmtpdEnvelope

from smtpfilter.core import logline, replies
from smtpfilter.core.envelope import Envelope, Recipient
from smtpfilter.delivery.downstream import Downstream
from smtpfilter.frontdoors.smtp.data import DataReader
from smtpfilter.frontdoors.smtp.esmtp import (
    COMMAND_LIMIT,
    PATH_COMMAND_LIMIT,
    check_mail_params,
    check_rcpt_params,
    parse_path,
    parse_xforward,
)
from smtpfilter.frontdoors.smtp.outbox import ClientGone, PipeliningOutbox

__all__ = ["FilterSMTP", "FilterSession", "SessionHandler", "Transaction"]

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Transaction(AiosmtpdEnvelope):
    """aiosmtpd's per-transaction envelope (its lifetime is XFORWARD's: reset by RSET and after
    DATA), holding ours: ``envelope`` is what the engine, the quarantine and 10026 get."""

    def __init__(self) -> None:
        super().__init__()
        self.envelope = Envelope()
        self.params: dict[str, str | None] = {}  # upper-cased keyword → value as received
        self.rcpt_attempts = 0
        self.started = False  # MAIL accepted


class FilterSession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.downstream: Downstream | None = None
        self.may_xforward = False
        self.counted = False
        self.busy = False  # inside a transaction's DATA processing (graceful shutdown waits)


class SessionHandler(Protocol):
    """What a session asks of the handler that makes the decisions (transaction.py's
    FilterHandler): the session knows SMTP, the handler knows 10026 and the engine."""

    message_size_limit: int
    data_size_limit: int
    processing_time_limit: float

    def connect(self, session: FilterSession) -> str | None: ...

    def disconnect(self, session: FilterSession) -> None: ...

    def capabilities(self, session: FilterSession) -> list[str]: ...

    async def reset(self, session: FilterSession) -> None: ...

    async def mail(self, session: FilterSession, txn: Transaction) -> str: ...

    async def rcpt(self, session: FilterSession, txn: Transaction, rcpt: Recipient) -> str: ...

    async def data(self, session: FilterSession, txn: Transaction, data: bytearray) -> str: ...

    async def handle_exception(self, error: Exception) -> str: ...


class FilterSMTP(PipeliningOutbox, DataReader, SMTP):
    """One session with Postfix's smtp client (or any client we allow)."""

    event_handler: SessionHandler

    def __init__(self, handler: SessionHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._outbox: list[bytes] = []
        self._client_gone = False
        self._pipelinable = False  # the reply being pushed answers MAIL, RCPT, RSET or XFORWARD
        # aiosmtpd keeps these limits in a class-level dict that its EHLO grows on every call;
        # ours are fixed and per instance.
        self.command_size_limits = collections.defaultdict(
            lambda: COMMAND_LIMIT, {"MAIL": PATH_COMMAND_LIMIT, "RCPT": PATH_COMMAND_LIMIT}
        )
        self.command_size_limit = COMMAND_LIMIT
        # When the client last sent anything. time.monotonic(), not loop.time(): uvloop's clock
        # ticks in whole milliseconds, too coarse to tell which session has been idle longest.
        self._last_input = time.monotonic()

    # Command lines are read with readuntil() under this limit; MAIL/RCPT with DSN parameters
    # may exceed RFC 5321's 512, so allow Postfix's own 2048 (plus CRLF).
    line_length_limit = PATH_COMMAND_LIMIT + 2

    # aiosmtpd's __init__ introspects dir(self) and dir(handler) on every connection to find
    # its smtp_*, auth_* and handle_* methods: ~0.3 ms, a fifth of the CPU of a one-message
    # connection. Only those names matter to it, and they are class attributes, so dir() of an
    # instance lists just them, computed once per class. (dir() is introspection only: nothing
    # else in aiosmtpd, asyncio or here relies on its full list.)
    _members: tuple[str, ...] | None = None

    def __dir__(self) -> list[str]:
        cls = type(self)
        if cls.__dict__.get("_members") is None:
            cls._members = tuple(
                name for name in super().__dir__() if name.startswith(("smtp_", "auth_"))
            )
        return list(cls._members)

    @property
    def max_command_size_limit(self) -> int:
        return PATH_COMMAND_LIMIT

    def _create_session(self) -> FilterSession:
        return FilterSession(self.loop)

    def _create_envelope(self) -> Transaction:
        return Transaction()

    # --- connection --------------------------------------------------------------------
    async def _handle_client(self) -> None:
        refusal = self.event_handler.connect(self.session)
        if refusal is not None:
            await self.push(refusal)
            self._writer.close()
            self.transport.close()
            return
        try:
            await super()._handle_client()
        except ClientGone:
            pass  # the client hung up between commands: the session is simply over

    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        super().connection_lost(error)
        # StreamReaderProtocol keeps a reset's ConnectionResetError in a future that only
        # wait_closed() (never called here) or its own __del__ would read; when the garbage
        # collector breaks the protocol's reference cycle it may finalise the future first,
        # and asyncio logs "Future exception was never retrieved" for an ordinary hang-up.
        closed = getattr(self, "_closed", None)
        if closed is not None and closed.done() and not closed.cancelled():
            closed.exception()
        if session is not None:
            self.event_handler.disconnect(session)

    def eof_received(self) -> bool | None:
        """The client has nothing more to send: a half-close (shutdown of its sending side,
        RFC 9293 §3.6), or the first half of a normal close.

        aiosmtpd cancels the session here, which throws away the replies still owed: a client
        that sent a whole message and then half-closed while waiting for our answer got none,
        and its message was never passed on. Instead the reader gets the end of input and the
        session finishes what it has received: every command already read is answered (after
        ".", once 10026 has answered), then the command loop ends at the end of input
        (handle_exception). A connection that is lost (reset, or our own close) still cancels
        the session at once (connection_lost).

        The price: a client that sent "." and then closed for good (a Postfix smtp process
        killed at that moment) has its message passed on while nobody reads our 250, and
        Postfix delivers it again later. That duplicate is inherent in an after-queue filter
        (FILTER_README; it is the same when Postfix dies just after our reply).
        """
        log.debug("%s: end of input from the client", logline.peer(self.session.peer))
        keep_open = asyncio.StreamReaderProtocol.eof_received(self)  # feeds EOF to the reader
        # On a TLS transport a half-close cannot be kept (aiosmtpd's own eof_received says so).
        return False if self.session.ssl is not None else keep_open

    def data_received(self, data: bytes) -> None:
        self._last_input = time.monotonic()
        super().data_received(data)

    def idle_since(self) -> float | None:
        """When this session last heard from its client, if it now sits idle: greeted or between
        transactions, waiting for a command with nothing of one received. None while it is
        busy: in a transaction (MAIL accepted), running a command (e.g. waiting for 10026's
        reply to MAIL), or closing.

        Reads StreamReader's ``_waiter`` (set while a read waits for data) and ``_buffer``
        (unread input), as push() and aiosmtpd do: a session whose command loop is not blocked
        on an empty buffer is doing something."""
        session = self.session
        transport = self.transport
        if session is None or not session.counted or transport is None or transport.is_closing():
            return None
        txn = self.envelope
        if session.busy or (txn is not None and txn.started):
            return None
        reader = self._reader
        if getattr(reader, "_waiter", None) is None or getattr(reader, "_buffer", b"x"):
            return None
        return self._last_input

    def close_idle(self, reply: str) -> None:
        """Say why and hang up (RFC 5321 §3.8: a server may close with 421 at any time), and
        free the session's slot now, not when the connection is finally torn down."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(replies.encode_reply(reply))
            transport.close()
        if self.session is not None:
            self.event_handler.disconnect(self.session)

    def _timeout_cb(self) -> None:
        # Postfix's smtpd says why it hangs up (RFC 5321 §4.5.3.2: a server may close after a
        # timeout, preferably with 421).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(replies.R421_TIMEOUT.encode() + b"\r\n")
        super()._timeout_cb()

    async def handle_exception(self, error: Exception) -> str:
        """Anything escaping a command: 451 (never aiosmtpd's 500) and a clean transaction
        state, so the next MAIL on this session works (aiosmtpd would answer 503 nested MAIL).

        A client that closed its side while we waited for its next command is not an error:
        aiosmtpd's EOF handling normally cancels the session first, but when the end of file
        reaches its readuntil() before that cancellation (seen on uvloop when Postfix hangs
        up), it arrives here. The session then ends quietly (see push and _handle_client).
        """
        if isinstance(error, (asyncio.IncompleteReadError, ConnectionError)):
            log.debug("%s closed the connection", logline.peer(self.session.peer))
            self._client_gone = True
            if self.transport is not None:
                self.transport.close()
            return ""
        status = await self.event_handler.handle_exception(error)
        try:
            await self.event_handler.reset(self.session)
        finally:
            self._set_rset_state()
        return status

    def refresh_timeout(self, seconds: float | None = None) -> None:
        """Restart the idle timer (for a chunk of DATA, or our own processing)."""
        self._reset_timeout(seconds)

    async def _command_ok(self, arg: str | None) -> bool:
        if arg is not None and _CONTROL.search(arg):
            # A bare CR or LF inside a command line: a smuggling attempt or a broken client.
            await self.push(replies.R501_CONTROL_CHARS)
            return False
        if not self.session.host_name:
            await self.push(replies.R503_NEED_HELO)
            return False
        return True

    # --- greeting ----------------------------------------------------------------------
    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        await self.event_handler.reset(self.session)
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        keywords = self.event_handler.capabilities(self.session)
        if self.tls_context and not self._tls_protocol:
            keywords.insert(1, "STARTTLS")
        await self.push(replies.ehlo_lines(self.hostname, keywords))

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        await self.event_handler.reset(self.session)
        self._set_rset_state()
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self.push(f"250 {self.hostname}")

    # --- XFORWARD ----------------------------------------------------------------------
    @syntax("XFORWARD attribute=value...")
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """XFORWARD_README: attributes of the client that connected to Postfix."""
        self._pipelinable = True  # RFC 2920: may be answered with the group
        if not await self._command_ok(arg):
            return
        if not self.session.may_xforward:
            await self.push(replies.R550_XFORWARD_DENIED)
            return
        txn: Transaction = self.envelope
        if txn.started:
            await self.push(replies.R503_XFORWARD_IN_TRANSACTION)
            return
        if not arg:
            await self.push(replies.R501_XFORWARD_SYNTAX)
            return
        updates = parse_xforward(arg)
        if isinstance(updates, str):
            await self.push(updates)
            return
        txn.envelope.xforward.update(updates)
        await self.push(replies.R250_OK)

    # --- envelope ----------------------------------------------------------------------
    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        self._pipelinable = True  # RFC 2920: may be answered with the group
        if not await self._command_ok(arg):
            return
        txn: Transaction = self.envelope
        if txn.started:
            await self.push(replies.R503_NESTED_MAIL)
            return
        try:
            address, path, tokens = parse_path(arg or "", "FROM:")
        except ValueError:
            await self.push(replies.R501_MAIL_SYNTAX)
            return
        if tokens and not self.session.extended_smtp:
            await self.push(replies.R501_MAIL_SYNTAX)
            return
        envelope = txn.envelope
        error = check_mail_params(
            tokens, self.event_handler.message_size_limit, txn.params, envelope.mail_params
        )
        if error:
            await self.push(error)
            return
        txn.mail_from = envelope.mail_from = address
        envelope.mail_path = path
        txn.smtp_utf8 = "SMTPUTF8" in txn.params
        txn.mail_options = tokens
        status = await self.event_handler.mail(self.session, txn)
        if status.startswith("2"):
            txn.started = True
        else:
            self._set_rset_state()
        await self.push(status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._pipelinable = True  # RFC 2920: may be answered with the group
        if not await self._command_ok(arg):
            return
        txn: Transaction = self.envelope
        if not txn.started:
            await self.push(replies.R503_NEED_MAIL)
            return
        try:
            address, path, tokens = parse_path(arg or "", "TO:")
        except ValueError:
            await self.push(replies.R501_RCPT_SYNTAX)
            return
        if tokens and not self.session.extended_smtp:
            await self.push(replies.R501_RCPT_SYNTAX)
            return
        if not address:
            await self.push(replies.R501_RECIPIENT)
            return
        error = check_rcpt_params(tokens)
        if error:
            await self.push(error)
            return
        txn.rcpt_attempts += 1
        recipient = Recipient(address, path, tokens)
        status = await self.event_handler.rcpt(self.session, txn, recipient)
        if status.startswith("2"):
            txn.envelope.recipients.append(recipient)
            txn.rcpt_tos.append(address)
        await self.push(status)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        self._pipelinable = True  # RFC 2920: may be answered with the group
        if arg:
            await self.push(replies.R501_RSET_SYNTAX)
            return
        await self.event_handler.reset(self.session)
        self._set_rset_state()
        await self.push(replies.R250_RSET)

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        await self.push(replies.R221_BYE)
        self._handler_coroutine.cancel()

    # --- DATA --------------------------------------------------------------------------
    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if not await self._command_ok(None):
            return
        if arg:
            await self.push(replies.R501_DATA_SYNTAX)
            return
        txn: Transaction = self.envelope
        if not txn.started:
            await self.push(replies.R503_NEED_MAIL)
            return
        if not txn.envelope.recipients:
            # Postfix: "need RCPT" when none was tried, "no valid recipients" when all failed.
            await self.push(
                replies.R554_NO_VALID_RECIPIENTS if txn.rcpt_attempts else replies.R503_NEED_RCPT
            )
            return
        await self.push(replies.R354_GO_AHEAD)  # not pipelinable: flushed now
        try:
            data = await self._read_data(self.event_handler.data_size_limit)
            if data is None:
                status = replies.R552_TOO_BIG
                await self.event_handler.reset(self.session)
            else:
                self.session.busy = True
                # Our scan plus 10026's reply must fit inside the idle timer.
                self.refresh_timeout(self.event_handler.processing_time_limit)
                status = await self.event_handler.data(self.session, txn, data)
        finally:
            self.session.busy = False
            self._set_post_data_state()
        self.refresh_timeout()
        await self.push(status)
