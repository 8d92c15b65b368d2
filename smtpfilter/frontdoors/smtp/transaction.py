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
import ipaddress
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from smtpfilter.core import replies, wire
from smtpfilter.core.envelope import Client
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Action, Decision
from smtpfilter.core.wire import outgoing
from smtpfilter.delivery import quarantine
from smtpfilter.delivery.downstream import Downstream, DownstreamError
from smtpfilter.engine.pipeline import RuleFailure, evaluate
from smtpfilter.service.runtime import Runtime

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.frontdoors.smtp.session import (
        FilterSession,
        FilterSMTP,
        Recipient,
        Transaction,
    )

__all__ = ["FilterHandler"]

log = logging.getLogger(__name__)

XFORWARD_KEYWORD = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"


def _in_networks(peer: object, networks: tuple) -> bool:
    try:
        host = peer[0] if isinstance(peer, tuple) else peer
        address = ipaddress.ip_address(str(host).split("%")[0])
    except (ValueError, IndexError, TypeError):
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def summary_line(
    client: Client,
    mail_from: str,
    rcpts: list[str],
    size: int,
    decision: Decision | None,
    reply: str,
    elapsed: float,
    *extra: str,
) -> str:
    """The one INFO line per message, stable key=value fields (serve and pipe mode alike)."""
    fields = [
        f"queue_id={client.ident or '-'}",
        f"client={client.describe()}",
        f"from=<{mail_from}>",
        f"rcpts={','.join(rcpts)}",
        f"size={size}",
        f"action={decision.action.value if decision else 'error'}",
    ]
    if decision is not None:
        if decision.intended is not None and decision.intended is not decision.action:
            fields.append(f"would={decision.intended.value}")
            if decision.intended_rule:
                fields.append(f"would_by={decision.intended_rule}")
        fields.append(f"score={decision.score:g}")
        fields.append(f"rules={decision.rules_hit}")
    shown = " / ".join(line[4:] if i else line for i, line in enumerate(reply.split("\r\n")))
    fields.append(f'reply="{shown[:300]}"')
    fields.extend(extra)
    fields.append(f"elapsed_ms={elapsed * 1000:.0f}")
    return " ".join(fields)


def log_exceeded(msg: MessageContext) -> None:
    """A WARNING for each parse limit the message went past, whether or not a rule watches it:
    part of the message was not judged (serve and pipe mode alike)."""
    for exceeded in msg.exceeded():
        log.warning(
            "queue_id=%s from=<%s>: %s", msg.client.ident or "-", msg.mail_from, exceeded.reason
        )


def _outcome(decision: Decision | None, reply: str) -> str:
    """What happened to the message, by the reply Postfix got (a delivery decision whose
    re-injection failed was deferred, not delivered): the counters behind systemd's STATUS."""
    code = reply[:1]
    if code == "5":
        return "rejected"
    if code != "2" or decision is None:
        return "deferred"  # 4xx, or the client left before any reply
    if decision.action is Action.DISCARD:
        return "discarded"
    if decision.action is Action.QUARANTINE:
        return "quarantined"
    return "delivered"


