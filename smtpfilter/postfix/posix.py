"""POSIX regular expressions (Postfix ``regexp:`` tables, glibc's regcomp) translated to RE2.

POSIX patterns differ from RE2 in ways the translation handles:

- inside ``[...]`` a backslash is an ordinary character, ``]`` first is literal, ``[=a=]`` and
  ``[.a.]`` name one character; ``[[:alpha:]]`` classes work as they are;
- GNU escapes ``\\w \\W \\s \\S \\b \\B`` keep their meaning, ``\\<``/``\\>`` (word start/end) become
  ``\\b``, `` \\` `` and ``\\'`` become ``\\A`` and ``\\z``;
- in extended syntax (ERE, the ``x`` flag, on by default) an unmatched ``)`` is literal; in basic
  syntax (BRE) ``\\( \\) \\{ \\} \\| \\+ \\?`` are the operators, and ``*`` and ``^`` are special only
  at the start of an expression, ``$`` only at its end;
- any other escaped letter is that letter, *except* that glibc (Debian, docker-mailserver) never
  matches an escaped lower-case letter under the default case-insensitive flag: ``\\d`` is not a
  digit and matches nothing at all, so a line like ``/^Date: .* 200\\d/`` has never fired in
  Postfix. We translate that faithfully, report it, and mark a pattern that can never match.

:func:`translate_ere` and :func:`translate_bre` share what the two syntaxes share (escapes,
bracket expressions, the result) through :class:`_Translation`; :func:`translate_posix` picks one.
"""

from __future__ import annotations

import re

from smtpfilter.core.errors import TranslationError

__all__ = ["NEVER", "translate_bre", "translate_ere", "translate_posix"]

NEVER = r"[^\x00-\x{10FFFF}]"  # an RE2 atom that matches nothing, for glibc's dead escapes

_GNU_ESCAPES = {
    "w": r"\w", "W": r"\W", "s": r"\s", "S": r"\S", "b": r"\b", "B": r"\B",
    "<": r"\b", ">": r"\b", "`": r"\A", "'": r"\z",
}
_POSIX_CLASSES = frozenset(
    "alnum alpha blank cntrl digit graph lower print punct space upper xdigit".split()
)
_INTERVAL = re.compile(r"\{(\d*)(,(\d*))?\}")
_BRE_INTERVAL = re.compile(r"\\\{(\d*)(,(\d*))?\\\}")


def _interval(match: re.Match[str] | None) -> str:
    """``{m}``, ``{m,}``, ``{m,n}`` and GNU's ``{,n}`` (RE2 wants ``{0,n}``)."""
    if match is None or (match.group(1) == "" and match.group(2) is None):
        raise TranslationError("invalid {...} interval (Postfix skips this line too)")
    low = match.group(1) or "0"
    return "{" + low + (match.group(2) or "") + "}"


def _literal(char: str) -> str:
    """One character as an RE2 literal."""
    if char.isalnum() or char in " _\"'%&,/:;<=>@`~!#-":
        return char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\x{{{ord(char):02x}}}"
    if ord(char) < 0x80:
        return "\\" + char
    return char


def _class_char(char: str) -> str:
    if char.isalnum():
        return char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\x{{{ord(char):02x}}}"
    if ord(char) < 0x80:
        return "\\" + char
    return char


