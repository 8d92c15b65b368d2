"""One transaction, from Postfix's MAIL to our reply to its final ".".

MAIL and RCPT go to 10026 in lockstep: each is answered with 10026's own reply, so a recipient
10026 refuses is refused to Postfix alone and the others go on, exactly as if Postfix talked to
10026 itself. DATA is read whole, judged by the rules, and then either sent to 10026 (its reply
to "." is our reply) or answered by the decision (reject, tempfail, discard) after aborting the
10026 transaction with RSET, never with ".".

Nothing here may answer 5xx for a failure of ours or of 10026's connection: every such path ends
in a 4xx so Postfix keeps the message (shared/POSTFIX-FACTS.md §1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from smtpfilter.config.settings import in_networks as _in_networks
from smtpfilter.core import logline, replies, wire
from smtpfilter.core.envelope import Client, Envelope, Recipient
from smtpfilter.core.errors import DownstreamError
from smtpfilter.core.message import MessageContext
from smtpfilter.core.replies import Reply
from smtpfilter.core.verdict import Action, Decision
from smtpfilter.core.wire import outgoing
from smtpfilter.delivery import quarantine
from smtpfilter.delivery.downstream import Downstream
from smtpfilter.engine.judge import Engine
from smtpfilter.frontdoors.smtp.esmtp import XFORWARD_KEYWORD
from smtpfilter.frontdoors.smtp.session import FilterSession, Transaction
from smtpfilter.service.runtime import Runtime

__all__ = ["FilterHandler"]

log = logging.getLogger(__name__)


class FilterHandler:
    """The decisions of an SMTP session (session.SessionHandler): who may connect, what EHLO
    announces, MAIL and RCPT in lockstep with 10026, DATA through the engine."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def __dir__(self) -> list[str]:
        # aiosmtpd collects handle_* hooks with dir(handler) on every connection; the only one
        # it may call here is handle_exception (our MAIL, RCPT and DATA are driven by the
        # session's own smtp_* methods), and a full dir() would cost CPU for nothing.
        return ["handle_exception"]

    # --- limits the SMTP layer asks about ----------------------------------------------
    @property
    def message_size_limit(self) -> int:
        """SIZE (RFC 1870), checked at MAIL; 0: no fixed maximum."""
        return self.rt.config.limits.message_size

    @property
    def data_size_limit(self) -> int:
        """The most DATA we read before answering 552; 0: no limit (Limits.data_size)."""
        return self.rt.config.limits.data_size

    @property
    def processing_time_limit(self) -> float:
        limits = self.rt.config.limits
        return limits.scan_timeout + limits.command_timeout + limits.data_timeout + 30

    # --- connection ----------------------------------------------------------------------
    def connect(self, session: FilterSession) -> str | None:
        """None to greet the client, or the reply that refuses it."""
        config = self.rt.config
        if not _in_networks(session.peer, config.allow_clients):
            log.warning("refused connection from %s: not in allow_clients",
                        logline.peer(session.peer))
            self.rt.count("refused_clients")
            return replies.R554_ACCESS_DENIED
        if not self.rt.accepting:
            return replies.R421_SHUTTING_DOWN
        if self.rt.sessions >= config.limits.sessions and not (
            self.rt.make_room is not None and self.rt.make_room()
        ):
            log.warning(
                "refused connection from %s: %d sessions open and busy (limits.sessions)",
                logline.peer(session.peer),
                self.rt.sessions,
            )
            self.rt.count("refused_busy")
            return replies.R421_TOO_MANY_SESSIONS
        self.rt.sessions += 1
        session.counted = True
        session.may_xforward = _in_networks(session.peer, config.xforward_clients)
        return None

    def disconnect(self, session: FilterSession) -> None:
        if session.counted:
            session.counted = False
            self.rt.sessions -= 1
        conn, session.downstream = session.downstream, None
        if conn is not None:
            # Pooled only if exactly as after RSET (delivery.downstream.Downstream.reusable): a transaction
            # the client left is closed (10026 discards it, no "."), and so is a connection
            # whose reply to MAIL, RCPT... is still on its way (the session was cancelled
            # while it waited): the next session would read every reply one step late.
            self.rt.pool.release(conn)

    def capabilities(self, session: FilterSession) -> list[str]:
        """EHLO keywords: only what we and 10026 can honour (never STARTTLS here)."""
        known = self.rt.pool.last_extensions  # None until 10026 was first reached

        def downstream_has(keyword: str) -> bool:
            return known is None or keyword.lower() in known

        # RFC 1870 §4: "SIZE" alone (or 0) announces no fixed maximum, as Postfix's smtpd does
        # with message_size_limit = 0.
        size = f"SIZE {self.message_size_limit}" if self.message_size_limit else "SIZE"
        keywords = ["PIPELINING", size, "ENHANCEDSTATUSCODES"]
        if downstream_has("8BITMIME"):
            keywords.append("8BITMIME")
        if downstream_has("DSN"):
            keywords.append("DSN")
        if downstream_has("SMTPUTF8"):
            keywords.append("SMTPUTF8")
        if session.may_xforward:
            keywords.append(XFORWARD_KEYWORD)
        return keywords

    # --- 10026 connection of a session ---------------------------------------------------
    async def _downstream(self, session: FilterSession) -> tuple[Downstream, bool]:
        conn = session.downstream
        if conn is not None and conn.connected:
            return conn, True
        conn, reused = await self.rt.pool.acquire()
        session.downstream = conn
        return conn, reused

    def _drop(self, session: FilterSession) -> None:
        conn, session.downstream = session.downstream, None
        if conn is not None:
            conn.close()

    async def reset(self, session: FilterSession) -> None:
        """RSET, EHLO, HELO, or a transaction that ended without ".": abort it at 10026."""
        conn = session.downstream
        if conn is None or not conn.in_transaction:
            return
        try:
            await conn.rset()
        except DownstreamError as error:
            log.info("RSET to 10026 failed, dropping that connection: %s", error)
            self._drop(session)
        except Exception:
            log.exception("RSET to 10026 failed unexpectedly, dropping that connection")
            self._drop(session)

    def _deferred(self, envelope: Envelope, problem: str, stage: str = "", *,
                  reply: str | None = None, rcpt: str | None = None,
                  level: int = logging.WARNING) -> str:
        """The 4xx for a failure at 10026 (``stage``), logged as Postfix logs a problem with
        one message, so that ``grep QUEUEID mail.log`` finds our reason next to Postfix's:
        ``QUEUEID: warning: cannot reach 127.0.0.1:10026 (Connection refused);
        client=host[1.2.3.4], from=<a@b>; deferred (451 4.4.1 ...)``."""
        reply = reply or replies.downstream_failure(stage)
        client = envelope.client()
        fields = [f"from=<{logline.value(envelope.mail_from)}>"]
        if rcpt is not None:
            fields.append(f"to=<{logline.value(rcpt)}>")
        described = logline.client_field(client)
        if described is not None:
            fields.insert(0, f"client={described}")
        told = "bounced" if reply[:1] == "5" else "deferred"  # Postfix's words
        log.log(level, "%s: %s; %s; %s (%s)", logline.queue_id(client), problem,
                ", ".join(fields), told, logline.reply_shown(reply), extra=logline.PER_MESSAGE)
        return reply

    def _relayed(self, envelope: Envelope, command: str, reply: Reply,
                 rcpt: str | None = None) -> str:
        """10026's own answer, relayed; a refusal is logged like a failure (the queue id, the
        forward address, the client), since Postfix's line only says "host 127.0.0.1 said"."""
        relayed = replies.relay(reply)
        if not reply.positive:
            self._deferred(envelope, f"{self.rt.config.forward} refused {command}: "
                           f"{logline.reply_shown(str(reply))}", reply=relayed, rcpt=rcpt)
        return relayed

    # --- MAIL / RCPT ---------------------------------------------------------------------
    async def mail(self, session: FilterSession, txn: Transaction) -> str:
        """MAIL, in lockstep: 10026's own answer to the same MAIL (after XFORWARD)."""
        envelope = txn.envelope
        for attempt in (1, 2):
            try:
                conn, reused = await self._downstream(session)
            except DownstreamError as error:
                self.rt.count("downstream_errors")
                return self._deferred(envelope, f"cannot reach {self.rt.config.forward} "
                                      f"({error.detail})", error.stage)
            params = conn.mail_params(envelope.mail_params)
            if params is None:
                return self._deferred(
                    envelope, f"SMTPUTF8 mail but {self.rt.config.forward} does not announce "
                    "SMTPUTF8 (set smtputf8_enable = yes for its smtpd)",
                    reply=replies.R451_SMTPUTF8_UNSUPPORTED, level=logging.ERROR,
                )
            try:
                await conn.xforward(envelope.xforward)
                reply = await conn.mail(envelope.mail_path, params)
            except DownstreamError as error:
                self._drop(session)
                if reused and attempt == 1 and error.closed:
                    # An idle connection 10026 had already closed: safe to retry, nothing of
                    # this transaction reached it. Not after a timeout: a 10026 that hangs
                    # would then cost the client two command_timeouts instead of one.
                    log.debug("stale 10026 connection (%s), reconnecting", error)
                    continue
                self.rt.count("downstream_errors")
                return self._deferred(envelope, f"{self.rt.config.forward} failed at {error}",
                                      error.stage)
            if not conn.connected:
                self._drop(session)
            return self._relayed(envelope, "MAIL FROM", reply)
        raise AssertionError("unreachable")  # pragma: no cover

    async def rcpt(self, session: FilterSession, txn: Transaction, rcpt: Recipient) -> str:
        """RCPT, in lockstep: 10026's own answer, so a recipient it refuses is refused alone."""
        if len(txn.envelope.recipients) >= self.rt.config.limits.recipients:
            return replies.R452_TOO_MANY_RECIPIENTS
        conn = session.downstream
        if conn is None or not conn.connected:
            return replies.downstream_failure("RCPT")
        try:
            reply = await conn.rcpt(rcpt.path, conn.rcpt_params(rcpt.params))
        except DownstreamError as error:
            self._drop(session)
            self.rt.count("downstream_errors")
            return self._deferred(txn.envelope, f"{self.rt.config.forward} failed at {error}",
                                  error.stage, rcpt=rcpt.address)
        return self._relayed(txn.envelope, "RCPT TO", reply, rcpt=rcpt.address)

    # --- DATA ----------------------------------------------------------------------------
    async def data(self, session: FilterSession, txn: Transaction, data: bytearray) -> str:
        """The message: judged by the engine, then sent to 10026 (its reply to "." is ours) or
        answered by the decision. The engine logs the one line per message (settle)."""
        started = time.monotonic()
        received_at = datetime.now(timezone.utc)
        engine = self.rt.engine  # this message keeps this generation of config and rules
        envelope = txn.envelope
        client = envelope.client()
        decision: Decision | None = None
        reply = replies.R451_LOCAL_ERROR
        judged: list[MessageContext] = []  # the message the engine judged, for settle
        try:
            reply, decision = await self._judge_and_deliver(
                engine, session, envelope, client, data, received_at, judged
            )
        except asyncio.CancelledError:
            # The client went away (EOF cancels us): 10026 must not get "." now.
            self._drop(session)
            reply = "(client disconnected)"
            raise
        except Exception:
            log.exception("%s: internal error on the message from <%s>; answering 451",
                          logline.queue_id(client), logline.value(envelope.mail_from),
                          extra=logline.PER_MESSAGE)
            self._drop(session)
            reply = replies.R451_LOCAL_ERROR
        finally:
            engine.settle(envelope, client, len(data), decision, reply, started,
                          msg=judged[0] if judged else None)
        return reply

    async def _judge_and_deliver(
        self,
        engine: Engine,
        session: FilterSession,
        envelope: Envelope,
        client: Client,
        data: bytearray,
        received_at: datetime,
        judged: list[MessageContext],
    ) -> tuple[str, Decision | None]:
        config = engine.config
        conn = session.downstream
        if conn is None or not conn.connected or not conn.in_transaction:
            return replies.downstream_failure("DATA"), None
        if wire.has_bare_line_ends(data):
            # Never pass a bare CR or LF on to the 10026 smtpd (SMTP smuggling, core/wire.py).
            log.warning("%s: from=<%s>: bare CR or LF in the message: normalised to CRLF",
                        logline.queue_id(client), logline.value(envelope.mail_from),
                        extra=logline.PER_MESSAGE)
            data = bytearray(wire.normalise(data))
        msg, decision, failure = await engine.judge(
            envelope, client, data, received_at=received_at
        )
        judged.append(msg)
        if decision is None:
            await self.reset(session)  # the scan timed out or a rule failed: 451
            return failure or replies.R451_LOCAL_ERROR, None

        if decision.action is Action.QUARANTINE:
            await self.reset(session)  # 10026 gets nothing now; a release re-injects it later
            return await quarantine.store_message(config, msg, envelope, decision), decision
        if not decision.delivers:
            await self.reset(session)  # FILTER_README: abort the 10026 side, never send "."
            return replies.for_decision(decision) or replies.R451_LOCAL_ERROR, decision

        parts = outgoing(
            msg, decision.headers, *config.headers.incoming(decision.headers),
            drop=decision.drop,
        )
        # Logged before the final "." leaves: once 10026 has it, the message may be queued there
        # even if this process dies before it can answer Postfix, which then sends it again
        # (FILTER_README's design: the one duplicate an after-queue filter cannot prevent).
        # This line is what ties that first copy (10026's log: orig_queue_id=, XFORWARD IDENT)
        # to the message Postfix retries (issue 12: a SIGKILL left no line for it). Its fields
        # are not the summary line's (no action=, no status=): one summary line per message.
        log.info(
            "%s: handing over to %s: from=<%s>, size=%d",
            logline.queue_id(client),
            config.forward,
            logline.value(envelope.mail_from or ""),
            len(data),
        )
        try:
            result = await conn.data(parts)
        except DownstreamError as error:
            self._drop(session)
            self.rt.count("downstream_errors")
            if error.sent_data:
                problem = (f"{config.forward} failed after the final '.' ({error}): it may have "
                           "queued the message; Postfix will retry, so it may be delivered twice")
                return self._deferred(envelope, problem, error.stage,
                                      level=logging.ERROR), decision
            return self._deferred(envelope, f"{config.forward} failed at {error}",
                                  error.stage), decision
        if conn.in_transaction:  # 10026 refused DATA itself: end that transaction
            await self.reset(session)
        if not conn.connected:
            self._drop(session)
        return replies.relay(result), decision

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd calls this for anything escaping a command: answer 451, never 500."""
        log.exception("internal error in SMTP session; answering 451", exc_info=error)
        return replies.R451_LOCAL_ERROR
