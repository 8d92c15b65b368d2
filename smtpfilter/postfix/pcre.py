"""PCRE patterns (Postfix ``pcre:`` tables) translated to RE2: nearly the same language; what RE2
lacks (backreferences, lookaround, atomic groups, recursion, possessive quantifiers) is named.
"""

from __future__ import annotations

import re

from smtpfilter.core.errors import TranslationError

__all__ = ["translate_pcre"]

_PCRE_UNSUPPORTED = [
    (re.compile(r"\(\?<?[=!]"), "lookaround (?= (?! (?<= (?<!"),
    (re.compile(r"\(\?>"), "atomic group (?>"),
    (re.compile(r"\(\?\("), "conditional (?("),
    (re.compile(r"\(\?(?:R|[+-]?\d|&|P>)"), "recursion"),
    (re.compile(r"\(\*[A-Z]"), "a (*VERB)"),
    (re.compile(r"[*+?}]\+"), "a possessive quantifier"),
]
_PCRE_ESCAPES = {"Z": r"\z", "e": r"\x1b", "a": r"\x07"}


def _strip_extended(src: str) -> str:
    """PCRE's x flag: unescaped whitespace outside classes is ignored, "#" starts a comment."""
    out = []
    i = 0
    in_class = False
    while i < len(src):
        char = src[i]
        if char == "\\" and i + 1 < len(src):
            out.append(src[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
        elif char.isspace():
            i += 1
            continue
        elif char == "#":
            break
        out.append(char)
        i += 1
    return "".join(out)


def translate_pcre(src: str, *, extended: bool = False) -> str:
    """A PCRE pattern → RE2: nearly the same language; say clearly what RE2 lacks."""
    if extended:
        src = _strip_extended(src)
    for finder, what in _PCRE_UNSUPPORTED:
        if finder.search(src):
            raise TranslationError(f"{what}: RE2 has no such thing (PCRE has)")
    out = []
    i = 0
    while i < len(src):
        char = src[i]
        if char != "\\" or i + 1 >= len(src):
            out.append(char)
            i += 1
            continue
        escaped = src[i + 1]
        i += 2
        if escaped in "123456789" or escaped in "gk":
            raise TranslationError(
                f"backreference \\{escaped}: RE2 has no backreferences (PCRE has)"
            )
        if escaped in "KG":
            raise TranslationError(f"\\{escaped}: RE2 has no such thing (PCRE has)")
        if escaped == "Q":  # \Q...\E: copied as it is, RE2 reads it the same way
            end = src.find(r"\E", i)
            end = len(src) if end < 0 else end + 2
            out.append("\\Q" + src[i:end])
            i = end
            continue
        out.append(_PCRE_ESCAPES.get(escaped, "\\" + escaped))
    return "".join(out)
