"""The listener's SMTP dialect: aiosmtpd, plus what a Postfix content filter needs.

aiosmtpd speaks SMTP; this subclass adds only what it lacks and leaves every decision to the
handler (smtpfilter.handler):

- EHLO announces exactly what we can honour: PIPELINING, SIZE, ENHANCEDSTATUSCODES, 8BITMIME,
  DSN, SMTPUTF8, XFORWARD (to authorised clients only), STARTTLS only with a certificate. No AUTH.
- XFORWARD (XFORWARD_README), which aiosmtpd does not know.
- MAIL/RCPT parsed from the raw argument: aiosmtpd upper-cases parameters (corrupting ENVID and
  ORCPT) and answers 555 to every DSN parameter (shared/TRAPS.md). We keep each parameter exactly
  as received, so it reaches 10026 unchanged.
- DATA read in chunks, not line by line (aiosmtpd costs ~6 µs per line and holds ~4× the message),
  kept as the wire bytes (CRLF, dot-stuffed): the same bytes go to 10026. Only ``CRLF.CRLF`` ends
  the data (the SMTP smuggling fix of aiosmtpd 1.4.5, kept). The idle timer restarts on every
  chunk, and covers our scan and 10026's reply afterwards (aiosmtpd's would run through both).
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from smtpfilter.core import replies
from smtpfilter.core.envelope import Client
from smtpfilter.core.text import is_xtext, xtext_decode
from smtpfilter.core.wire import END_OF_DATA

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.delivery.downstream import Downstream
    from smtpfilter.frontdoors.smtp.transaction import FilterHandler

__all__ = ["FilterSMTP", "FilterSession", "Recipient", "Transaction", "parse_path"]

log = logging.getLogger(__name__)

# RFC 5321 §4.5.3.1.4 (512), raised for MAIL/RCPT by the parameters of SIZE, DSN (ORCPT can be
# 500 characters, RFC 3461 §4.2) and SMTPUTF8; Postfix's own line_length_limit is 2048.
COMMAND_LIMIT = 512
PATH_COMMAND_LIMIT = 2048
# Larger than anything a transport buffers between two reads (asyncio reads ≤ 256 KiB per
# data_received and the reader pauses the transport beyond 2 × its limit).
_READ_ALL = 1 << 22

XFORWARD_NAMES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_XFORWARD_MAX_VALUE = 255  # XFORWARD_README: values longer than 255 characters get 501
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[!-<>-~\x80-\U0010ffff]+")  # esmtp-value: printable except "=" (and UTF-8)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOTIFY = re.compile(r"(?i)NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*")
_ORCPT = re.compile(r"(?i)[A-Za-z0-9-]+;.+")


@dataclass(slots=True)
class Recipient:
    address: str
    path: str  # inside the angle brackets, as received
    params: list[str] = field(default_factory=list)  # "NOTIFY=...", "ORCPT=..." as received


class Transaction(Envelope):
    """aiosmtpd's Envelope, plus what the filter must carry to 10026 unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_path: str = ""
        self.params: dict[str, str | None] = {}  # upper-cased keyword → value as received
        self.param_tokens: dict[str, str] = {}  # upper-cased keyword → the token as received
        self.recipients: list[Recipient] = []
        self.rcpt_attempts = 0
        self.xforward: dict[str, str] = {}  # decoded values, "[UNAVAILABLE]" kept as such
        self.started = False  # MAIL accepted

    def client(self) -> Client:
        x = self.xforward

        def known(name: str) -> str | None:
            value = x.get(name)
            return None if value in (None, "", "[UNAVAILABLE]", "[TEMPUNAVAIL]") else value

        addr = known("ADDR")
        if addr is not None and addr.lower().startswith("ipv6:"):
            addr = addr[5:]  # XFORWARD_README: IPv6 addresses come as "IPv6:..."
        return Client(
            addr=addr,
            name=known("NAME"),
            helo=known("HELO"),
            proto=known("PROTO"),
            ident=known("IDENT"),
            source=known("SOURCE"),
            port=known("PORT"),
        )


class FilterSession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.downstream: Downstream | None = None
        self.may_xforward = False
        self.counted = False
        self.busy = False  # inside a transaction's DATA processing (graceful shutdown waits)


