"""The ``spf`` rule kind: fires when the message's SPF result (RFC 7208) is in ``results:``.

```yaml
- name: SPF_FAIL
  check: spf                 # client IP (XFORWARD ADDR), HELO and MAIL FROM
  results: [fail]            # pass fail softfail neutral none temperror permerror
  action: tag
  score: 3
```

The identity is MAIL FROM, or postmaster@HELO for a null reverse-path (RFC 7208 §2.4). Local
submissions (no client address, loopback, a SASL login) have no SPF result and never fire.
Finding: the result in capitals (``FAIL``), shown as ``SPF_FAIL(fail example.com)``; the reason
carries the matching term or the error. Reply text groups: ``$1`` the result, ``$2`` the domain,
``$3`` the domain's own explanation (``exp=``, untrusted text: sanitised like a DNSBL's TXT).
"""

from __future__ import annotations

from smtpfilter.config.options import Options
from smtpfilter.core.message import MessageContext
from smtpfilter.core.text import reply_text
from smtpfilter.core.verdict import Finding
from smtpfilter.engine.auth import Authenticator, SpfResult, read_results

__all__ = ["SpfCheck"]


class SpfCheck:
    kind = "spf"
    needs_env = True  # the shared Authenticator (RuleEnv.auth)

    def __init__(self, results: frozenset[str], auth: Authenticator) -> None:
        self.results = results
        self.auth = auth

    @classmethod
    def from_options(cls, opts: Options, env) -> "SpfCheck":
        allowed = [r.value for r in SpfResult]
        return cls(read_results(opts, "results", allowed, required=True), env.auth)

    def describe(self) -> str:
        return f"SPF result in {', '.join(sorted(self.results))}"

    async def observe(self, msg: MessageContext) -> Finding | None:
        outcome = await self.auth.spf(msg)
        if outcome is None or outcome.result not in self.results:
            return None
        domain = outcome.domain or "-"
        identity = "HELO" if outcome.identity == "helo" else "MAIL FROM"
        reason = f"SPF {outcome.result} for {identity} {outcome.sender or domain} ({outcome.reason})"
        return Finding(
            outcome.result.upper(),
            reason,
            (str(outcome.result), domain, reply_text(outcome.explanation)[:500]),
            label=f"{outcome.result} {domain}",
        )
