"""The MIME walk of one message: its parts, their headers and names, and their content, decoded
only as far as a rule asks.

The walk runs over the wire bytes we already hold (CRLF lines, dot-stuffed) and copies nothing
large: boundaries are found with ``bytes.find`` (C speed) and each part is a pair of offsets into
that buffer. A part's header block is read for its Content-* fields only (one regex); it is
parsed into Header objects (with the same parser as the top-level header block) when a rule
asks for them (:attr:`Part.headers`). Content is decoded on request, in pieces: the first bytes
for type sniffing (:meth:`Part.head`), the last bytes for a zip central directory
(:meth:`Part.tail`), the first N KB of a text part (:meth:`Part.text`). A 25 MB message with ten
attachments is walked without decoding 25 MB of base64.

The structure follows Postfix's own MIME engine (src/global/mime_state.c), so that this walk,
Postfix's mime_header_checks/body_checks and the tables imported from Postfix agree on where each
part starts:

- A delimiter is a line that starts with ``--`` + the boundary; what follows on the line is
  ignored ("some MUAs do", mime_state.c), and ``--`` right after the boundary closes the
  multipart. Every boundary of every enclosing multipart is live at once (one stack across
  message/rfc822 parts too); a line that matches several is taken by the innermost. A lenient
  reading like this one sees every part a stricter reader (a mail client) can see, and maybe
  more: for a filter that is the safe side.
- Every ``boundary=`` parameter of a Content-Type counts (several are illegal, and "could be
  used to hide content in an implementation dependent manner"); a boundary is cut at 2,048
  bytes (``mime_boundary_length_limit``).
- multipart/digest parts default to message/rfc822; message/rfc822 and message/global bodies
  start with a nested header block, whatever their (illegal) transfer encoding; other message/*
  subtypes are leaves.
- A header block ends at an empty line or at the first line that is neither a header nor a
  continuation (that line is body), as for the top-level block (core.message).

Hostile structure has a defined outcome, never an exception: limits (the ``mime:`` section of
the config: parts, depth, header bytes) stop the walk where they are reached and are listed in
:attr:`MimeTree.limits`; :func:`walk_message` records them on the message
(:meth:`MessageContext.exceed`), where the ``limits`` rule kind turns them into its
``MIME_LIMIT`` finding and the filter logs them. Oddities a reader may want to know about (an
unterminated multipart, bad base64) are listed in :attr:`MimeTree.defects` and on the part.

Why our own walk and not the email package: ``email.parser`` parses a 25 MB message in
300-400 ms holding 1.5-6x its size, this walk in ~2 ms holding offsets (measured in
bench/parse_bench.py); the email package still does what it is best at here, RFC 2231
parameters (``email.utils.decode_params``) and RFC 2047 words (``email.header``).
"""

from __future__ import annotations

import binascii
import codecs
import email.header
import email.utils
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterator

from smtpfilter.config.settings import MimeConfig
from smtpfilter.core.message import Header, HeaderBlock, MessageContext, parse_header_block

__all__ = [
    "LIMIT_SETTINGS",
    "MimeConfig",
    "MimeTree",
    "Part",
    "cleanup_view",
    "postfix_class",
    "walk",
    "walk_message",
]

log = logging.getLogger(__name__)

CRLF = b"\r\n"


# What each limit the walk or an archive listing can reach is called, and the setting behind it.
LIMIT_SETTINGS = {
    "parts": ("mime.max_parts", "more MIME parts than mime.max_parts ({0.max_parts})"),
    "depth": ("mime.max_depth", "MIME nesting deeper than mime.max_depth ({0.max_depth})"),
    "header": ("mime.header_size",
               "a MIME part header longer than mime.header_size ({0.header_size} bytes)"),
    "zip entries": ("mime.zip_entries",
                    "a zip directory with more entries than mime.zip_entries ({0.zip_entries})"),
    "zip directory": ("mime.zip_entries",
                      "a zip directory larger than 2 KB per mime.zip_entries ({0.zip_entries})"),
    "archive depth": ("mime.archive_depth",
                      "archives nested deeper than mime.archive_depth ({0.archive_depth})"),
    "content": ("mime.content_size",
                "an attachment larger than mime.content_size ({0.content_size} bytes) decoded"),
    "text": ("mime.text_total",
             "more text than mime.text_total ({0.text_total} bytes) in the text parts"),
}


# --- one part -------------------------------------------------------------------------------
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Everything binascii would skip, plus '=', deleted before we cut base64 at a 4-character quad.
_NOT_B64 = bytes(b for b in range(256) if b not in _B64_ALPHABET)
_NOT_B64_KEEP_PAD = bytes(b for b in range(256) if b not in _B64_ALPHABET + b"=")
_IDENTITY = ("7bit", "8bit", "binary", "")
_KNOWN_ENCODINGS = frozenset(("base64", "quoted-printable", *_IDENTITY))
HEAD_CACHE = 256 * 1024  # decoded bytes a part keeps for later rules (type sniffing, text)


_NO_HEADERS = HeaderBlock([], 0)  # shared, never modified

