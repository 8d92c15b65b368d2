"""The ``header_checks`` rule kind: a Postfix header_checks table, used as it is, decided as
cleanup(8) decides it.

```yaml
- name: POSTFIX_HEADER_CHECKS
  check: header_checks
  table: [regexp:/etc/postfix/header_filter_map, regexp:/etc/postfix/spamheadercheck]
  mode: warn          # first watch what it would do, as Postfix's WARN lets you
```

Where ``smtpfilter import-header-checks`` turns each line into a rule you can read and edit, this
kind keeps the table and its exact semantics, including the one thing separate rules cannot do:
each header, in message order, is looked up in the tables in order, the first matching line
is that header's result (util/dict_regexp.c, dict_pcre.c: if/endif, negation), and cleanup_act
acts on it: REJECT (a 4.x.x text defers) and DISCARD end the inspection, REDIRECT and PASS end
it without deciding, HOLD is kept unless a later REJECT or DISCARD comes, WARN and INFO are
logged. Lines that edit or route the message (PREPEND, REPLACE, IGNORE, STRIP, FILTER, BCC,
REDIRECT) count as matches that decide nothing here: keep those in Postfix.

The table's lines decide, so the rule has no action, score or text of its own. Findings: the
Postfix action, ``REJECT``, ``DISCARD``, ``HOLD`` (quarantine) or ``WARN``, with the reply text
and ``$n`` groups of the line. A table with a line RE2 cannot run (a backreference) is refused
with its line number: it could not be honoured exactly.

A line Postfix skips with a warning is skipped with a warning (file:line), and so is the rule's
whole point when nothing is left: a table with no usable line (``table: [pcre:/etc/passwd]``,
every line "not a pattern") or with no line that decides anything here is a warning that says
the rule will never match. Warnings, not errors, as in Postfix: postmap and cleanup warn per
bad line and go on, an empty table is valid, and a daemon should not refuse to start (nor a
reload fail) over a table that a script has just emptied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import re2

from smtpfilter.config.options import Options
from smtpfilter.core.message import MessageContext
from smtpfilter.core.text import snippet
from smtpfilter.core.verdict import Action, Finding
from smtpfilter.engine.checks.header import postfix_line
from smtpfilter.postfix.actions import DECIDING, reject_reply, split_action
from smtpfilter.postfix.tables import Line, Table, read_table

__all__ = ["HeaderChecksCheck"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    line: Line
    regex: object | None  # re2 pattern; None for endif
    negated: bool
    skip_to: int  # for an if: the index after its endif (len(lines) when it has none)


def _compile(table: Table) -> list[_Compiled]:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = False  # Postfix's default; a line's i flag writes (?-i)
    compiled: list[_Compiled] = []
    stack: list[int] = []
    for line in table.lines:
        if line.kind == "endif":
            compiled.append(_Compiled(line, None, False, 0))
            if stack:
                start = stack.pop()
                compiled[start] = _Compiled(compiled[start].line, compiled[start].regex,
                                            compiled[start].negated, len(compiled))
            continue
        assert line.pattern is not None
        regex = None if line.pattern.dead else re2.compile("(?s)" + line.pattern.re2, options)
        if line.kind == "if":
            stack.append(len(compiled))
        compiled.append(_Compiled(line, regex, line.pattern.negated, -1))
    for start in stack:  # an if without endif: a failed test ends the table (dict_regexp.c)
        entry = compiled[start]
        compiled[start] = _Compiled(entry.line, entry.regex, entry.negated, -1)
    return compiled


def _matches(entry: _Compiled, text: str) -> tuple[bool, tuple[str, ...]]:
    found = entry.regex.search(text) if entry.regex is not None else None
    if entry.negated:
        return found is None, ()
    if found is None:
        return False, ()
    return True, tuple(g or "" for g in found.groups())


def lookup(table: list[_Compiled], text: str) -> tuple[Line, tuple[str, ...]] | None:
    """The first line of one table that matches one header (dict_regexp_lookup)."""
    index = 0
    while index < len(table):
        entry = table[index]
        kind = entry.line.kind
        if kind == "endif":
            index += 1
            continue
        hit, groups = _matches(entry, text)
        if kind == "if":
            if hit:
                index += 1
            elif entry.skip_to < 0:
                return None  # an unclosed if that fails: nothing after it applies
            else:
                index = entry.skip_to
            continue
        if hit:
            return entry.line, groups
        index += 1
    return None


def _usable(line: Line) -> bool:
    """A match line that can ever match (not one glibc's escapes made dead)."""
    return line.kind == "match" and line.pattern is not None and not line.pattern.dead


def _warn_if_useless(opts: Options, tables: list[Table]) -> None:
    """Say so when a table, or the whole rule, can never produce a finding."""
    if not tables:
        return  # none could be read: already a problem each
    deciding = any(
        _usable(line) and split_action(line.result)[0] in DECIDING
        for table in tables
        for line in table.lines
    )
    empty = [t for t in tables if not any(_usable(line) for line in t.lines)]
    for table in empty:
        skipped = sum(1 for note in table.notes if note.skipped)
        if skipped:
            why = f"no usable line ({skipped} skipped, above)"
        elif table.lines:
            why = "no usable line (only if/endif, or patterns that can never match)"
        else:
            why = "no lines"
        what = f"{table.format}:{table.source} has {why}"
        if deciding:
            opts.warn("table", f"{what}; the rule's other tables still apply")
        elif len(tables) == 1:
            opts.warn("table", f"{what}: this rule will never match")
            return
        else:
            opts.warn("table", what)
    if deciding:
        return
    if len(empty) == len(tables):
        opts.warn("table", "none of its tables has a usable line: this rule will never match")
    else:
        opts.warn(
            "table",
            "no line of its tables REJECTs, DISCARDs, HOLDs, WARNs or INFOs (the others "
            "act in Postfix only): this rule will never match",
        )


class HeaderChecksCheck:
    kind = "header_checks"
    table_actions = True  # the table's lines decide: the rule needs no action or score

    def __init__(self, tables: list[Table]) -> None:
        self.tables = tables
        self.compiled = [_compile(table) for table in tables]

    @classmethod
    def from_options(cls, opts: Options) -> "HeaderChecksCheck":
        specs = opts.str_list("table", required=True) or []
        base = Path(opts.mapping.source).parent
        tables = []
        for spec in specs:
            kind, sep, name = spec.partition(":")
            if sep and kind in ("regexp", "pcre"):
                spec = f"{kind}:{base / name}"
            else:
                spec = str(base / spec)
            try:
                table = read_table(spec)
            except OSError as error:
                opts.problem("table", f"{spec}: {error.strerror}")
                continue
            for line in table.lines:
                if line.unusable:
                    opts.problem("table", f"{line.where}: {line.unusable}; this table cannot be "
                                 f"used exactly (import-header-checks converts the other lines)")
            for note in table.notes:
                opts.warn(None, note.text, where=f"{note.source}:{note.line}")
            tables.append(table)
        for key in ("action", "score", "text"):
            if opts.has(key):
                opts.problem(key, "a header_checks table's own lines decide; remove it")
        _warn_if_useless(opts, tables)
        return cls(tables)

    def describe(self) -> str:
        lines = sum(1 for t in self.tables for line in t.lines if line.kind == "match")
        return f"Postfix header_checks {', '.join(f'{t.format}:{t.source}' for t in self.tables)} " \
               f"({lines} lines)"

    def observe(self, msg: MessageContext) -> Finding | None:
        held: Finding | None = None
        warned: Finding | None = None
        for header in msg.headers:
            text = postfix_line(header)
            found = None
            for table in self.compiled:
                found = lookup(table, text)
                if found is not None:
                    break
            if found is None:
                continue
            line, groups = found
            word, rest = split_action(line.result)
            reason = f"{snippet(text)} matches {line.where} {line.pattern.shown} {word}"
            if word == "REJECT":
                # The reply keeps its ${n}: the policy substitutes the groups, as for any rule.
                action, reply = reject_reply(rest)
                return Finding("REJECT", reason, groups, action=Action(action), text=reply)
            if word == "DISCARD":
                return Finding("DISCARD", reason, groups, action=Action.DISCARD)
            if word in ("PASS", "REDIRECT"):
                break  # cleanup clears CLEANUP_FLAG_FILTER_ALL: no more header checks
            if word == "HOLD" and held is None:
                held = Finding("HOLD", reason, groups, action=Action.QUARANTINE)
            elif word in ("WARN", "INFO") and warned is None:
                warned = Finding("WARN", reason, groups, action=Action.WARN)
        return held or warned
