"""The Sendmail milter protocol, version 6, filter side: packets in, packets out, no I/O.

Sources (the protocol has no RFC): Sendmail's ``include/libmilter/mfdef.h`` and ``mfapi.h``
(command, reply and flag values), Postfix's ``src/milter/milter8.c`` (what the MTA we serve
actually sends and accepts) and ``MILTER_README``.

Wire format: every packet is ``uint32 length (network order) | 1 byte command | data``, the
length counting the command byte and the data. Strings are NUL-terminated; integers are
unsigned 32-bit (16-bit for the CONNECT port), network order.

- :class:`Decoder` turns the MTA's byte stream into events (:class:`Connect`, :class:`Header`,
  :class:`Body` ...), raising :class:`ProtocolError` on anything malformed: a zero or oversize
  length, an unknown command, a missing NUL, trailing garbage. Strings are decoded UTF-8 with
  ``surrogateescape`` (SMTPUTF8 addresses and 8-bit HELO names arrive; nothing here may raise
  UnicodeDecodeError); header names/values and body chunks stay bytes.
- :func:`negotiate` answers the MTA's SMFIC_OPTNEG offer with the events, no-reply flags,
  actions and macro lists we want, intersected with what the MTA offers.
- The ``reply_*`` functions and constants encode what we send back; they validate what they
  encode (a reply code Postfix would call "malformed", a header with a bare CR or NUL, a
  ``%`` that Postfix would swallow) so that nothing we send can desynchronise the stream.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "Action", "Cmd", "Decoder", "Event", "MacroStage", "Negotiated", "ProtocolError", "Reply",
    "Step", "MAX_PACKET", "negotiate",
    "Abort", "Body", "Connect", "Data", "EndOfHeaders", "EndOfMessage", "Header", "Helo",
    "Macros", "Mail", "OptNeg", "Quit", "QuitNewConnection", "Rcpt", "Unknown",
    "reply_add_header", "reply_change_header", "reply_insert_header", "reply_quarantine",
    "reply_code", "packet",
]

# libmilter's default limit is 65535 data bytes (MILTER_MAX_DATA_SIZE) and Postfix cuts body
# chunks at 65535 (MILTER_CHUNK_SIZE), but Postfix sends one header per packet, and a header
# can be as long as header_size_limit (default 102400): a 64 KB cap would cut off mail that
# Postfix accepted. 1 MiB covers header_size_limit up to ten times its default.
MAX_PACKET = 1 << 20

_U32 = struct.Struct("!L")
_OPTNEG = struct.Struct("!LLL")


class ProtocolError(ValueError):
    """The MTA sent something the protocol does not allow; the connection must be closed."""


class Cmd(enum.IntEnum):
    """SMFIC_*: commands from the MTA (mfdef.h)."""

    ABORT = ord("A")
    BODY = ord("B")
    CONNECT = ord("C")
    MACRO = ord("D")
    BODYEOB = ord("E")
    HELO = ord("H")
    QUIT_NC = ord("K")  # quit, but a new connection follows on this socket (8.14)
    HEADER = ord("L")
    MAIL = ord("M")
    EOH = ord("N")
    OPTNEG = ord("O")
    QUIT = ord("Q")
    RCPT = ord("R")
    DATA = ord("T")
    UNKNOWN = ord("U")


class Reply(enum.IntEnum):
    """SMFIR_*: what a filter sends back (mfdef.h)."""

    ADDRCPT = ord("+")
    DELRCPT = ord("-")
    ADDRCPT_PAR = ord("2")
    SHUTDOWN = ord("4")
    ACCEPT = ord("a")
    REPLBODY = ord("b")
    CONTINUE = ord("c")
    DISCARD = ord("d")
    CHGFROM = ord("e")
    CONN_FAIL = ord("f")
    ADDHEADER = ord("h")
    INSHEADER = ord("i")
    SETSYMLIST = ord("l")
    CHGHEADER = ord("m")
    PROGRESS = ord("p")
    QUARANTINE = ord("q")
    REJECT = ord("r")
    SKIP = ord("s")
    TEMPFAIL = ord("t")
    REPLYCODE = ord("y")


class Action(enum.IntFlag):
    """SMFIF_*: the modifications a filter may request at end of message."""

    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


class Step(enum.IntFlag):
    """SMFIP_*: events the filter does not want (NO*), will not answer (NR_*), and extensions."""

    NOCONNECT = 0x01
    NOHELO = 0x02
    NOMAIL = 0x04
    NORCPT = 0x08
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400  # the MTA understands SMFIR_SKIP
    RCPT_REJ = 0x800  # send rejected recipients too
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000  # header values keep their leading space, and ours must carry one


NO_REPLY = (
    Step.NR_CONN | Step.NR_HELO | Step.NR_MAIL | Step.NR_RCPT | Step.NR_DATA | Step.NR_UNKN
    | Step.NR_HDR | Step.NR_EOH | Step.NR_BODY
)


class MacroStage(enum.IntEnum):
    """SMFIM_*: the stages a filter may ask macro lists for in its OPTNEG reply."""

    CONNECT = 0
    HELO = 1
    MAIL = 2
    RCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


# --- events (MTA -> filter) -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OptNeg:
    version: int
    actions: int
    steps: int


@dataclass(frozen=True, slots=True)
class Macros:
    """SMFIC_MACRO: the values for the event ``cmd`` that follows (sent even when that event
    itself is not, milter8.c milter8_event)."""

    cmd: int
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str  # the verified name, or "[addr]" when Postfix has none (milter8_conn_event)
    family: str  # "4", "6", "L" (unix), "U" (unknown)
    port: int
    address: str  # "" for family U


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    args: tuple[str, ...]  # "<sender>", then ESMTP parameters as sent (SIZE=..., BODY=...)


@dataclass(frozen=True, slots=True)
class Rcpt:
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Header:
    """One header field. Folded lines are joined by LF (not CRLF) in ``value`` (milter8.c)."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes  # CRLF lines, not dot-stuffed; Postfix cuts at 65535 bytes, not at lines


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    chunk: bytes  # Postfix sends none (it flushes the last chunk as SMFIC_BODY first)


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class QuitNewConnection:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    line: str


