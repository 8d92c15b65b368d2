"""The engine as every front door calls it: one message in, ONE Decision out, one log line.

The path of one message: a front door (``frontdoors/smtp``, ``frontdoors/pipe``, ``frontdoors/milter``)
hands :meth:`Engine.judge` the envelope, the client, the wire bytes and the receipt time; the
engine parses the header block (``core/message``), runs the rules (``engine/pipeline`` → one
module per kind in ``engine/checks``) under ``limits.scan_timeout``, and the policy
(``engine/policy``) makes the Decision. The front door then acts on it (delivers through
``delivery``, quarantines, or answers with ``core/replies``) and calls :meth:`Engine.settle` with
the reply it gave: that logs the one summary line per message, feeds the metrics (``observer``)
and tells the rules that want to know what finally became of the message (``RuleSet.settle``:
rate limits count only messages that were delivered).

An Engine is one generation of config, rules and policy, immutable; a reload builds a new one and
swaps one reference (service/runtime.py), and a message keeps the engine it started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Callable

from smtpfilter.config.settings import Config
from smtpfilter.core import logline, replies
from smtpfilter.core.envelope import Client, Envelope
from smtpfilter.core.errors import RuleFailure
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Action, Decision
from smtpfilter.engine.pipeline import evaluate
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import RuleSet

__all__ = [
    "Engine", "Observer", "log_exceeded", "message_id", "outcome_of", "status_of", "summary_line",
]

log = logging.getLogger(__name__)

# Called once per message after the front door answered: (decision or None, reply, seconds).
Observer = Callable[[Decision | None, str, float], None]


class Engine:
    """Config, rules and policy of one generation, and the one way to have a message judged."""

    __slots__ = ("config", "ruleset", "policy", "observer")

    def __init__(
        self, config: Config, ruleset: RuleSet, *, observer: Observer | None = None
    ) -> None:
        self.config = config
        self.ruleset = ruleset
        self.policy = Policy.for_config(config)
        self.observer = observer

    async def judge(
        self,
        envelope: Envelope,
        client: Client,
        data: bytes | bytearray,
        *,
        received_at: datetime,
        stuffed: bool = True,
    ) -> tuple[MessageContext, Decision | None, str | None]:
        """(the message as the rules saw it, the Decision, None), or, when no decision could be
        made (the rules overran ``limits.scan_timeout``, a check raised), (message, None, the
        451 reply): Postfix keeps the message and tries again.

        ``data`` is CRLF wire form, dot-stuffed unless ``stuffed`` is False (the milter's
        content, as Postfix streams it: see MessageContext.stuffed)."""
        limits = self.config.limits
        msg = MessageContext.build(
            data,
            received_at=received_at,
            mail_from=envelope.mail_from or "",
            rcpt_to=envelope.rcpt_to,
            client=client,
            header_limit=limits.header_size,
            stuffed=stuffed,
        )
        try:
            decision = await asyncio.wait_for(
                evaluate(self.ruleset, msg, self.policy), limits.scan_timeout
            )
        except TimeoutError:
            log.warning("%s: rules took longer than %gs (limits.scan_timeout); answering 451",
                        logline.queue_id(client), limits.scan_timeout, extra=logline.PER_MESSAGE)
            self._give_back(msg)
            return msg, None, replies.R451_SCAN_TIMEOUT
        except RuleFailure as failure:
            log.error("%s: %s; answering 451", logline.queue_id(client), failure,
                      exc_info=failure.__cause__, extra=logline.PER_MESSAGE)
            self._give_back(msg)
            return msg, None, replies.R451_LOCAL_ERROR
        except BaseException:  # cancelled (the client left): the front door never sees msg
            self._give_back(msg)
            raise
        finally:
            # After the rules: the MIME walk and archive listings record their limits as the
            # rules that need them run (core/message.py, MessageContext.exceed).
            log_exceeded(msg)
        return msg, decision, None

    def _give_back(self, msg: MessageContext) -> None:
        """No decision: whatever the rules reserved for this message is not counted (a later
        settle of the same message finds nothing)."""
        if self.ruleset.settlers:
            self.ruleset.settle(msg, None, False)

    def settle(
        self,
        envelope: Envelope,
        client: Client,
        size: int,
        decision: Decision | None,
        reply: str,
        started: float,
        *extra: str,
        msg: MessageContext | None = None,
    ) -> None:
        """After the front door answered ``reply`` (time.monotonic() ``started``): the summary
        line, the observer (metrics, counters) and the rules' post-decision hooks, which need
        ``msg``, the message :meth:`judge` returned (None when it never got that far)."""
        elapsed = time.monotonic() - started
        if self.observer is not None:
            self.observer(decision, reply, elapsed)
        log.info(
            "%s",
            summary_line(client, envelope.mail_from or "", envelope.rcpt_to, size, decision,
                         reply, elapsed, *extra, message_id=message_id(msg)),
        )
        if decision is not None:
            if log.isEnabledFor(logging.DEBUG):
                for verdict in decision.verdicts:
                    log.debug(
                        "%s: rule %s: %s %s (score %g)",
                        logline.queue_id(client),
                        verdict.rule,
                        verdict.finding.code,
                        verdict.finding.reason,
                        verdict.score,
                    )
        if msg is not None and self.ruleset.settlers:
            self.ruleset.settle(msg, decision, outcome_of(decision, reply) == "delivered")


def outcome_of(decision: Decision | None, reply: str) -> str:
    """What happened to the message, by the reply the front door gave (a delivery decision whose
    re-injection failed was deferred, not delivered): delivered, rejected, discarded,
    quarantined or deferred."""
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


# outcome_of → the summary line's status word: Postfix's own (smtp(8), qmgr(8): sent, deferred,
# bounced; a 5xx from us makes Postfix bounce the message after-queue, or refuse it
# before-queue) and our two extensions for what Postfix has no word for.
_STATUS = {
    "delivered": "sent",
    "deferred": "deferred",
    "rejected": "bounced",
    "discarded": "discarded",
    "quarantined": "quarantined",
}


def status_of(decision: Decision | None, reply: str) -> str:
    """``sent``, ``deferred``, ``bounced``, ``discarded`` or ``quarantined``: what Postfix was
    told, in Postfix's words. A failed quarantine or re-injection answered 451 is
    ``deferred``, whatever the decision was."""
    return _STATUS[outcome_of(decision, reply)]


def message_id(msg: MessageContext | None) -> str | None:
    """The Message-ID header's value for the summary line, or None when there is none (the
    field is then left out, as Postfix's cleanup(8) does)."""
    if msg is None:
        return None
    found = msg.headers.get_all("message-id")
    if not found or not found[0].text:
        return None
    return logline.value(found[0].text[:_MESSAGE_ID_LIMIT])


