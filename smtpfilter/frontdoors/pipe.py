"""FILTER_README's simple content filter: one message on stdin, run by pipe(8) per message.

    smtpfilter pipe [--config=PATH] [--client-address=IP] [--client-name=NAME]
                    [--client-helo=HELO] [--queue-id=ID] --sender=SENDER -- RECIPIENT...

(``-f SENDER`` works too, as in FILTER_README's shell example.) The same engine as
``smtpfilter serve`` (:meth:`smtpfilter.engine.judge.Engine.judge`: rules, policy, scan timeout,
the one summary line); accepted mail is re-injected over SMTP into the after-filter smtpd
(``forward``, 127.0.0.1:10026) with :func:`smtpfilter.delivery.deliver.deliver`, XFORWARD
included, so the second pass logs ``orig_client=`` and
``orig_queue_id=`` and mail is not filtered twice (the 10026 smtpd has ``content_filter=``).

The exit status is all pipe(8) acts on (sysexits(3)):

| status            | when                                              | Postfix then            |
|-------------------|---------------------------------------------------|-------------------------|
| 0 EX_OK           | 10026 queued the message, a rule discarded it, or | forgets it              |
|                   | it is stored in quarantine                        |                         |
| 69 EX_UNAVAILABLE | a rule rejected it, or 10026 refused it for good  | bounces it to the sender|
| 75 EX_TEMPFAIL    | tempfail, timeout, 10026 down, any error of ours  | keeps it, retries later |

Nothing else ever: pipe(8) bounces mail on an unknown status (exit 1 is "Command died with
status 1", a bounce), so every exception, usage error included, ends in 75. The first output
line is the reply text with its enhanced status code ("5.7.1 Message content rejected
(OLD_DATE)"): pipe(8) logs it, puts it in the bounce, and lets a 4.X.X/5.X.X code take
precedence over the exit status. Log lines follow it (syslog with ``log: {target: syslog}``;
otherwise only warnings, on stderr, which pipe(8) appends to its log line).

What pipe(8) does not hand over is lost in this mode: DSN requests (NOTIFY, ORCPT, RET,
ENVID) and the client's port and protocol. The after-queue daemon keeps all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import logging
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from smtpfilter.config.settings import Config, ConfigError, load_config
from smtpfilter.core import logline, replies, wire
from smtpfilter.core.envelope import Client, Envelope, Recipient, without_ipv6_prefix
from smtpfilter.core.message import MessageContext
from smtpfilter.core.replies import Reply
from smtpfilter.core.text import reply_text
from smtpfilter.core.verdict import Action, Decision
from smtpfilter.core.wire import outgoing
from smtpfilter.delivery import quarantine
from smtpfilter.delivery.deliver import deliver
from smtpfilter.delivery.downstream import DownstreamPool
from smtpfilter.engine.judge import Engine
from smtpfilter.engine.rules import RuleSet, rules_for
from smtpfilter.service.logs import setup_logging

__all__ = ["EX_OK", "EX_TEMPFAIL", "EX_UNAVAILABLE", "Outcome", "filter_message", "main"]

log = logging.getLogger(__name__)

EX_OK = 0
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75

_ENHANCED_DEFAULT = {"2": "2.0.0", "4": "4.3.0", "5": "5.3.0"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The exit status for pipe(8) and the one line it logs and quotes."""

    status: int
    text: str

    @classmethod
    def from_reply(cls, reply: str) -> "Outcome":
        """An SMTP reply ("550 5.7.1 ...", possibly multi-line) → status and text.

        The text starts with an enhanced status code, which pipe(8) uses (pipe(8),
        DIAGNOSTICS); a reply without one gets the class's generic code."""
        code = reply[:1]
        status = {"2": EX_OK, "5": EX_UNAVAILABLE}.get(code, EX_TEMPFAIL)
        text = " / ".join(line[4:] for line in reply.split("\r\n"))
        if not text[:1].isdigit():
            text = f"{_ENHANCED_DEFAULT.get(code, '4.3.0')} {text}"
        return cls(status, reply_text(text))


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error, which pipe(8) turns into a bounce: raise instead."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="smtpfilter pipe",
        description="Filter one message from stdin and re-inject it (FILTER_README simple mode).",
    )
    parser.add_argument("--config", "-c", help="YAML config file (default: built-in)")
    parser.add_argument("--sender", "-f", required=True, help="envelope sender (empty: <>)")
    parser.add_argument("--client-address", default="", help="pipe(8) ${client_address}")
    parser.add_argument("--client-name", default="", help="pipe(8) ${client_hostname}")
    parser.add_argument("--client-helo", default="", help="pipe(8) ${client_helo}")
    parser.add_argument("--queue-id", default="", help="pipe(8) ${queue_id}")
    parser.add_argument("recipients", nargs="+", metavar="RECIPIENT")
    return parser


