"""``smtpfilter import-header-checks``: Postfix header_checks tables → smtpfilter YAML rules.

Each table line that decides something becomes one ``check: header`` rule with ``header: "*"``
and ``form: postfix``: the pattern sees one logical header exactly as cleanup(8) passes it to
header_checks. Postfix's per-header "first matching line wins" is kept with ``unless``/``if``:
a rule does not fire on a header that an earlier line with a different outcome would have taken
(a DUNNO or WARN line above a DISCARD one is how admins write exceptions). ``if``/``endif``
blocks become ``if``/``unless`` patterns. Only earlier lines that can match the same header name
are considered (``^Subject:`` cannot shadow ``^X-Mailer:``), which keeps the rules readable.

Actions: the table of postfix/actions.py (a REJECT becomes a bounce after queue, see the README;
PASS's accept skips the later rules of every file).

Lines that produce no rule still shadow the lines below them, as they do in Postfix. What
cannot be converted is reported with its file and line, and shows in the YAML as a comment.

cleanup(8)'s other table classes (``--kind``): a ``mime_header_checks`` table becomes
``check: mime_header`` rules (``classes: [mime_header]``: the Content-* headers and every header
of multipart parts), a ``nested_header_checks`` table the same with ``classes:
[nested_header]`` (the other headers of attached messages), and a ``body_checks`` table
``check: body`` rules with ``form: postfix``: each body line as cleanup passes it, undecoded
(base64 stays base64), in 2,048-byte pieces, the first 50 KB of each body segment. That keeps
Postfix's meaning; a rule over the decoded text (the body kind's default form) may then be the
better rule, but that is a change the admin makes knowingly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from smtpfilter.core.replies import ENHANCED_STATUS
from smtpfilter.core.text import reply_text
from smtpfilter.postfix.actions import ACTIONS, reject_reply, split_action
from smtpfilter.postfix.tables import Line, Note, Table

__all__ = ["Conversion", "convert"]

_MIME_NOTE = (
    "Postfix also checks this against the headers of every MIME part (mime_header_checks "
    "defaults to header_checks), e.g. attachment names; this rule reads the message's own "
    "headers: import the table with --kind mime_header too if the line is meant for "
    "attachments, or load it as a check: header_checks rule (README)"
)
# --kind: the rule kind, the extra option lines of each rule, what one lookup key is.
KINDS = {
    "header": ("header", ["    header: '*'", "    form: postfix"], "one logical header"),
    "mime_header": ("mime_header", ["    header: '*'", "    form: postfix",
                                    "    classes: [mime_header]"],
                    "one logical MIME header (Content-*, and every header of a multipart part)"),
    "nested_header": ("mime_header", ["    header: '*'", "    form: postfix",
                                      "    classes: [nested_header]"],
                      "one logical header of an attached message (message/rfc822)"),
    "body": ("body", ["    form: postfix"], "one body line, undecoded (base64 stays base64)"),
}


@dataclass
class Conversion:
    yaml: str
    notes: list[Note]
    rules: int
    lines: int  # table lines that matched something (match lines)


@dataclass
class _Rule:
    line: Line
    name: str
    action: str
    text: str | None  # reply text (reject/tempfail) with ${n}
    description: str
    unless: list[str] = field(default_factory=list)
    require: list[str] = field(default_factory=list)
    warn_mode: str | None = None  # why it is imported observe-only

    @property
    def outcome(self) -> tuple[str, str | None]:
        return (self.action, self.text)


def _slug(text: str) -> str:
    status = ENHANCED_STATUS.match(text)
    if status is not None and status.group(1) in "245":
        text = text[status.end() :]
    text = re.sub(r"\$(\{\d+\}|\(\d+\)|\d+)", "", text)
    words = re.findall(r"[A-Za-z0-9]+", text.upper())
    slug = ""
    for word in words:
        if len(slug) + len(word) + 1 > 40:
            break
        slug = f"{slug}_{word}" if slug else word
    return slug if slug[:1].isalpha() else ""


def _may_overlap(a: Line, b: Line) -> bool:
    """Could one header reach both lines? Only when their header names can be the same."""
    return _name_of(a) is None or _name_of(b) is None or _name_of(a) == _name_of(b)


def _outside(previous: Line, line: Line) -> bool:
    """True when ``previous`` sits in an if block ``line`` is not in: "previous did not take
    this header" is then an "or" of negations, which if/unless cannot say."""
    mine = {id(c) for c in line.conditions}
    return any(id(c) not in mine for c in previous.conditions)


