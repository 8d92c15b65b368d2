"""The 10026 side: one SMTP connection to Postfix's after-filter smtpd, and a pool of them.

aiosmtplib speaks the protocol; this module adds what a content filter needs on top:

- MAIL and RCPT are sent as command lines we build from what Postfix sent us, so DSN parameters
  (RET, ENVID, NOTIFY, ORCPT) arrive exactly as received, case preserved (aiosmtplib's
  ``sendmail`` would add its own SIZE and apply one parameter list to every recipient).
- XFORWARD before each MAIL, only the attributes the server announced, split so that each command
  stays within 512 characters (XFORWARD_README; Postfix's smtp_proto.c does the same).
- DATA streams our already dot-stuffed CRLF wire bytes: aiosmtplib's ``data()`` would rewrite line
  endings and stuff again with regexes (~50 µs per KB), and we must not change the bytes anyway.
- Every failure becomes :class:`DownstreamError`, which the handler answers with a 4xx, never 5xx.

Connections are reused: after a message, a clean connection goes back to the pool (LIFO, bounded,
expiring well before the 10026 smtpd's own 300 s idle timeout).

A connection is reused only in exactly the state it had after the greeting or an RSET: no
transaction open, no XFORWARD attributes pending, and every command it was sent answered. A
command whose reply was not read (the session was cancelled because Postfix's side hung up,
a timeout, an error) leaves its reply on the way; read by the next session, it would shift every
reply by one step (a "503 nested MAIL" to a RCPT, a RCPT's "250 2.1.5" taken for the answer to
"."). Such a connection is closed, never pooled. Replies that cannot answer the command they
came back for are caught too (``_plausible``) and close the connection as out of step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Iterable, Mapping, Sequence

import aiosmtplib

from smtpfilter.config.settings import Config
from smtpfilter.core.envelope import XFORWARD_GROUPS
from smtpfilter.core.errors import DownstreamError
from smtpfilter.core.logline import reply_shown
from smtpfilter.core.replies import ENHANCED_STATUS, Reply
from smtpfilter.core.text import neuter, xtext_encode

__all__ = ["Downstream", "DownstreamError", "DownstreamPool", "xforward_commands"]

log = logging.getLogger(__name__)

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
_COMMAND_LIMIT = 512
# Write DATA in slices so the transport never buffers a second copy of a large message.
_WRITE_SLICE = 256 * 1024


def _reason(error: BaseException) -> str:
    """Why a connection failed, as the system says it ("Connection refused"): aiosmtplib's own
    text quotes a Python tuple ("Connect call failed ('127.0.0.1', 10026)"), which no log line
    should show."""
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
    return str(error)


def _reply(response: aiosmtplib.SMTPResponse) -> Reply:
    return Reply(response.code, response.message)


def _address_status(text: str) -> bool:
    """RFC 3463 §3.2: X.1.Y are address statuses, what MAIL and RCPT get."""
    match = ENHANCED_STATUS.match(text)
    return match is not None and match.group(1) in "245" and match.group(2) == "1"


def _plausible(stage: str, reply: Reply) -> bool:
    """Could ``reply`` be the answer to ``stage``? False means the dialogue is out of step.

    Only what no server answers (RFC 5321 §4.3.2, RFC 3463) is refused, so that an
    after-filter server other than Postfix is not mistaken for a broken one: 354 is for DATA
    alone and DATA succeeds with nothing else; a positive answer to the final "." (or to
    XFORWARD and RSET, which Postfix answers 2.0.0) is never an address status; MAIL's never
    the 2.1.5 of a valid recipient.
    """
    code, text = reply.code, reply.text
    if stage == "DATA":
        return code == 354 or code >= 400
    if code == 354 or not 200 <= code < 600:
        return False
    if 200 <= code < 300:
        if stage in ("end of DATA", "XFORWARD", "RSET") and _address_status(text):
            return False
        if stage == "MAIL" and text.startswith("2.1.5"):
            return False
    return True


class Downstream:
    """One connection to the 10026 smtpd. One transaction at a time (the session owns it)."""

    def __init__(self, smtp: aiosmtplib.SMTP, command_timeout: float, data_timeout: float) -> None:
        self._smtp = smtp
        self._command_timeout = command_timeout
        self._data_timeout = data_timeout
        extensions = {k.lower(): v for k, v in smtp.esmtp_extensions.items()}
        self.extensions = extensions
        self.xforward_attrs = frozenset(extensions.get("xforward", "").upper().split())
        self.in_transaction = False
        self.transactions = 0
        self.idle_since = time.monotonic()
        # False from the moment a command is written until its reply is read: a connection
        # left that way owes a reply that the next user would read as its own.
        self._in_step = True
        self._xforward_refused = False
        # XFORWARD attributes live until the transaction ends (RSET or "."); after a refused
        # MAIL they would linger into the next one, so that case is cleared with RSET.
        self._xforward_pending = False

    def supports(self, keyword: str) -> bool:
        return keyword.lower() in self.extensions

    def mail_params(self, tokens: Mapping[str, str]) -> list[str] | None:
        """The MAIL parameters for this 10026 connection, from those received (KEYWORD → the
        token as received), in that order: each one whose extension 10026 announced. None when
        the message needs SMTPUTF8 and 10026 did not announce it (the caller defers it).

        The one selection for every way a message goes out: the lockstep MAIL, pipe mode and a
        quarantine release."""
        params = []
        for keyword, token in tokens.items():
            if keyword == "SIZE" and self.supports("SIZE"):
                params.append(token)
            elif keyword == "BODY" and self.supports("8BITMIME"):
                params.append(token)
            elif keyword == "SMTPUTF8":
                if not self.supports("SMTPUTF8"):
                    return None
                params.append(token)
            elif keyword in ("RET", "ENVID") and self.supports("DSN"):
                params.append(token)
            elif keyword in ("AUTH", "XVERP") and self.supports(keyword):
                params.append(token)
            # Otherwise 10026 does not do that extension: Postfix's own smtp client drops such
            # parameters for a next hop without the extension too.
        return params

    def rcpt_params(self, params: list[str]) -> list[str]:
        """RCPT parameters (NOTIFY, ORCPT: DSN's, RFC 3461) as received, if 10026 does DSN."""
        return params if self.supports("DSN") else []

    @property
    def connected(self) -> bool:
        return self._smtp.is_connected

    @property
    def reusable(self) -> bool:
        """Exactly as after the greeting or RSET: the only state another session may inherit."""
        return (
            self.connected
            and self._in_step
            and not self.in_transaction
            and not self._xforward_pending
        )

    def _out_of_step(self, stage: str, reply: Reply, *, sent_data: bool = False) -> DownstreamError:
        self.close()
        log.error(
            "10026 answered %s with \"%s\", which cannot be its reply: closing that connection "
            "as out of step",
            stage,
            reply_shown(str(reply)),
        )
        return DownstreamError(stage, f"reply out of step: {reply}", sent_data=sent_data)

    async def _command(self, stage: str, line: str) -> Reply:
        self._in_step = False
        try:
            response = await self._smtp.execute_command(
                line.encode("utf-8", "surrogateescape"), timeout=self._command_timeout
            )
        except asyncio.CancelledError:
            # Our session was cancelled (Postfix's side hung up) with this reply on its way:
            # nobody may ever read it as the answer to another command.
            self.close()
            raise
        except aiosmtplib.SMTPTimeoutError:
            self.close()
            raise DownstreamError(stage, f"no reply within {self._command_timeout:g}s") from None
        except aiosmtplib.SMTPServerDisconnected as error:
            self.close()
            raise DownstreamError(stage, f"connection lost ({error})", closed=True) from None
        except (aiosmtplib.SMTPException, ValueError, OSError) as error:
            self.close()
            raise DownstreamError(stage, f"{type(error).__name__}: {error}") from None
        self._in_step = True
        reply = _reply(response)
        if not _plausible(stage, reply):
            raise self._out_of_step(stage, reply)
        if response.code == 421:
            # RFC 5321 §3.8: the server is closing the channel.
            self.close()
        return reply

    async def xforward(self, attrs: Mapping[str, str]) -> None:
        """Send XFORWARD for the attributes 10026 announced. A refusal is logged, not fatal:
        the message is still delivered, only the audit trail in the second pass is poorer."""
        if not self.xforward_attrs or not attrs:
            return
        for line in xforward_commands(attrs, self.xforward_attrs):
            self._xforward_pending = True
            reply = await self._command("XFORWARD", line)
            if reply.code != 250 and not self._xforward_refused:
                self._xforward_refused = True
                log.warning(
                    "10026 refused XFORWARD (%s): check smtpd_authorized_xforward_hosts on the "
                    "10026 smtpd; mail still flows, but its log shows us as the client",
                    reply,
                )

    async def mail(self, path: str, params: Sequence[str]) -> Reply:
        line = " ".join([f"MAIL FROM:<{path}>", *params])
        reply = await self._command("MAIL", line)
        if reply.positive:
            self.in_transaction = True
        elif self._xforward_pending and self.connected:
            reset = await self._command("RSET", "RSET")
            if reset.code != 250:
                self.close()
            self._xforward_pending = False
        return reply

    async def rcpt(self, path: str, params: Sequence[str]) -> Reply:
        return await self._command("RCPT", " ".join([f"RCPT TO:<{path}>", *params]))

    async def rset(self) -> None:
        """Abort the transaction (FILTER_README: abort the 10026 side without sending ".")."""
        if not self.in_transaction:
            return
        reply = await self._command("RSET", "RSET")
        if reply.code != 250:
            self.close()
            raise DownstreamError("RSET", str(reply))
        self.in_transaction = False
        self._xforward_pending = False

    async def data(self, parts: Iterable[bytes | bytearray | memoryview]) -> Reply:
        """Send DATA, then ``parts`` (CRLF, dot-stuffed wire bytes), then ".".

        Returns 10026's reply to "." (or to DATA when it refuses to start).
        """
        reply = await self._command("DATA", "DATA")
        if reply.code != 354:
            return reply
        protocol = self._smtp.protocol
        if protocol is None:
            raise DownstreamError("DATA", "connection lost")
        # aiosmtplib drops server bytes that arrive while no reply is awaited; mark the reply as
        # awaited before the first byte of content leaves (as its own execute_data_command
        # does), so an early answer (a 5xx sent mid-transfer before closing) is kept for
        # read_response() below. Starting read_response() as a task first is not enough: on
        # uvloop the server's reply was delivered before that task's first step, and lost.
        protocol._response_pending = True
        self._in_step = False  # until the reply to "." is read
        sent_final = False
        try:
            slices = [
                view[start : start + _WRITE_SLICE]
                for view in map(memoryview, parts)
                for start in range(0, len(view), _WRITE_SLICE)
            ]
            last = slices.pop() if slices else memoryview(b"")
            for piece in slices:
                protocol.write(piece)
                # StreamWriter.drain()'s flow-control contract (FlowControlMixin): wait
                # while the transport's buffer is above its high-water mark, but not forever:
                # a 10026 that stops reading must cost no more than data_timeout (Postfix's
                # own client gives up after smtp_data_xfer_timeout without progress).
                await asyncio.wait_for(protocol._drain_helper(), self._data_timeout)
            # The last slice and the final "." in one write: one send() fewer per message.
            protocol.write(bytes(last) + b".\r\n")
            sent_final = True
            response = await protocol.read_response(timeout=self._data_timeout)
        except aiosmtplib.SMTPTimeoutError:
            self.close()
            raise DownstreamError(
                "end of DATA", f"no reply within {self._data_timeout:g}s", sent_data=sent_final
            ) from None
        except TimeoutError:  # (after SMTPTimeoutError, a subclass) the transfer stalled: 10026 took nothing for data_timeout
            self.close()
            raise DownstreamError(
                "DATA", f"no progress sending the message for {self._data_timeout:g}s"
            ) from None
        except (aiosmtplib.SMTPException, ConnectionError, OSError) as error:
            self.close()
            raise DownstreamError(
                "end of DATA", f"connection lost ({error})", sent_data=sent_final
            ) from None
        except asyncio.CancelledError:
            self.close()  # the client left: 10026 must see no "." it did not get yet
            raise
        self._in_step = True
        reply = _reply(response)
        if not _plausible("end of DATA", reply):
            raise self._out_of_step("end of DATA", reply, sent_data=True)
        self.in_transaction = False
        self._xforward_pending = False
        self.transactions += 1
        if response.code == 421:
            self.close()
        return reply

    def close(self) -> None:
        self.in_transaction = False
        self._smtp.close()

    async def quit(self) -> None:
        """Polite goodbye, bounded; a server that does not answer is simply closed."""
        try:
            await asyncio.wait_for(self._smtp.quit(), 5)
        except Exception:
            pass
        finally:
            self._smtp.close()


def xforward_commands(attrs: Mapping[str, str], announced: frozenset[str]) -> list[str]:
    """XFORWARD command lines for ``attrs``, in Postfix's grouping, each ≤ 512 octets.

    Values are neutered (characters that Postfix's smtpd would itself replace, and anything not
    printable, become "?") and xtext-encoded (RFC 3461 §4).
    """
    lines: list[str] = []
    for group in XFORWARD_GROUPS:
        current = "XFORWARD"
        for name in group:
            if name not in announced or name not in attrs:
                continue
            item = f" {name}={xtext_encode(neuter(attrs[name]))}"
            if current != "XFORWARD" and len(current) + len(item) + 2 > _COMMAND_LIMIT:
                lines.append(current)
                current = "XFORWARD"
            current += item
        if current != "XFORWARD":
            lines.append(current)
    return lines


class DownstreamPool:
    """Connections to 10026, reused across messages and sessions."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        local_hostname: str,
        connect_timeout: float,
        command_timeout: float,
        data_timeout: float,
        max_idle: int = 20,
        idle_time: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.local_hostname = local_hostname
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.max_idle = max_idle
        self.idle_time = idle_time
        self._idle: list[Downstream] = []
        self.keep_idle = True  # False for one-shot users (for_config): a reload keeps it so
        # The extensions 10026 announced most recently: what we may promise upstream.
        self.last_extensions: dict[str, str] | None = None
        self.connects = 0

    @classmethod
    def for_config(cls, config: Config, *, keep_idle: bool = True) -> "DownstreamPool":
        """The pool a config describes. ``keep_idle=False`` for one-shot users (pipe mode, a
        quarantine release) that open one connection and close it."""
        limits = config.limits
        pool = cls(
            config.forward.host,
            config.forward.port,
            local_hostname=config.hostname,
            connect_timeout=limits.connect_timeout,
            command_timeout=limits.command_timeout,
            data_timeout=limits.data_timeout,
            max_idle=limits.pool_size if keep_idle else 0,
            idle_time=limits.pool_idle,
        )
        pool.keep_idle = keep_idle
        return pool

    def configure(self, config: Config) -> None:
        """A reload's limits for what starts after it: connect, command and data timeouts of
        new connections, how many idle ones are kept and for how long. The idle connections
        kept so far carry the old timeouts: they are closed, and the next message connects
        anew. (Where 10026 is, and our EHLO name, take a restart: ``forward``, ``hostname``.)"""
        limits = config.limits
        settings = (limits.connect_timeout, limits.command_timeout, limits.data_timeout,
                    limits.pool_size if self.keep_idle else 0, limits.pool_idle)
        if settings == (self.connect_timeout, self.command_timeout, self.data_timeout,
                        self.max_idle, self.idle_time):
            return
        (self.connect_timeout, self.command_timeout, self.data_timeout,
         self.max_idle, self.idle_time) = settings
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def acquire(self) -> tuple[Downstream, bool]:
        """A ready connection, and whether it was reused (a reused one may be stale)."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and now - conn.idle_since < self.idle_time:
                return conn, True
            conn.close()
        return await self.connect(), False

    async def connect(self) -> Downstream:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.local_hostname,
            timeout=self.command_timeout,
            # Never STARTTLS on loopback: aiosmtplib would otherwise upgrade whenever 10026
            # offers it and then fail on its self-signed certificate (shared/TRAPS.md).
            start_tls=False,
            use_tls=False,
        )
        try:
            await smtp.connect(timeout=self.connect_timeout)
            await smtp.ehlo(timeout=self.command_timeout)
        except asyncio.CancelledError:
            smtp.close()  # the session that wanted it is gone; never leave a half-open one
            raise
        except aiosmtplib.SMTPConnectResponseError as error:
            smtp.close()
            raise DownstreamError("connect", f"greeting {error.code} {error.message}") from None
        except aiosmtplib.SMTPHeloError as error:
            smtp.close()
            raise DownstreamError("EHLO", f"{error.code} {error.message}") from None
        except aiosmtplib.SMTPConnectTimeoutError:
            smtp.close()
            raise DownstreamError(
                "connect", f"no connection within {self.connect_timeout:g}s"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            smtp.close()
            raise DownstreamError("connect", _reason(error)) from None
        self.connects += 1
        conn = Downstream(smtp, self.command_timeout, self.data_timeout)
        self.last_extensions = conn.extensions
        return conn

    def release(self, conn: Downstream) -> None:
        """Give back a connection: kept only when ``reusable`` (module docstring), else closed."""
        if conn.reusable and len(self._idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def prune(self) -> None:
        """Close idle connections that are too old to trust (called periodically)."""
        now = time.monotonic()
        keep = []
        for conn in self._idle:
            if conn.reusable and now - conn.idle_since < self.idle_time:
                keep.append(conn)
            else:
                conn.close()
        self._idle = keep

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.quit() for conn in idle), return_exceptions=True)
