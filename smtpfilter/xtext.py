"""xtext (RFC 3461 §4), the encoding of XFORWARD values and of DSN's ENVID/ORCPT.

xtext = *( xchar / hexchar ); xchar is any printable ASCII (33-126) except "+" and "=";
hexchar is "+" followed by two upper-case hex digits.
"""

from __future__ import annotations

import re

__all__ = ["decode", "encode", "is_xtext", "neuter"]

_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
# Postfix smtpd.c NEUTER_CHARACTERS: replaced by "?" in forwarded client attributes.
_NEUTER = frozenset(' <>()\\";@')


def is_xtext(value: str) -> bool:
    return _XTEXT.fullmatch(value) is not None


def decode(value: str) -> str:
    """Decode xtext; octets are read as UTF-8, invalid ones kept via surrogateescape."""
    raw = bytearray()
    pos = 0
    for match in _HEXCHAR.finditer(value):
        raw += value[pos : match.start()].encode("utf-8", "surrogateescape")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += value[pos:].encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "surrogateescape")


def encode(value: str) -> str:
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):  # not "+" or "="
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def neuter(value: str) -> str:
    """Replace what Postfix would neuter, and anything not printable, by "?"."""
    return "".join("?" if (c in _NEUTER or not c.isprintable()) else c for c in value)