def client_from(args: argparse.Namespace) -> Client:
    """pipe(8)'s macros → the Client that rules and XFORWARD use (empty means unknown)."""
    address = args.client_address.strip() or None
    if address is not None:
        address = without_ipv6_prefix(address)
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            log.warning('--client-address "%s" is not an IP address: ignored', address)
            address = None
    return Client(
        addr=address,
        name=args.client_name.strip() or None,
        helo=args.client_helo.strip() or None,
        ident=args.queue_id.strip() or None,
    )


def message_bytes(raw: bytes) -> bytes:
    """pipe(8)'s output (LF lines; a "From " line with flags=F) → SMTP wire form."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return wire.to_wire(raw)


def envelope_of(sender: str, recipients: Sequence[str], client: Client) -> Envelope:
    """The envelope pipe(8) hands us: no SMTP parameters (pipe(8) passes none on), the client
    as XFORWARD attributes."""
    return Envelope(
        mail_from=sender,
        mail_path=sender,
        recipients=[Recipient(rcpt, rcpt) for rcpt in recipients],
        xforward=client.xforward(),
    )


async def filter_message(
    engine: Engine, data: bytes, envelope: Envelope, client: Client,
    judged: list[MessageContext] | None = None,
) -> tuple[Outcome, Decision | None]:
    """Judge one message (wire form) and deliver it to 10026 if the decision says so;
    ``judged`` gets the message the engine judged (for Engine.settle)."""
    config = engine.config
    msg, decision, failure = await engine.judge(
        envelope, client, data, received_at=datetime.now(timezone.utc)
    )
    if judged is not None:
        judged.append(msg)
    if decision is None:
        return Outcome.from_reply(failure or replies.R451_LOCAL_ERROR), None
    if decision.action is Action.QUARANTINE:
        # Exit 0 only once the copy is on disk: pipe(8) forgets the message at 0.
        reply = await quarantine.store_message(config, msg, envelope, decision)
        return Outcome.from_reply(reply), decision
    if not decision.delivers:
        reply = replies.for_decision(decision) or replies.R451_LOCAL_ERROR
        return Outcome.from_reply(reply), decision
    parts = outgoing(
        msg, decision.headers, *config.headers.incoming(decision.headers), drop=decision.drop
    )
    return await reinject(config, parts, envelope, size=msg.size, client=client), decision


def _not_delivered(client: Client, envelope: Envelope, problem: str, reply: str,
                   level: int = logging.WARNING) -> Outcome:
    """The outcome for ``reply``, logged as Postfix logs a problem with one message (the queue
    id first: ``grep QUEUEID mail.log`` finds it beside pipe(8)'s own line). Ours is always a
    4xx (Postfix keeps the message); a 5xx is 10026's own refusal, relayed."""
    fields = [f"from=<{logline.value(envelope.mail_from)}>"]
    described = logline.client_field(client)
    if described is not None:
        fields.insert(0, f"client={described}")
    told = "bounced" if reply[:1] == "5" else "deferred"  # Postfix's words: 69 bounces
    log.log(level, "%s: %s; %s; %s (%s)", logline.queue_id(client), problem,
            ", ".join(fields), told, logline.reply_shown(reply), extra=logline.PER_MESSAGE)
    return Outcome.from_reply(reply)


async def reinject(config: Config, parts: list, envelope: Envelope, *, size: int,
                   client: Client | None = None) -> Outcome:
    """One SMTP transaction with the 10026 smtpd (delivery.deliver); its reply decides."""
    params = {"SIZE": f"SIZE={size}"}
    if not all(bytes(part).isascii() for part in parts):
        params["BODY"] = "BODY=8BITMIME"
    if not (envelope.mail_from + "".join(envelope.rcpt_to)).isascii():
        params["SMTPUTF8"] = "SMTPUTF8"
    sending = replace(envelope, mail_params=params)
    pool = DownstreamPool.for_config(config, keep_idle=False)
    sent = await deliver(pool, sending, parts, all_or_nothing=True)
    error = sent.error
    client = client or Client()
    if error is not None:
        reply = replies.downstream_failure(error.stage)
        if not sent.connected:
            problem = f"cannot reach {config.forward} ({error.detail})"
        elif error.sent_data:
            problem = (f"{config.forward} failed after the final '.' ({error}): it may have "
                       "queued the message; Postfix will retry, so it may be delivered twice")
            return _not_delivered(client, envelope, problem, reply, logging.ERROR)
        else:
            problem = f"{config.forward} failed at {error}"
        return _not_delivered(client, envelope, problem, reply)
    if sent.smtputf8_unsupported:
        problem = f"SMTPUTF8 address but {config.forward} does not announce SMTPUTF8"
        return _not_delivered(client, envelope, problem, replies.R451_SMTPUTF8_UNSUPPORTED,
                              logging.ERROR)
    assert sent.reply is not None or sent.refused  # every other stage leaves 10026's reply
    if sent.stage == "MAIL":
        return _refused(client, envelope, config, "MAIL FROM", sent.reply)
    if sent.stage == "RCPT":
        # Any temporary refusal makes it all temporary (and the text must then carry a 4.X.X
        # code: pipe(8) lets the text's code override the exit status).
        temporary = [(r, a) for r, a in sent.refused if a.code < 500]
        rcpt, answer = (temporary or sent.refused)[0]
        return _refused(client, envelope, config, f"RCPT TO:<{logline.value(rcpt.path)}>",
                        answer)
    if not sent.delivered:
        return _refused(client, envelope, config, "end of DATA", sent.reply)
    return Outcome.from_reply(replies.relay(sent.reply))


def _refused(client: Client, envelope: Envelope, config: Config, stage: str,
             reply: Reply) -> Outcome:
    """10026 refused the message: its reply decides, logged like a failure (the forward
    address, queue id and client first, what pipe(8) was told last)."""
    relayed = replies.relay(reply)
    problem = f"{config.forward} refused {stage}: {logline.reply_shown(str(reply))}"
    return _not_delivered(client, envelope, problem, relayed)


def _load(path: str | None) -> tuple[Config, RuleSet]:
    config = load_config(Path(path) if path else None)
    return config, rules_for(config)


def run(argv: Sequence[str], stdin: io.BufferedIOBase, stdout, stderr) -> int:
    """The whole command; returns 0, 69 or 75 whatever happens."""
    started = time.monotonic()
    buffered = io.StringIO()
    outcome: Outcome | None = Outcome.from_reply(replies.R451_LOCAL_ERROR)
    try:
        args = build_parser().parse_args(list(argv))
        try:
            config, ruleset = _load(args.config)
        except ConfigError as error:
            for problem in error.problems[1:]:
                print(f"smtpfilter: {problem}", file=buffered)
            first = error.problems[0] if error.problems else "unknown problem"
            text = f"4.3.5 smtpfilter configuration error: {first}"
            outcome = Outcome(EX_TEMPFAIL, reply_text(text))
            return outcome.status
        if config.log.target == "syslog":
            setup_logging(config.log)
        else:
            # stderr is pipe(8)'s, not a log: keep warnings and errors, after the reply line.
            setup_logging(config.log, stream=buffered)
            logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
        for warning in ruleset.warnings:  # a table line skipped, a table with nothing usable
            log.warning("%s", warning)
        limit = config.limits.data_size
        raw = stdin.read(limit + 1) if limit else stdin.read()
        if limit and len(raw) > limit:
            outcome = Outcome.from_reply(replies.R552_TOO_BIG)
            return outcome.status
        data = message_bytes(raw)
        client = client_from(args)  # after logging is set up: it may warn
        envelope = envelope_of(args.sender, args.recipients, client)
        engine = Engine(config, ruleset)

        async def judge() -> Outcome:
            judged: list[MessageContext] = []
            result, decision = Outcome.from_reply(replies.R451_LOCAL_ERROR), None
            try:
                result, decision = await filter_message(engine, data, envelope, client, judged)
                return result
            finally:
                # Inside the loop: a rate limit confirms or releases its reservation here, and
                # the state's aclose() waits for that before the process exits.
                engine.settle(
                    envelope, client, len(data), decision, result.text, started,
                    f"exit={result.status}", msg=judged[0] if judged else None,
                )
                await ruleset.env.dns.aclose()
                await ruleset.env.state.aclose()

        outcome = asyncio.run(judge())
        return outcome.status
    except SystemExit as exit:  # --help, when run by hand
        if exit.code in (0, None):
            outcome = None
            return EX_OK
        return EX_TEMPFAIL
    except _UsageError as error:
        print(f"smtpfilter pipe: {error}", file=buffered)
        outcome = Outcome(EX_TEMPFAIL, reply_text(f"4.3.5 smtpfilter pipe: {error}"))
        return outcome.status
    except BaseException as error:  # anything at all: Postfix must keep the mail
        # One line, where pipe(8) appends it to its log line and its defer notice: a traceback
        # there is a page of Python in the admin's mail.log. The innermost frame says where.
        import traceback

        frames = traceback.extract_tb(error.__traceback__)
        at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        print(f"smtpfilter pipe: {type(error).__name__}: {error}{at}", file=buffered)
        outcome = Outcome.from_reply(replies.R451_LOCAL_ERROR)
        return outcome.status
    finally:
        try:
            if outcome is not None:
                print(outcome.text, file=stdout, flush=True)
            stderr.write(buffered.getvalue())
            stderr.flush()
        except BaseException:
            pass


def main(argv: Sequence[str]) -> int:
    return run(argv, sys.stdin.buffer, sys.stdout, sys.stderr)
