"""Header block parsing on wire bytes: folding, dot-stuffing, malformed lines, limits."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from smtpfilter.core.message import MessageContext, parse_header_block
from smtpfilter.core.wire import fold_header, outgoing, to_wire


def block(raw: bytes, limit: int = 1 << 20):
    return parse_header_block(to_wire(raw), limit)


def test_fields_are_unfolded_and_keep_their_offsets():
    wire = to_wire(b"Subject: a\n  folded\tvalue\nX-A: 1\nX-A: 2\n\nbody\n")
    parsed = parse_header_block(wire)
    assert [h.name for h in parsed] == ["Subject", "X-A", "X-A"]
    assert parsed.get_all("subject")[0].text == "a  folded\tvalue"
    assert [h.text for h in parsed.get_all("x-a")] == ["1", "2"]
    first = parsed.headers[0]
    assert wire[first.start : first.end] == b"Subject: a\r\n  folded\tvalue\r\n"
    assert parsed.end == wire.index(b"\r\n\r\n") + 2


def test_dot_stuffed_header_line_is_unstuffed_for_rules():
    parsed = block(b".Odd-Name: dotted\nSubject: x\n\nbody")
    assert [h.name for h in parsed] == [".Odd-Name", "Subject"]


def test_content_that_is_not_dot_stuffed_keeps_its_dots():
    # The milter's content (Postfix streams it unstuffed): a leading dot is the name's own.
    content = b".Odd-Name: dotted\r\n..Two: dots\r\n\r\n.body\r\n"
    assert [h.name for h in parse_header_block(content, stuffed=False)] == [".Odd-Name", "..Two"]
    msg = MessageContext.build(content, received_at=datetime.now(timezone.utc), stuffed=False)
    assert msg.stuffed is False and msg.size == len(content)
    assert [h.name for h in msg.headers] == [".Odd-Name", "..Two"]


@pytest.mark.parametrize(
    ("raw", "names", "malformed"),
    [
        (b"Subject: x\nthis line has no colon\nX-Mailer: hidden\n\nbody", ["Subject"], True),
        (b"Subject: x\nBad Name: y\nX-Mailer: hidden\n\n", ["Subject"], True),
        (b" starts with space\nSubject: x\n\n", [], True),
        (b"Subject: x\n:empty name\n\n", ["Subject"], True),
        (b"\nSubject: in the body\n", [], False),  # empty header section
        (b"Subject: only headers, no body\n", ["Subject"], False),
        (b"", [], False),
        # RFC 5322 §4.5.3 obs-optional: whitespace between the name and the colon is still a
        # header for Postfix's is_header_buf() (issue 12: it used to end the header section).
        (b"X-Foo : bar\nX-Tab\t:baz\nX-Mailer:  MaxBulk\n\n", ["X-Foo", "X-Tab", "X-Mailer"], False),
        (b"Subject: x\nX-\x7fDel: y\nX-Mailer: hidden\n\n", ["Subject"], True),
        (b"Subject: x\nX-\xc3\xa9: y\nX-Mailer: hidden\n\n", ["Subject"], True),
        (b"Subject: x\n : indented colon\n\n", ["Subject"], False),  # a continuation
    ],
    ids=["no-colon", "space-in-name", "leading-continuation", "empty-name", "no-headers", "no-body",
         "empty", "obs-optional", "del-in-name", "8bit-in-name", "continuation-with-colon"],
)
def test_header_section_ends_where_postfix_ends_it(raw, names, malformed):
    parsed = block(raw)
    assert [h.name for h in parsed] == names
    assert (parsed.malformed_at is not None) == malformed


def test_obs_optional_header_is_named_without_its_whitespace():
    parsed = block(b"Date: Mon, 4 Mar 2024 10:00:00 +0000\nX-Foo \t : bar\nX-Mailer : MaxBulk\n\n")
    [mailer] = parsed.get_all("x-mailer")
    assert mailer.text == "MaxBulk" and mailer.line == "X-Mailer: MaxBulk"
    assert parsed.get_all("x-foo")[0].raw == b" bar"  # the value as written after the colon


def test_eight_bit_and_encoded_words():
    parsed = block("Subject: Grüße\nX-Mailer: =?utf-8?B?TWF4QnVsay5NYWlsZXI=?=\n\n".encode())
    parsed_latin1 = block(b"Subject: caf\xe9\n\n")
    assert parsed.get_all("subject")[0].text == "Grüße"
    assert parsed.get_all("x-mailer")[0].decoded == "MaxBulk.Mailer"
    assert parsed_latin1.get_all("subject")[0].text == "caf\ufffd"


def test_broken_encoded_word_falls_back_to_raw_text():
    parsed = block(b"Subject: =?bogus-charset?Q?x?= =?utf-8?B?!!!?=\n\n")
    header = parsed.get_all("subject")[0]
    assert isinstance(header.decoded, str)


def test_header_limit_truncates_without_breaking_a_field():
    raw = b"".join(b"X-Filler-%d: %s\n" % (i, b"v" * 50) for i in range(100)) + b"X-Late: 1\n\nbody"
    parsed = block(raw, limit=1000)
    assert parsed.truncated
    assert 10 < len(parsed) < 100
    assert parsed.get_all("x-late") == []


def test_fold_header_never_emits_controls_or_long_lines():
    folded = fold_header("X-Test", "a\r\nInjected: yes\x00 " + "w" * 2000 + " tail " * 30)
    lines = folded.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) <= 998 for line in lines)
    assert all(line[:1] in (b"\t",) for line in lines[1:-1])
    assert b"\n" not in folded.replace(b"\r\n", b"") and b"\x00" not in folded
    assert b"?Injected: yes?" in folded.replace(b"\r\n\t", b" ")


def test_outgoing_prepends_and_strips_without_copying_the_rest():
    wire = to_wire(b"X-Spam-Flag: NO\nSubject: s\nx-spam-flag: also\n continued\n\nbody\n")
    msg = MessageContext.build(wire, received_at=datetime.now(timezone.utc))
    parts = outgoing(msg, (("X-Spam-Flag", "YES"),), ("X-Spam-Flag",))
    assert b"".join(bytes(p) for p in parts) == b"X-Spam-Flag: YES\r\nSubject: s\r\n\r\nbody\r\n"
    assert any(isinstance(p, memoryview) for p in parts)


@pytest.mark.parametrize(
    ("added", "expected"),
    [
        # We tag: their flag is renamed, whatever its spelling, value and folding untouched.
        ((("X-Spam-Flag", "YES"),),
         b"X-Spam-Flag: YES\r\nX-Original-Spam-Flag: NO\r\nSubject: s\r\n"
         b"X-Original-Spam-Flag:maybe\r\n folded\r\n\r\nbody\r\n"),
        # We do not: their flag stays byte for byte (a DKIM signature may cover it).
        ((), b"x-spam-flag : NO\r\nSubject: s\r\nX-Spam-Flag:maybe\r\n folded\r\n\r\nbody\r\n"),
    ],
    ids=["tagged", "untagged"],
)
def test_outgoing_renames_an_upstream_flag_only_beside_ours(added, expected):
    from smtpfilter.config.settings import HeadersConfig

    wire = to_wire(b"x-spam-flag : NO\nX-Smtpfilter-Status: No\nSubject: s\n"
                   b"X-Spam-Flag:maybe\n folded\n\nbody\n")
    msg = MessageContext.build(wire, received_at=datetime.now(timezone.utc))
    parts = outgoing(msg, added, *HeadersConfig().incoming(added))
    assert b"".join(bytes(p) for p in parts) == expected
