"""Regular expressions for rules, compiled with RE2.

RE2 matches in time linear in the input, so no pattern and no crafted header can make a rule
backtrack for minutes and stall every other session on the event loop (the ReDoS class of bugs;
Python's ``re`` has no such bound and no timeout). The price: no backreferences and no lookaround,
which Postfix's POSIX ``regexp:`` tables do not have either. A pattern RE2 cannot run is a config
error that names the rule.

Like Postfix regexp and pcre tables, patterns are case-insensitive unless the rule says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import re2

from smtpfilter.core.errors import PatternError

__all__ = ["PatternError", "PatternSet"]


def _options(case_sensitive: bool) -> "re2.Options":
    options = re2.Options()
    options.log_errors = False  # errors are reported through PatternError, not stderr
    options.case_sensitive = case_sensitive
    return options


@dataclass(frozen=True, slots=True)
class Match:
    pattern: str
    groups: tuple[str, ...]
    start: int = 0  # where the match begins in the text (a body rule quotes around it)


class PatternSet:
    """Several patterns matched as one: one RE2 pass answers "does any match?"."""

    def __init__(self, patterns: list[str], *, case_sensitive: bool = False) -> None:
        options = _options(case_sensitive)
        self.patterns = tuple(patterns)
        self._each = []
        for pattern in patterns:
            try:
                self._each.append(re2.compile(pattern, options))
            except re2.error as error:
                detail = error.args[0] if error.args else error
                if isinstance(detail, bytes):
                    detail = detail.decode("utf-8", "replace")
                raise PatternError(f"pattern {pattern!r} is not usable: {detail}") from None
        combined = "|".join(f"(?:{p})" for p in patterns)
        self._any = re2.compile(combined, options) if len(patterns) > 1 else self._each[0]

    def search(self, text: str) -> Match | None:
        """The first pattern (in rule order) that matches ``text``, with its groups."""
        if self._any.search(text) is None:
            return None
        for pattern, compiled in zip(self.patterns, self._each):
            match = compiled.search(text)
            if match is not None:
                groups = tuple(g or "" for g in match.groups())
                return Match(pattern, groups, match.start())
        return None  # pragma: no cover - the combined pattern matched, so one of these does

    def match_all(self, text: str) -> bool:
        """True when every pattern matches ``text`` (a header_checks ``if`` nest)."""
        return all(compiled.search(text) is not None for compiled in self._each)