# One line of a part's header block in wire form, from the CRLF before it to the CRLF ending
# it: a header field (group 1 its name, group 2 what follows the colon) or a continuation (no
# name; group 2 the whole line, its leading white space included). A leading "." is
# dot-stuffing. These are exactly the lines core.message.parse_header_block reads as fields and
# continuations (the name syntax of _FIELD_NAME); a line with a lone CR or LF does not match.
_HEADER_LINE = re.compile(
    rb"\r\n(?:\.|(?!\.))(?:([\x21-\x39\x3b-\x7e]+)[ \t]*:|(?=[ \t]))([^\r\n]*)(?=\r\n)"
)
_CONTENT_FIELDS = {b"content-type": 0, b"content-disposition": 1,
                   b"content-transfer-encoding": 2}


def _scan_fields(data: bytes | bytearray, start: int, end: int) -> list[str | None] | None:
    """The first Content-Type, Content-Disposition and Content-Transfer-Encoding values (as
    Header.text) of the header lines in ``data[start:end]``, which must follow and end with
    CRLF; None when a line there is not a header field or a continuation, or the first is a
    continuation (the caller then parses the block in full: Postfix's reading of a malformed
    block is subtle)."""
    if data[start - 2 : start] != b"\r\n":
        return None
    lines = _HEADER_LINE.findall(data, start - 2, end)
    # One match per line, each starting at the CRLF before its line: as many as there are
    # lines only if every line matched (a search skips a line it cannot match).
    if len(lines) != data.count(b"\r\n", start - 2, end) - 1 or not lines[0][0]:
        return None
    found: dict[int, list[bytes]] = {}
    slot = None
    for name, rest in lines:
        if name:
            slot = _CONTENT_FIELDS.get(name.lower())
            if slot is not None:
                if slot in found:
                    slot = None  # the first of each counts, as mail readers take it
                else:
                    found[slot] = [rest]
        elif slot is not None:
            found[slot].append(rest)  # a continuation: unfolded, as Header.text does
    fields: list[str | None] = [None, None, None]
    for slot, pieces in found.items():
        value = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        fields[slot] = value.decode("utf-8", "replace").strip()
    return fields


def _header_fields(headers: HeaderBlock) -> list[str | None]:
    """The same three values from a parsed header block."""
    found = []
    for name in ("content-type", "content-disposition", "content-transfer-encoding"):
        fields = headers.get_all(name)
        found.append(fields[0].text if fields else None)
    return found


