"""Postfix SMTP access policy delegation (SMTPD_POLICY_README): ``smtpfilter policy``.

Postfix's smtpd connects (``check_policy_service inet:127.0.0.1:10040``), sends a request of
``name=value`` lines ended by an empty line, and reads one ``action=...`` line ended by an empty
line; the connection is reused for many requests. Requests about one message carry the same
``instance`` and come over the same connection; a request with another instance means the
previous message was delivered or abandoned. In case of trouble the server must not answer: it
logs and disconnects, and Postfix applies ``default_action`` (smtpd_policy_service_default_action,
451 4.3.5 by default), so no failure of ours can turn into a 5xx.

The rules are the ``ratelimit`` rules of the same rule files as the content filter (the other
kinds need the message, which does not exist yet at RCPT), judged by the same policy (mode:
warn, dry_run and score thresholds included). main.cf, both hooks (RCPT decides,
END-OF-MESSAGE counts)::

    smtpd_recipient_restrictions = ..., reject_unauth_destination,
        check_policy_service { inet:127.0.0.1:10040, timeout=10s, default_action=DUNNO }
    smtpd_end_of_data_restrictions =
        check_policy_service { inet:127.0.0.1:10040, timeout=10s, default_action=DUNNO }

What happens per request (``protocol_state``):

- ``RCPT``: the ratelimit rules run for this recipient. A key about the message (client_ip,
  sender, sasl_user...) is reserved at the first RCPT where it passes and counts once per
  message; a per-recipient key (recipient, recipient_domain) is reserved for each recipient.
  The decision answers: tempfail -> ``DEFER_IF_PERMIT`` (450 unless a later restriction
  rejects), reject -> ``REJECT`` (5xx to the client, before the queue: no backscatter),
  quarantine -> ``HOLD``, discard -> ``DISCARD``, tag/warn with a finding -> ``WARN`` (logged
  by Postfix), nothing -> ``DUNNO`` (never ``OK``, which would skip the restrictions after us).
  A refused recipient's per-recipient reservations are given back at once.
- ``END-OF-MESSAGE``: Postfix is about to accept the message: its reservations are confirmed
  (released instead when a recipient got HOLD or DISCARD: as in the content filter, only
  delivered mail counts).
- any other state: ``DUNNO``.

A message abandoned before END-OF-MESSAGE (RSET, QUIT, a later reject, a lost connection)
releases its reservations when the next instance starts or the connection closes. Postfix
reports neither RSET nor QUIT, so until that smtpd process sends its next request or exits
(``max_idle``, 100 s, closes its policy connection) an abandoned message's reservations still
count for others: conservative, never an overrun. With
``policy_service.count_at: rcpt`` (no smtpd_end_of_data_restrictions hook) reservations are
confirmed at RCPT instead: a message Postfix refuses later still counts. Postfix closes an idle
policy connection after ``smtpd_policy_service_max_idle`` (300 s) and any after
``smtpd_policy_service_max_ttl`` (1000 s): a message in progress on a connection closed then is
not counted (rare).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone

from smtpfilter.core import logline
from smtpfilter.core.envelope import Client
from smtpfilter.core.message import HeaderBlock, MessageContext
from smtpfilter.core.replies import starts_with_status
from smtpfilter.core.text import printable
from smtpfilter.core.verdict import Action, Decision
from smtpfilter.engine.checks.ratelimit import PER_RECIPIENT, RatelimitCheck
from smtpfilter.engine.judge import Engine
from smtpfilter.engine.pipeline import evaluate
from smtpfilter.engine.rules import RuleSet
from smtpfilter.engine.state import Ticket
from smtpfilter.service.lifecycle import Daemon
from smtpfilter.service.runtime import Runtime

__all__ = ["PolicyDaemon", "PolicyFrontDoor", "ProtocolError", "access_action", "read_request"]

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024  # bytes; Postfix's requests are well under 2 KB
MAX_ATTRIBUTES = 100


class ProtocolError(Exception):
    """Not a policy request we can read: log and disconnect, never answer (the README)."""


async def read_request(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """One request as a dict of lower-cased names; None at a clean EOF between requests."""
    attributes: dict[str, str] = {}
    size = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            if not error.partial and not attributes:
                return None
            raise ProtocolError("connection closed in the middle of a request") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError("a request line longer than the request limit") from None
        size += len(line)
        if size > MAX_REQUEST or len(attributes) > MAX_ATTRIBUTES:
            raise ProtocolError("request too large")
        line = line.rstrip(b"\r\n")
        if not line:
            if not attributes:
                raise ProtocolError("empty request")
            return attributes
        name, sep, value = line.partition(b"=")
        if not sep:
            raise ProtocolError(f"not a name=value line: {printable(line[:60].decode('latin-1'))}")
        # SMTPD_POLICY_README: a server may keep the first value of a repeated name or the last.
        attributes.setdefault(
            name.decode("ascii", "replace").lower(), value.decode("utf-8", "surrogateescape")
        )


def _text(decision: Decision, enhanced: str, default: str) -> str:
    text = decision.text or default
    return text if starts_with_status(text) else f"{enhanced} {text}"


def access_action(decision: Decision) -> str:
    """The access(5) action Postfix gets for one recipient's decision (SMTPD_POLICY_README:
    any action an access table may return)."""
    action = decision.action
    shown = next(
        (v.label for v in decision.verdicts if v.rule == decision.rule), decision.rule or "score"
    )
    if action is Action.REJECT:
        return "REJECT " + _text(decision, "5.7.1", f"Rate limit exceeded: {shown}")
    if action is Action.TEMPFAIL:
        text = _text(decision, "4.7.1", f"Rate limit exceeded: {shown}, try again later")
        return "DEFER_IF_PERMIT " + text
    if action is Action.QUARANTINE:
        return f"HOLD rate limit {shown}"
    if action is Action.DISCARD:
        return f"DISCARD rate limit {shown}"
    if action in (Action.TAG, Action.WARN) or decision.intended not in (None, Action.ACCEPT):
        return f"WARN rate limit {decision.rules_hit}"
    return "DUNNO"


@dataclass
class _Message:
    """What one connection remembers about the message in progress (one ``instance``)."""

    instance: str
    engine: Engine  # the generation of rules its first request saw
    started: float = field(default_factory=time.monotonic)
    client: Client = field(default_factory=Client)
    sender: str = ""
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    rules_hit: list[str] = field(default_factory=list)
    held: list[Ticket] = field(default_factory=list)  # reservations to confirm or release
    counted: set[str] = field(default_factory=set)  # rules whose per-message key passed
    not_delivered: bool = False  # a recipient got HOLD or DISCARD: do not count it


def _ratelimit_rules(ruleset: RuleSet, skip: set[str]) -> RuleSet:
    rules = tuple(r for r in ruleset.rules if r.kind == "ratelimit" and r.name not in skip)
    return RuleSet(rules, ruleset.files, ruleset.env)


class PolicyFrontDoor:
    """The policy connections of one daemon (service.lifecycle.FrontDoor)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._writers: weakref.WeakKeyDictionary[asyncio.StreamWriter, bool] = (
            weakref.WeakKeyDictionary()
        )  # writer -> busy (a request being answered)
        self._tasks: set[asyncio.Task] = set()

    def protocol(self) -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=MAX_REQUEST)
        return asyncio.StreamReaderProtocol(reader, self._connected)

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifecycle (service/lifecycle.py) ------------------------------------------------
    def make_room(self) -> bool:
        return False  # every connection is an smtpd's: none is ours to drop

    def close_idle(self) -> None:
        for writer, busy in list(self._writers.items()):
            if not busy:
                writer.close()  # Postfix reconnects for its next request, to whoever listens

    def open_sessions(self) -> int:
        return len(self._writers)

    def abort(self) -> None:
        for writer in list(self._writers):
            writer.close()

    # --- one connection ------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        runtime = self.runtime
        if not runtime.accepting:
            writer.close()
            return
        runtime.sessions += 1
        self._writers[writer] = False
        current: _Message | None = None
        peer = writer.get_extra_info("peername")
        try:
            while True:
                self._writers[writer] = False
                async with asyncio.timeout(runtime.config.limits.idle_timeout):
                    request = await read_request(reader)
                if request is None:
                    break
                self._writers[writer] = True
                instance = request.get("instance", "")
                if current is None or current.instance != instance:
                    if current is not None:
                        self._finish(current, confirm=False)  # abandoned (RSET, QUIT, reject)
                    current = _Message(instance, runtime.engine)
                answer = await self._decide(current, request)
                if request.get("protocol_state", "").upper() == "END-OF-MESSAGE":
                    current = None
                writer.write(f"action={answer}\n\n".encode("utf-8", "surrogateescape"))
                await writer.drain()
        except ProtocolError as error:
            log.warning("policy client %s: %s; disconnecting without an answer",
                        logline.peer(peer), error)
        except TimeoutError:
            log.debug("policy client %s idle for limits.idle_timeout; closing", logline.peer(peer))
        except ConnectionError:
            pass  # Postfix closed the connection (max_idle, max_ttl, smtpd exit)
        except Exception:  # our bug: no answer, Postfix applies its default_action (4xx)
            log.exception("policy request failed; disconnecting without an answer")
        finally:
            if current is not None:
                self._finish(current, confirm=False)
            self._writers.pop(writer, None)
            runtime.sessions -= 1
            writer.close()

    async def _decide(self, message: _Message, request: dict[str, str]) -> str:
        state = request.get("protocol_state", "").upper()
        if state == "END-OF-MESSAGE":
            self._finish(message, confirm=True)
            return "DUNNO"
        if state != "RCPT":
            return "DUNNO"
        engine = message.engine
        config = engine.config
        recipient = request.get("recipient", "")
        message.sender = request.get("sender", "")
        message.client = Client(
            addr=request.get("client_address") or None,
            name=request.get("client_name") or None,
            helo=request.get("helo_name") or None,
            ident=request.get("queue_id") or None,
            sasl_user=request.get("sasl_username") or None,
        )
        # The rules see one recipient; a per-message key already reserved for this message
        # is not asked again (counted once per message).
        ruleset = _ratelimit_rules(engine.ruleset, message.counted)
        msg = MessageContext(
            received_at=datetime.now(timezone.utc),
            mail_from=message.sender,
            rcpt_to=(recipient,) if recipient else (),
            client=message.client,
            data=b"",
            headers=HeaderBlock([], 0),
            size=int(size) if (size := request.get("size", "")).isdigit() else 0,
        )
        decision = await evaluate(ruleset, msg, engine.policy)
        answer = access_action(decision)
        verb = answer.split(" ", 1)[0]
        refused = verb in ("REJECT", "DEFER_IF_PERMIT")
        if verb in ("HOLD", "DISCARD"):
            message.not_delivered = True
        (message.refused if refused else message.accepted).append(recipient)
        message.rules_hit.extend(v.label for v in decision.verdicts)
        state_service = engine.ruleset.env.state
        findings = {v.rule for v in decision.verdicts}
        for rule in ruleset.rules:
            check = rule.check
            assert isinstance(check, RatelimitCheck)
            granted, unknown = check.take(msg)
            state_service.settle(unknown, False, certain=False)
            per_recipient = check.key in PER_RECIPIENT
            if per_recipient and refused:
                state_service.settle(granted, False)  # that recipient will not be delivered
                continue
            if not per_recipient and rule.name not in findings and (granted or not unknown):
                message.counted.add(rule.name)
            if config.policy_service.count_at == "rcpt":
                state_service.settle(granted, True)
            else:
                message.held.extend(granted)
        if answer != "DUNNO":
            # One line per recipient answered with something else than DUNNO: its outcome
            # differs from the others' (README "Log format").
            fields = [*_who(message, "rcpt"), *logline.addresses("to", [printable(recipient)]),
                      *logline.decision_fields(decision)]
            # Last, as a summary line's status: the answer's text may hold ", ".
            fields.append(f"status=answered ({printable(answer)})")
            log.info("%s: %s", logline.queue_id(message.client), ", ".join(fields))
        return answer

    def _finish(self, message: _Message, *, confirm: bool) -> None:
        """The message is accepted (END-OF-MESSAGE) or abandoned: count or give back what it
        reserved, and log its one summary line."""
        delivered = confirm and not message.not_delivered
        message.engine.ruleset.env.state.settle(message.held, delivered)
        message.held = []
        if not (message.accepted or message.refused):
            return
        if confirm:
            outcome = "counted" if delivered else "uncounted (held or discarded)"
        else:
            outcome = "abandoned"
        labels = "+".join(logline.value(label) for label in dict.fromkeys(message.rules_hit))
        delay = f"delay={time.monotonic() - message.started:.2f}"
        # One line per outcome (README "Log format"): the recipients Postfix went on with, and
        # those we refused (each also has its own line from the RCPT stage).
        for recipients, status in ((message.accepted, outcome), (message.refused, "refused")):
            if not recipients:
                continue
            fields = [*_who(message, "message"),
                      *logline.addresses("to", map(printable, recipients)),
                      f"rules={labels or '-'}", delay, f"status={status}"]
            log.info("%s: %s", logline.queue_id(message.client), ", ".join(fields))


