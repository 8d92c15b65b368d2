"""Postfix's header_checks action words (header_checks(5)) and what smtpfilter makes of them:
the one table both the ``header_checks`` rule kind and ``import-header-checks`` read.

| Postfix | rule kind finding | imported rule | why |
|---|---|---|---|
| REJECT [text] | REJECT | reject, or tempfail when the text starts 4.x.x | same reply text (default "5.7.1 Message content rejected") |
| DISCARD, HOLD | DISCARD, HOLD | discard, quarantine | HOLD's hold queue is our quarantine (release = postsuper -H) |
| WARN, INFO | WARN | warn | logged, delivered |
| PASS | (stops the table) | accept | stop inspecting |
| DUNNO, OK | (no finding) | (none) | an exception for the lines below |
| IGNORE, STRIP, PREPEND, REPLACE | (no finding) | (none) | they edit the message; smtpfilter never does |
| FILTER, REDIRECT, BCC | (no finding; REDIRECT stops) | (none) | routing stays in Postfix |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpfilter.core.replies import ENHANCED_STATUS

__all__ = ["ACTIONS", "DECIDING", "ActionWord", "reject_reply", "split_action"]


@dataclass(frozen=True, slots=True)
class ActionWord:
    """One header_checks action word."""

    # The action an imported rule gets (import-header-checks); None: the line makes no rule.
    imported: str | None
    # The header_checks rule kind reports it as a finding (cleanup_act decides on it).
    decides: bool = False
    # Why an import makes no rule of it; None for DUNNO/OK, the exceptions for lines below.
    not_imported: str | None = None


def _edits(word: str, what: str) -> ActionWord:
    return ActionWord(
        None, not_imported=f"{word} {what}; smtpfilter never changes a message: keep this line "
        f"in Postfix"
    )


def _routes(word: str, what: str) -> ActionWord:
    return ActionWord(None, not_imported=f"{word} {what}: routing stays in Postfix")


ACTIONS: dict[str, ActionWord] = {
    "REJECT": ActionWord("reject", decides=True),
    "DISCARD": ActionWord("discard", decides=True),
    "HOLD": ActionWord("quarantine", decides=True),
    "WARN": ActionWord("warn", decides=True),
    "INFO": ActionWord("warn", decides=True),
    "PASS": ActionWord("accept"),
    "DUNNO": ActionWord(None),
    "OK": ActionWord(None),
    "IGNORE": _edits("IGNORE", "deletes the header"),
    "STRIP": _edits("STRIP", "deletes the header"),
    "PREPEND": _edits("PREPEND", "adds a header"),
    "REPLACE": _edits("REPLACE", "rewrites the header"),
    "FILTER": _routes("FILTER", "chooses a transport"),
    "REDIRECT": _routes("REDIRECT", "changes the recipients"),
    "BCC": _routes("BCC", "adds a recipient"),
}
# What makes a finding of the header_checks rule kind; the others edit or route the message.
DECIDING = frozenset(word for word, action in ACTIONS.items() if action.decides)


# --- results: what cleanup_act makes of them (cleanup/cleanup_message.c) ---------------------
def split_action(result: str) -> tuple[str, str]:
    """The command ends at the first blank; blanks after it are skipped."""
    match = re.match(r"([^ \t]*)[ \t]*(.*)", result, re.S)
    assert match is not None  # the pattern matches any string
    return match.group(1).upper(), match.group(2)


def reject_reply(text: str) -> tuple[str, str]:
    """REJECT's reply: dsn_prepend("5.7.1", text), the generic text when there is none, and a
    code that is neither 4 nor 5 made 4 ("need 4.x.x or 5.x.x"). 4.x.x defers: "tempfail"."""
    if not text:
        return "reject", "5.7.1 Message content rejected"
    if not ENHANCED_STATUS.match(text):
        text = "5.7.1 " + text
    if text[0] not in "45":
        text = "4" + text[1:]
    return ("tempfail" if text[0] == "4" else "reject"), text