class FilterHandler:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    _members: tuple[str, ...] | None = None

    def __dir__(self) -> list[str]:
        # aiosmtpd looks for handle_* hooks and auth_* mechanisms with dir(handler) on every
        # connection (see FilterSMTP.__dir__); those are the only names it needs.
        cls = type(self)
        if cls.__dict__.get("_members") is None:
            cls._members = tuple(
                name for name in super().__dir__() if name.startswith(("handle_", "auth_"))
            )
        return list(cls._members)

    # --- limits the SMTP layer asks about ----------------------------------------------
    @property
    def message_size_limit(self) -> int:
        return self.rt.config.limits.message_size

    @property
    def processing_time_limit(self) -> float:
        limits = self.rt.config.limits
        return limits.scan_timeout + limits.command_timeout + limits.data_timeout + 30

    # --- connection ----------------------------------------------------------------------
    def connect(self, session: FilterSession) -> str | None:
        """None to greet the client, or the reply that refuses it."""
        config = self.rt.config
        if not _in_networks(session.peer, config.allow_clients):
            log.warning("refused connection from %s: not in allow_clients", session.peer)
            self.rt.count("refused_clients")
            return replies.R554_ACCESS_DENIED
        if not self.rt.accepting:
            return replies.R421_SHUTTING_DOWN
        if self.rt.sessions >= config.limits.sessions and not (
            self.rt.make_room is not None and self.rt.make_room()
        ):
            log.warning(
                "refused connection from %s: %d sessions open and busy (limits.sessions)",
                session.peer,
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
            # Pooled only if exactly as after RSET (reinject.Downstream.reusable): a transaction
            # the client left is closed (10026 discards it, no "."), and so is a connection
            # whose reply to MAIL, RCPT... is still on its way (the session was cancelled
            # while it waited): the next session would read every reply one step late.
            self.rt.pool.release(conn)

    def capabilities(self, session: FilterSession) -> list[str]:
        """EHLO keywords: only what we and 10026 can honour (never STARTTLS here)."""
        known = self.rt.pool.last_extensions  # None until 10026 was first reached

        def downstream_has(keyword: str) -> bool:
            return known is None or keyword.lower() in known

        keywords = ["PIPELINING", f"SIZE {self.message_size_limit}", "ENHANCEDSTATUSCODES"]
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

    # --- MAIL / RCPT ---------------------------------------------------------------------
    def _mail_params(self, conn: Downstream, txn: Transaction) -> list[str] | str:
        """The MAIL parameters for 10026, as received, limited to what it announced."""
        params = []
        for keyword, token in txn.param_tokens.items():
            if keyword == "SIZE" and conn.supports("SIZE"):
                params.append(token)
            elif keyword == "BODY" and conn.supports("8BITMIME"):
                params.append(token)
            elif keyword == "SMTPUTF8":
                if not conn.supports("SMTPUTF8"):
                    log.error(
                        "SMTPUTF8 mail from <%s> but 10026 does not announce SMTPUTF8 (set "
                        "smtputf8_enable = yes for the 10026 smtpd); deferring it",
                        txn.mail_from,
                    )
                    return replies.R451_SMTPUTF8_UNSUPPORTED
                params.append(token)
            elif keyword in ("RET", "ENVID") and conn.supports("DSN"):
                params.append(token)
            elif keyword in ("AUTH", "XVERP") and conn.supports(keyword):
                params.append(token)
            # Otherwise 10026 does not do that extension: Postfix's own smtp client drops such
            # parameters for a next hop without the extension too.
        return params

    def _rcpt_params(self, conn: Downstream, rcpt: Recipient) -> list[str]:
        return rcpt.params if conn.supports("DSN") else []

    async def handle_MAIL(self, server: FilterSMTP, session: FilterSession, txn: Transaction) -> str:
        for attempt in (1, 2):
            try:
                conn, reused = await self._downstream(session)
            except DownstreamError as error:
                log.warning("cannot reach 10026 (%s): deferring <%s>", error, txn.mail_from)
                self.rt.count("downstream_errors")
                return replies.downstream_failure(error.stage)
            params = self._mail_params(conn, txn)
            if isinstance(params, str):
                return params
            try:
                await conn.xforward(txn.xforward)
                reply = await conn.mail(txn.mail_path, params)
            except DownstreamError as error:
                self._drop(session)
                if reused and attempt == 1:
                    # An idle connection 10026 had already closed: safe to retry, nothing of
                    # this transaction reached it.
                    log.debug("stale 10026 connection (%s), reconnecting", error)
                    continue
                log.warning("10026 failed at %s: deferring <%s>", error, txn.mail_from)
                self.rt.count("downstream_errors")
                return replies.downstream_failure(error.stage)
            if not conn.connected:
                self._drop(session)
            return replies.relay(reply)
        raise AssertionError("unreachable")  # pragma: no cover

    async def handle_RCPT(
        self, server: FilterSMTP, session: FilterSession, txn: Transaction, rcpt: Recipient
    ) -> str:
        if len(txn.recipients) >= self.rt.config.limits.recipients:
            return replies.R452_TOO_MANY_RECIPIENTS
        conn = session.downstream
        if conn is None or not conn.connected:
            return replies.downstream_failure("RCPT")
        try:
            reply = await conn.rcpt(rcpt.path, self._rcpt_params(conn, rcpt))
        except DownstreamError as error:
            self._drop(session)
            log.warning("10026 failed at %s: deferring <%s>", error, rcpt.address)
            self.rt.count("downstream_errors")
            return replies.downstream_failure(error.stage)
        return replies.relay(reply)

    # --- DATA ----------------------------------------------------------------------------
    async def handle_DATA(
        self, server: FilterSMTP, session: FilterSession, txn: Transaction, data: bytearray
    ) -> str:
        started = time.monotonic()
        received_at = datetime.now(timezone.utc)
        decision: Decision | None = None
        reply = replies.R451_LOCAL_ERROR
        client = txn.client()
        try:
            reply, decision = await self._judge_and_deliver(session, txn, client, data, received_at)
        except asyncio.CancelledError:
            # The client went away (EOF cancels us): 10026 must not get "." now.
            self._drop(session)
            reply = "(client disconnected)"
            raise
        except Exception:
            log.exception("internal error on message from <%s>; answering 451", txn.mail_from)
            self._drop(session)
            reply = replies.R451_LOCAL_ERROR
        finally:
            self._log_message(txn, client, len(data), decision, reply, started)
        return reply

    async def _judge_and_deliver(
        self,
        session: FilterSession,
        txn: Transaction,
        client: Client,
        data: bytearray,
        received_at: datetime,
    ) -> tuple[str, Decision | None]:
        config = self.rt.config
        conn = session.downstream
        if conn is None or not conn.connected or not conn.in_transaction:
            return replies.downstream_failure("DATA"), None
        if wire.has_bare_line_ends(data):
            # Never pass a bare CR or LF on to the 10026 smtpd (SMTP smuggling, wire.py).
            log.warning("message from <%s> has bare CR/LF: normalised to CRLF", txn.mail_from)
            data = bytearray(wire.normalise(data))
        msg = MessageContext.build(
            data,
            received_at=received_at,
            mail_from=txn.mail_from or "",
            rcpt_to=tuple(r.address for r in txn.recipients),
            client=client,
            header_limit=config.limits.header_size,
        )
        log_exceeded(msg)
        ruleset, policy = self.rt.ruleset, self.rt.policy  # this message keeps these
        try:
            decision = await asyncio.wait_for(
                evaluate(ruleset, msg, policy), config.limits.scan_timeout
            )
        except TimeoutError:
            log.warning("rules took longer than %gs (limits.scan_timeout)", config.limits.scan_timeout)
            await self.reset(session)
            return replies.R451_SCAN_TIMEOUT, None
        except RuleFailure as failure:
            log.error("%s; answering 451", failure, exc_info=failure.__cause__)
            await self.reset(session)
            return replies.R451_LOCAL_ERROR, None

        if decision.action is Action.QUARANTINE:
            await self.reset(session)  # 10026 gets nothing now; a release re-injects it later
            return await quarantine.store_message(config, msg, txn, decision), decision
        if not decision.delivers:
            await self.reset(session)  # FILTER_README: abort the 10026 side, never send "."
            return replies.for_decision(decision) or replies.R451_LOCAL_ERROR, decision

        parts = outgoing(msg, decision.headers, config.headers.own)
        try:
            result = await conn.data(parts)
        except DownstreamError as error:
            self._drop(session)
            self.rt.count("downstream_errors")
            if error.sent_data:
                log.error(
                    "10026 failed after the final '.' (%s): it may have queued the message; "
                    "Postfix will retry, so it may be delivered twice",
                    error,
                )
            else:
                log.warning("10026 failed at %s", error)
            return replies.downstream_failure(error.stage), decision
        if conn.in_transaction:  # 10026 refused DATA itself: end that transaction
            await self.reset(session)
        if not conn.connected:
            self._drop(session)
        return replies.relay(result), decision

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd calls this for anything escaping a command: answer 451, never 500."""
        log.exception("internal error in SMTP session; answering 451", exc_info=error)
        return replies.R451_LOCAL_ERROR

    # --- the one line per message --------------------------------------------------------
    def _log_message(
        self,
        txn: Transaction,
        client: Client,
        size: int,
        decision: Decision | None,
        reply: str,
        started: float,
    ) -> None:
        action = decision.action.value if decision else "error"
        self.rt.count(f"action_{action}")  # what the rules decided (metrics)
        self.rt.count(_outcome(decision, reply))  # what Postfix was told (systemd STATUS)
        elapsed = time.monotonic() - started
        self.rt.metrics.message(decision, reply, elapsed)
        rcpts = [r.address for r in txn.recipients]
        line = summary_line(client, txn.mail_from or "", rcpts, size, decision, reply, elapsed)
        log.info("%s", line)
        if decision is not None and log.isEnabledFor(logging.DEBUG):
            for verdict in decision.verdicts:
                log.debug(
                    "rule %s: %s %s (score %g)",
                    verdict.rule,
                    verdict.finding.code,
                    verdict.finding.reason,
                    verdict.score,
                )
