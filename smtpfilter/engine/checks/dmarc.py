"""The ``dmarc`` rule kind: DMARC (RFC 7489) for the From: domain.

```yaml
- name: DMARC_REJECT
  check: dmarc
  policy: [reject]           # fires when DMARC fails and the domain's policy is in the list
  action: quarantine         # after the queue; reject belongs before it (README)
- name: DMARC_DNS
  check: dmarc
  results: [temperror]       # or on a result: pass fail none temperror permerror
  action: tempfail
```

``policy:`` matches the policy as applied: ``sp=`` for a subdomain, and the next milder one
(reject → quarantine → none) for a message outside a ``pct=`` sample or under ``t=y``
(RFC 7489 §6.6.4, RFC 9989). With both keys a rule fires when either matches. Local
submissions have no DMARC result and never fire. Finding: the result in capitals (``FAIL``),
shown as ``DMARC_REJECT(fail p=reject example.com)``. Reply text groups: ``$1`` the result,
``$2`` the From: domain, ``$3`` the policy applied.
"""

from __future__ import annotations

from smtpfilter.config.options import Options
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Finding
from smtpfilter.engine.auth import Authenticator, DmarcResult, read_results

__all__ = ["DmarcCheck"]

_POLICIES = ("none", "quarantine", "reject")


class DmarcCheck:
    kind = "dmarc"
    needs_env = True  # the shared Authenticator (RuleEnv.auth)

    def __init__(
        self,
        auth: Authenticator,
        *,
        policy: frozenset[str] = frozenset(),
        results: frozenset[str] = frozenset(),
    ) -> None:
        self.auth = auth
        self.policy = policy
        self.results = results

    @classmethod
    def from_options(cls, opts: Options, env) -> "DmarcCheck":
        policy = read_results(opts, "policy", _POLICIES, required=False)
        results = read_results(opts, "results", [r.value for r in DmarcResult], required=False)
        if not policy and not results:
            opts.need("a dmarc rule needs policy: [...] or results: [...]")
        return cls(env.auth, policy=policy, results=results)

    def describe(self) -> str:
        parts = []
        if self.policy:
            parts.append(f"DMARC fail with policy {', '.join(sorted(self.policy))}")
        if self.results:
            parts.append(f"DMARC result in {', '.join(sorted(self.results))}")
        return " or ".join(parts)

    async def observe(self, msg: MessageContext) -> Finding | None:
        outcome = await self.auth.dmarc(msg)
        if outcome is None:
            return None
        failed = outcome.result is DmarcResult.FAIL
        if not (failed and outcome.disposition in self.policy) and outcome.result not in self.results:
            return None
        domain = outcome.from_domain or "-"
        label = f"{outcome.result} {domain}"
        if failed:
            label = f"{outcome.result} p={outcome.disposition} {domain}"
        reason = f"DMARC {outcome.result} for {domain}: {outcome.reason}"
        if outcome.policy:
            reason += f" (p={outcome.policy}"
            if outcome.sampled_out:
                reason += f", applied as {outcome.disposition}: pct= or t=y"
            reason += ")"
        return Finding(
            outcome.result.upper(), reason, (str(outcome.result), domain, outcome.disposition),
            label=label,
        )
