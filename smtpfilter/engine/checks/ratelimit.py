"""The ``ratelimit`` rule kind: at most N counted messages per key in any PERIOD.

```yaml
state:
  redis: redis://127.0.0.1:6379/0    # optional; without it the counters live in this process
rules:
  - name: CLIENT_RATE
    check: ratelimit
    key: client_ip          # client_ip | client_net | sender | sender_domain | recipient |
    rate: 30/1m             #   recipient_domain | sasl_user
    action: tempfail
  - name: SENDER_BURST
    check: ratelimit
    key: sender
    rate: 100/1h
    burst: 20               # at most 20 at once; the rest one per 1h/100 = 36 s
    action: quarantine
    on_error: tempfail      # Redis down or slow: 451 instead of skipping the rule
```

Semantics (engine/state.py has the algorithm): ``rate: N/PERIOD`` lets N messages through at
once and limits the N+1st; never more than N are counted in any PERIOD. ``burst: B`` lets B
through at once and then one per PERIOD/N.

What counts: a message is counted once, and only when it is otherwise accepted, i.e. delivered
(10026 answered 2xx). ``observe`` *reserves* a slot (which already counts for every other
process, so two processes cannot both take the last one); after the front door answered, the
engine calls :meth:`RatelimitCheck.settle` with the outcome (engine/judge.py), which confirms
the reservation or gives it back. A message this rule limits is not counted either (its
reservation is refused), in enforce and in warn mode alike, so a warn-mode trial logs exactly
what enforcing would do.

Keys: ``client_ip`` (XFORWARD ADDR; local submissions without one are not limited),
``client_net`` (its /24 or /64), ``sender`` (the envelope sender, lower-cased; the null sender
of bounces is not limited), ``sender_domain``, ``recipient`` and ``recipient_domain`` (weighted
by recipients: a message to three recipients at one domain counts three for it; the content
filter cannot refuse single recipients after DATA, so it is all or nothing there),
``sasl_user`` (the SASL login: the policy service and the milter know it; XFORWARD does not
carry it, so the content filter skips such a rule).

Findings: ``LIMITED``, shown as ``CLIENT_RATE(81.2.69.10 31/30 per 1m)`` (the finding's label:
the value, the count with this message, N and the period); reply text groups ``$1`` the value,
``$2`` the count, ``$3`` N, ``$4`` the period, ``$5`` seconds until it would pass. And
``STATE_ERROR`` with ``on_error: tempfail`` only (451). Otherwise a failing store skips the
rule: logged once a minute, counted in metrics (smtpfilter_ratelimit_unchecked_total).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from smtpfilter.config.options import Options, parse_duration
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Action, Decision, Finding
from smtpfilter.engine.state import (
    Limit,
    StateError,
    StateService,
    Ticket,
    format_period,
    new_ticket,
)

__all__ = ["KEYS", "PER_RECIPIENT", "RatelimitCheck", "parse_rate"]

log = logging.getLogger(__name__)

KEYS = (
    "client_ip",
    "client_net",
    "sender",
    "sender_domain",
    "recipient",
    "recipient_domain",
    "sasl_user",
)
PER_RECIPIENT = frozenset({"recipient", "recipient_domain"})
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*(\S+)\s*$")
# The burst rule scans the window inside Redis: 0.55 ms at 1000 entries, 16 ms at 10000
# (prototype, REPORT.md §3), time during which Redis serves nobody else.
MAX_BURST_COUNT = 1000
_MEMO = "ratelimit:"  # + rule name: msg.memo key of that rule's reservations (_Held)


def parse_rate(text: str) -> tuple[int, float]:
    """``30/1m`` -> (30, 60.0); ``100/h`` is ``100/1h``; the period as options.py durations."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate such as 30/1m or 100/1h")
    count = int(match.group(1))
    period_text = match.group(2)
    if period_text[0].isalpha():
        period_text = "1" + period_text
    period = parse_duration(period_text)
    if count < 1 or period <= 0:
        raise ValueError(f"{text!r}: the count and the period must be more than zero")
    return count, period


def _domain(address: str) -> str | None:
    at = address.rfind("@")
    return address[at + 1 :].lower() if at >= 0 and at + 1 < len(address) else None


def _ip(addr: str) -> str | None:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return None  # "unknown" or garbage: not a client we can count


def _net(addr: str) -> str | None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(slots=True)
class _Held:
    """One rule's reservations for one message (in msg.memo until settled)."""

    tickets: list[Ticket]  # asked for
    allowed: list[Ticket] | None = None  # the store's answer; None: lost (timeout, cancelled)


