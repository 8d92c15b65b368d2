"""Text made safe to send or show (reply lines, log lines, terminal output), and xtext.

Part of ``core``, the shared vocabulary (imports nothing else of smtpfilter).

Client data reaches our replies and logs: aiosmtpd echoes an unknown command in its 500 reply,
and MAIL/RCPT paths, XFORWARD values and header values go into log lines. Raw CR, LF, NUL or ESC
there would forge reply lines (RFC 5321 §4.2: reply text is printable US-ASCII), forge log lines
(a CR or LF starts a new one) or drive an admin's terminal (ESC sequences). Client data is decoded
with ``surrogateescape`` (aiosmtpd does so for command arguments, we for headers), so a byte
that is not UTF-8 arrives as a lone surrogate U+DC80..U+DCFF: a strict UTF-8 encoder (syslog's)
raises on it and the whole line is lost.

One function per destination; every "printable or ?" helper in the package is one of them:

- :func:`reply_text`: one line of printable ASCII, everything else "?" (SMTP replies, headers we
  add, YAML we write);
- :func:`escape`: printable text kept (UTF-8 included), everything else visibly escaped as
  ``\\xNN`` (a control character, or a byte that was not UTF-8), ``\\uNNNN`` or ``\\UNNNNNNNN``
  (other non-printable code points: line separators, bidi overrides...), never dropped, never an
  exception (log lines, terminal output);
- :func:`printable` (and :func:`snippet`, cut to a length): printable text kept (UTF-8
  included), anything else "?": a header value quoted in a finding's reason, an XFORWARD value
  (:func:`neuter`).
"""

from __future__ import annotations

import re

__all__ = [
    "escape",
    "escape_lines",
    "is_xtext",
    "neuter",
    "printable",
    "reply_text",
    "snippet",
    "xtext_decode",
    "xtext_encode",
]

_NOT_REPLY_TEXT = re.compile(r"[^ -~]")


def reply_text(text: str) -> str:
    """One line of printable ASCII (RFC 5321 §4.2): anything else becomes "?"."""
    if text.isascii() and text.isprintable():  # the common case, checked in C
        return text
    return _NOT_REPLY_TEXT.sub("?", text)


def printable(text: str) -> str:
    """``text`` with every character that is not printable (controls, tabs, line breaks, lone
    surrogates) replaced by "?"; printable Unicode is kept."""
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def snippet(text: str, limit: int = 100) -> str:
    """At most ``limit`` characters of :func:`printable` text, "..." when there was more."""
    text = printable(text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character visibly escaped; encodable as strict UTF-8.

    A space stays a space; a tab, CR or LF is escaped like any control character, so the result
    is always one line."""
    if text.isprintable():  # the common case, checked in C (False for surrogates and controls)
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def escape_lines(text: str) -> str:
    """Like :func:`escape`, but line feeds are kept: for multi-line text of our own (a
    traceback) that may quote client data."""
    return "\n".join(escape(line) for line in text.split("\n"))


# --- xtext (RFC 3461 §4): the encoding of XFORWARD values and of DSN's ENVID/ORCPT --------------
# xtext = *( xchar / hexchar ); xchar is any printable ASCII (33-126) except "+" and "=";
# hexchar is "+" followed by two upper-case hex digits.
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
# Postfix smtpd.c NEUTER_CHARACTERS: replaced by "?" in forwarded client attributes.
_NEUTER = str.maketrans(dict.fromkeys(' <>()\\";@', "?"))


def is_xtext(value: str) -> bool:
    return _XTEXT.fullmatch(value) is not None


def xtext_decode(value: str) -> str:
    """Decode xtext; octets are read as UTF-8, invalid ones kept via surrogateescape."""
    raw = bytearray()
    pos = 0
    for match in _HEXCHAR.finditer(value):
        raw += value[pos : match.start()].encode("utf-8", "surrogateescape")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += value[pos:].encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "surrogateescape")


def xtext_encode(value: str) -> str:
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):  # not "+" or "="
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def neuter(value: str) -> str:
    """Replace what Postfix would neuter, and anything not printable, by "?"."""
    return printable(value).translate(_NEUTER)
