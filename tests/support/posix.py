"""glibc's own regcomp/regexec, through ctypes: the regex engine Postfix's regexp: tables use.

Not a mock: it is the real library code Postfix links against on Debian, so a test can compare
our RE2 translation of a POSIX pattern with what Postfix matches, for many patterns and inputs,
without running Postfix. Flags as in Postfix's dict_regexp.c: REG_EXTENDED and REG_ICASE on by
default, REG_NEWLINE for the m flag.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

REG_EXTENDED, REG_ICASE, REG_NEWLINE, REG_NOSUB = 1, 2, 4, 8

_libc = None


def _library():
    global _libc
    if _libc is None:
        if not sys.platform.startswith("linux"):
            pytest.skip("needs glibc's regcomp (Linux)")
        _libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return _libc


def postfix_flags(flags: str = "") -> int:
    """The regcomp flags of a regexp: table pattern with these flag letters (regexp_table(5))."""
    value = REG_EXTENDED | REG_ICASE
    for flag in flags:
        value ^= {"i": REG_ICASE, "m": REG_NEWLINE, "x": REG_EXTENDED}[flag]
    return value


def glibc_search(pattern: str, text: str, flags: int) -> bool | None:
    """True/False as regexec answers; None when regcomp refuses the pattern."""
    libc = _library()
    regex = ctypes.create_string_buffer(1024)  # larger than any regex_t
    if libc.regcomp(regex, pattern.encode(), flags | REG_NOSUB) != 0:
        return None
    try:
        return libc.regexec(regex, text.encode(), 0, None, 0) == 0
    finally:
        libc.regfree(regex)