def _who(message: _Message, line: str) -> list[str]:
    """The fields that open every policy line: ``policy=rcpt`` (the answer to one RCPT) or
    ``policy=message`` (what became of the message) marks the line as the policy service's (a
    content filter line has none), then client, sasl_username (the name Postfix's smtpd logs)
    and from; what Postfix did not send is left out."""
    fields = [f"policy={line}"]
    described = logline.client_field(message.client)
    if described is not None:
        fields.append(f"client={described}")
    if message.client.sasl_user:
        fields.append(f"sasl_username={logline.value(printable(message.client.sasl_user))}")
    fields.append(f"from=<{logline.value(printable(message.sender))}>")
    return fields


class PolicyDaemon(Daemon):
    """``smtpfilter policy``: the service lifecycle with the policy front door plugged in."""

    def make_front_door(self) -> PolicyFrontDoor:
        return PolicyFrontDoor(self.runtime)

    async def _start_metrics(self) -> None:
        # metrics.listen is the content filter's port (smtpfilter serve); two daemons cannot
        # both serve it. The policy service's decisions are in its log.
        return None

    async def start(self) -> None:
        await super().start()
        rules = [r for r in self.runtime.ruleset.rules if r.kind == "ratelimit"]
        log.info(
            "policy service: %d ratelimit rules, counting at %s, counters in %s",
            len(rules), self.config.policy_service.count_at,
            self.config.state.redis or "this process's memory",
        )
