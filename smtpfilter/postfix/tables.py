"""Postfix header_checks tables, read the way Postfix reads them, with patterns translated to RE2.


The table syntax (header_checks(5), regexp_table(5), pcre_table(5)) and its corner cases follow
Postfix's own code (util/readlline.c, util/dict_regexp.c, util/dict_pcre.c) and were checked
against ``postmap -q`` of Postfix 3.7:

- A logical line starts with non-whitespace; a line starting with whitespace continues it
  (joined as written, whitespace kept); empty, blank and ``#`` lines are skipped, even inside a
  continued line. A first line that starts with whitespace is skipped ("logical line must not
  start with whitespace"). A logical line is reported at its first physical line.
- ``/pattern/flags action``: the delimiter is any non-alphanumeric character; ``\\`` escapes it
  (and stays in the pattern). ``!`` before the delimiter negates, each ``!`` toggles, spaces may
  follow it. An unknown flag, a missing closing delimiter or a bad ``$n`` makes Postfix skip the
  line with a warning, and so do we.
- ``if /pattern/`` ... ``endif`` (case-insensitive keywords) nest; an ``endif`` without ``if`` is
  ignored, an unclosed ``if`` ends with its file.
- regexp: flags ``i`` (on), ``m`` (off: REG_NEWLINE), ``x`` (on: REG_EXTENDED; off means POSIX
  basic syntax). pcre: ``i`` (on), ``m``, ``s`` (on), ``x``, ``A``, ``E``, ``U``, ``X``.
- Substitution in the result: ``$n``, ``${n}``, ``$(n)``, ``$$``; ``$0``, an index beyond the
  pattern's groups, a non-numeric name or a lone ``$`` skip the line; negated patterns have no
  groups, so any ``$n`` skips the line.

Patterns are translated to RE2 (:mod:`smtpfilter.engine.patterns` runs them), which runs in
linear time but has no backreferences and no lookaround; a line that needs them is reported with
its number. The translations are postfix/posix.py (``regexp:``, ERE and BRE) and postfix/pcre.py
(``pcre:``); what an action word means is postfix/actions.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import re2

from smtpfilter.core.errors import TranslationError
from smtpfilter.postfix.pcre import translate_pcre
from smtpfilter.postfix.posix import translate_posix

__all__ = [
    "FORMATS",
    "Line",
    "Note",
    "Pattern",
    "Table",
    "parse_result",
    "parse_table",
    "read_table",
]

FORMATS = ("regexp", "pcre")


@dataclass(frozen=True, slots=True)
class Note:
    """Something the admin must know about one table line."""

    source: str
    line: int
    text: str
    skipped: bool = True  # the line was not imported

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.text}"


@dataclass(frozen=True, slots=True)
class Pattern:
    written: str  # between the delimiters, as in the file
    negated: bool
    body: str  # RE2, without flags
    case_sensitive: bool = False
    multiline: bool = False
    dotall: bool = True
    ungreedy: bool = False
    groups: int = 0
    header: str | None = None  # the header name the pattern is anchored to, lower case
    dead: bool = False  # can never match (glibc's escaped lower-case letters)

    @property
    def re2(self) -> str:
        """The RE2 pattern for a ``form: postfix`` rule (case-insensitive, ``.`` matches LF)."""
        on = ("m" if self.multiline else "") + ("U" if self.ungreedy else "")
        off = ("i" if self.case_sensitive else "") + ("" if self.dotall else "s")
        if not on and not off:
            return self.body
        return f"(?{on}{'-' + off if off else ''}){self.body}"

    @property
    def shown(self) -> str:
        return ("!" if self.negated else "") + f"/{self.written}/"


@dataclass(slots=True)
class Line:
    """One logical line of a table: a match line, ``if`` or ``endif``."""

    source: str
    number: int
    text: str
    kind: str  # "match" | "if" | "endif"
    pattern: Pattern | None = None
    result: str = ""  # the action text as written, $n not yet substituted
    conditions: tuple["Line", ...] = ()  # enclosing if lines, outermost first
    unusable: str | None = None  # why RE2 cannot run this line (Postfix can)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.number}"


@dataclass(slots=True)
class Table:
    source: str
    format: str
    lines: list[Line] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


# --- reading: util/readlline.c ---------------------------------------------------------------
def logical_lines(text: str, source: str, notes: list[Note]) -> list[tuple[int, str]]:
    result: list[tuple[int, str]] = []
    current: list[str] | None = None
    first = 0
    for number, physical in enumerate(text.split("\n"), start=1):
        stripped = physical.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if physical[:1].isspace():
            if current is None:
                notes.append(Note(source, number, "a table line must not start with whitespace "
                                  "(Postfix skips it too)"))
                continue
            current.append(physical)
            continue
        if current is not None:
            result.append((first, "".join(current).rstrip()))
        current, first = [physical], number
    if current is not None:
        result.append((first, "".join(current).rstrip()))
    return result


# --- /pattern/flags --------------------------------------------------------------------------
def _split_pattern(text: str) -> tuple[bool, str, str, str]:
    """``!/re/flags rest`` → (negated, re, flags, rest); ValueError with Postfix's complaint."""
    negated = False
    i = 0
    while i < len(text) and (text[i] == "!" or text[i].isspace()):
        if text[i] == "!":
            negated = not negated
        i += 1
    if i >= len(text):
        raise ValueError("no pattern")
    delimiter = text[i]
    i += 1
    start = i
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == delimiter:
            break
        i += 1
    if i >= len(text):
        raise ValueError(f"no closing delimiter {delimiter!r}")
    pattern = text[start:i]
    i += 1
    flags_start = i
    while i < len(text) and not text[i].isspace():
        i += 1
    return negated, pattern, text[flags_start:i], text[i:].lstrip()