class Part:
    """One MIME entity: its header block and the offsets of its body in the walk's buffer.

    ``kind`` is ``leaf``, ``multipart`` or ``message`` (message/rfc822: its one child is the
    attached message). ``path`` numbers parts as IMAP does (``1.2``); the top-level entity is
    ``""``, at ``depth`` 0.

    A part points down (``children``) and at the buffer (``source``), never up at its parent or
    its tree: without a reference cycle, a judged message and its buffer are freed by reference
    counting the moment the front door drops them. With the cycle they waited for the cyclic
    garbage collector, and under load (1m-attach) several megabytes of messages piled up.
    """

    __slots__ = (
        "source", "path", "depth", "kind", "header_start", "_headers", "_header_region",
        "start", "end",
        "ctype", "params", "disposition", "cte", "names", "children", "defects", "nested",
        "delimiters", "epilogue", "boundaries", "child_default", "_head", "_head_complete",
        "_text",
    )

    def __init__(self, source: "_Source", path: str, depth: int) -> None:
        self.source = source
        self.path = path
        self.depth = depth
        self.kind = "leaf"
        self.header_start = 0
        self._headers: HeaderBlock | None = _NO_HEADERS
        self._header_region = (0, 0)  # parsed on first use when _headers is None
        self.start = 0  # body: [start, end) in tree.data
        self.end = 0
        self.ctype = "text/plain"
        self.params: list[tuple[str, str]] = []
        self.disposition = ""
        self.cte = ""
        self.names: tuple[str, ...] = ()  # file names as the user sees them (decoded, cleaned)
        self.children: list[Part] = []
        self.defects: list[str] = []
        self.nested = False  # the header block of an attached message (message/rfc822 body)
        # multipart: (start, end, closes) of each delimiter line, in order
        self.delimiters: list[tuple[int, int, bool]] = []
        self.epilogue: tuple[int, int] | None = None  # multipart: after the close delimiter
        self.boundaries: tuple[bytes, ...] = ()  # multipart: every boundary= it declares
        self.child_default = "text/plain"  # multipart/digest: message/rfc822
        self._head = b""
        self._head_complete = False
        self._text: str | None = None

    # --- what it is ----------------------------------------------------------------------
    @property
    def headers(self) -> HeaderBlock:
        """The part's header block, parsed on first use: the walk itself reads only the
        Content-* fields it needs (:func:`_scan_fields`), and most rule sets nothing more."""
        headers = self._headers
        if headers is None:
            start, end = self._header_region
            region = bytes(self.source.data[start:end])
            headers = self._headers = parse_header_block(region, len(region) + 1)
        return headers

    @property
    def maintype(self) -> str:
        return self.ctype.partition("/")[0]

    @property
    def filename(self) -> str | None:
        return self.names[0] if self.names else None

    @property
    def is_attachment(self) -> bool:
        """A leaf a user sees as a file: disposition attachment, a name, or content that is not
        text. Unnamed inline text/* parts are the message's text, read by body rules."""
        if self.kind != "leaf":
            return False
        return bool(self.names) or self.disposition == "attachment" or self.maintype != "text"

    @property
    def size(self) -> int:
        """Encoded size of the body on the wire."""
        return self.end - self.start

    def label(self) -> str:
        """How findings name the part: its file name, else its path and type."""
        if self.names:
            return self.names[0]
        return f"part {self.path or '0'} ({self.ctype})"

    def __repr__(self) -> str:
        return f"Part({self.path!r}, {self.kind}, {self.ctype}, names={self.names}, size={self.size})"

    # --- content -------------------------------------------------------------------------
    def raw(self) -> bytes:
        """The body as on the wire (dot-stuffed), copied: only for small parts and tests."""
        return bytes(self.source.data[self.start : self.end])

    def _unstuffed(self, start: int, end: int) -> bytes:
        chunk = bytes(self.source.data[start:end])
        if self.source.stuffed:
            chunk = chunk.replace(b"\r\n..", b"\r\n.")
            if start == 0 or self.source.data[start - 2 : start] == CRLF:
                if chunk[:2] == b"..":
                    chunk = chunk[1:]
        return chunk

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes of the decoded content (fewer if the content is shorter).
        Up to :data:`HEAD_CACHE` bytes are kept for the next rule; larger requests (a whole
        part for an archive listing) are decoded again each time, never held."""
        if len(self._head) >= size or self._head_complete:
            return self._head[:size]
        decoded, complete = self._decode_prefix(size)
        if size <= HEAD_CACHE:
            self._head = decoded
            self._head_complete = complete
        return decoded[:size]

    def _decode_prefix(self, size: int) -> tuple[bytes, bool]:
        data, start, end = self.source.data, self.start, self.end
        cte = self.cte
        if cte == "base64":
            want = (size + 2) // 3 * 4  # base64 characters needed
            span = want + want // 32 + 64  # room for line breaks (76-character lines: 1/38)
            while True:
                stop = min(end, start + span)
                clean = bytes(data[start:stop]).translate(None, _NOT_B64)
                if len(clean) >= want or stop == end:
                    break
                span *= 2  # short lines or junk: read further
            complete = stop == end and len(clean) <= want
            if complete:  # the whole stream: pad it (padding was deleted, or never written)
                clean += b"=" * (-len(clean) % 4)
            decoded = _b64(clean if complete else clean[:want], self)
        elif cte == "quoted-printable":
            stop = min(end, start + size * 3 + 2)
            if stop < end:  # never cut an =XX escape or a soft line break: end at a line end
                line_end = data.find(CRLF, stop, end)
                stop = end if line_end < 0 else line_end + 2
            complete = stop == end
            decoded = binascii.a2b_qp(self._unstuffed(start, stop))
        else:
            stop = min(end, start + size + size // 8 + 64)  # dot-stuffing adds bytes
            complete = stop == end
            decoded = self._unstuffed(start, stop)
        return decoded, complete

    def tail(self, size: int) -> bytes:
        """The last ``size`` bytes of the decoded content (fewer if it is shorter).

        Base64 is cut at a quad counted from the END of the stream: a well-formed stream's
        length is a multiple of four (padding included), so the end is aligned and nothing
        before the tail needs decoding, or even counting.
        """
        data, start, end = self.source.data, self.start, self.end
        if self.cte == "base64":
            want = (size + 2) // 3 * 4 + 4
            span = want + want // 32 + 64
            while True:
                first = max(start, end - span)
                clean = bytes(data[first:end]).translate(None, _NOT_B64_KEEP_PAD)
                if len(clean) >= want or first == start:
                    break
                span *= 2
            if first > start:
                clean = clean[len(clean) % 4 :]
            else:
                clean = clean.replace(b"=", b"")
                clean += b"=" * (-len(clean) % 4)
            return _b64(clean, self)[-size:]
        if self.cte == "quoted-printable":
            return self.content(self.source.settings.content_size)[-size:]
        first = max(start, end - size - size // 8 - 64)
        return self._unstuffed(first, end)[-size:]

    def size_estimate(self) -> int:
        """The decoded length without decoding: exact for identity encodings, an upper bound
        for base64 (3 bytes per 4 characters, line breaks counted as characters)."""
        if self.cte == "base64":
            return (self.end - self.start) * 3 // 4
        return self.end - self.start

    def content(self, limit: int) -> bytes:
        """The decoded content, at most ``limit`` bytes (a prefix when longer)."""
        return self.head(limit)

    def text(self, limit: int | None = None) -> str:
        """The first ``limit`` decoded bytes as text: charset decoded with replacement (an
        unknown or unusable charset is read as UTF-8), HTML reduced to its text."""
        limit = self.source.settings.text_size if limit is None else limit
        if self._text is None or limit != self.source.settings.text_size:
            # The HTML reducer is only needed for text/html.
            from smtpfilter.engine.htmltext import html_to_text

            raw = self.head(limit)
            text = decode_charset(raw, self.param("charset"))
            if self.ctype == "text/html":
                text = html_to_text(text)
            if limit != self.source.settings.text_size:
                return text
            self._text = text
        return self._text

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    def walk(self) -> Iterator["Part"]:
        yield self
        for child in self.children:
            yield from child.walk()


def _b64(chunk: bytes, part: Part) -> bytes:
    """Decode clean base64 characters; a broken stream decodes as far as it can."""
    try:
        return binascii.a2b_base64(chunk)
    except binascii.Error:
        if "BAD_BASE64" not in part.defects:
            part.source.defect(part, "BAD_BASE64")
        usable = len(chunk) // 4 * 4
        try:
            return binascii.a2b_base64(chunk[:usable])
        except binascii.Error:
            return b""


def decode_charset(raw: bytes, charset: str | None) -> str:
    """Bytes to text with ``charset``; unknown, non-text and strict-only codecs fall back to
    UTF-8, and undecodable bytes become U+FFFD: a bogus charset never hides text or raises."""
    name = (charset or "utf-8").strip().strip('"').lower() or "utf-8"
    if name in ("us-ascii", "ascii", "unknown-8bit", "x-unknown", "default"):
        name = "utf-8"  # 8-bit bytes under a 7-bit label are most often UTF-8
    try:
        info = codecs.lookup(name)
        if not getattr(info, "_is_text_encoding", True):
            raise LookupError(name)  # rot13, base64, zlib...: bytes/str transforms, not charsets
        return raw.decode(info.name, "replace")
    except (LookupError, UnicodeError, ValueError):  # idna/punycode accept only 'strict'
        return raw.decode("utf-8", "replace")


# --- names ----------------------------------------------------------------------------------
_NAME_JUNK = dict.fromkeys(range(0x20), None) | {0x7F: None}


def clean_name(name: str) -> str:
    """A file name as a user's system would take it: RFC 2047 words decoded, no directory part,
    no control characters, and no trailing dots or spaces (Windows drops them, so
    ``evil.exe.`` runs as ``evil.exe``)."""
    if "=?" in name:
        try:
            name = str(email.header.make_header(email.header.decode_header(name)))
        except Exception:  # an undecodable word: keep the name as written
            pass
    name = name.translate(_NAME_JUNK)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = name.rstrip(". \t\u3000")
    return name[:255]


def glob_forms(name: str) -> tuple[str, ...]:
    """The forms a name glob is tried on: casefolded, and NFKC-folded when that differs
    (fullwidth ``ｅｘｅ`` reads as ``exe``)."""
    folded = name.casefold()
    compat = unicodedata.normalize("NFKC", name).casefold()
    return (folded,) if compat == folded else (folded, compat)


# --- the tree -------------------------------------------------------------------------------
class _Source:
    """What every part of one walk reads (the buffer, how it is written, the limits) and where
    its defects are listed: shared by the tree and its parts, pointing at neither."""

    __slots__ = ("data", "stuffed", "settings", "defects")

    def __init__(self, data: bytes | bytearray, stuffed: bool, settings: MimeConfig,
                 defects: list[str]) -> None:
        self.data = data
        self.stuffed = stuffed
        self.settings = settings
        self.defects = defects  # the tree's own list

    def defect(self, part: Part, what: str) -> None:
        part.defects.append(what)
        if what not in self.defects:
            self.defects.append(what)


@dataclass(slots=True)
class MimeTree:
    """The walk's result: the top-level entity, every part in document order, what stopped it."""

    data: bytes | bytearray
    stuffed: bool  # wire form (dot-stuffed), or content (a decoded attached message)
    settings: MimeConfig
    root: Part | None = None
    parts: list[Part] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)  # limits reached: parts, depth, header
    defects: list[str] = field(default_factory=list)
    source: _Source = field(init=False, repr=False)
    _attachments: list[Part] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.source = _Source(self.data, self.stuffed, self.settings, self.defects)

    def leaves(self) -> Iterator[Part]:
        return (p for p in self.parts if p.kind == "leaf")

    def attachments(self) -> Iterator[Part]:
        found = self._attachments
        if found is None:  # every attachment rule asks: the list is made once
            found = self._attachments = [p for p in self.parts if p.is_attachment]
        return iter(found)

    def text_parts(self) -> Iterator[Part]:
        """text/plain and text/html leaves that are not attachments: the message's own text."""
        return (
            p for p in self.parts
            if p.kind == "leaf" and p.ctype in ("text/plain", "text/html") and not p.is_attachment
        )

    def limit(self, what: str) -> None:
        if what not in self.limits:
            self.limits.append(what)
            log.debug("MIME limit reached: %s", what)

    def defect(self, part: Part, what: str) -> None:
        self.source.defect(part, what)


