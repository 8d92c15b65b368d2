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

cleanup(8) has four table classes, and so has this kind (engine.mime.cleanup_view says which line
goes to which, checked against a real cleanup(8) and ``postmap -hmq``/``-bmq``):

```yaml
- name: POSTFIX_CHECKS
  check: header_checks
  table: regexp:/etc/postfix/header_checks            # header_checks
  mime_table: regexp:/etc/postfix/mime_header_checks  # default: table, as in Postfix
  nested_table: regexp:/etc/postfix/nested_checks     # default: table, as in Postfix
  body_table: regexp:/etc/postfix/body_checks         # default: none
  body_size_limit: 50k                                # body_checks_size_limit (51200)
```

As in Postfix (postconf(5)), ``mime_header_checks`` and ``nested_header_checks`` default to the
header_checks table: the Content-* headers of the message and of every attachment, the headers of
multipart parts, and those of attached messages are looked up in ``table`` too. That reads the
MIME structure of every message (``needs_body``: about 0.05 ms for 10 KB); ``mime_table: []`` and
``nested_table: []`` (without a ``body_table``) restore the header-only reading of earlier
versions, in which every top-level header, Content-* included, goes to ``table``. Body lines
are looked up undecoded (base64 stays base64), in 2,048-byte pieces, the first
``body_size_limit`` bytes of each body segment, empty lines never. All lines are looked up in
message order and the first REJECT or DISCARD ends it; PASS ends header and body checks alike.

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
from smtpfilter.config.settings import MimeConfig
from smtpfilter.core.message import MessageContext
from smtpfilter.core.text import snippet
from smtpfilter.core.verdict import Action, Finding
from smtpfilter.engine.checks.header import postfix_line
from smtpfilter.engine.mime import cleanup_view, walk_message
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


# The optional tables of cleanup(8)'s other classes: option -> class (engine.mime.postfix_class).
_CLASS_TABLES = {"mime_table": "mime_header", "nested_table": "nested_header",
                 "body_table": "body"}
_CLASS_SHOWN = {"header": "header", "mime_header": "mime header",
                "nested_header": "nested header", "body": "body"}


def _read_tables(opts: Options, key: str, specs: list[str]) -> list[Table]:
    """The tables of one option, as main.cf names them, relative to the rule file."""
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
            opts.problem(key, f"{spec}: {error.strerror}")
            continue
        for line in table.lines:
            if line.unusable:
                opts.problem(key, f"{line.where}: {line.unusable}; this table cannot be "
                             f"used exactly (import-header-checks converts the other lines)")
        for note in table.notes:
            opts.warn(None, note.text, where=f"{note.source}:{note.line}")
        tables.append(table)
    return tables


class HeaderChecksCheck:
    kind = "header_checks"
    table_actions = True  # the table's lines decide: the rule needs no action or score
    needs_env = True  # for the mime: limits
    # Set per rule: True unless mime_table and nested_table are empty and no body_table.
    needs_body = False

    def __init__(self, tables: list[Table], by_class: dict[str, list[Table]] | None = None,
                 *, body_size_limit: int = 51200, limits: MimeConfig | None = None) -> None:
        self.tables = tables
        self.compiled = [_compile(table) for table in tables]
        compiled = {id(table): entry for table, entry in zip(tables, self.compiled)}
        classes = by_class if by_class is not None else {"header": tables}
        self.by_class = {
            klass: [compiled.get(id(t)) or _compile(t) for t in found]
            for klass, found in classes.items()
        }
        self.by_class["header"] = self.compiled
        self.body_size_limit = body_size_limit
        self.limits = limits or MimeConfig()
        self.needs_body = any(self.by_class.get(c) for c in _CLASS_TABLES.values())

    @classmethod
    def from_options(cls, opts: Options, env: object = None) -> "HeaderChecksCheck":
        tables = _read_tables(opts, "table", opts.str_list("table", required=True) or [])
        by_class: dict[str, list[Table]] = {"header": tables}
        for key, klass in _CLASS_TABLES.items():
            default = [] if klass == "body" else tables  # Postfix: $header_checks
            specs = opts.str_list(key)
            by_class[klass] = default if specs is None else _read_tables(opts, key, specs)
        size = opts.size("body_size_limit", 51200)
        for key in ("action", "score", "text"):
            if opts.has(key):
                opts.problem(key, "a header_checks table's own lines decide; remove it")
        used = {id(t): t for found in by_class.values() for t in found}
        _warn_if_useless(opts, list(used.values()))
        return cls(tables, by_class, body_size_limit=size,
                   limits=getattr(env, "mime", None) or MimeConfig())

    def describe(self) -> str:
        lines = sum(1 for t in self.tables for line in t.lines if line.kind == "match")
        text = f"Postfix header_checks {', '.join(f'{t.format}:{t.source}' for t in self.tables)} " \
               f"({lines} lines)"
        if self.needs_body:
            used = [_CLASS_SHOWN[c] for c in _CLASS_TABLES.values() if self.by_class.get(c)]
            text += f", also for {', '.join(used)} lines"
        return text

    def _lines(self, msg: MessageContext):
        """(class, lookup key) in message order, as cleanup(8) looks them up."""
        if not self.needs_body:
            return (("header", postfix_line(header)) for header in msg.headers)
        tree = walk_message(msg, self.limits)
        return cleanup_view(tree, body_limit=self.body_size_limit)

    def observe(self, msg: MessageContext) -> Finding | None:
        held: Finding | None = None
        warned: Finding | None = None
        for klass, text in self._lines(msg):
            found = None
            for table in self.by_class.get(klass) or ():
                found = lookup(table, text)
                if found is not None:
                    break
            if found is None:
                continue
            line, groups = found
            word, rest = split_action(line.result)
            where = "" if klass == "header" else f"{_CLASS_SHOWN[klass]} "
            reason = f"{where}{snippet(text)} matches {line.where} {line.pattern.shown} {word}"
            if word == "REJECT":
                # The reply keeps its ${n}: the policy substitutes the groups, as for any rule.
                action, reply = reject_reply(rest)
                return Finding("REJECT", reason, groups, action=Action(action), text=reply)
            if word == "DISCARD":
                return Finding("DISCARD", reason, groups, action=Action.DISCARD)
            if word in ("PASS", "REDIRECT"):
                break  # cleanup clears CLEANUP_FLAG_FILTER_ALL: no more header or body checks
            if word == "HOLD" and held is None:
                held = Finding("HOLD", reason, groups, action=Action.QUARANTINE)
            elif word in ("WARN", "INFO") and warned is None:
                warned = Finding("WARN", reason, groups, action=Action.WARN)
        return held or warned