_HEADER_NAME = re.compile(r"^\^([A-Za-z0-9][A-Za-z0-9_-]*):")


def _make_pattern(written: str, negated: bool, flags: str, fmt: str) -> tuple[Pattern, list[str]]:
    """Translate one pattern; returns it and remarks worth telling the admin."""
    remarks: list[str] = []
    icase, multiline, dotall, ungreedy = True, False, True, False
    if fmt == "regexp":
        extended = True
        for flag in flags:
            if flag == "i":
                icase = not icase
            elif flag == "m":
                multiline = not multiline
            elif flag == "x":
                extended = not extended
            else:
                raise TranslationError(f'unknown flag "{flag}" (Postfix skips this line too)')
        dotall = not multiline  # REG_NEWLINE: "." and [^...] no longer match a newline
        body, dead, remarks = translate_posix(
            written, extended=extended, icase=icase, newline=multiline
        )
    else:
        extended = anchored = False
        for flag in flags:
            if flag == "i":
                icase = not icase
            elif flag == "m":
                multiline = not multiline
            elif flag == "s":
                dotall = not dotall
            elif flag == "x":
                extended = not extended
            elif flag == "A":
                anchored = not anchored
            elif flag == "U":
                ungreedy = not ungreedy
            elif flag in "EX":
                pass  # E: "$" already ends only at the end here; X: obsolete (PCRE2 ignores it)
            else:
                raise TranslationError(f'unknown flag "{flag}" (Postfix skips this line too)')
        body = translate_pcre(written, extended=extended)
        if anchored:
            body = rf"\A(?:{body})"
        dead = False
    pattern = Pattern(
        written, negated, body, not icase, multiline, dotall, ungreedy, dead=dead and not negated
    )
    options = re2.Options()
    options.log_errors = False
    try:
        compiled = re2.compile(pattern.re2, options)
    except re2.error as error:
        detail = error.args[0] if error.args else error
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        if "argument for repetition operator" in str(detail):
            # "*a", "(+a)": glibc's regcomp refuses these too (REG_BADRPT).
            raise TranslationError(f"{detail} (Postfix skips this line too)") from None
        raise TranslationError(f"RE2 cannot run this pattern: {detail}") from None
    name = _HEADER_NAME.match(body)
    header = name.group(1).lower() if name and not negated else None
    return Pattern(
        written, negated, body, not icase, multiline, dotall, ungreedy,
        groups=compiled.groups, header=header, dead=pattern.dead,
    ), remarks


# --- results: $n substitution (global/mac_parse.c) ------------------------------------------
_MACRO = re.compile(r"\$(?:\{([^}]*)\}|\(([^)]*)\)|([A-Za-z0-9_]+)|(\$)|)")


