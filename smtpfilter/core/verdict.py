"""What rules observe (Finding, Verdict) and what the policy decides (Decision).

Observation and decision are kept apart, as in rspamd and Haraka: a check only reports a
:class:`Finding` ("the Date is 45 days before receipt"); the rule wraps it into a :class:`Verdict`
with its score and optional forcing action; :mod:`smtpfilter.engine.policy` turns the verdicts of one
message into exactly one :class:`Decision`. Nothing here knows SMTP reply codes: those are chosen
in :mod:`smtpfilter.core.replies`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.core.message import Header

__all__ = ["Action", "Decision", "Finding", "Mode", "Verdict", "FINAL_ACTIONS"]


class Action(enum.StrEnum):
    """What may happen to a message. The first five end evaluation when a rule forces them."""

    ACCEPT = "accept"  # deliver now, skip the remaining rules (an allowlist)
    REJECT = "reject"  # 550: Postfix bounces in after-queue mode (backscatter!), refuses before-queue
    TEMPFAIL = "tempfail"  # 451: Postfix keeps the message and retries
    DISCARD = "discard"  # 250 to Postfix, nothing re-injected; logged
    # 250 once the message is stored in the quarantine Maildir; nothing re-injected until an
    # admin releases it (Postfix's HOLD, with `smtpfilter quarantine release` as postsuper -H).
    QUARANTINE = "quarantine"
    TAG = "tag"  # deliver with our headers added
    WARN = "warn"  # deliver; log the finding (Postfix's WARN action)


FINAL_ACTIONS = frozenset(
    {Action.ACCEPT, Action.REJECT, Action.TEMPFAIL, Action.DISCARD, Action.QUARANTINE}
)


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"  # observe only: log "would reject", deliver (postscreen's "ignore")


@dataclass(frozen=True, slots=True)
class Finding:
    """What a check saw. ``code`` names it for logs (IN_PAST, MISSING, LISTED...)."""

    code: str
    reason: str
    # Values a rule's reply text may quote as {1}, {2}: regex groups, a DNSBL's TXT...
    groups: tuple[str, ...] = ()
    # Details that only some checks have (e.g. per-site DNSBL answers) for logs and headers.
    detail: str = ""
    # An outcome the check itself determines, overriding the rule's action and score: a DNSBL
    # allowlist score means ACCEPT ("skip the remaining rules") whatever the rule does with a
    # listing, and a DNS failure with dns.on_error: tempfail means TEMPFAIL.
    action: Action | None = None
    # With ``action``: the reply text that goes with it (a header_checks REJECT line's text).
    text: str | None = None
    # How the finding reads in logs, headers and reply texts, inside RULE(...), when the
    # code alone says too little: "invoice.pdf.exe", "fail p=reject example.com",
    # "81.2.69.10 31/30 per 1m". Metrics keep counting by ``code``, whose values are few.
    label: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One rule's observation on one message, with its weight and optional forced action."""

    rule: str
    finding: Finding
    score: float = 0.0
    action: Action | None = None
    mode: Mode = Mode.ENFORCE
    text: str | None = None  # the rule's reply text, for reject/tempfail

    @property
    def label(self) -> str:
        """``OLD_DATE(IN_PAST)``: how a verdict appears in logs and headers (the finding's
        ``label`` in the parentheses when it has one, else its code)."""
        return f"{self.rule}({self.finding.label or self.finding.code})"

    @property
    def forces(self) -> bool:
        """True when this verdict ends evaluation with its own action."""
        return self.mode is Mode.ENFORCE and self.action in FINAL_ACTIONS


@dataclass(frozen=True, slots=True)
class Decision:
    """The one outcome for a message.

    ``action`` is what happens; ``intended`` is what the rules asked for before observe-only
    modes (a rule's ``mode: warn`` or the global ``dry_run``) turned it into a delivery.
    """

    action: Action
    score: float
    verdicts: tuple[Verdict, ...] = ()
    rule: str | None = None  # the rule that forced the action, or None for a score decision
    reason: str = ""
    text: str | None = None  # reply text for reject/tempfail
    intended: Action | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())
    intended_rule: str | None = None  # the rule behind ``intended``, when a rule forced it
    # Incoming header fields to cut out of what is delivered (by their offsets,
    # core.wire.outgoing): Authentication-Results that carry our authserv-id (RFC 8601 §5).
    # Other fields of the same name stay; our own verdict headers are stripped by name anyway.
    drop: tuple["Header", ...] = ()

    @property
    def delivers(self) -> bool:
        return self.action in (Action.ACCEPT, Action.TAG, Action.WARN)

    @property
    def rules_hit(self) -> str:
        return ",".join(v.label for v in self.verdicts) or "-"