@dataclass(frozen=True, slots=True)
class RatelimitCheck:
    kind: ClassVar[str] = "ratelimit"
    needs_env: ClassVar[bool] = True

    rule: str
    key: str
    limit: Limit
    state: StateService = field(compare=False)
    on_error: str = "ignore"

    @classmethod
    def from_options(cls, opts: Options, env) -> "RatelimitCheck | None":
        """``env``: the loader's RuleEnv; its ``state`` is the store every rule shares."""
        before = len(opts.problems)
        key = opts.choice("key", KEYS)
        if not opts.has("key"):
            opts.problem("key", "is required: " + " | ".join(KEYS))
        rate_text = opts.str("rate", required=True)
        burst = opts.integer("burst", None, minimum=1)
        on_error = opts.choice("on_error", ("ignore", "tempfail"), env.state.config.on_error)
        limit = None
        if rate_text is not None:
            try:
                count, period = parse_rate(rate_text)
            except ValueError as error:
                opts.problem("rate", str(error))
            else:
                if burst is not None and burst > count:
                    opts.problem("burst", f"{burst} is more than the rate's {count}: leave it out")
                elif burst is not None and count > MAX_BURST_COUNT:
                    opts.problem("burst", f"works with rates up to {MAX_BURST_COUNT} per period; "
                                 f"{count} is too many (use a shorter period)")
                else:
                    limit = Limit(count, period, burst)
        if key is None or limit is None or opts.rule is None or len(opts.problems) > before:
            return None
        return cls(opts.rule, key, limit, env.state, on_error)

    def describe(self) -> str:
        return f"{self.key} {self.limit.describe()}"

    # --- keys ----------------------------------------------------------------------------
    def normalise(self, value: str) -> str:
        """A key value as the rule counts it (``smtpfilter ratelimit show RULE:VALUE``)."""
        if self.key == "client_ip":
            return _ip(value) or value
        if self.key == "client_net":
            return _net(value.split("/")[0]) or value
        if self.key == "sasl_user":
            return value
        return value.lower()

    def values(self, msg: MessageContext) -> dict[str, int]:
        """Key value -> weight (recipients it stands for) for this message; {}: not limited."""
        client = msg.client
        key = self.key
        if key == "client_ip":
            value = _ip(client.addr) if client.addr else None
        elif key == "client_net":
            value = _net(client.addr) if client.addr else None
        elif key == "sender":
            value = msg.mail_from.lower() or None
        elif key == "sender_domain":
            value = _domain(msg.mail_from)
        elif key == "sasl_user":
            value = client.sasl_user or None
        elif key == "recipient":
            return dict(Counter(r.lower() for r in msg.rcpt_to))
        else:  # recipient_domain
            return dict(Counter(d for d in map(_domain, msg.rcpt_to) if d))
        return {value: 1} if value else {}

    # --- the message path ----------------------------------------------------------------
    async def observe(self, msg: MessageContext) -> Finding | None:
        values = self.values(msg)
        if not values:
            return None
        tickets = [new_ticket(f"{self.rule}:{value}", weight) for value, weight in values.items()]
        # Registered before asking: a reservation whose answer is lost (a timeout, or the
        # pipeline cancelling us because an earlier rule decided) is still given back.
        held = _Held(tickets)
        msg.memo[_MEMO + self.rule] = held
        state = self.state
        try:
            if len(tickets) == 1:
                outcomes = [await state.reserve(tickets[0], self.limit)]
            else:
                outcomes = await asyncio.gather(*(state.reserve(t, self.limit) for t in tickets))
        except StateError as error:
            state.unchecked += 1
            if self.on_error == "tempfail":
                return Finding(
                    "STATE_ERROR",
                    f"rate limit counters unavailable ({error}); deferring (on_error: tempfail)",
                    action=Action.TEMPFAIL,
                    text="4.3.0 Rate limit service unavailable, try again later",
                )
            return None  # fail open; the store logged it (once a minute)
        held.allowed = [t for t, o in zip(tickets, outcomes) if o.allowed]
        refused = [(t, o) for t, o in zip(tickets, outcomes) if not o.allowed]
        if not refused:
            return None
        # Some values passed, one did not: the message is limited, the others are given back
        # when it is settled (not delivered), or counted if a warn-mode rule lets it through.
        ticket, outcome = refused[0]
        value = ticket.key.split(":", 1)[1]
        period = format_period(self.limit.period)
        label = f"{value} {outcome.count}/{self.limit.count} per {period}"
        retry = "never" if math.isinf(outcome.retry_after) else f"{math.ceil(outcome.retry_after)}"
        return Finding(
            "LIMITED",
            f"{self.key} {label}; would pass in {retry}s",
            groups=(value, str(outcome.count), str(self.limit.count), period, retry),
            label=label,
        )

    def settle(self, msg: MessageContext, decision: Decision | None, delivered: bool) -> None:
        """After the front door answered: count this message's reservations (delivered: 10026
        took it) or give them back. Called once per message by the engine, whatever
        happened; a second call finds nothing."""
        held = msg.memo.pop(_MEMO + self.rule, None)
        if not isinstance(held, _Held):
            return
        if held.allowed is None:
            self.state.settle(held.tickets, delivered, certain=False)
        else:
            self.state.settle(held.allowed, delivered)

    def take(self, msg: MessageContext) -> tuple[list[Ticket], list[Ticket]]:
        """This rule's reservations for ``msg``, taken out of it (settle then finds nothing):
        (granted by the store, fate unknown). The policy service moves them from one
        recipient's context to the message they belong to."""
        held = msg.memo.pop(_MEMO + self.rule, None)
        if not isinstance(held, _Held):
            return [], []
        if held.allowed is None:
            return [], held.tickets
        return held.allowed, []