class _Finder:
    """Next delimiter line of any live boundary, with ``bytes.find`` (C speed).

    Two things keep the whole walk linear in the message size, whatever its structure:
    - a search for a boundary resumes where the last one for that boundary stopped (cached);
    - an inner boundary is only searched up to the next delimiter of the boundaries around it,
      because that delimiter ends the inner multipart anyway (mime_state.c pops the stack).
      Without this bound, a thousand sibling multiparts declaring boundaries they never use
      would each scan to the end of a 25 MB message.
    """

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        # needle -> (searched from, searched up to, found at or -1)
        self.cache: dict[bytes, tuple[int, int, int]] = {}

    def find(self, needle: bytes, start: int, stop: int) -> int:
        cached = self.cache.get(needle)
        if cached is not None:
            origin, limit, found = cached
            if origin <= start:
                if found >= start:
                    return found if found + len(needle) <= stop else -1
                if found == -1 and stop <= limit:
                    return -1
        found = self.data.find(needle, start, stop)
        self.cache[needle] = (start, stop, found)
        return found

    def next_delimiter(self, stack: list[tuple[bytes, ...]], start: int) -> tuple[int, int]:
        """(position of the CRLF before ``--boundary``, stack level) of the nearest delimiter
        at or after ``start``; (-1, -1) when none. Ties go to the innermost level. ``stack``:
        each level's live delimiters, ``CRLF--boundary``."""
        best, level = -1, -1
        stop = len(self.data)
        for index, needles in enumerate(stack):  # outermost first
            for needle in needles:
                limit = stop if best < 0 else best + len(needle)
                found = self.find(needle, start, limit)
                if found >= 0 and (best < 0 or found <= best):
                    best, level = found, index
        return best, level