def _name_of(line: Line) -> str | None:
    if line.pattern is not None and line.pattern.header:
        return line.pattern.header
    for condition in reversed(line.conditions):
        if condition.pattern is not None and condition.pattern.header:
            return condition.pattern.header
    return None


def _quote(text: str) -> str:
    """A YAML scalar that reads back as exactly ``text``."""
    if all(" " <= c <= "~" for c in text):
        return "'" + text.replace("'", "''") + "'"
    out = []
    for char in text:  # a YAML double-quoted scalar, escaped so no reader can misread it
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def convert(
    tables: list[Table], *, prefix: str = "", reject_as: str = "reject", now: datetime | None = None,
    kind: str = "header",
) -> Conversion:
    notes: list[Note] = []
    for table in tables:
        notes.extend(table.notes)
    rules: list[_Rule] = []
    earlier: list[tuple[Line, tuple[str, str | None] | None]] = []  # (line, outcome or None)
    names: set[str] = set()
    skipped: list[tuple[Line, str]] = []
    match_lines = 0
    for table in tables:
        stem = re.sub(r"[^A-Za-z0-9]+", "_", table.source.rsplit("/", 1)[-1]).strip("_").upper()
        stem = stem if stem[:1].isalpha() else "HEADER_CHECKS"
        for line in table.lines:
            if line.kind != "match":
                continue
            match_lines += 1
            unusable_if = next((c for c in line.conditions if c.unusable), None)
            if unusable_if is not None:
                why = f"inside the if at line {unusable_if.number}, which RE2 cannot run"
                notes.append(Note(line.source, line.number, why))
                skipped.append((line, why))
                earlier.append((line, None))
                continue
            if line.unusable:
                notes.append(Note(line.source, line.number, line.unusable))
                skipped.append((line, line.unusable))
                earlier.append((line, None))
                continue
            assert line.pattern is not None
            if line.pattern.dead:
                why = "this pattern can never match, in Postfix either (see above)"
                notes.append(Note(line.source, line.number, why))
                skipped.append((line, why))
                continue  # a line that never matches shadows nothing
            word, text = split_action(line.result)
            known = ACTIONS.get(word)
            if known is None or known.imported is None:
                why = known.not_imported if known is not None else (
                    f"unknown action {word!r}: Postfix logs \"unknown command\" and goes on"
                )
                if word == "":
                    why = "no action (Postfix uses an empty result, logs a warning, goes on)"
                if why is not None:
                    notes.append(Note(line.source, line.number, why))
                    skipped.append((line, why))
                else:
                    skipped.append((line, f"{word}: an exception; the rules below have it in "
                                    f"their unless"))
                earlier.append((line, None))
                continue
            action = known.imported
            reply = None
            if word == "REJECT":
                action, reply = reject_reply(text)
                if action == "reject" and reject_as != "reject":
                    action, reply = reject_as, None
            if reply is not None and reply_text(reply) != reply:
                notes.append(Note(line.source, line.number, "non-ASCII in the reply text "
                                  "became ?", skipped=False))
                reply = reply_text(reply)
            if reply is not None and len(reply) > 400:
                notes.append(Note(line.source, line.number, "reply text cut at 400 characters",
                                  skipped=False))
                reply = reply[:400]
            name = _slug(text) if word != "REJECT" or text else ""
            name = f"{prefix}{name}" if name else f"{prefix}{stem}_L{line.number}"
            if name in names or len(name) > 64:
                name = f"{name[:56]}_L{line.number}"
            names.add(name)
            rule = _Rule(
                line, name, action, reply,
                reply_text(f"{line.source.rsplit('/', 1)[-1]}:{line.number}: {line.result}")[:300],
            )
            if line.pattern.negated:
                rule.unless.append(line.pattern.re2)
            for condition in line.conditions:
                assert condition.pattern is not None
                (rule.unless if condition.pattern.negated else rule.require).append(
                    condition.pattern.re2
                )
            for previous, outcome in earlier:
                if outcome is not None and outcome == rule.outcome and "$" not in (rule.text or ""):
                    continue  # same decision either way
                if kind != "body" and not _may_overlap(previous, line):  # body: no names
                    continue
                if _outside(previous, line) or previous.unusable:
                    rule.warn_mode = (
                        f"line {previous.number} may take some of the same headers first, "
                        f"under conditions a rule cannot express"
                    )
                    continue
                assert previous.pattern is not None
                (rule.require if previous.pattern.negated else rule.unless).append(
                    previous.pattern.re2
                )
            if rule.warn_mode:
                notes.append(Note(line.source, line.number, f"imported observe-only (mode: warn): "
                                  f"{rule.warn_mode}", skipped=False))
            if kind == "header" and (_name_of(line) or "").startswith("content-"):
                notes.append(Note(line.source, line.number, _MIME_NOTE, skipped=False))
            rules.append(rule)
            earlier.append((line, rule.outcome))
    order = {table.source: index for index, table in enumerate(tables)}
    notes.sort(key=lambda note: (order.get(note.source, 0), note.line))
    return Conversion(_render(tables, rules, skipped, now, kind), notes, len(rules), match_lines)


