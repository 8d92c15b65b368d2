"""Message bytes in SMTP wire form: CRLF lines, dot-stuffed (RFC 5321 §4.5.2).

We keep a message exactly as it crossed the wire from Postfix and send those same bytes to 10026,
so there is nothing to unstuff or restuff on the normal path. The one exception is a message with
a bare CR or LF: the 10026 smtpd trusts 127.0.0.0/8 and is excluded from Postfix's bare-newline
defence, so a bare ``<LF>.<LF>`` sent downstream could end the message there and smuggle what
follows as new commands (CVE-2023-51764 and relatives, shared/POSTFIX-FACTS.md §6). Such messages
are rewritten to clean CRLF lines and re-stuffed before they leave; nothing we emit ever contains a
bare CR or LF.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable

from smtpfilter.core.text import reply_text

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.core.message import Header, MessageContext

__all__ = [
    "END_OF_DATA",
    "fold_header",
    "from_wire",
    "has_bare_line_ends",
    "normalise",
    "outgoing",
    "to_wire",
]

END_OF_DATA = b"\r\n.\r\n"

# Any line ending a lenient reader might see: CRLF, lone LF, lone CR.
_LINE_ENDS = re.compile(rb"\r\n|\n|\r")


def has_bare_line_ends(data: bytes | bytearray) -> bool:
    """True when ``data`` holds a CR not followed by LF or an LF not preceded by CR.

    Runs on every message, so it uses C-speed counts (about 2 ms per MB in all): every CR and
    every LF must be part of a CRLF pair. Single-byte counts first; the slower two-byte count
    only when they agree. (Deleting all other bytes and checking the rest pairs up is faster but
    wrong: it reads "CR . LF" as a pair. A regex with lookahead costs 20 ms per MB.)
    """
    cr = data.count(b"\r")
    if cr != data.count(b"\n"):
        return True
    return data.count(b"\r\n") != cr


def from_wire(data: bytes | bytearray) -> bytes:
    """Undo dot-stuffing of CRLF wire data: the message content as its author wrote it."""
    content = bytes(data).replace(b"\r\n.", b"\r\n")
    if content.startswith(b"."):
        content = content[1:]
    return content


def to_wire(content: bytes | bytearray) -> bytes:
    """Content with any line endings → CRLF lines, dot-stuffed, ending in CRLF (or empty)."""
    if not content:
        return b""
    text = _LINE_ENDS.sub(b"\r\n", bytes(content))
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    text = text.replace(b"\r\n.", b"\r\n..")
    if text.startswith(b"."):
        text = b"." + text
    return text


def normalise(data: bytes | bytearray) -> bytes:
    """Wire data that may contain bare CR/LF → safe wire data.

    Unstuff along the CRLF lines the sender meant, turn every lone CR or LF into CRLF, then stuff
    again: a line "." hidden behind a bare LF becomes "..", never an end of data.
    """
    return to_wire(from_wire(data))


# --- what leaves for 10026 ----------------------------------------------------------------
_MAX_LINE = 998  # RFC 5322 §2.1.1: a line is at most 998 characters before CRLF


def fold_header(name: str, value: str, width: int = 78) -> bytes:
    """``Name: value\\r\\n`` folded at spaces (RFC 5322 §2.2.3), every line ≤ 998 octets.

    Whatever the value holds, nothing but printable ASCII and our own folding CRLF+TAB leaves:
    CR, LF, NUL and other controls (from a DNSBL TXT record, a HELO name...) become "?".
    """
    clean = reply_text(value)
    lines: list[str] = []
    current = f"{name}:"
    for word in clean.split(" "):
        while len(word) > _MAX_LINE - 2:  # a single word that cannot fit on any line
            lines.append(current)
            current, word = "\t" + word[: _MAX_LINE - 2], word[_MAX_LINE - 2 :]
        if len(current) + 1 + len(word) > width and current != f"{name}:":
            lines.append(current)
            current = "\t" + word
        else:
            current += " " + word
    lines.append(current)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def outgoing(
    msg: "MessageContext",
    add: tuple[tuple[str, str], ...] = (),
    strip: tuple[str, ...] = (),
    rename: tuple[tuple[str, str], ...] = (),
    *,
    drop: Iterable["Header"] = (),
) -> list[bytes | memoryview]:
    """The wire bytes for 10026: our headers first, the original bytes after, unchanged except
    that incoming headers named in ``strip`` are cut out (copies of our own verdict, so nobody
    can pre-forge it), the given header fields in ``drop`` are cut out too (these instances
    only: a forged Authentication-Results among genuine ones), and those named in ``rename``
    (old, new) get the new name, their value untouched (an upstream X-Spam-Flag beside our own:
    HeadersConfig.incoming). Returned as slices of the original buffer: a large message is
    never copied."""
    parts: list[bytes | memoryview] = []
    if add:
        parts.append(b"".join(fold_header(name, value) for name, value in add))
    view = memoryview(msg.data)
    position = 0
    # (start, end, new name or None): cut [start, end), or put a new name in its place.
    edits: set[tuple[int, int, bytes | None]] = set()
    if strip or rename:
        names = {name.lower() for name in strip}
        renamed = {old.lower(): new.encode("ascii") for old, new in rename}
        for header in msg.headers:
            if header.lname in names:
                edits.add((header.start, header.end, None))
            elif header.lname in renamed:
                # Everything up to the colon is the name as written (with a stuffing dot or
                # the obs-optional spaces before the colon): replaced whole.
                colon = msg.data.index(b":", header.start, header.end)
                edits.add((header.start, colon, renamed[header.lname]))
    # By their offsets in msg.data: a field to drop may lie past the header block the rules
    # read (limits.header_size), found by a longer parse of the same bytes.
    edits.update((h.start, h.end, None) for h in drop)
    for begin, end, name in sorted(edits, key=lambda e: (e[0], e[1])):
        if begin < position:
            continue  # inside a field already cut (the same field named twice)
        parts.append(view[position:begin])
        if name is not None:
            parts.append(name)
        position = end
    parts.append(view[position:])
    return [p for p in parts if len(p)]
