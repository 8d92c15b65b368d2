"""ONE deliver(envelope, parts): a whole message into 10026 on a connection of its own, for
the front doors that hand over a message at once (pipe mode) and for a quarantine release.

The SMTP front door does not use it: there MAIL and RCPT go to 10026 in lockstep with Postfix's
own commands (frontdoors/smtp/transaction.py), and only DATA is sent after the decision. Both
paths choose MAIL and RCPT parameters with the same :meth:`Downstream.mail_params` and
:meth:`Downstream.rcpt_params`, and send XFORWARD with the same :meth:`Downstream.xforward`.

The result says what happened, stage by stage; each caller turns it into its own answer
(pipe(8)'s exit status, the release report). Nothing here answers anyone or logs a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from smtpfilter.core.envelope import Envelope, Recipient
from smtpfilter.core.errors import DownstreamError
from smtpfilter.core.replies import Reply
from smtpfilter.delivery.downstream import DownstreamPool

__all__ = ["Delivery", "deliver"]


@dataclass(slots=True)
class Delivery:
    """What 10026 made of one message."""

    # The stage that ended the transaction: "MAIL" (refused, or SMTPUTF8 not announced),
    # "RCPT" (recipients refused: none accepted, or any with all_or_nothing), "end of DATA"
    # (10026's reply to ".", or to DATA itself); "" after an error (see error.stage).
    stage: str = ""
    connected: bool = False  # False: 10026 could not be reached at all (error says why)
    reply: Reply | None = None  # 10026's reply at that stage (None: see error/unsupported)
    accepted: list[Recipient] = field(default_factory=list)
    refused: list[tuple[Recipient, Reply]] = field(default_factory=list)
    error: DownstreamError | None = None  # 10026 unreachable, silent, or out of step
    smtputf8_unsupported: bool = False  # the message needs SMTPUTF8, 10026 did not announce it

    @property
    def delivered(self) -> bool:
        """10026 took the message (for ``accepted``): its positive reply to "."."""
        return (
            self.error is None
            and self.stage == "end of DATA"
            and self.reply is not None
            and self.reply.positive
        )


async def deliver(
    pool: DownstreamPool,
    envelope: Envelope,
    parts: Sequence[bytes | bytearray | memoryview],
    *,
    all_or_nothing: bool = False,
) -> Delivery:
    """Send ``parts`` (wire form: CRLF, dot-stuffed, no final ".") to 10026 for ``envelope``.

    XFORWARD first (the attributes 10026 announced), MAIL and RCPT with the parameters it can
    take, then DATA to the recipients it accepted. ``all_or_nothing``: a refused recipient
    refuses the message (pipe(8) has one exit status for all recipients: deliver to none rather
    than lose some). The connection is closed afterwards, whatever happened.
    """
    result = Delivery()
    try:
        conn = await pool.connect()
    except DownstreamError as error:
        result.error = error
        return result
    result.connected = True
    try:
        params = conn.mail_params(envelope.mail_params)
        if params is None:
            result.stage, result.smtputf8_unsupported = "MAIL", True
            return result
        await conn.xforward(envelope.xforward)
        reply = await conn.mail(envelope.mail_path, params)
        if not reply.positive:
            result.stage, result.reply = "MAIL", reply
            return result
        for rcpt in envelope.recipients:
            answer = await conn.rcpt(rcpt.path, conn.rcpt_params(rcpt.params))
            if answer.positive:
                result.accepted.append(rcpt)
            else:
                result.refused.append((rcpt, answer))
        if not result.accepted or (all_or_nothing and result.refused):
            await conn.rset()
            result.stage = "RCPT"
            return result
        result.stage = "end of DATA"
        result.reply = await conn.data(parts)
        if not result.reply.positive and conn.in_transaction:
            await conn.rset()  # 10026 refused DATA itself: end that transaction
    except DownstreamError as error:
        result.error = error
    finally:
        await conn.quit()
    return result
