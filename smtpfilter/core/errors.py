"""The one exception tree of smtpfilter: every error we raise on purpose is one of these.

    SmtpfilterError
     ├── ConfigError        config or rule files that cannot be used; carries every Problem
     ├── YamlError          a file that is not the YAML we accept (file:line); becomes a Problem
     ├── PatternError       a rule's regex RE2 cannot run (also a ValueError)
     ├── TranslationError   a Postfix table pattern RE2 cannot run, or Postfix rejects (ValueError)
     ├── RuleFailure        a check raised while judging a message: answered 451
     ├── DownstreamError    10026 unreachable, silent or gone (stage says where): answered 4xx
     ├── QuarantineError    the quarantine could not store, read or release a message
     └── PostconfError      Postfix's configuration could not be read with postconf(1)

What the front doors make of them is decided in one place each: a RuleFailure or a scan timeout
is the engine's 451 (engine/judge.py), a DownstreamError is ``replies.downstream_failure``, a
ConfigError is exit 78 (cli) or "keep the old rules" (a reload). Anything else escaping is a bug
of ours and is answered 451 too, never 5xx (shared/POSTFIX-FACTS.md §1).

Part of ``core``, the shared vocabulary (imports nothing else of smtpfilter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "ConfigError",
    "DownstreamError",
    "PatternError",
    "PostconfError",
    "Problem",
    "QuarantineError",
    "RuleFailure",
    "SmtpfilterError",
    "TranslationError",
    "YamlError",
]


class SmtpfilterError(Exception):
    """The root of every error smtpfilter raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong, and where: ``file:line``, optionally the rule it belongs to."""

    where: str
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        subject = f"rule {self.rule}: " if self.rule else ""
        return f"{self.where}: {subject}{self.message}"


class ConfigError(SmtpfilterError):
    """Configuration or rules that cannot be used; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class YamlError(SmtpfilterError):
    """A file that is not the YAML we accept; ``where`` is ``file:line``."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class PatternError(SmtpfilterError, ValueError):
    """A rule's regular expression that RE2 cannot run; the text names the pattern, ``index``
    its place in the rule's list (for the line of that item)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class TranslationError(SmtpfilterError, ValueError):
    """A pattern RE2 cannot run, or one Postfix itself rejects; the text says which."""


class RuleFailure(SmtpfilterError):
    """A check raised: our bug or a resource problem, answered 451 so Postfix keeps the mail.

    ``rule`` is the engine's Rule (anything with ``name`` and ``where``)."""

    def __init__(self, rule: object) -> None:
        super().__init__(f"rule {rule.name} ({rule.where}) failed")  # type: ignore[attr-defined]
        self.rule = rule


class DownstreamError(SmtpfilterError):
    """The 10026 server could not be used. ``stage`` says where: connect, XFORWARD, MAIL..."""

    def __init__(
        self, stage: str, detail: str, *, sent_data: bool = False, closed: bool = False
    ) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage = stage
        self.detail = detail
        # True once the final "." may have reached 10026: the message may have been queued
        # there, so a retry by Postfix can produce a duplicate. Logged, never hidden.
        self.sent_data = sent_data
        # True when 10026 had closed the connection (no reply, no timeout): what an idle
        # pooled connection looks like after the 10026 smtpd's own idle timeout.
        self.closed = closed


class QuarantineError(SmtpfilterError):
    """The quarantine could not do what was asked; the text says what and where."""


class PostconfError(SmtpfilterError):
    """postconf(1) is missing or failed; the text says which command and what it printed."""
