"""Rule kinds. One module per kind; the table below is the whole registry.

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
from smtpfilter.engine.checks.date import DateCheck
from smtpfilter.engine.checks.dnsbl import DnsblCheck, RhsblCheck
from smtpfilter.engine.checks.header import HeaderCheck
from smtpfilter.engine.checks.header_checks import HeaderChecksCheck
from smtpfilter.engine.checks.limits import LimitsCheck

__all__ = ["CHECK_KINDS", "Check"]


class Check(Protocol):
    kind: ClassVar[str]

    # Kinds that need shared resources (the DNS service) set ``needs_env = True`` and take
    # ``from_options(opts, env)`` with the loader's rules.RuleEnv.
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
}
