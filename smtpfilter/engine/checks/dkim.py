"""The ``dkim`` rule kind: fires when the message's DKIM result (RFC 6376) is in ``results:``.

```yaml
- name: DKIM_BROKEN
  check: dkim                # every DKIM-Signature (the first five)
  results: [fail]            # pass fail policy neutral temperror permerror none
  action: tag
  score: 2
```

The message's result is pass when any signature passes, else the first of fail, permerror,
temperror, policy (then none without signatures): a mailing list's valid signature beside the
author's broken one reads "pass". Finding: the result in capitals (``FAIL``), shown as
``DKIM_BROKEN(fail d=example.com)``. Reply text groups: ``$1`` the result, ``$2`` the d= domain.
"""

from __future__ import annotations

from smtpfilter.config.options import Options
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Finding
from smtpfilter.engine.auth import Authenticator, DkimResult, read_results

__all__ = ["DkimCheck"]


class DkimCheck:
    kind = "dkim"
    needs_env = True  # the shared Authenticator (RuleEnv.auth)

    def __init__(self, results: frozenset[str], auth: Authenticator) -> None:
        self.results = results
        self.auth = auth

    @classmethod
    def from_options(cls, opts: Options, env) -> "DkimCheck":
        allowed = [r.value for r in DkimResult]
        return cls(read_results(opts, "results", allowed, required=True), env.auth)

    def describe(self) -> str:
        return f"DKIM result in {', '.join(sorted(self.results))}"

    async def observe(self, msg: MessageContext) -> Finding | None:
        outcome = await self.auth.dkim(msg)
        result = outcome.result
        if result not in self.results:
            return None
        signature = outcome.first(result)
        domain = signature.domain if signature and signature.domain else "-"
        reason = f"DKIM {result}" + (f" d={domain}: {signature.reason}" if signature else "")
        return Finding(result.upper(), reason, (str(result), domain), label=f"{result} d={domain}")
