"""One message as the rules see it: envelope, client, receipt time and the parsed header block.

Only the header block is parsed, and only up to ``header_limit`` bytes: parsing a 25 MB message
with the email package costs tens of milliseconds even in ``headersonly`` mode (shared/TRAPS.md),
and no rule kind needs the body. Parsing works directly on the wire bytes so each header knows its
byte offsets there; that is how our own headers can be stripped without touching anything else.

The header section ends at the first empty line or, as in Postfix's cleanup(8) (``is_header()``),
at the first line that is neither a header field nor a continuation. Whatever follows is body for
Postfix and for mail readers, so it is body for the rules too; ``HeaderBlock.malformed_at`` records
that it happened so the log can say so. What is a header field is decided exactly as Postfix's
``is_header_buf()`` (src/global/is_header.c) decides it: a name of printable ASCII but the colon,
then optional spaces or tabs (RFC 5322 §4.5.3 obs-optional, RFC 822 §3.4.2), then the colon.
``X-Foo : bar`` is the header ``X-Foo`` (cleanup and ``postmap -hmq`` show it as ``X-Foo: bar``),
not the end of the header section: otherwise a line of that obsolete form would hide every later
header from the rules while Postfix and the mail reader still read them as headers.

A header section that goes on past ``header_limit`` is not read to its end, and what the rules do
not read they cannot judge (issue 10: 1.12 MB of small headers hid an ``X-Mailer`` from every
rule). :meth:`MessageContext.exceeded` names each parse limit a message went past, so the log
says so and the ``limits`` rule kind can act on it; :data:`PARSE_LIMITS` lists them. Parsers
that run later than this module (the MIME walk and archive listings of engine/mime.py, only when
a rule reads the body) record theirs with :meth:`MessageContext.exceed`.
"""

from __future__ import annotations

import email.header
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

from smtpfilter.core.envelope import Client

__all__ = [
    "PARSE_LIMITS",
    "Header",
    "HeaderBlock",
    "LimitExceeded",
    "MessageContext",
    "parse_header_block",
]

# Every parse limit a message can exceed, by kind, with the setting(s) that set it. "mime":
# MIME parts, nesting, part headers, zip directories and archive nesting (engine/mime.py),
# reached only when a rule reads the body.
PARSE_LIMITS = {"header": "limits.header_size", "mime": "the mime: section"}

# RFC 5322 §3.6.8: field-name = 1*ftext; ftext = %d33-57 / %d59-126 (printable, no colon),
# then §4.5.3 obs-optional's WSP before the colon, as Postfix's is_header_buf() accepts it.
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


class Header:
    """One logical header field; ``start``/``end`` are byte offsets in the wire data."""

    __slots__ = ("name", "lname", "start", "end", "_parts", "_text", "_decoded")

    def __init__(self, name: str, start: int, first: bytes) -> None:
        self.name = name
        self.lname = name.lower()
        self.start = start
        self.end = start
        self._parts = [first]
        self._text: str | None = None
        self._decoded: str | None = None

    @property
    def raw(self) -> bytes:
        """The value as folded on the wire (after the colon), CRLFs kept."""
        return b"\r\n".join(self._parts)

    @property
    def text(self) -> str:
        """Unfolded value (RFC 5322 §2.2.3: CRLF before WSP removed), trimmed, as text.

        8-bit bytes are read as UTF-8 (RFC 6532); bytes that are not UTF-8 become U+FFFD so a
        pattern can still run over the rest of the value.
        """
        if self._text is None:
            self._text = b"".join(self._parts).decode("utf-8", "replace").strip()
        return self._text

    @property
    def decoded(self) -> str:
        """``text`` with RFC 2047 encoded words decoded; ``text`` if decoding fails."""
        if self._decoded is None:
            text = self.text
            self._decoded = _decode_words(text) if "=?" in text else text
        return self._decoded

    @property
    def line(self) -> str:
        """``Name: value``, unfolded: what a Postfix header_checks pattern is matched against."""
        return f"{self.name}: {self.text}"

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.text[:60]!r})"


