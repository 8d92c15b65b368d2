"""The milter codec (frontdoors/milter/protocol.py) against the specification (mfdef.h values,
milter8.c formats) and hostile input.

The byte strings below are written out by hand from the packet layouts in Postfix's
src/milter/milter8.c (what Postfix sends) and libmilter's mfdef.h (command/flag values), not
produced by our encoder; one test also uses miltertest (an MTA-side implementation by other
authors, GPLv3, test-only) as an independent encoder and decoder.
"""

from __future__ import annotations

import struct

import pytest

from smtpfilter.frontdoors.milter import protocol as p


def raw(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!L", len(data) + 1) + cmd + data


# --- the values of the specification --------------------------------------------------------
def test_constants_match_mfdef_h():
    assert [chr(c) for c in (p.Cmd.ABORT, p.Cmd.BODY, p.Cmd.CONNECT, p.Cmd.MACRO, p.Cmd.BODYEOB,
            p.Cmd.HELO, p.Cmd.QUIT_NC, p.Cmd.HEADER, p.Cmd.MAIL, p.Cmd.EOH, p.Cmd.OPTNEG,
            p.Cmd.QUIT, p.Cmd.RCPT, p.Cmd.DATA, p.Cmd.UNKNOWN)] == list("ABCDEHKLMNOQRTU")
    assert chr(p.Reply.ADDHEADER) == "h" and chr(p.Reply.INSHEADER) == "i"
    assert chr(p.Reply.CHGHEADER) == "m" and chr(p.Reply.QUARANTINE) == "q"
    assert chr(p.Reply.REPLYCODE) == "y" and chr(p.Reply.DISCARD) == "d"
    assert p.Step.NOBODY == 0x10 and p.Step.NR_HDR == 0x80 and p.Step.HDR_LEADSPC == 0x100000
    assert p.Step.NR_CONN == 0x1000 and p.Step.NR_BODY == 0x80000
    assert p.Action.ADDHDRS == 1 and p.Action.CHGHDRS == 0x10 and p.Action.SETSYMLIST == 0x100


# --- decoding what Postfix sends (milter8.c) -------------------------------------------------
POSTFIX_OFFER = raw(b"O", struct.pack("!LLL", 6, 0x1FF, 0x1FFFFF))

CASES = [
    ("optneg", POSTFIX_OFFER, p.OptNeg(6, 0x1FF, 0x1FFFFF)),
    ("connect inet", raw(b"C", b"mail.example\x004\x30\x39192.0.2.1\x00"),
     p.Connect("mail.example", "4", 12345, "192.0.2.1")),
    ("connect inet6", raw(b"C", b"[2001:db8::1]\x006\x00\x192001:db8::1\x00"),
     p.Connect("[2001:db8::1]", "6", 25, "2001:db8::1")),
    ("connect unix", raw(b"C", b"localhost\x00L\x00\x00/run/x\x00"), p.Connect("localhost", "L", 0, "/run/x")),
    ("connect unknown family", raw(b"C", b"localhost\x00U"), p.Connect("localhost", "U", 0, "")),
    ("macro braces dropped", raw(b"D", b"C{client_addr}\x00192.0.2.1\x00j\x00mx.example\x00"),
     p.Macros(ord("C"), {"client_addr": "192.0.2.1", "j": "mx.example"})),
    ("macro empty list", raw(b"D", b"H"), p.Macros(ord("H"), {})),
    ("helo", raw(b"H", b"client.example\x00"), p.Helo("client.example")),
    ("mail with args", raw(b"M", b"<a@b.example>\x00SIZE=100\x00BODY=8BITMIME\x00"),
     p.Mail(("<a@b.example>", "SIZE=100", "BODY=8BITMIME"))),
    ("null sender", raw(b"M", b"<>\x00"), p.Mail(("<>",))),
    ("rcpt", raw(b"R", b"<r@example>\x00"), p.Rcpt(("<r@example>",))),
    ("header", raw(b"L", b"Subject\x00 hi there\x00"), p.Header(b"Subject", b" hi there")),
    ("header empty value", raw(b"L", b"X-Empty\x00\x00"), p.Header(b"X-Empty", b"")),
    ("header folded with LF", raw(b"L", b"X-F\x00 a\n\tb\x00"), p.Header(b"X-F", b" a\n\tb")),
    ("eoh", raw(b"N"), p.EndOfHeaders()),
    ("body", raw(b"B", b"line\r\n.dot\r\n"), p.Body(b"line\r\n.dot\r\n")),
    ("eob empty", raw(b"E"), p.EndOfMessage(b"")),
    ("abort", raw(b"A"), p.Abort()),
    ("quit", raw(b"Q"), p.Quit()),
    ("quit nc", raw(b"K"), p.QuitNewConnection()),
    ("data", raw(b"T"), p.Data()),
    ("unknown smtp command", raw(b"U", b"XYZZY foo\x00"), p.Unknown("XYZZY foo")),
    # Client-chosen text that must not raise (kilter.protocol raises UnicodeDecodeError here).
    ("8-bit helo", raw(b"H", "h\u00e9lo.example".encode() + b"\x00"), p.Helo("h\u00e9lo.example")),
    ("utf-8 sender macro", raw(b"D", b"M{mail_addr}\x00" + "j\u00f6rg@ex".encode() + b"\x00"),
     p.Macros(ord("M"), {"mail_addr": "j\u00f6rg@ex"})),
    ("invalid utf-8 kept", raw(b"H", b"\xff\xfe\x00"), p.Helo(b"\xff\xfe".decode("utf-8", "surrogateescape"))),
    ("long helo label", raw(b"H", b"a" * 300 + b"\x00"), p.Helo("a" * 300)),
]


@pytest.mark.parametrize("packet,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode(packet, expected):
    assert p.Decoder().feed(packet) == [expected]


def test_stream_split_at_every_byte():
    stream = b"".join(c[1] for c in CASES)
    expected = [c[2] for c in CASES]
    for cut in range(len(stream) + 1):
        decoder = p.Decoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected
        assert decoder.pending == 0


def test_byte_by_byte():
    decoder = p.Decoder()
    events = []
    for byte in POSTFIX_OFFER + raw(b"B", b"x" * 70000):
        events += decoder.feed(bytes([byte]))
    assert events == [p.OptNeg(6, 0x1FF, 0x1FFFFF), p.Body(b"x" * 70000)]


# --- hostile input ---------------------------------------------------------------------------
HOSTILE = [
    ("zero length", struct.pack("!L", 0) + b"A"),
    ("oversize length", struct.pack("!L", p.MAX_PACKET + 1) + b"B"),
    ("4 GB length", b"\xff\xff\xff\xffB"),
    ("unknown command", raw(b"Z")),
    ("reply code from the MTA side", raw(b"y", b"550 no\x00")),
    ("optneg short", raw(b"O", b"\x00\x00\x00\x06")),
    ("optneg long", raw(b"O", struct.pack("!LLLL", 6, 0, 0, 0))),
    ("helo no NUL", raw(b"H", b"client")),
    ("helo two strings", raw(b"H", b"a\x00b\x00")),
    ("helo empty packet", raw(b"H")),
    ("mail no NUL", raw(b"M", b"<a@b>")),
    ("mail empty sender", raw(b"M", b"\x00")),
    ("header one string", raw(b"L", b"Subject\x00")),
    ("header three strings", raw(b"L", b"a\x00b\x00c\x00")),
    ("header empty name", raw(b"L", b"\x00v\x00")),
    ("connect truncated", raw(b"C", b"host\x00")),
    ("connect bad family", raw(b"C", b"host\x00Z\x00\x19x\x00")),
    ("connect no address NUL", raw(b"C", b"host\x004\x00\x19127.0.0.1")),
    ("connect trailing data", raw(b"C", b"host\x004\x00\x19127.0.0.1\x00junk\x00")),
    ("connect U with data", raw(b"C", b"host\x00Ujunk")),
    ("macro name without value", raw(b"D", b"Cj\x00")),
    ("macro no NUL", raw(b"D", b"Cj\x00mx")),
    ("macro empty packet", raw(b"D")),
    ("abort with data", raw(b"A", b"x")),
    ("eoh with data", raw(b"N", b"x")),
]


@pytest.mark.parametrize("packet", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_packet_is_a_protocol_error(packet):
    with pytest.raises(p.ProtocolError):
        p.Decoder().feed(packet)


def test_oversize_length_fails_before_the_data_arrives():
    decoder = p.Decoder(max_packet=1000)
    with pytest.raises(p.ProtocolError, match="outside"):
        decoder.feed(struct.pack("!L", 1001))  # only the 4 length bytes: no waiting for more


def test_truncated_packet_waits_and_holds_only_itself():
    decoder = p.Decoder()
    assert decoder.feed(raw(b"H", b"client.example\x00")[:-3]) == []
    assert decoder.pending == len(raw(b"H", b"client.example\x00")) - 3


def test_a_header_longer_than_libmilters_64k_default():
    # Postfix sends one header per packet, up to header_size_limit (102400 by default).
    value = b" " + b"x" * 102399
    assert p.Decoder().feed(raw(b"L", b"X-Big\x00" + value + b"\x00")) == [p.Header(b"X-Big", value)]


# --- replies ---------------------------------------------------------------------------------
def test_fixed_replies():
    assert p.CONTINUE == b"\x00\x00\x00\x01c"
    assert p.ACCEPT == b"\x00\x00\x00\x01a"
    assert p.DISCARD == b"\x00\x00\x00\x01d"
    assert p.TEMPFAIL == b"\x00\x00\x00\x01t"


def test_reply_code_doubles_percent():
    # milter8.c: "%%" -> "%", a single "%" is removed.
    assert p.reply_code(550, "5.7.1", "100% spam") == raw(b"y", b"550 5.7.1 100%% spam\x00")


@pytest.mark.parametrize("code,xcode,text", [
    (250, "2.0.0", "ok"),  # not 4xx/5xx
    (550, "4.7.1", "mismatch"),  # class digit must equal the reply's (milter8.c)
    (451, "4.7", "short"),
    (550, "5.7.1", "line\r\n550 injected"),
    (550, "5.7.1", "nul\x00"),
])
def test_reply_code_refuses_what_postfix_calls_malformed(code, xcode, text):
    with pytest.raises(ValueError):
        p.reply_code(code, xcode, text)


def test_header_replies():
    assert p.reply_add_header("X-A", " v") == raw(b"h", b"X-A\x00 v\x00")
    assert p.reply_insert_header(0, "X-A", " v") == raw(b"i", b"\x00\x00\x00\x00X-A\x00 v\x00")
    assert p.reply_change_header(2, "X-A") == raw(b"m", b"\x00\x00\x00\x02X-A\x00\x00")
    assert p.reply_add_header("X-A", " a\n\tb") == raw(b"h", b"X-A\x00 a\n\tb\x00")
    assert p.reply_quarantine("why") == raw(b"q", b"why\x00")


@pytest.mark.parametrize("name,value", [
    ("X-A", " a\r\n\tb"), ("X-A", " a\nb"), ("X-A", " a\x00"), ("X A", " v"), ("X:A", " v"), ("", " v"),
    ("X-\u00e9", " v"),
])
def test_header_replies_refuse_what_would_corrupt_the_message(name, value):
    with pytest.raises(ValueError):
        p.reply_add_header(name, value)


def test_change_header_index_starts_at_1():
    with pytest.raises(ValueError):
        p.reply_change_header(0, "X-A")


# --- negotiation -----------------------------------------------------------------------------
def test_negotiate_with_postfix_offer():
    wanted = p.Step.NOBODY | p.Step.NR_HDR | p.Step.NR_CONN | p.Step.HDR_LEADSPC | p.Step.NODATA
    reply, agreed = p.negotiate(
        p.OptNeg(6, 0x1FF, 0x1FFFFF), actions=p.Action.ADDHDRS | p.Action.CHGHDRS, steps=wanted,
        macros={p.MacroStage.CONNECT: ("j", "client_addr"), p.MacroStage.EOM: ("i",)},
    )
    assert agreed.steps == wanted
    assert agreed.actions == p.Action.ADDHDRS | p.Action.CHGHDRS | p.Action.SETSYMLIST
    assert reply == raw(b"O", struct.pack("!LLL", 6, 0x111, int(wanted))
                        + struct.pack("!L", 0) + b"j {client_addr}\x00"
                        + struct.pack("!L", 5) + b"i\x00")
    assert not agreed.replies_to(p.Step.NR_HDR) and agreed.replies_to(p.Step.NR_BODY)


def test_negotiate_keeps_no_reply_bits_only_where_offered():
    # A version-2 MTA offers no NR_* bits: asking for them would leave it waiting for us.
    offer = p.OptNeg(2, 0x3F, 0x7F)
    _, agreed = p.negotiate(offer, actions=p.Action.ADDHDRS, steps=p.Step.NR_CONN | p.Step.NOBODY | p.Step.NR_HDR,
                            macros={p.MacroStage.CONNECT: ("j",)})
    assert agreed.version == 2
    assert agreed.steps == p.Step.NOBODY  # NR_HDR (0x80) and NR_CONN are outside v2's 0x7F
    assert agreed.macros == {}  # no SETSYMLIST offered: the MTA's own macro lists apply


def test_negotiate_refuses_an_mta_without_the_actions_we_need():
    with pytest.raises(p.ProtocolError, match="actions"):
        p.negotiate(p.OptNeg(6, p.Action.ADDHDRS, 0x1FFFFF), actions=p.Action.ADDHDRS | p.Action.CHGHDRS, steps=p.Step(0))


def test_negotiate_refuses_protocol_version_1():
    with pytest.raises(p.ProtocolError):
        p.negotiate(p.OptNeg(1, 0x1FF, 0x1FFFFF), actions=p.Action(0), steps=p.Step(0))


# --- an independent implementation of the MTA side -------------------------------------------
def test_against_miltertest_codec():
    from miltertest import codec  # test extra: an MTA-side codec written by others
    stream = b"".join([
        codec.encode_msg("O", version=6, actions=0x1FF, protocol=0x1FFFFF),
        codec.encode_msg("D", cmdcode="C", nameval=["{client_addr}", "192.0.2.9", "j", "mx"]),
        codec.encode_msg("C", hostname="h.example", family="4", port=2525, address="192.0.2.9"),
        codec.encode_msg("H", helo="client.example"),
        codec.encode_msg("M", args=["<s@example>", "SIZE=9"]),
        codec.encode_msg("R", args=["<r@example>"]),
        codec.encode_msg("L", name="Subject", value=" hi"),
        codec.encode_msg("B", buf="body\r\n"),
        codec.encode_msg("E"),
        codec.encode_msg("A"),
        codec.encode_msg("Q"),
    ])
    assert p.Decoder().feed(stream) == [
        p.OptNeg(6, 0x1FF, 0x1FFFFF),
        p.Macros(ord("C"), {"client_addr": "192.0.2.9", "j": "mx"}),
        p.Connect("h.example", "4", 2525, "192.0.2.9"),
        p.Helo("client.example"),
        p.Mail(("<s@example>", "SIZE=9")),
        p.Rcpt(("<r@example>",)),
        p.Header(b"Subject", b" hi"),
        p.Body(b"body\r\n"),
        p.EndOfMessage(b""),
        p.Abort(),
        p.Quit(),
    ]
    # ... and it decodes what we send.
    decoded = [codec.decode_msg(packet_bytes)[:2] for packet_bytes in (
        p.reply_code(550, "5.7.1", "no 100%"), p.reply_add_header("X-A", " v"),
        p.reply_change_header(2, "X-A"), p.CONTINUE)]
    assert decoded == [
        ("y", {"smtpcode": "550", "space": " ", "text": "5.7.1 no 100%%"}),
        ("h", {"name": "X-A", "value": " v"}),
        ("m", {"index": 2, "name": "X-A", "value": ""}),
        ("c", {}),
    ]
