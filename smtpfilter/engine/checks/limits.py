"""The ``limits`` rule kind: a message that went past a parse limit, so the rules did not read all
of it.

```yaml
- name: PARSE_LIMIT
  check: limits
  limits: [header]       # which parse limits to watch; default: every one
  action: tag
  score: 5
```

Every parse has a limit so that a huge message cannot cost unbounded time or memory; the header
section is read up to ``limits.header_size``. What lies beyond a limit is invisible to every other
rule, and a sender who knows it hides there: 1.12 MB of small headers put an ``X-Mailer:
MaxBulk.Mailer`` out of the shipped discard rule's sight (issue 10). This kind turns "a limit
was exceeded" into a finding, so such mail is at least tagged instead of passing as clean.

Findings: ``HEADER_LIMIT`` (the header section goes on past ``limits.header_size``) and
``MIME_LIMIT`` (kind ``mime``: more parts, deeper nesting, a longer part header, a bigger zip
directory, deeper archives, a larger attachment to decode or more text than the ``mime:``
section allows). MIME limits exist only where a rule reads the MIME structure: the walk runs
before the first rule when one does (engine/pipeline.py), archive limits as the attachment
rules that list archives run, so a ``limits`` rule placed after them sees those too. The option
names kinds of limit, and a rule that leaves it out watches them all, new ones included. The limits themselves, and which ones a message exceeded, are
:data:`smtpfilter.core.message.PARSE_LIMITS` and
:meth:`smtpfilter.core.message.MessageContext.exceeded`;
the filter logs an exceeded limit whether or not a rule watches it.
"""

from __future__ import annotations

from smtpfilter.config.options import Options
from smtpfilter.core.message import PARSE_LIMITS, MessageContext
from smtpfilter.core.verdict import Finding

__all__ = ["LimitsCheck"]


class LimitsCheck:
    kind = "limits"

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = frozenset(kinds)

    @classmethod
    def from_options(cls, opts: Options) -> "LimitsCheck":
        kinds = opts.str_list("limits", list(PARSE_LIMITS), required=opts.has("limits"))
        if kinds is None:
            return cls([])  # the problem is recorded; the rule will not load
        for kind in kinds:
            if kind not in PARSE_LIMITS:
                opts.problem(
                    "limits", f"{kind!r} is not a parse limit; known: {', '.join(PARSE_LIMITS)}"
                )
        return cls(kinds)

    def describe(self) -> str:
        settings = [setting for kind, setting in PARSE_LIMITS.items() if kind in self.kinds]
        return f"a parse limit was exceeded: {', '.join(settings)}"

    def observe(self, msg: MessageContext) -> Finding | None:
        for exceeded in msg.exceeded():
            if exceeded.kind in self.kinds:
                return Finding(exceeded.finding, exceeded.reason)
        return None