def _decode_words(text: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:  # any charset or syntax oddity: a rule then sees the raw form
        return text


@dataclass(slots=True)
class HeaderBlock:
    headers: list[Header]
    end: int  # offset where the header section ends (blank line, malformed line, or limit)
    malformed_at: int | None = None  # offset of a line that ended the headers early
    truncated: bool = False  # the header section continued past header_limit
    limit: int | None = None  # the header_limit it was parsed with
    _by_name: dict[str, list[Header]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for header in self.headers:
            self._by_name.setdefault(header.lname, []).append(header)

    def get_all(self, name: str) -> list[Header]:
        return self._by_name.get(name.lower(), [])

    def __iter__(self) -> Iterator[Header]:
        return iter(self.headers)

    def __len__(self) -> int:
        return len(self.headers)


def parse_header_block(
    data: bytes | bytearray, limit: int = 1 << 20, *, stuffed: bool = True
) -> HeaderBlock:
    """Parse the header section of CRLF wire ``data``, reading at most ``limit``; ``stuffed``
    False for content that is not dot-stuffed (a milter's), where a leading "." is the name's."""
    if data[:2] == b"\r\n":
        return HeaderBlock([], 0, limit=limit)
    truncated = False
    blank = data.find(b"\r\n\r\n", 0, limit)
    if blank >= 0:
        region_end = blank + 2
    elif len(data) <= limit:
        region_end = len(data)
    else:
        # Up to the last whole line within the limit; none at all when the first line alone
        # is longer (rfind's -1 once made that one byte, parsed as a malformed line).
        last = data.rfind(b"\r\n", 0, limit)
        region_end = last + 2 if last >= 0 else 0
        truncated = True
    lines = bytes(data[:region_end]).split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the region ends with CRLF; the last element is empty

    headers: list[Header] = []
    current: Header | None = None
    offset = 0
    malformed_at = None
    for line in lines:
        size = len(line) + 2
        if stuffed and line[:1] == b".":
            line = line[1:]  # undo dot-stuffing, RFC 5321 §4.5.2
        if line[:1] in (b" ", b"\t"):
            if current is None:
                malformed_at = offset
                break
            current._parts.append(line)
            current.end = offset + size
        else:
            named = _FIELD_NAME.match(line)
            if named is None:
                malformed_at = offset
                break
            current = Header(named[1].decode("ascii"), offset, line[named.end() :])
            current.end = offset + size
            headers.append(current)
        offset += size
    return HeaderBlock(headers, offset, malformed_at, truncated and malformed_at is None, limit)


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """A parse limit one message went past: part of it the rules did not read."""

    kind: str  # a key of PARSE_LIMITS: "header", "mime"
    setting: str  # "limits.header_size", "mime.max_parts"...
    reason: str  # for the log and the finding

    @property
    def finding(self) -> str:
        """The finding a ``limits`` rule reports: HEADER_LIMIT, MIME_LIMIT."""
        return f"{self.kind.upper()}_LIMIT"


@dataclass(slots=True)
class MessageContext:
    """Everything a check may look at for one message."""

    received_at: datetime  # aware, UTC: when the final "." arrived
    mail_from: str
    rcpt_to: tuple[str, ...]
    client: Client
    data: bytes | bytearray  # wire form: CRLF lines, dot-stuffed, no final "." (see stuffed)
    headers: HeaderBlock
    size: int
    # Values derived once per message and shared by the rules that need them (the parsed
    # Date, for the four shipped date rules).
    memo: dict[object, object] = field(default_factory=dict)
    # False when ``data`` is CRLF lines NOT dot-stuffed: the milter receives the message so
    # (Postfix streams it unstuffed) and keeps that one copy rather than stuffing a second
    # one. Whoever reads the body (MIME, body rules) unstuffs only when this is True
    # (core.wire.from_wire); the header block is already parsed either way.
    stuffed: bool = True
    # Limits reached by parsers that run on demand (the MIME walk), in the order reached.
    overflows: list[LimitExceeded] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        data: bytes | bytearray,
        *,
        received_at: datetime,
        mail_from: str = "",
        rcpt_to: tuple[str, ...] = (),
        client: Client | None = None,
        header_limit: int = 1 << 20,
        stuffed: bool = True,
    ) -> "MessageContext":
        return cls(
            received_at=received_at,
            mail_from=mail_from,
            rcpt_to=rcpt_to,
            client=client or Client(),
            data=data,
            headers=parse_header_block(data, header_limit, stuffed=stuffed),
            size=len(data),
            stuffed=stuffed,
        )

    def exceed(self, kind: str, setting: str, reason: str) -> None:
        """Record that a parser stopped at ``setting`` (once per setting)."""
        if all(known.setting != setting for known in self.overflows):
            self.overflows.append(LimitExceeded(kind, setting, reason))

    def exceeded(self) -> tuple[LimitExceeded, ...]:
        """Every parse limit this message went past so far: the header section's, then those
        the on-demand parsers recorded (:meth:`exceed`)."""
        found = []
        if self.headers.truncated:
            found.append(
                LimitExceeded(
                    "header",
                    PARSE_LIMITS["header"],
                    f"header section longer than {PARSE_LIMITS['header']} ({self.headers.limit} "
                    f"bytes): the rules did not read the rest ({len(self.headers)} header "
                    f"fields read)",
                )
            )
        return (*found, *self.overflows)