def _render(tables: list[Table], rules: list[_Rule], skipped: list[tuple[Line, str]],
            now: datetime | None, kind: str = "header") -> str:
    check, options, key = KINDS[kind]
    now = now or datetime.now(timezone.utc)
    sources = ", ".join(f"{t.format}:{t.source}" for t in tables)
    out = [
        f"# Imported from {sources}",
        f"# by smtpfilter import-header-checks{'' if kind == 'header' else ' --kind ' + kind}, "
        f"{now:%Y-%m-%d %H:%M} UTC.",
        "#",
        "# One rule per table line, matched as Postfix's cleanup(8) matches it: each key is",
        f"# {key},",
        "# exactly as written (form: postfix), case-insensitive unless the line said",
        "# otherwise. `unless` and `if` keep Postfix's rule that the first matching line wins",
        "# for each key, and its if/endif blocks.",
        "# One difference remains: Postfix tries each key in turn against the whole table;",
        "# these rules try each line in turn against every key. They decide differently only",
        "# when one message matches two lines with different actions on two different keys;",
        "# `check: header_checks` with the table itself keeps that order too (README).",
        f"# Remove the lines you import from Postfix's {kind}_checks, or both will act on them.",
    ]
    if kind == "header":
        out += [
            "# Postfix also applies header_checks to the headers of MIME parts (attachments)",
            "# unless mime_header_checks is set: import the table with --kind mime_header too.",
        ]
    if any(r.action in ("reject", "tempfail") for r in rules):
        out += [
            "#",
            "# reject: in Postfix's header_checks the 550 went to the sending client. Behind",
            "# content_filter (after queue) Postfix has already accepted the message, so a 550",
            "# makes it bounce to the envelope sender, which for spam is forged: consider",
            "# --reject-as discard|quarantine|tag, or before-queue filtering (README).",
        ]
    out += ["", "rules:"]
    pending = sorted(skipped, key=lambda item: (item[0].source, item[0].number))
    for rule in rules:
        while pending and (pending[0][0].source, pending[0][0].number) < (
            rule.line.source, rule.line.number
        ):
            out += _skipped_comment(*pending.pop(0))
        out.append(f"  # {reply_text(rule.line.where)}: {reply_text(rule.line.text)[:200]}")
        if rule.warn_mode:
            out.append(f"  # observe-only: {rule.warn_mode}; check the log, then remove mode")
        out.append(f"  - name: {rule.name}")
        out.append(f"    description: {_quote(rule.description)}")
        out.append(f"    check: {check}")
        out.extend(options)
        pattern = "^" if rule.line.pattern.negated else rule.line.pattern.re2
        out.append(f"    match: {_quote(pattern)}")
        for key, patterns in (("if", rule.require), ("unless", rule.unless)):
            if patterns:
                out.append(f"    {key}:")
                out += [f"      - {_quote(p)}" for p in dict.fromkeys(patterns)]
        out.append(f"    action: {rule.action}")
        if rule.text is not None:
            out.append(f"    text: {_quote(rule.text)}")
        if rule.warn_mode:
            out.append("    mode: warn")
    while pending:
        out += _skipped_comment(*pending.pop(0))
    if not rules:
        out[-1] = "rules: []"
    return "\n".join(out) + "\n"


def _skipped_comment(line: Line, why: str) -> list[str]:
    return [
        f"  # {reply_text(line.where)}: {reply_text(line.text)[:200]}",
        f"  #   {'' if why.startswith(('DUNNO', 'OK')) else 'not imported: '}{reply_text(why)}",
    ]