class _Walker:
    def __init__(self, tree: MimeTree) -> None:
        self.tree = tree
        self.data = tree.data
        self.finder = _Finder(tree.data)
        # Each open multipart's live delimiters (CRLF--boundary), outermost first.
        self.stack: list[tuple[bytes, ...]] = []
        self.stopped = False  # the parts limit: no new parts after this
        # The last answer of next_delimiter: (from, found, level), good until the stack
        # changes. A part's header block is bounded by the same delimiter that ends its body.
        self.last: tuple[int, int, int] = (-1, -1, -1)

    def next_delimiter(self, start: int) -> tuple[int, int]:
        """The finder's next_delimiter over the current stack (the last answer when it still
        holds: no delimiter between where that search began and what it found)."""
        origin, found, level = self.last
        if 0 <= origin <= start and (found >= start or found < 0):
            return found, level
        found, level = self.finder.next_delimiter(self.stack, start)
        self.last = (start, found, level)
        return found, level

    def push(self, needles: tuple[bytes, ...]) -> None:
        self.stack.append(needles)
        self.last = (-1, -1, -1)

    def pop(self) -> None:
        self.stack.pop()
        self.last = (-1, -1, -1)

    def new_part(self, path: str, depth: int) -> Part | None:
        tree = self.tree
        if len(tree.parts) >= tree.settings.max_parts:
            tree.limit("parts")
            self.stopped = True
            return None
        part = Part(tree.source, path, depth)
        tree.parts.append(part)
        return part

    # The walk of one entity. ``start`` is where its header block begins; it returns the offset
    # of the CRLF before the delimiter that ended it (or the buffer end) and that delimiter's
    # stack level (-1: the end of the buffer).
    def entity(self, part: Part, start: int, nested: bool, default_type: str,
               parsed: HeaderBlock | None = None) -> tuple[int, int]:
        data, tree = self.data, self.tree
        limits = tree.settings
        part.nested = nested
        part.header_start = start
        part.ctype = default_type
        if parsed is not None:  # the top-level block, already parsed by core.message
            part._headers = parsed
            body, fields = _body_start(data, parsed), _header_fields(parsed)
        else:
            body, fields = self.header_block(part, start)
        self.interpret(part, default_type, fields)
        part.start = body
        depth_ok = part.depth < limits.max_depth

        if part.kind == "multipart" and not depth_ok:
            tree.limit("depth")
            part.kind = "leaf"  # its content stays one opaque leaf: never walked deeper
        if part.kind == "message" and not depth_ok:
            tree.limit("depth")
            part.kind = "leaf"

        if part.kind == "multipart":
            return self.multipart(part, body)
        if part.kind == "message":
            if self.stopped:
                part.kind = "leaf"
            else:
                child = self.new_part(_child_path(part, 1), part.depth + 1)
                if child is not None:
                    part.children.append(child)
                    end, level = self.entity(child, body, True, "text/plain")
                    part.end = end
                    return end, level
                part.kind = "leaf"
        # A leaf: its body runs to the next delimiter of any live boundary.
        found, level = self.next_delimiter(max(body - 2, 0))
        part.end = found if found >= 0 else len(data)
        if part.end < part.start:  # the body is empty: the delimiter follows the headers
            part.end = part.start
        return (found, level) if found >= 0 else (len(data), -1)

    def multipart(self, part: Part, body: int) -> tuple[int, int]:
        data, tree = self.data, self.tree
        self.push(tuple(b"\r\n--" + boundary for boundary in part.boundaries))
        level_here = len(self.stack) - 1
        number = 0
        position = max(body - 2, 0)  # the CRLF that ends the header block may start a delimiter
        try:
            found, level = self.next_delimiter(position)
            while True:
                if found < 0:  # the buffer ends inside this multipart
                    tree.defect(part, "UNTERMINATED_MULTIPART")
                    part.end = len(data)
                    return len(data), -1
                if level < level_here:  # an outer boundary: this multipart was never closed
                    tree.defect(part, "UNTERMINATED_MULTIPART")
                    part.end = found
                    return found, level
                line_start = found + 2
                line_end = data.find(CRLF, line_start)
                line_end = len(data) if line_end < 0 else line_end + 2
                active = self.stack[level_here]
                index = len(active) - 1
                if index:  # several boundaries: the innermost this line starts with
                    index = _matched(data, found, active)
                boundary_end = found + len(active[index])
                closes = data[boundary_end : boundary_end + 2] == b"--"
                part.delimiters.append((line_start, line_end, closes))
                # Several boundary= parameters are stacked in order, as Postfix pushes them:
                # a line matching one drops those declared after it; closing one leaves those
                # declared before it live (mime_state.c).
                if closes or index + 1 < len(active):
                    active = active[:index] if closes else active[: index + 1]
                    self.stack[level_here] = active
                    self.last = (-1, -1, -1)
                if closes and not active:  # the close delimiter of the multipart
                    self.pop()
                    next_found, next_level = self.next_delimiter(line_end - 2)
                    epilogue_end = next_found if next_found >= 0 else len(data)
                    part.epilogue = (line_end, max(line_end, epilogue_end))
                    part.end = line_end
                    self.push(())  # keep the level numbering; nothing matches it
                    return (next_found, next_level) if next_found >= 0 else (len(data), -1)
                if closes:  # an inner boundary closed: body text until the next delimiter
                    found, level = self.next_delimiter(line_end - 2)
                    continue
                if self.stopped:
                    found, level = self.next_delimiter(line_end - 2)
                    continue
                number += 1
                child = self.new_part(_child_path(part, number), part.depth + 1)
                if child is None:
                    found, level = self.next_delimiter(line_end - 2)
                    continue
                part.children.append(child)
                found, level = self.entity(child, line_end, False, part.child_default)
                if found >= len(data):
                    found = -1
        finally:
            self.pop()

    def header_block(self, part: Part, start: int) -> tuple[int, list[str | None]]:
        """The header block at ``start``: where the body begins, and the Content-Type,
        Content-Disposition and Content-Transfer-Encoding values. A well-formed block is only
        scanned for those (Part.headers parses it when a rule asks); any other is parsed."""
        data, tree = self.data, self.tree
        if data[start : start + 2] == CRLF:
            part._headers = _NO_HEADERS
            return start + 2, [None, None, None]
        limit = tree.settings.header_size
        # Headers end at the empty line, at the next delimiter (a part with no body), or at
        # the limit; find the empty line within those bounds only.
        bound, _ = self.next_delimiter(start)
        bound = len(data) if bound < 0 else bound + 2
        blank = data.find(b"\r\n\r\n", start, min(bound, start + limit))
        cut = False
        if blank >= 0:
            fields = _scan_fields(data, start, blank + 2)
            if fields is not None:  # every line a header field: the body follows the blank
                part._headers = None
                part._header_region = (start, blank + 4)
                return blank + 4, fields
            region = bytes(data[start : blank + 4])
        elif bound > start + limit:  # no end within the limit: headers up to the last line end
            cut = True
            region = bytes(data[start : data.rfind(CRLF, start, start + limit) + 2])
        else:
            region = bytes(data[start:bound])
        headers = parse_header_block(region, len(region) + 1)
        part._headers = headers
        fields = _header_fields(headers)
        if cut and headers.malformed_at is None:
            tree.limit("header")  # the rest is read as body, as Postfix does past its limit
            return start + headers.end, fields
        if headers.malformed_at is not None:
            body = start + headers.malformed_at
            tree.defect(part, "MALFORMED_HEADER")
        elif data[start + headers.end : start + headers.end + 2] == CRLF:
            body = start + headers.end + 2
        else:
            body = start + headers.end
        return body, fields

    def interpret(self, part: Part, default_type: str, fields: list[str | None]) -> None:
        """Content-Type, Content-Disposition, Content-Transfer-Encoding (``fields``: the first
        of each header, as mail readers take them) and the file names. Parameters are split by
        :func:`parse_params`; RFC 2231 continuations and charsets by the email package."""
        ct_text, cd_text, cte_text = fields
        ctype = default_type
        params: list[tuple[str, str]] = []
        names: list[str] = []  # the first filename of the disposition, the first name of the type
        if cd_text is not None:
            value, disposition_params = _params_of(cd_text)
            part.disposition = value.lower()
            for key, name in disposition_params:
                if key == "filename":
                    names.append(name)
                    break
        if ct_text is not None:
            value, params = _params_of(ct_text)
            value = value.lower()
            # RFC 2045 §5.2: a syntactically invalid type is text/plain (we keep the default).
            if "/" in value and " " not in value:
                main, _, sub = value.partition("/")
                if main and sub:
                    ctype = value
            for key, name in params:
                if key == "name":
                    names.append(name)
                    break
        part.ctype = ctype
        part.params = params
        if cte_text is not None:
            part.cte = cte_text.strip().lower()
            if part.cte not in _KNOWN_ENCODINGS:
                self.tree.defect(part, "UNKNOWN_ENCODING")
        if names:
            part.names = tuple(dict.fromkeys(n for n in (clean_name(x) for x in names) if n))
        maintype, _, subtype = ctype.partition("/")
        if maintype == "multipart":
            # Every boundary parameter, as Postfix does; the value cut at the boundary limit.
            cut = self.tree.settings.boundary_length
            boundaries = tuple(dict.fromkeys(
                v.encode("utf-8", "surrogateescape")[:cut] for k, v in params
                if k == "boundary" and v
            ))
            if boundaries:
                part.kind = "multipart"
                part.boundaries = boundaries
                part.child_default = "message/rfc822" if subtype == "digest" else "text/plain"
            else:
                self.tree.defect(part, "MULTIPART_WITHOUT_BOUNDARY")
        elif maintype == "message" and subtype in ("rfc822", "global"):
            part.kind = "message"