def _posix_bracket(src: str, i: int, newline: bool) -> tuple[str, int]:
    """``[...]`` starting at ``src[i] == "["`` → (RE2 class, index after it)."""
    j = i + 1
    negate = j < len(src) and src[j] == "^"
    if negate:
        j += 1
    items: list[str] = []
    first = True
    while True:
        if j >= len(src):
            raise TranslationError("unclosed [ (Postfix skips this line too)")
        char = src[j]
        if char == "]" and not first:
            j += 1
            break
        first = False
        if char == "[" and j + 1 < len(src) and src[j + 1] in ":=.":
            kind = src[j + 1]
            end = src.find(kind + "]", j + 2)
            if end < 0:
                raise TranslationError(f"unclosed [{kind} (Postfix skips this line too)")
            name = src[j + 2 : end]
            j = end + 2
            if kind == ":":
                if name not in _POSIX_CLASSES:
                    raise TranslationError(f"unknown class [:{name}:] (Postfix skips this line too)")
                items.append(f"[:{name}:]")
            elif len(name) == 1:
                items.append(_class_char(name))  # [=a=], [.a.]: that character (C locale)
            else:
                raise TranslationError(f"collating element [{kind}{name}{kind}] is not supported")
            continue
        j += 1
        if j + 1 < len(src) and src[j] == "-" and src[j + 1] != "]":
            high = src[j + 1]
            if high == "[":
                raise TranslationError("a range ending in [.x.] or [=x=] is not supported")
            if ord(high) < ord(char):
                raise TranslationError(
                    f"invalid range {char}-{high} (Postfix skips this line too)"
                )
            items.append(f"{_class_char(char)}-{_class_char(high)}")
            j += 2
        else:
            items.append(_class_char(char))
    if negate and newline:
        items.append(r"\n")  # REG_NEWLINE: a negated list never matches a newline
    return "[" + ("^" if negate else "") + "".join(items) + "]", j


_MEANT = {"d": "a digit", "s": "a space", "w": "a word character", "n": "a newline",
          "t": "a tab", "r": "a carriage return", "b": "a word boundary"}


class _Translation:
    """What ERE and BRE translation share: the output so far, remarks for the admin, group
    depth, and the never-matching atoms (glibc's dead escapes) that may kill the pattern."""

    def __init__(self, src: str, icase: bool, newline: bool) -> None:
        self.src = src
        self.icase = icase
        self.newline = newline
        self.out: list[str] = []
        self.remarks: list[str] = []
        self.depth = 0
        self.top_alternation = False
        self.dead_at: list[int] = []  # indexes in out of never-matching atoms at depth 0

    def escape(self, escaped: str) -> None:
        """An escape both syntaxes read alike: backreference, GNU class, letter, literal."""
        out = self.out
        if escaped in "123456789":
            raise TranslationError(
                f"backreference \\{escaped}: RE2 has no backreferences (glibc has)"
            )
        if escaped in _GNU_ESCAPES:
            out.append(_GNU_ESCAPES[escaped])
            if escaped in "<>":
                self.remarks.append(
                    f"\\{escaped} (word {'start' if escaped == '<' else 'end'}) became \\b "
                    f"(any word boundary)"
                )
        elif escaped.isascii() and escaped.isalpha():
            if self.icase and escaped.islower():
                # glibc reads "\d" as the letter d, and under REG_ICASE never matches an
                # escaped lower-case letter at all (checked with regcomp and postmap -q).
                if self.depth == 0:
                    self.dead_at.append(len(out))
                out.append(NEVER)
                self.remarks.append(
                    f"\\{escaped} is not {_MEANT.get(escaped, 'a class')} in a regexp: table: "
                    f"glibc reads it as the letter {escaped}, and with case-insensitive "
                    f"matching never matches it at all"
                    + (" (write [0-9] for a digit, or use a pcre: table)"
                       if escaped == "d" else "")
                )
            else:
                out.append(escaped)
                self.remarks.append(
                    f"\\{escaped} is the letter {escaped} in a regexp: table, not "
                    f"{_MEANT.get(escaped.lower(), 'a class')}"
                )
        else:
            out.append(_literal(escaped))

    def bracket(self, i: int) -> int:
        bracket, i = _posix_bracket(self.src, i, self.newline)
        self.out.append(bracket)
        return i

    def open_group(self) -> None:
        self.depth += 1
        self.out.append("(")

    def alternation(self) -> None:
        self.top_alternation |= self.depth == 0
        self.out.append("|")

    def finish(self) -> tuple[str, bool, list[str]]:
        if self.depth:
            raise TranslationError("unmatched ( (Postfix skips this line too)")
        out = self.out
        # A never-matching atom at the top level, not made optional, kills the whole pattern.
        dead = not self.top_alternation and any(
            index + 1 >= len(out) or out[index + 1][:1] not in ("*", "?", "{")
            for index in self.dead_at
        )
        return "".join(out), dead, self.remarks