# A Message-ID is at most a line (RFC 5322 §2.1.1: 998); the log keeps a bounded part of it.
_MESSAGE_ID_LIMIT = 200


def summary_line(
    client: Client,
    mail_from: str,
    rcpts: tuple[str, ...] | list[str],
    size: int | None,
    decision: Decision | None,
    reply: str,
    elapsed: float,
    *extra: str,
    message_id: str | None = None,
) -> str:
    """The one INFO line per message, Postfix-shaped (README "Log format"; every front door
    alike)::

        918CF20C401: client=host[1.2.3.4], from=<a@b>, to=<c@d>, size=425,
        message-id=<x@y>, action=accept, score=0, rules=-, delay=0.01,
        status=sent (250 2.0.0 Ok: queued as 9441F20C025)

    Fields in this order, those that do not exist left out (client, sasl_username, size,
    message-id, by, would, would_by); ``extra`` (``name=value`` of a front door) before ``delay``; ``status``
    always last, since its reply text may hold anything.
    """
    fields = []
    described = logline.client_field(client)
    if described is not None:
        fields.append(f"client={described}")
    if client.sasl_user:  # the milter's {auth_authen}: Postfix's smtpd logs it so too
        fields.append(f"sasl_username={logline.value(client.sasl_user)}")
    fields.append(f"from=<{logline.value(mail_from)}>")
    fields.extend(logline.addresses("to", rcpts))
    if size is not None:
        fields.append(f"size={size}")
    if message_id is not None:
        fields.append(f"message-id={message_id}")
    fields.extend(logline.decision_fields(decision) if decision else ["action=error"])
    fields.extend(extra)
    fields.append(f"delay={elapsed:.2f}")
    fields.append(f"status={status_of(decision, reply)} ({logline.reply_shown(reply)})")
    return f"{logline.queue_id(client)}: {', '.join(fields)}"


def log_exceeded(msg: MessageContext) -> None:
    """A WARNING for each parse limit the message went past, whether or not a rule watches it:
    part of the message was not judged (every front door alike). ``QUEUEID: warning: ...``
    in syslog, like Postfix's own warnings about one message."""
    for exceeded in msg.exceeded():
        log.warning(
            "%s: from=<%s>: %s", logline.queue_id(msg.client), logline.value(msg.mail_from),
            exceeded.reason, extra=logline.PER_MESSAGE,
        )