# name=value pairs after the first ";" of a structured header (RFC 2045 §5.1); a quoted value
# may hold ";" and escaped quotes. Linear: the quoted string is an unrolled loop (a backslash
# starts each repetition, so nothing matches two ways); sre runs it much faster than a per-character
# alternation (parse_params on a 40-character boundary: half the instructions).
_PARAM = re.compile(r'\s*;\s*([^\s=;]+)\s*=\s*("[^"\\]*(?:\\.[^"\\]*)*"?|[^;]*)')
_UNQUOTE = re.compile(r"\\(.)")


def parse_params(value: str) -> tuple[str, list[tuple[str, str]]]:
    """``text/plain; charset="utf-8"`` -> ("text/plain", [("charset", "utf-8")]); names lower
    case; RFC 2231 (``name*0*=utf-8''...``) joined and decoded with the email package's own
    functions (email.utils.decode_params), an unknown charset keeping the raw value."""
    head, sep, rest = value.partition(";")
    if not sep:
        return head.strip(), []
    params: list[tuple[str, str]] = []
    for name, raw in _PARAM.findall(";" + rest):
        raw = raw.strip()
        if raw[:1] == '"':
            raw = raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
            if "\\" in raw:  # a quoted-pair (RFC 5322 §3.2.1); most values have none
                raw = _UNQUOTE.sub(r"\1", raw)
        params.append((name.lower(), raw))
    if "*" in rest and any("*" in name for name, _ in params):  # RFC 2231
        try:
            decoded = email.utils.decode_params([("", "")] + params)[1:]
            params = [(k.lower(), _param_text(v)) for k, v in decoded]
        except Exception:  # a malformed continuation: keep the parameters as written
            pass
    return head.strip(), params