def parse_path(arg: str, keyword: str) -> tuple[str, str, list[str]]:
    """``FROM:<path> PARAM=x ...`` → (address, path as received, parameter tokens).

    Raises ValueError on syntax errors. The path is taken between "<" and the matching ">"
    (quoted local parts may hold ">" and spaces, RFC 5321 §4.1.2); a path without brackets is
    accepted the way Postfix does by default (smtpd_strict_rfc821_envelopes = no).
    """
    if arg[: len(keyword)].upper() != keyword:
        raise ValueError("keyword")
    rest = arg[len(keyword) :].lstrip(" ")
    if rest.startswith("<"):
        quoted = escaped = False
        end = -1
        for index in range(1, len(rest)):
            char = rest[index]
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = not quoted
            elif char == ">" and not quoted:
                end = index
                break
        if end < 0:
            raise ValueError("unterminated path")
        path, tail = rest[1:end], rest[end + 1 :]
        if tail and not tail.startswith(" "):
            raise ValueError("garbage after path")
    else:
        path, _, tail = rest.partition(" ")
    address = path
    if address.startswith("@"):  # RFC 5321 §4.1.2 source route "@a,@b:user@host": ignored
        address = address.partition(":")[2]
    return address, path, tail.split()


class FilterSMTP(SMTP):
    """One session with Postfix's smtp client (or any client we allow)."""

    event_handler: FilterHandler

    def __init__(self, handler: FilterHandler, **kwargs: Any) -> None:
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
        except _ClientGone:
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
        log.debug("%s: end of input from the client", self.session.peer)
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
            log.debug("%s closed the connection", self.session.peer)
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

    async def push(self, status: str | bytes) -> None:
        """Send a reply; replies to pipelined commands go out together (RFC 2920 §3.1).

        Postfix sends MAIL, RCPT... and DATA in one packet. While the next command is already
        buffered, the reply to a pipelinable command (MAIL, RCPT, RSET, XFORWARD) waits for the
        replies after it, so a group costs one send() instead of one per command. Every other
        reply (DATA's 354, EHLO, errors before a hang-up...) goes out at once with whatever
        waits, and a reply is never held while we would wait for the client.
        """
        if self._client_gone:
            raise _ClientGone  # nobody to answer; ends aiosmtpd's command loop
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
            raise _ClientGone
        data = b"".join(self._outbox)
        self._outbox.clear()
        self._writer.write(data)
        await self._writer.drain()

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
        updates = {}
        for token in arg.split():
            name, eq, value = token.partition("=")
            name = name.upper()
            if not eq:
                await self.push(replies.R501_XFORWARD_SYNTAX)
                return
            if name not in XFORWARD_NAMES:
                await self.push(replies.xforward_bad_name(name))
                return
            if len(value) > _XFORWARD_MAX_VALUE or not _valid_xtext_escapes(value):
                await self.push(replies.xforward_bad_value(name))
                return
            decoded = xtext_decode(value)
            if name == "ADDR" and not _valid_addr(decoded):
                await self.push(replies.xforward_bad_value(name))
                return
            updates[name] = decoded
        txn.xforward.update(updates)
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
        error = self._mail_params(txn, tokens)
        if error:
            await self.push(error)
            return
        txn.mail_from = address
        txn.mail_path = path
        txn.smtp_utf8 = "SMTPUTF8" in txn.params
        txn.mail_options = tokens
        status = await self.event_handler.handle_MAIL(self, self.session, txn)
        if status.startswith("2"):
            txn.started = True
        else:
            self._set_rset_state()
        await self.push(status)

    def _mail_params(self, txn: Transaction, tokens: list[str]) -> str | None:
        """RFC 1870 SIZE, 6152 8BITMIME, 6531 SMTPUTF8, 3461 RET/ENVID, and what Postfix's
        before-queue smtpd_proxy_filter passes on verbatim from its own client (it forwards the
        client's MAIL command line as received, smtpd.c): 4954 AUTH and Postfix's XVERP."""
        for token in tokens:
            keyword, eq, value = token.partition("=")
            upper = keyword.upper()
            if not _KEYWORD.fullmatch(keyword) or (eq and not _VALUE.fullmatch(value)):
                return replies.bad_parameter(token)
            if upper in txn.params:
                return replies.bad_parameter(token)
            if upper == "SIZE":
                if not value.isdigit():
                    return replies.bad_parameter(token)
                if int(value) > self.event_handler.message_size_limit:
                    return replies.R552_SIZE_AT_MAIL
            elif upper == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return replies.R501_BODY
            elif upper == "SMTPUTF8":
                if eq:
                    return replies.bad_parameter(token)
            elif upper == "RET":
                if value.upper() not in ("FULL", "HDRS"):
                    return replies.bad_parameter(token)
            elif upper == "ENVID":
                if len(value) > 100 or not is_xtext(value):
                    return replies.bad_parameter(token)
            elif upper == "AUTH":
                if not eq or not (value == "<>" or is_xtext(value)):
                    return replies.bad_parameter(token)
            elif upper == "XVERP":
                pass  # XVERP or XVERP=+= (VERP_README)
            else:
                return replies.unsupported_parameter(keyword)
            txn.params[upper] = value if eq else None
            txn.param_tokens[upper] = token
        return None

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
        seen: set[str] = set()
        for token in tokens:
            keyword, eq, value = token.partition("=")
            upper = keyword.upper()
            if not _KEYWORD.fullmatch(keyword) or upper in seen:
                await self.push(replies.bad_parameter(token))
                return
            seen.add(upper)
            if upper == "NOTIFY":
                if not _NOTIFY.fullmatch(value):
                    await self.push(replies.bad_parameter(token))
                    return
            elif upper == "ORCPT":
                if len(value) > 500 or not _ORCPT.fullmatch(value):
                    await self.push(replies.bad_parameter(token))
                    return
            else:
                await self.push(replies.unsupported_parameter(keyword))
                return
        txn.rcpt_attempts += 1
        recipient = Recipient(address, path, tokens)
        status = await self.event_handler.handle_RCPT(self, self.session, txn, recipient)
        if status.startswith("2"):
            txn.recipients.append(recipient)
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
        if not txn.recipients:
            # Postfix: "need RCPT" when none was tried, "no valid recipients" when all failed.
            await self.push(
                replies.R554_NO_VALID_RECIPIENTS if txn.rcpt_attempts else replies.R503_NEED_RCPT
            )
            return
        await self.push(replies.R354_GO_AHEAD)  # not pipelinable: flushed now
        try:
            data = await self._read_data(self.event_handler.message_size_limit)
            if data is None:
                status = replies.R552_TOO_BIG
                await self.event_handler.reset(self.session)
            else:
                self.session.busy = True
                # Our scan plus 10026's reply must fit inside the idle timer.
                self.refresh_timeout(self.event_handler.processing_time_limit)
                status = await self.event_handler.handle_DATA(self, self.session, txn, data)
        finally:
            self.session.busy = False
            self._set_post_data_state()
        self.refresh_timeout()
        await self.push(status)

    async def _read_data(self, limit: int) -> bytearray | None:
        """The message in wire form, without the final ".": CRLF lines, still dot-stuffed.

        Returns None when it exceeded ``limit`` (read to the end and dropped: RFC 5321 §4.2.5
        has us answer only after the final "."). Bytes after the terminator (a command the
        client pipelined after ".") are given back to the command reader.
        """
        reader = self._reader
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
                try:
                    reader.feed_data(bytes(buf[rest:]))
                except AssertionError:  # EOF already seen: the session is closing anyway
                    pass
            if discarding:
                return None
            del buf[found + 2 :]  # keep the CRLF that ends the last line
            del buf[:2]
            return None if len(buf) > limit else buf


class _ClientGone(ConnectionResetError):
    """Raised out of aiosmtpd's command loop when the client is gone (FilterSMTP.push).

    A ConnectionResetError, so that aiosmtpd's loop treats it as a lost connection (closes its
    writer, ends the loop) instead of passing it to handle_exception as a failure of ours."""


def _valid_xtext_escapes(value: str) -> bool:
    index = value.find("+")
    while index >= 0:
        digits = value[index + 1 : index + 3]
        if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            return False
        index = value.find("+", index + 3)
    return True


def _valid_addr(value: str) -> bool:
    """XFORWARD ADDR: IPv4, "IPv6:..." (or bare IPv6), or [UNAVAILABLE]/[TEMPUNAVAIL]."""
    import ipaddress

    if value in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
        return True
    if value.lower().startswith("ipv6:"):
        value = value[5:]
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
