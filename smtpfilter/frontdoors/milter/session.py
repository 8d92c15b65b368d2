"""One milter connection: events in, one message at a time to the engine, milter replies out.

Postfix opens one milter connection per SMTP connection (milter8.c: libmilter closes the
MTA-to-filter socket when the SMTP client has disconnected) and carries every transaction of
that SMTP session over it: CONNECT, HELO, then per message MAIL, RCPT..., HEADER..., (BODY...),
EOM, and an ABORT after every transaction (smtpd's mail_reset), then QUIT.

What we negotiate (:meth:`MilterSession.wanted`): no reply for CONNECT/HELO/MAIL/RCPT/HEADER/
BODY (SMFIP_NR_*: Postfix streams them without waiting; without them throughput halves,
bench/milter_bench.py); no DATA, EOH or unknown-command events; no body at all (SMFIP_NOBODY)
unless a loaded rule reads it (``RuleSet.needs_body``) or quarantined mail goes to our own
store, which must hold the whole message; header values with their leading space
(SMFIP_HDR_LEADSPC) so that the header block we rebuild is byte for byte the one received;
and the macros we need, asked for in the OPTNEG reply so that main.cf need not list them
(MILTER_README: "an application-specified list takes precedence").

The message the engine judges is ONE buffer: the header fields are appended as they arrive
(folded lines come joined by a bare LF and go back to CRLF), then the empty line, then the body
chunks as Postfix streams them (CRLF lines, not dot-stuffed, cut every 65,535 bytes anywhere in
a line): :class:`~smtpfilter.core.message.MessageContext` with ``stuffed=False``. Nothing else
keeps a copy. Client data comes from the macros instead of XFORWARD (the same
:class:`~smtpfilter.core.envelope.Client` fields, so DNSBL and every other check see the same
client as in SMTP mode); the queue id is macro ``i``, which Postfix sends from DATA on, not at
MAIL.

Every decision is made at end of message, by the same engine as SMTP mode: a rule set mixes
client and content rules, scores add up across them, and ``mode: warn``/``dry_run`` need every
verdict, so an early answer at RCPT would be a different policy. (At CONNECT Postfix says 220
whatever the milter answers and refuses later anyway.)

Faults: whatever goes wrong in the engine (an exception, ``milter.timeout``) is a 451 for that
message only; the connection stays usable for the next message (a milter that drops the
connection instead puts itself in Postfix's error state for the rest of that SMTP session). A
ProtocolError (a malformed packet) propagates to the server, which closes this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from smtpfilter.core import logline, replies
from smtpfilter.core.envelope import Client, Envelope, Recipient
from smtpfilter.core.message import Header, MessageContext, parse_header_block
from smtpfilter.core.errors import QuarantineError
from smtpfilter.core.verdict import Action, Decision
from smtpfilter.core.wire import fold_header
from smtpfilter.delivery import quarantine
from smtpfilter.engine.judge import Engine
from smtpfilter.frontdoors.milter import protocol as p
from smtpfilter.service.runtime import Runtime

__all__ = ["MACROS", "MilterSession", "reply_packet"]

log = logging.getLogger(__name__)

# The macros we ask for, by stage. Postfix omits a macro without a value ({auth_authen} for a
# client that did not authenticate): absent means None. "i" comes from DATA on (not at MAIL),
# so it is asked for at end of message.
MACROS = {
    p.MacroStage.CONNECT: ("j", "_", "{client_addr}", "{client_name}", "{client_port}",
                           "{daemon_name}"),
    p.MacroStage.HELO: (),
    p.MacroStage.MAIL: ("{auth_authen}", "{mail_addr}"),
    p.MacroStage.RCPT: ("{rcpt_addr}",),
    p.MacroStage.EOM: ("i",),
}
# Macro values of CONNECT and HELO live as long as the connection; those of later stages
# belong to one message (libmilter keeps one table per stage, reset per message likewise).
_CONNECTION_STAGES = frozenset({p.Cmd.CONNECT, p.Cmd.HELO})

# What the summary line says we answered, where the engine has no SMTP reply of its own: the
# code is what the client gets from Postfix (metrics and outcome_of read it).
R250_CONTINUE = "250 2.0.0 Ok: continue"


def held(rule: str) -> str:
    return f"250 2.0.0 Ok: held in Postfix's hold queue by content filter ({rule})"


def reply_packet(reply: str) -> bytes:
    """Our SMTP reply text ("451 4.4.7 Error: ...", "550 5.7.1 ...") as SMFIR_REPLYCODE.

    Postfix calls a reply malformed (and applies milter_default_action) unless an enhanced
    status code with the same class follows the code: one is added where the text has none."""
    code_text, _, rest = reply.partition(" ")
    code = int(code_text)
    enhanced = replies.ENHANCED_STATUS.match(rest)
    if enhanced and enhanced.group(1) == code_text[0]:
        xcode, text = enhanced.group(0), rest[enhanced.end():].strip()
    else:
        xcode, text = ("5.7.1" if code >= 500 else "4.7.1"), rest
    return p.reply_code(code, xcode, text.split("\r\n")[0])


def milter_header(name: str, value: str) -> str:
    """A header value as SMFIR_ADDHEADER wants it: folded like the headers we add in SMTP mode
    (core.wire.fold_header: printable ASCII, lines <= 998 octets) but with LF+TAB between the
    lines (Postfix splits the value at LF), and its leading space (SMFIP_HDR_LEADSPC)."""
    folded = fold_header(name, value).decode("ascii")
    return folded[len(name) + 1 : -2].replace("\r\n", "\n")


class MilterSession:
    """The state of one milter connection. ``await handle(event)`` returns the bytes to send."""

    def __init__(self, runtime: Runtime, peer: str = "") -> None:
        self.rt = runtime
        self.peer = peer
        self.agreed: p.Negotiated | None = None
        self.closed = False  # QUIT: the server closes the connection
        self.busy = False  # from MAIL to our reply at end of message
        self.messages = 0
        self._body_wanted = False
        self._conn_macros: dict[str, str] = {}
        self._connect: p.Connect | None = None
        self._helo: str | None = None
        self._reset_message()

    # --- negotiation -------------------------------------------------------------------------
    def wanted(self) -> tuple[p.Action, p.Step]:
        config = self.rt.config
        self._body_wanted = self.rt.ruleset.needs_body or config.milter.quarantine == "store"
        steps = (
            p.Step.NODATA | p.Step.NOUNKNOWN | p.Step.NOEOH | p.Step.HDR_LEADSPC
            | p.Step.NR_CONN | p.Step.NR_HELO | p.Step.NR_MAIL | p.Step.NR_RCPT | p.Step.NR_HDR
        )
        steps |= p.Step.NR_BODY if self._body_wanted else p.Step.NOBODY
        return p.Action.ADDHDRS | p.Action.CHGHDRS | p.Action.QUARANTINE, steps

    # --- per message state -------------------------------------------------------------------
    def _reset_message(self) -> None:
        self.busy = False
        self._msg_macros: dict[str, str] = {}
        self._envelope = Envelope()
        self._data = bytearray()
        self._in_body = False
        # Incoming headers our HeadersConfig may strip or rename: (index among same-named
        # headers, name as received, value as received).
        self._own: list[tuple[int, str, bytes]] = []
        self._counts: dict[bytes, int] = {}
        headers = self.rt.config.headers
        self._own_names = frozenset(
            name.lower() for name in (*headers.stripped, headers.flag) if name
        )
        self._oversize = False

    def _macro(self, name: str) -> str | None:
        value = self._msg_macros.get(name, self._conn_macros.get(name))
        return value or None

    def client(self) -> Client:
        """The SMTP client as Postfix's smtpd saw it, from the macros (the CONNECT event where
        a macro is missing): the same fields XFORWARD gives in SMTP mode."""
        conn = self._connect
        inet = conn is not None and conn.family in "46"
        addr = self._macro("client_addr") or (conn.address if inet else None)  # type: ignore[union-attr]
        name = self._macro("client_name")
        if name is None and conn is not None and not conn.hostname.startswith("["):
            name = conn.hostname
        port = self._macro("client_port") or (str(conn.port) if inet else None)  # type: ignore[union-attr]
        return Client(
            addr=addr,
            name=name,
            helo=self._helo,
            ident=self._macro("i"),
            source="REMOTE" if addr is not None else None,
            port=port,
            sasl_user=self._macro("auth_authen"),
        )

    # --- events ------------------------------------------------------------------------------
    async def handle(self, event: p.Event) -> bytes:
        match event:
            case p.Macros(cmd=cmd, values=values):
                (self._conn_macros if cmd in _CONNECTION_STAGES else self._msg_macros).update(values)
                return b""
            case p.Header(name=name, value=value):
                self._header(name, value)
                return self._reply_unless(p.Step.NR_HDR)
            case p.Body(chunk=chunk):
                self._body(chunk)
                return self._reply_unless(p.Step.NR_BODY)
            case p.EndOfMessage(chunk=chunk):
                if chunk:
                    self._body(chunk)
                return await self._end_of_message()
            case p.Rcpt(args=args):
                path = _path(args[0])
                self._envelope.recipients.append(Recipient(path, path, list(args[1:])))
                return self._reply_unless(p.Step.NR_RCPT)
            case p.Mail(args=args):
                macros = self._msg_macros  # the MAIL macros arrived just before this event
                self._reset_message()
                self._msg_macros = macros
                self.busy = True
                path = _path(args[0])
                self._envelope = Envelope(mail_from=path, mail_path=path,
                                          mail_params=_params(args[1:]))
                return self._reply_unless(p.Step.NR_MAIL)
            case p.Connect():
                self._connect = event
                return self._reply_unless(p.Step.NR_CONN)
            case p.Helo(name=name):
                # A second HELO/EHLO (after STARTTLS, or a client that repeats it) is normal.
                self._helo = name
                return self._reply_unless(p.Step.NR_HELO)
            case p.Abort():
                self._reset_message()  # after every transaction, twice at the end: idempotent
                return b""
            case p.OptNeg():
                actions, steps = self.wanted()
                reply, self.agreed = p.negotiate(event, actions=actions, steps=steps,
                                                 macros=MACROS)
                log.debug("milter %s: negotiated %s", self.peer, self.agreed)
                return reply
            case p.Data() | p.EndOfHeaders() | p.Unknown():
                return p.CONTINUE  # only sent if the MTA did not let us switch them off
            case p.QuitNewConnection():
                self._conn_macros.clear()
                self._connect, self._helo = None, None
                self._reset_message()
                return b""
            case p.Quit():
                self.closed = True
                return b""
        raise p.ProtocolError(f"unexpected event {event!r}")  # pragma: no cover

    def _reply_unless(self, no_reply: p.Step) -> bytes:
        if self.agreed is None or self.agreed.replies_to(no_reply):
            return p.CONTINUE
        return b""

    def _fits(self, more: int) -> bool:
        """What we keep of one message stays within limits.message_size (Postfix's
        message_size_limit by default): a bound on memory whatever the MTA sends."""
        if self._oversize or len(self._data) + more > self.rt.config.limits.message_size:
            self._oversize = True
            return False
        return True

    def _header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            raise p.ProtocolError("HEADER after the body started")
        key = name.lower()
        count = self._counts[key] = self._counts.get(key, 0) + 1
        text = name.decode("ascii", "replace")
        if text.lower() in self._own_names:
            self._own.append((count, text, value))
        if not self._fits(len(name) + len(value) + 4):
            return
        data = self._data
        data += name
        data += b":" if self.agreed is None or self.agreed.steps & p.Step.HDR_LEADSPC else b": "
        data += value.replace(b"\n", b"\r\n")  # folded lines come joined by a bare LF
        data += b"\r\n"

    def _end_headers(self) -> None:
        if not self._in_body:
            self._in_body = True
            if self._fits(2):
                self._data += b"\r\n"  # the empty line Postfix does not send

    def _body(self, chunk: bytes) -> None:
        self._end_headers()
        if self._fits(len(chunk)):
            self._data += chunk

    # --- the decision ------------------------------------------------------------------------
    async def _end_of_message(self) -> bytes:
        started = time.monotonic()
        received_at = datetime.now(timezone.utc)
        self._end_headers()
        engine = self.rt.engine  # this message keeps this generation of config and rules
        client = self.client()
        envelope = self._envelope
        envelope.xforward = client.xforward()  # what a quarantine release sends to 10026
        self.messages += 1
        decision: Decision | None = None
        msg: MessageContext | None = None
        summary = replies.R451_LOCAL_ERROR
        size = len(self._data)
        try:
            if self._oversize:
                log.warning(
                    "%s: from=<%s>: message larger than limits.message_size (%d bytes); "
                    "answering 451 (raise it to Postfix's message_size_limit)",
                    logline.queue_id(client), logline.value(envelope.mail_from),
                    engine.config.limits.message_size, extra=logline.PER_MESSAGE,
                )
                packet = reply_packet(replies.R451_LOCAL_ERROR)
            else:
                async with asyncio.timeout(engine.config.milter.timeout):
                    msg, decision, summary, packet = await self._judge(
                        engine, envelope, client, received_at
                    )
        except TimeoutError:
            log.warning("%s: no decision within %gs (milter.timeout); answering 451",
                        logline.queue_id(client), engine.config.milter.timeout,
                        extra=logline.PER_MESSAGE)
            decision, summary = None, replies.R451_SCAN_TIMEOUT
            packet = reply_packet(summary)
        except Exception:  # any fault of ours is a 4xx for this message, never a 5xx
            log.exception("%s: internal error on the message from <%s>; answering 451",
                          logline.queue_id(client), logline.value(envelope.mail_from),
                          extra=logline.PER_MESSAGE)
            decision, summary = None, replies.R451_LOCAL_ERROR
            packet = reply_packet(summary)
        finally:
            self._reset_message()
        # msg: rules with a post-decision hook (rate limits) count what Postfix goes on with.
        engine.settle(envelope, client, size, decision, summary, started, msg=msg)
        return packet

    async def _judge(
        self, engine: Engine, envelope: Envelope, client: Client, received_at: datetime
    ) -> tuple[MessageContext, Decision | None, str, bytes]:
        """(the message, decision, the reply for the summary line, the milter packets)."""
        msg, decision, failure = await engine.judge(
            envelope, client, self._data, received_at=received_at, stuffed=False
        )
        if decision is None:
            reply = failure or replies.R451_LOCAL_ERROR
            return msg, None, reply, reply_packet(reply)
        rule = decision.rule or "score"
        action = decision.action
        if action is Action.DISCARD:
            return msg, decision, replies.for_decision(decision) or R250_CONTINUE, p.DISCARD
        if action is Action.QUARANTINE:
            if engine.config.milter.quarantine == "store":
                reply = await quarantine.store_message(engine.config, msg, envelope, decision)
                # Stored: the client gets 250 and Postfix forgets the message (SMFIR_DISCARD);
                # not stored: 451, the client keeps it.
                return msg, decision, reply, (
                    p.DISCARD if reply[:1] == "2" else reply_packet(reply)
                )
            out = self._header_edits(engine, msg, (), decision.drop)
            out.append(p.reply_quarantine(f"smtpfilter: {rule}"))
            out.append(p.CONTINUE)
            return msg, decision, held(rule), b"".join(out)
        if not decision.delivers:  # reject, tempfail
            reply = replies.for_decision(decision) or replies.R451_LOCAL_ERROR
            return msg, decision, reply, reply_packet(reply)
        out = self._header_edits(engine, msg, decision.headers, decision.drop)
        lead = self.agreed is None or bool(self.agreed.steps & p.Step.HDR_LEADSPC)
        for name, value in decision.headers:
            text = milter_header(name, value)
            out.append(p.reply_add_header(name, text if lead else text[1:]))
        out.append(p.CONTINUE)
        return msg, decision, R250_CONTINUE, b"".join(out)

    def _header_edits(
        self,
        engine: Engine,
        msg: MessageContext,
        added: tuple[tuple[str, str], ...],
        drop: tuple[Header, ...],
    ) -> list[bytes]:
        """What SMTP mode does to incoming headers (core.wire.outgoing), as milter replies:
        the stripped ones deleted (a sender must not pre-forge our verdict), an upstream flag
        renamed when we add our own (HeadersConfig.incoming: deleted, then appended under the
        new name with its value), the fields the decision drops (a forged
        Authentication-Results with our authserv-id) deleted. SMFIR_CHGHEADER with an empty
        value deletes; per name the highest index goes first, right whether or not the MTA
        renumbers after a delete."""
        strip, rename = engine.config.headers.incoming(added)
        stripped = {name.lower() for name in strip}
        renamed = {old.lower(): new for old, new in rename}
        deletes: set[tuple[int, str]] = set()
        appended: list[tuple[str, bytes]] = []
        for index, name, value in self._own:
            if name.lower() in stripped:
                deletes.add((index, name))
            elif name.lower() in renamed:
                deletes.add((index, name))
                appended.append((renamed[name.lower()], value))
        if drop:
            # A dropped field may lie past the header block the rules read: count its
            # same-named predecessors in a full parse of the same bytes.
            every = parse_header_block(msg.data, len(msg.data) + 1, stuffed=msg.stuffed)
            for field in drop:
                index = 1 + sum(1 for h in every if h.lname == field.lname and h.start < field.start)
                deletes.add((index, field.name))
        out = [
            p.reply_change_header(index, name, "")
            for index, name in sorted(deletes, key=lambda d: (d[1].lower(), -d[0]))
        ]
        for name, value in appended:
            # The value as received (its leading space too, with HDR_LEADSPC), unfolded and
            # with any control character or undecodable byte made harmless for the queue file.
            text = value.decode("utf-8", "replace").replace("\r", "").replace("\n", "")
            text = "".join(c if c >= " " or c == "\t" else "?" for c in text)
            out.append(p.reply_add_header(name, text))
        return out


def _path(arg: str) -> str:
    """``<a@example>`` → ``a@example`` (Postfix sends the address as the client wrote it)."""
    arg = arg.strip()
    if arg.startswith("<") and arg.endswith(">"):
        arg = arg[1:-1]
    return arg


def _params(args: tuple[str, ...]) -> dict[str, str]:
    """MAIL's ESMTP parameters, ``KEYWORD=value`` → {KEYWORD: token as received}, as the SMTP
    front door keeps them (a quarantine release passes them on)."""
    params: dict[str, str] = {}
    for arg in args:
        keyword = arg.partition("=")[0].upper()
        if keyword:
            params[keyword] = arg
    return params