# parse_params of the short header values that recur from message to message (``text/plain;
# charset="utf-8"``, ``inline``): a text part's Content-Type costs a dict lookup instead of a
# parse. Multipart values are not kept (their boundary is new in every message), nor long ones;
# at _SEEN_MAX values the memory starts again, so it stays a few hundred KB whatever is sent.
_SEEN: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
_SEEN_MAX = 512
_SEEN_LENGTH = 200


def _params_of(value: str) -> tuple[str, list[tuple[str, str]]]:
    """parse_params(value), remembered when it may recur."""
    known = _SEEN.get(value)
    if known is not None:
        return known[0], list(known[1])
    head, params = parse_params(value)
    if len(value) <= _SEEN_LENGTH and head[:10].lower() != "multipart/":
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[value] = (head, tuple(params))
    return head, params


def _param_text(value: object) -> str:
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value), the value quoted
        charset, language, text = value
        return email.utils.collapse_rfc2231_value(
            (charset, language, email.utils.unquote(text)), errors="replace")
    return email.utils.unquote(str(value))


def _matched(data: bytes | bytearray, found: int, needles: tuple[bytes, ...]) -> int:
    """Index of the boundary the delimiter at ``found`` (its CRLF) belongs to: the last
    declared one that it starts with (the innermost of Postfix's stack)."""
    for index in range(len(needles) - 1, -1, -1):
        if data.startswith(needles[index], found):
            return index
    return 0  # pragma: no cover - the finder found one of them here


def _child_path(part: Part, number: int) -> str:
    return f"{part.path}.{number}" if part.path else str(number)


def _body_start(data: bytes | bytearray, headers: HeaderBlock) -> int:
    if headers.malformed_at is not None:
        return headers.malformed_at
    if data[headers.end : headers.end + 2] == CRLF:
        return headers.end + 2
    return headers.end


def walk(data: bytes | bytearray, limits: MimeConfig | None = None, *, stuffed: bool = True,
         headers: HeaderBlock | None = None) -> MimeTree:
    """Walk a whole message (``data`` in wire form unless ``stuffed`` is false). ``headers``:
    its top-level header block when already parsed (MessageContext.headers)."""
    tree = MimeTree(data, stuffed, limits or MimeConfig())
    walker = _Walker(tree)
    root = walker.new_part("", 0)
    assert root is not None
    tree.root = root
    walker.entity(root, 0, False, "text/plain", headers)
    return tree


def walk_message(msg: MessageContext, limits: MimeConfig | None = None) -> MimeTree:
    """The walk of ``msg``, done once and shared by every rule (``msg.memo['mime']``); the
    limits it reached are recorded on the message (:func:`record_limit`)."""
    tree = msg.memo.get("mime")
    if tree is None:
        tree = walk(msg.data, limits, stuffed=msg.stuffed, headers=msg.headers)
        msg.memo["mime"] = tree
        for what in tree.limits:
            record_limit(msg, tree.settings, what)
    return tree  # type: ignore[return-value]


