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

__all__ = ["PatternError", "PatternSet", "explain"]


def _options(case_sensitive: bool) -> "re2.Options":
    options = re2.Options()
    options.log_errors = False  # errors are reported through PatternError, not stderr
    options.case_sensitive = case_sensitive
    return options


# What RE2 refuses on purpose, and how to say it without that feature (RE2's Syntax wiki page:
# "NOT SUPPORTED"). RE2's own error names the construct: "invalid perl operator: (?!".
_LINEAR = "RE2 matches in linear time, by design"
_REWRITES = (
    (("(?=", "(?!", "(?<=", "(?<!"),
     f"RE2 has no lookahead or lookbehind ({_LINEAR}): put what must not match in unless: "
     f"(a header or body line matching it is not tried) or in a second rule, and for one "
     f"character use a class such as [^x]"),
    (("\\1", "\\2", "\\3", "\\4", "\\5", "\\6", "\\7", "\\8", "\\9", "(?P="),
     f"RE2 has no backreferences ({_LINEAR}): write the repeated text out, or list its "
     f"variants as patterns of their own"),
    (("(?>", "++", "*+", "?+"),
     f"RE2 has no atomic groups or possessive quantifiers, and needs none ({_LINEAR}, it "
     f"never backtracks): drop the > or the second +"),
    (("\\Z",), "write \\z (end of text) or $"),
)


def explain(detail: str, pattern: str = "") -> str:
    """"; RE2 has no lookahead ..." for an RE2 error about a construct it lacks, else ""."""
    if detail.endswith(": (?P") and "(?P=" in pattern:
        detail += "="  # RE2 names only "(?P" for Python's named backreference (?P=name)
    for constructs, advice in _REWRITES:
        if any(detail.endswith(construct) for construct in constructs):
            return f"; {advice}"
    return ""


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
        for index, pattern in enumerate(patterns):
            try:
                self._each.append(re2.compile(pattern, options))
            except re2.error as error:
                detail = error.args[0] if error.args else error
                if isinstance(detail, bytes):
                    detail = detail.decode("utf-8", "replace")
                raise PatternError(
                    f"pattern {pattern!r} is not usable: {detail}{explain(str(detail), pattern)}", index
                ) from None
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