def parse_result(result: str, groups: int, negated: bool) -> str:
    """The result with ``$(n)`` written as ``${n}`` and ``$$`` as ``$``; ValueError when
    Postfix would skip the line (its own warning, reworded)."""

    def one(match: re.Match[str]) -> str:
        if match.group(4):
            return "$"
        name = match.group(1) if match.group(1) is not None else (
            match.group(2) if match.group(2) is not None else match.group(3)
        )
        if name is None or name == "":
            raise ValueError("a $ with no number after it (Postfix: empty macro name)")
        if not name.isdigit():
            raise ValueError(f"${name} is not a group number (Postfix: bad replacement syntax)")
        number = int(name)
        if negated:
            raise ValueError(f"${number} with a negated pattern, which has no groups")
        if number < 1 or number > groups:
            raise ValueError(f"${number} but the pattern has {groups} group(s) "
                             f"(Postfix: out of range replacement index)")
        return "${%d}" % number

    return _MACRO.sub(one, result)


# --- tables ----------------------------------------------------------------------------------
def parse_table(text: str, fmt: str, source: str) -> Table:
    """Every logical line of one table, with its enclosing ``if`` lines and translated pattern.

    Lines Postfix itself skips are left out with a note; lines Postfix keeps but RE2 cannot run
    are kept with ``unusable`` set, because they still shadow the lines below them."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}")
    table = Table(source, fmt)
    stack: list[Line] = []
    for number, text_line in logical_lines(text, source, table.notes):
        if any("\udc80" <= c <= "\udcff" for c in text_line):
            table.notes.append(Note(source, number, "not UTF-8 text: not imported (RE2 patterns "
                                    "and YAML rules are UTF-8; Postfix matches bytes)"))
            continue
        keyword = re.match(r"(?i)(if|endif)(?![A-Za-z0-9])", text_line)
        if text_line[:1].isalnum() and keyword is None:
            table.notes.append(Note(source, number, "not a pattern, if or endif "
                                    "(Postfix ignores this line too)"))
            continue
        if keyword and keyword.group(1).lower() == "endif":
            if not stack:
                table.notes.append(Note(source, number, "endif without if "
                                        "(Postfix ignores it too)"))
                continue
            stack.pop()
            table.lines.append(Line(source, number, text_line, "endif", conditions=tuple(stack)))
            continue
        is_if = keyword is not None
        body = text_line[keyword.end():] if is_if else text_line
        try:
            negated, written, flags, rest = _split_pattern(body)
        except ValueError as error:
            table.notes.append(Note(source, number, f"{error} (Postfix skips this line too)"))
            continue
        line = Line(source, number, text_line, "if" if is_if else "match",
                    conditions=tuple(stack), result=rest)
        try:
            pattern, remarks = _make_pattern(written, negated, flags, fmt)
        except TranslationError as error:
            if "Postfix skips" in str(error):
                table.notes.append(Note(source, number, str(error)))
                continue
            line.unusable = str(error)
            line.pattern = Pattern(written, negated, "", groups=0)
            remarks = []
        else:
            line.pattern = pattern
        for remark in dict.fromkeys(remarks):  # once per line, however often its escape appears
            table.notes.append(Note(source, number, remark, skipped=False))
        if is_if:
            if rest:
                table.notes.append(Note(source, number, f"text after the if pattern is ignored "
                                        f"(by Postfix too): {rest[:60]!r}", skipped=False))
            stack.append(line)
        elif line.unusable is None:
            try:
                line.result = parse_result(rest, line.pattern.groups, line.pattern.negated)
            except ValueError as error:
                table.notes.append(Note(source, number, f"{error}: Postfix skips this line"))
                continue
        table.lines.append(line)
    for line in stack:
        table.notes.append(Note(source, line.number, "if without endif: it ends with the "
                                "file, as in Postfix", skipped=False))
    return table


def read_table(spec: str, fmt: str | None = None) -> Table:
    """``/etc/postfix/header_checks``, ``regexp:/etc/...`` or ``pcre:/etc/...`` → Table.

    The format comes from the ``type:`` prefix (as written in main.cf), else ``fmt``, else the
    file name (``*.pcre``), else regexp. Raises OSError when the file cannot be read."""
    kind, sep, name = spec.partition(":")
    if sep and kind in FORMATS:
        fmt, path = kind, Path(name)
    else:
        path = Path(spec)
        fmt = fmt or ("pcre" if path.suffix == ".pcre" else "regexp")
    raw = path.read_bytes()
    text = raw.decode("utf-8", "surrogateescape")
    table = parse_table(text, fmt, str(path))
    return table
