"""Rule kinds. One module per kind; the table below is the whole registry.

A new rule kind is a module here and one line in CHECK_KINDS.

A check is built from its rule's options (``from_options`` validates its own keys and reports
problems with the rule's name) and then only observes: ``observe(msg)`` returns a Finding or None.
It never decides what happens to the message and never writes an SMTP reply.

Checks that wait on the network (DNS) define ``async def observe``; the pipeline starts those
early and concurrently, so a slow DNS list does not serialise behind the others.
"""

from __future__ import annotations

from typing import Awaitable, ClassVar, Protocol

from smtpfilter.config.options import Options
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Finding
from smtpfilter.engine.checks.attachment import AttachmentCheck
from smtpfilter.engine.checks.body import BodyCheck
from smtpfilter.engine.checks.date import DateCheck
from smtpfilter.engine.checks.dkim import DkimCheck
from smtpfilter.engine.checks.dmarc import DmarcCheck
from smtpfilter.engine.checks.dnsbl import DnsblCheck, RhsblCheck
from smtpfilter.engine.checks.header import HeaderCheck
from smtpfilter.engine.checks.header_checks import HeaderChecksCheck
from smtpfilter.engine.checks.limits import LimitsCheck
from smtpfilter.engine.checks.mime_header import MimeHeaderCheck
from smtpfilter.engine.checks.ratelimit import RatelimitCheck
from smtpfilter.engine.checks.spf import SpfCheck

__all__ = ["CHECK_KINDS", "Check"]


class Check(Protocol):
    kind: ClassVar[str]

    # What a kind may declare (class attributes, read once when the rules load):
    # - ``needs_env = True``: it takes ``from_options(opts, env)`` with the loader's RuleEnv
    #   (shared services: the DNS resolver today; an auth verifier, a counter store next);
    # - ``needs_body = True``: it reads the body or the MIME structure, not only the header
    #   block (RuleSet.needs_body: a rule set without such kinds costs nothing more); an
    #   instance may set it too (header_checks reads the body only with MIME or body tables);
    # - ``table_actions = True``: its table's lines decide, the rule needs no action or score;
    # - a method ``settle(msg, decision, delivered)``: called after the front door answered,
    #   with whether the message was finally delivered (RuleSet.settlers; rate limits).
    @classmethod
    def from_options(cls, opts: Options) -> "Check": ...

    def describe(self) -> str: ...

    def observe(self, msg: MessageContext) -> Finding | None | Awaitable[Finding | None]: ...


CHECK_KINDS: dict[str, type] = {
    "date": DateCheck,
    "header": HeaderCheck,
    "dnsbl": DnsblCheck,
    "rhsbl": RhsblCheck,
    "header_checks": HeaderChecksCheck,
    "limits": LimitsCheck,
    "attachment": AttachmentCheck, "body": BodyCheck, "mime_header": MimeHeaderCheck,  # MIME
    "ratelimit": RatelimitCheck,
    "spf": SpfCheck, "dkim": DkimCheck, "dmarc": DmarcCheck,  # sender authentication (engine/auth)
}