def record_limit(msg: MessageContext, limits: MimeConfig, what: str) -> None:
    """One MIME limit (a key of :data:`LIMIT_SETTINGS`) reached on ``msg``: a parse limit of
    kind ``mime`` (MessageContext.exceed), logged by the filter, MIME_LIMIT for ``limits``
    rules."""
    setting, text = LIMIT_SETTINGS[what]
    msg.exceed("mime", setting, f"{text.format(limits)}: the rules did not read the rest")


# --- Postfix's view: the lines cleanup(8) hands to each table class ---------------------------
MIME_HEADER_NAMES = frozenset({
    # src/global/header_opts.c: the headers with HDR_OPT_MIME
    "content-description", "content-disposition", "content-id", "content-transfer-encoding",
    "content-type", "mime-version",
})


def postfix_class(part: Part, header: Header) -> str:
    """Which Postfix table class cleanup(8) checks this header with (cleanup_message.c,
    cleanup_header_callback): MIME headers anywhere and every header of a multipart body part
    go to mime_header_checks; the other headers of the message to header_checks, those of an
    attached message to nested_header_checks."""
    if header.lname in MIME_HEADER_NAMES:
        return "mime_header"
    if part.depth == 0 and not part.nested:
        return "header"
    if part.nested:
        return "nested_header"
    return "mime_header"


def postfix_header_line(header: Header) -> str:
    """``Name:value`` as written, folded lines joined by LF: one header_checks lookup key."""
    return f"{header.name}:" + header.raw.replace(b"\r\n", b"\n").decode("utf-8", "replace")


class _Offset:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


def cleanup_view(
    tree: MimeTree, *, body_limit: int = 50 * 1024, line_limit: int = 2048
) -> Iterator[tuple[str, str]]:
    """(class, lookup key) for every key cleanup(8) would look up, in message order.

    Classes: ``header``, ``mime_header``, ``nested_header``, ``body``. Body keys are the lines
    as written (NOT decoded: base64 stays base64), dot-stuffing undone, cut into pieces of
    ``line_limit`` bytes (Postfix's line_length_limit records), and only those starting before
    ``body_limit`` bytes into their body segment (body_checks_size_limit; a segment starts at
    each header block's end and at each close delimiter, mime_state.c). Empty lines are never
    looked up (maps_find() ignores empty keys), although ``postmap -b`` prints them.
    """
    if tree.root is None:
        return
    offset = _Offset()
    yield from _view_entity(tree, tree.root, offset, body_limit, line_limit)


def _view_entity(tree, part, offset, body_limit, line_limit):
    for header in part.headers:
        yield postfix_class(part, header), postfix_header_line(header)
    blank = tree.data[part.start - 2 : part.start] == CRLF and part.start - 2 >= part.header_start
    offset.value = 1 if blank else 0  # the empty line ending the headers is body line 0
    if part.kind == "message" and part.children:
        yield from _view_entity(tree, part.children[0], offset, body_limit, line_limit)
        return
    if part.kind != "multipart":
        yield from _view_lines(tree, part.start, part.end, offset, body_limit, line_limit)
        return
    children = iter(part.children)
    delimiters = part.delimiters
    first = delimiters[0][0] - 2 if delimiters else part.end
    yield from _view_lines(tree, part.start, max(part.start, first), offset, body_limit, line_limit)
    for index, (line_start, line_end, closes) in enumerate(delimiters):
        if closes:
            offset.value = 0  # mime_state.c: a close delimiter starts a new body segment
        yield from _view_lines(tree, line_start, _strip_crlf(tree.data, line_start, line_end),
                               offset, body_limit, line_limit)
        if closes and index == len(delimiters) - 1 and part.epilogue is not None:
            yield from _view_lines(tree, part.epilogue[0], part.epilogue[1], offset, body_limit,
                                   line_limit)
        elif closes:  # an inner one of several boundaries closed: body up to the next delimiter
            following = delimiters[index + 1][0] - 2 if index + 1 < len(delimiters) else part.end
            yield from _view_lines(tree, line_end, max(line_end, following), offset, body_limit,
                                   line_limit)
        else:
            child = next(children, None)
            if child is not None:
                yield from _view_entity(tree, child, offset, body_limit, line_limit)


def _strip_crlf(data, start: int, end: int) -> int:
    return end - 2 if data[end - 2 : end] == CRLF else end


def _view_lines(tree, start, end, offset, body_limit, line_limit):
    if end <= start or offset.value >= body_limit:
        return
    data = tree.data
    stop = min(end, start + (body_limit - offset.value) * 2 + line_limit + 2)  # enough bytes
    chunk = bytes(data[start:stop])
    lines = chunk.split(CRLF)
    if stop == len(data) and chunk.endswith(CRLF):
        lines.pop()  # the message's own final line end
    elif stop < end:
        lines.pop()  # possibly cut: the limit is reached before it anyway
    for line in lines:
        if tree.stuffed and line[:1] == b".":
            line = line[1:]
        pieces = [line[i : i + line_limit] for i in range(0, len(line), line_limit)] or [b""]
        for piece in pieces:
            if offset.value >= body_limit:
                return
            if piece:
                yield "body", piece.decode("utf-8", "replace")
            offset.value += len(piece) + 1