def _backslash_at_end(src: str, i: int) -> None:
    if i + 1 >= len(src):
        raise TranslationError("the pattern ends with a backslash (Postfix skips it too)")


def translate_ere(
    src: str, *, icase: bool = True, newline: bool = False
) -> tuple[str, bool, list[str]]:
    """POSIX extended syntax (REG_EXTENDED) → (RE2 body, can never match, remarks)."""
    t = _Translation(src, icase, newline)
    out = t.out
    i, n = 0, len(src)
    while i < n:
        char = src[i]
        if char == "\\":
            _backslash_at_end(src, i)
            t.escape(src[i + 1])
            i += 2
        elif char == "[":
            i = t.bracket(i)
        else:
            i += 1
            if char == "(":
                t.open_group()
            elif char == ")":
                if t.depth == 0:
                    out.append(r"\)")  # glibc: RE_UNMATCHED_RIGHT_PAREN_ORD
                else:
                    t.depth -= 1
                    out.append(")")
            elif char == "|":
                t.alternation()
            elif char == "{":
                interval = _INTERVAL.match(src, i - 1)
                out.append(_interval(interval))
                i = interval.end()  # type: ignore[union-attr]  # _interval raised if None
            elif char in "*+?^$.":
                out.append(char)
            else:
                out.append(_literal(char))
    return t.finish()


def translate_bre(
    src: str, *, icase: bool = True, newline: bool = False
) -> tuple[str, bool, list[str]]:
    """POSIX basic syntax (no REG_EXTENDED) → (RE2 body, can never match, remarks)."""
    t = _Translation(src, icase, newline)
    out = t.out

    def at_start() -> bool:  # BRE: "*" and "^" are special only at the start of an RE
        return not out or out[-1] in ("(", "(?:", "|", "^")

    i, n = 0, len(src)
    while i < n:
        char = src[i]
        if char == "\\":
            _backslash_at_end(src, i)
            escaped = src[i + 1]
            i += 2
            if escaped == "(":
                t.open_group()
            elif escaped == ")":
                if t.depth == 0:
                    raise TranslationError(r"unmatched \) (Postfix skips this line too)")
                t.depth -= 1
                out.append(")")
            elif escaped == "{":
                interval = _BRE_INTERVAL.match(src, i - 2)
                out.append(_interval(interval))
                i = interval.end()  # type: ignore[union-attr]  # _interval raised if None
            elif escaped == "}":
                raise TranslationError(r"unmatched \} (Postfix skips this line too)")
            elif escaped == "|":
                t.alternation()
            elif escaped in "+?":
                out.append(escaped)  # GNU \+ \?
            else:
                t.escape(escaped)
        elif char == "[":
            i = t.bracket(i)
        else:
            i += 1
            if char == "*":
                out.append(r"\*" if at_start() else "*")
            elif char == "^":
                out.append("^" if at_start() else r"\^")
            elif char == "$":
                at_end = i >= n or src.startswith(r"\)", i) or src.startswith(r"\|", i)
                out.append("$" if at_end else r"\$")
            elif char == ".":
                out.append(".")
            else:
                out.append(_literal(char))
    return t.finish()


def translate_posix(
    src: str, *, extended: bool = True, icase: bool = True, newline: bool = False
) -> tuple[str, bool, list[str]]:
    """A POSIX regex as glibc's regcomp reads it → (RE2 body, can never match, remarks)."""
    translate = translate_ere if extended else translate_bre
    return translate(src, icase=icase, newline=newline)