Event = (
    OptNeg | Macros | Connect | Helo | Mail | Rcpt | Data | Header | EndOfHeaders | Body
    | EndOfMessage | Abort | Quit | QuitNewConnection | Unknown
)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _strings(data: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings filling ``data`` exactly."""
    if not data or data[-1] != 0:
        raise ProtocolError(f"{what}: missing NUL terminator")
    return data[:-1].split(b"\0")


def _no_data(name: str, event: Event):
    def decode(data: bytes) -> Event:
        if data:
            raise ProtocolError(f"{name}: unexpected {len(data)} data bytes")
        return event
    return decode


def _optneg(data: bytes) -> Event:
    if len(data) != _OPTNEG.size:  # an MTA sends no macro lists; only filters do
        raise ProtocolError(f"OPTNEG: {len(data)} data bytes, expected {_OPTNEG.size}")
    return OptNeg(*_OPTNEG.unpack(data))


def _macros(data: bytes) -> Event:
    if not data:
        raise ProtocolError("MACRO: no command code")
    values: dict[str, str] = {}
    if len(data) > 1:
        items = _strings(data[1:], "MACRO")
        if len(items) % 2:
            raise ProtocolError("MACRO: a name without a value")
        for i in range(0, len(items), 2):
            name = _text(items[i])
            # Postfix sends "{client_addr}", Sendmail "client_addr" for some: one spelling.
            if len(name) > 2 and name[0] == "{" and name[-1] == "}":
                name = name[1:-1]
            values[name] = _text(items[i + 1])
    return Macros(data[0], values)


def _connect(data: bytes) -> Event:
    nul = data.find(b"\0")
    if nul < 0 or nul + 1 >= len(data):
        raise ProtocolError("CONNECT: truncated")
    hostname, family = _text(data[:nul]), chr(data[nul + 1])
    rest = data[nul + 2 :]
    if family == "U":
        if rest:
            raise ProtocolError("CONNECT: data after family U")
        return Connect(hostname, family, 0, "")
    if family not in "46L" or len(rest) < 3:
        raise ProtocolError(f"CONNECT: bad family {family!r} or truncated address")
    items = _strings(rest[2:], "CONNECT address")
    if len(items) != 1:
        raise ProtocolError("CONNECT: data after the address")
    address = items[0]
    return Connect(hostname, family, int.from_bytes(rest[:2], "big"), _text(address))


def _one_string(name: str, kind):
    def decode(data: bytes) -> Event:
        items = _strings(data, name)
        if len(items) != 1:
            raise ProtocolError(f"{name}: {len(items)} strings, expected 1")
        return kind(_text(items[0]))
    return decode


def _args(name: str, kind):
    def decode(data: bytes) -> Event:
        items = _strings(data, name)
        if not items[0]:
            raise ProtocolError(f"{name}: empty address")
        return kind(tuple(_text(item) for item in items))
    return decode


def _header(data: bytes) -> Event:
    items = _strings(data, "HEADER")
    if len(items) != 2 or not items[0]:
        raise ProtocolError("HEADER: expected a name and a value")
    return Header(items[0], items[1])


_DECODERS = {
    Cmd.OPTNEG: _optneg,
    Cmd.MACRO: _macros,
    Cmd.CONNECT: _connect,
    Cmd.HELO: _one_string("HELO", Helo),
    Cmd.MAIL: _args("MAIL", Mail),
    Cmd.RCPT: _args("RCPT", Rcpt),
    Cmd.DATA: _no_data("DATA", Data()),
    Cmd.HEADER: _header,
    Cmd.EOH: _no_data("EOH", EndOfHeaders()),
    Cmd.BODY: Body,
    Cmd.BODYEOB: EndOfMessage,
    Cmd.ABORT: _no_data("ABORT", Abort()),
    Cmd.QUIT: _no_data("QUIT", Quit()),
    Cmd.QUIT_NC: _no_data("QUIT_NC", QuitNewConnection()),
    Cmd.UNKNOWN: _one_string("UNKNOWN", Unknown),
}


def decode(cmd: int, data: bytes) -> Event:
    """One packet's command byte and data -> an event (ProtocolError if malformed)."""
    decoder = _DECODERS.get(cmd)
    if decoder is None:
        raise ProtocolError(f"unknown command {bytes([cmd])!r}")
    return decoder(data)


class Decoder:
    """Incremental: ``feed(bytes)`` returns the complete events so far, keeps the rest.

    The length is checked as soon as its 4 bytes arrive, so an absurd length fails at once
    instead of waiting for (and buffering) gigabytes. After a ProtocolError the stream is out
    of sync and the decoder must not be used again.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buf = bytearray()
        self._max = max_packet

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held (0 at a packet boundary)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf
        buf += data
        events: list[Event] = []
        start, end = 0, len(buf)
        while end - start >= 4:
            (length,) = _U32.unpack_from(buf, start)
            if length < 1 or length > self._max:
                raise ProtocolError(f"packet length {length} outside 1..{self._max}")
            if end - start - 4 < length:
                break
            cmd = buf[start + 4]
            events.append(decode(cmd, bytes(buf[start + 5 : start + 4 + length])))
            start += 4 + length
        if start:
            del buf[:start]
        return events


# --- replies (filter -> MTA) ----------------------------------------------------------------
def packet(cmd: int, data: bytes = b"") -> bytes:
    return _U32.pack(len(data) + 1) + bytes((cmd,)) + data


CONTINUE = packet(Reply.CONTINUE)
ACCEPT = packet(Reply.ACCEPT)
REJECT = packet(Reply.REJECT)  # Postfix: "550 5.7.1 Command rejected"
TEMPFAIL = packet(Reply.TEMPFAIL)  # Postfix: "451 4.7.1 Service unavailable - try again later"
DISCARD = packet(Reply.DISCARD)  # not allowed at CONNECT/HELO (milter8.c)
PROGRESS = packet(Reply.PROGRESS)
SKIP = packet(Reply.SKIP)


def _printable(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if any(b < 0x20 or b == 0x7F for b in raw):
        raise ValueError(f"{what}: control characters in {text!r}")
    return raw


def reply_code(code: int, xcode: str, text: str) -> bytes:
    """SMFIR_REPLYCODE "550 5.7.1 text", as milter8.c validates it.

    Postfix calls the reply malformed unless it starts 4xx/5xx + space and an enhanced code
    whose class digit equals the reply's; it treats the text like Sendmail's printf format:
    "%%" becomes "%", a lone "%" is dropped. So "%" is doubled here, and a control character
    (CR, LF, NUL could split the reply or end it early) is refused.
    """
    if not (400 <= code <= 599):
        raise ValueError(f"reply code {code} is not 4xx or 5xx")
    parts = xcode.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[0] != str(code)[0]:
        raise ValueError(f"enhanced status code {xcode!r} does not match {code}")
    body = _printable(f"{code} {xcode} {text}".rstrip().replace("%", "%%"), "reply")
    return packet(Reply.REPLYCODE, body + b"\0")


def _header_field(name: str, value: str) -> bytes:
    if not name or any(not (0x21 <= ord(c) <= 0x7E) or c == ":" for c in name):
        raise ValueError(f"header name {name!r} is not printable ASCII without ':'")
    raw = value.encode("utf-8")
    # Folding is LF + whitespace (libmilter smfi_addheader; Postfix splits the value at LF);
    # anything else that is a control character would corrupt the queue file's header.
    for i, b in enumerate(raw):
        if b == 0x0A:
            if raw[i + 1 : i + 2] not in (b" ", b"\t"):
                raise ValueError(f"header {name}: LF not followed by whitespace")
        elif b < 0x20 and b != 0x09 or b == 0x7F:
            raise ValueError(f"header {name}: control character {b:#x}")
    return name.encode("ascii") + b"\0" + raw + b"\0"


def reply_add_header(name: str, value: str) -> bytes:
    """SMFIR_ADDHEADER: append after the last header. With HDR_LEADSPC negotiated Postfix
    adds no space after the colon: the value must bring its own."""
    return packet(Reply.ADDHEADER, _header_field(name, value))


def reply_insert_header(index: int, name: str, value: str) -> bytes:
    """SMFIR_INSHEADER: index 0 is the very top, above Postfix's own Received: header."""
    return packet(Reply.INSHEADER, _U32.pack(index) + _header_field(name, value))


def reply_change_header(index: int, name: str, value: str = "") -> bytes:
    """SMFIR_CHGHEADER: the ``index``-th (1-based) header called ``name``, counted in the
    message as received (without Postfix's own Received:); an empty value deletes it."""
    if index < 1:
        raise ValueError("header index starts at 1")
    return packet(Reply.CHGHEADER, _U32.pack(index) + _header_field(name, value))


def reply_quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE: Postfix puts the message on hold (postsuper -H releases it). It is
    not a final reply: Postfix keeps reading until CONTINUE/ACCEPT/..."""
    return packet(Reply.QUARANTINE, _printable(reason or "quarantined", "reason") + b"\0")


# --- negotiation ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Negotiated:
    version: int
    actions: Action
    steps: Step
    macros: dict[MacroStage, tuple[str, ...]] = field(default_factory=dict)

    def replies_to(self, no_reply_flag: Step) -> bool:
        return not (self.steps & no_reply_flag)


def negotiate(
    offer: OptNeg,
    *,
    actions: Action,
    steps: Step,
    macros: dict[MacroStage, tuple[str, ...]] | None = None,
) -> tuple[bytes, Negotiated]:
    """Our OPTNEG reply to ``offer`` and what was agreed.

    ``actions`` are required: an MTA that does not offer one of them cannot serve us, and
    Postfix would refuse a reply asking for more than it offered (milter8_connect), so that is
    a ProtocolError. ``steps`` are wishes: the NO* bits are asked for even when not offered
    (the MTA then sends the event anyway; Postfix only logs it), but the NR_* and extension
    bits are kept only where offered, since an NR_* bit the MTA does not know would leave it
    waiting for a reply we never send. Macro lists (8.14, "an application-specified list
    takes precedence over a Postfix-specified list", MILTER_README) need SETSYMLIST.
    """
    if offer.version < 2:
        raise ProtocolError(f"milter protocol version {offer.version} is too old")
    version = min(offer.version, 6)
    wanted_actions = Action(actions)
    if macros:
        wanted_actions |= Action.SETSYMLIST
    missing = wanted_actions & ~Action(offer.actions & 0x1FF)
    if missing & ~Action.SETSYMLIST:
        raise ProtocolError(f"the MTA does not offer the actions {missing!r} we need")
    if missing:  # no SETSYMLIST (protocol < 6): live with the MTA's configured macros
        wanted_actions &= ~Action.SETSYMLIST
        macros = None
    no_send = Step.NOCONNECT | Step.NOHELO | Step.NOMAIL | Step.NORCPT | Step.NOBODY \
        | Step.NOHDRS | Step.NOEOH | Step.NOUNKNOWN | Step.NODATA
    agreed_steps = Step((steps & no_send) | (steps & ~no_send & offer.steps))
    body = _OPTNEG.pack(version, int(wanted_actions), int(agreed_steps))
    agreed_macros: dict[MacroStage, tuple[str, ...]] = {}
    for stage, names in (macros or {}).items():
        wire = [n if n.startswith("{") or len(n) == 1 else "{" + n + "}" for n in names]
        body += _U32.pack(stage) + " ".join(wire).encode("ascii") + b"\0"
        agreed_macros[stage] = tuple(names)
    return packet(Cmd.OPTNEG, body), Negotiated(version, wanted_actions, agreed_steps, agreed_macros)
