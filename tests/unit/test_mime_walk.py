"""The MIME walk (engine/mime.py): structure, names, decoding on demand, and hostile structure."""
from __future__ import annotations

import base64
import random
import time

import pytest

from smtpfilter.config.settings import MimeConfig
from smtpfilter.engine.mime import clean_name, decode_charset, walk, walk_message
from tests.support.mime import attach, context, message, raw_attachment, wire


def test_nested_multiparts_and_attached_message_are_all_walked():
    inner = message("inner", "inner text\n")
    attach(inner, b"%PDF-1.4 inner", "inner.pdf", "application/pdf")
    outer = message("outer", "outer text\n")
    outer.add_alternative("<p>outer <b>html</b></p>", subtype="html")
    attach(outer, b"MZ" + b"\x00" * 100, "invoice.pdf.exe")
    outer.add_attachment(inner)
    tree = walk(wire(outer))
    shape = [(p.path, p.kind, p.ctype, p.names) for p in tree.parts]
    assert shape == [
        ("", "multipart", "multipart/mixed", ()),
        ("1", "multipart", "multipart/alternative", ()),
        ("1.1", "leaf", "text/plain", ()),
        ("1.2", "leaf", "text/html", ()),
        ("2", "leaf", "application/octet-stream", ("invoice.pdf.exe",)),
        ("3", "message", "message/rfc822", ()),
        ("3.1", "multipart", "multipart/mixed", ()),
        ("3.1.1", "leaf", "text/plain", ()),
        ("3.1.2", "leaf", "application/pdf", ("inner.pdf",)),
    ]
    assert [p.path for p in tree.attachments()] == ["2", "3.1.2"]
    assert [p.path for p in tree.text_parts()] == ["1.1", "1.2", "3.1.1"]
    assert tree.limits == [] and tree.defects == []


def test_a_message_without_mime_is_one_text_part():
    tree = walk(wire("From: a@b\nSubject: plain\n\nJust text.\n"))
    assert [(p.kind, p.ctype) for p in tree.parts] == [("leaf", "text/plain")]
    assert [p.text() for p in tree.text_parts()] == ["Just text.\r\n"]


@pytest.mark.parametrize(
    "params, expected",
    [
        ('filename="report.pdf.exe"', ("report.pdf.exe",)),
        ("filename*=UTF-8''%E2%82%AC%20rates.exe", ("€ rates.exe",)),
        ("filename*0*=utf-8''in%20voice; filename*1=\".scr\"", ("in voice.scr",)),
        ('filename="=?utf-8?B?w6l0w6kuZXhl?="', ("été.exe",)),  # RFC 2047 in a quoted name
        ('filename="evil.exe. . ."', ("evil.exe",)),  # Windows drops trailing dots and spaces
        ('filename="C:\\\\Users\\\\x\\\\run.bat"', ("run.bat",)),
        ('filename="../../tmp/x.js"', ("x.js",)),
        ('filename="a\tb.vbs"', ("ab.vbs",)),
        ("filename*=x-bogus''%E9t%E9.exe", ("été.exe",)),  # unknown charset: still a name
    ],
    ids=["plain", "rfc2231", "rfc2231-continued", "rfc2047", "trailing-dots", "windows-path",
         "unix-path", "control-char", "bogus-charset"],
)
def test_file_names_are_seen_as_the_user_sees_them(params, expected):
    tree = walk(raw_attachment(params, b"data"))
    assert tree.parts[-1].names == expected


def test_both_declared_names_count():
    data = raw_attachment('filename="invoice.pdf"', b"x", ctype='application/octet-stream; name="invoice.exe"')
    assert walk(data).parts[-1].names == ("invoice.pdf", "invoice.exe")


@pytest.mark.parametrize("line", [76, 64, 4, 1000])
def test_base64_head_and_tail_decode_only_what_is_asked_and_agree_with_a_full_decode(line):
    rnd = random.Random(line)
    for size in (0, 1, 2, 3, 100, 4095, 4096, 70001):
        content = rnd.randbytes(size)
        encoded = base64.b64encode(content)
        lines = b"\n".join(encoded[i : i + line] for i in range(0, len(encoded), line))
        data = raw_attachment('filename="x.bin"', lines, cte="base64-prewrapped")
        data = data.replace(b"Content-Transfer-Encoding: base64-prewrapped", b"Content-Transfer-Encoding: base64")
        part = walk(data).parts[-1]
        for want in (1, 3, 64, 4096, 100_000):
            assert part.head(want) == content[:want], (size, want)
            assert part.tail(want) == content[-want:] if size else part.tail(want) == b"", (size, want)
        assert part.size_estimate() >= size


def test_quoted_printable_and_dot_stuffing_are_undone():
    text = "café =E2=82=AC\n.leading dot line\n..two\nsoft=\n break\n"
    data = raw_attachment('filename="x.txt"', text.encode(), ctype="text/plain; charset=utf-8",
                          cte="quoted-printable")
    part = walk(data).parts[-1]
    assert b"\r\n..leading" in data  # on the wire the line is stuffed
    assert part.text() == "café €\r\n.leading dot line\r\n..two\r\nsoft break\r\n"


@pytest.mark.parametrize(
    "charset, raw, expected",
    [
        ("utf-8", "été".encode(), "été"),
        ("iso-8859-1", "été".encode("latin-1"), "été"),
        ("x-no-such-charset", "été".encode(), "été"),
        ("rot13", b"uryyb", "uryyb"),  # a str->str codec is not a charset
        ("idna", b"\xff abc", "\ufffd abc"),  # idna only supports 'strict'
        ("utf-8", b"\xff\xfe ok", "\ufffd\ufffd ok"),
        (None, b"plain", "plain"),
    ],
)
def test_charset_decoding_never_raises(charset, raw, expected):
    assert decode_charset(raw, charset) == expected


def test_clean_name_keeps_names_without_tricks():
    assert clean_name("report.pdf") == "report.pdf"
    assert clean_name("x" * 300 + ".exe") == "x" * 255


def test_the_walk_is_shared_through_the_message_memo():
    msg = context(wire(message()))
    assert walk_message(msg) is walk_message(msg)


# --- hostile structure: a defined outcome, never an exception, bounded time --------------------
def _multipart(body: str, boundary: str = "B") -> bytes:
    return wire(f"From: a@b\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\n\n{body}")


def _timed(data: bytes, limits: MimeConfig | None = None):
    start = time.process_time()
    tree = walk(data, limits)
    for part in tree.parts:
        part.head(4096)
        part.tail(1024)
        if part.maintype == "text":
            part.text()
    return tree, time.process_time() - start


def test_unterminated_multipart():
    tree, _ = _timed(_multipart("--B\nContent-Type: text/plain\n\nno end\n--B\nContent-Type: application/zip; name=a.zip\nContent-Transfer-Encoding: base64\n\nUEsDBA=="))
    assert [p.path for p in tree.parts] == ["", "1", "2"]
    assert tree.defects == ["UNTERMINATED_MULTIPART"]
    assert tree.parts[-1].head(4) == b"PK\x03\x04"


def test_ten_thousand_parts_stop_at_the_parts_limit():
    body = "".join(f"--B\nContent-Type: text/plain; name=p{i}.txt\n\n{i}\n" for i in range(10_000)) + "--B--\n"
    tree, seconds = _timed(_multipart(body))
    assert tree.limits == ["parts"]
    assert len(tree.parts) == MimeConfig().max_parts
    assert seconds < 1.0


def test_nesting_100_deep_stops_at_the_depth_limit():
    body = ""
    for level in range(100):
        body += f"--L{level}\nContent-Type: multipart/mixed; boundary=\"L{level + 1}\"\n\n"
    body += "--L100\nContent-Type: text/plain\n\ndeep\n"
    tree, seconds = _timed(_multipart(body, "L0"))
    assert tree.limits == ["depth"]
    assert max(p.depth for p in tree.parts) == MimeConfig().max_depth
    assert seconds < 1.0


@pytest.mark.parametrize("length, outcome", [(50_000, "cut"), (1 << 20, "header")])
def test_a_boundary_that_never_ends(length, outcome):
    # The boundary is 50 KB (cut at 2,048 bytes, as Postfix does) or 1 MB (its header exceeds
    # the header limit: the walk stops there); the last delimiter line runs to the end.
    boundary = "b" * length
    data = _multipart(f"--{boundary}\nContent-Type: text/plain\n\nhello\n--{boundary}" + "x" * (1 << 20), boundary)
    tree, seconds = _timed(data)
    if outcome == "cut":
        assert len(tree.parts[0].boundaries[0]) == MimeConfig().boundary_length
        assert [p.text() for p in tree.text_parts()] == ["hello", ""]  # an empty last part
        assert tree.parts[-1].start == tree.parts[-1].end == len(data)
    else:
        assert tree.limits == ["header"]
    assert seconds < 1.0


def test_a_part_header_block_that_never_ends():
    body = "--B\n" + "X-Filler: " + "y" * 60 + "\n" * 1 + ("X-Filler: z\n" * 20_000)
    tree, seconds = _timed(_multipart(body))
    assert "header" in tree.limits
    assert seconds < 1.0


def test_bad_base64_decodes_what_it_can_and_says_so():
    data = raw_attachment('filename="x.exe"', b"TVqQ!!!!AAMA====AAAE===\nA", cte="identity")
    data = data.replace(b"Content-Transfer-Encoding: identity", b"Content-Transfer-Encoding: base64")
    part = walk(data).parts[-1]
    assert part.head(4)[:2] == b"MZ"
    part.tail(100)  # no exception


@pytest.mark.parametrize("seed", range(30))
def test_random_garbage_never_raises(seed):
    rnd = random.Random(seed)
    pieces = ["--B\n", "--B--\n", "Content-Type: multipart/mixed; boundary=B\n", "\n",
              "Content-Type: message/rfc822\n", "Content-Transfer-Encoding: base64\n", "TVqQ\n",
              "=?utf-8?B?w6k=?=\n", "Content-Disposition: attachment; filename*0*=x''%zz\n",
              ".\n", "..\n", "Content-Type: multipart/digest; boundary=\"B\"; boundary=C\n",
              "--C\n", "\x00\xff\n", " folded\n", "\r\n"]
    body = "".join(rnd.choice(pieces) for _ in range(400))
    tree, _ = _timed(_multipart(body))
    assert tree.parts


def test_unused_boundaries_of_many_siblings_do_not_rescan_the_message():
    # 900 sibling multiparts, each declaring a boundary it never uses, then 5 MB of content:
    # each inner search stops at the next outer delimiter instead of the end of the message.
    siblings = "".join(f"--B\nContent-Type: multipart/mixed; boundary=\"never{i}\"\n\nx\n" for i in range(900))
    data = _multipart(siblings + "--B\nContent-Type: text/plain\n\n" + ("y" * 76 + "\n") * 65_000 + "--B--\n")
    tree, seconds = _timed(data)
    assert len(tree.parts) == 902 and tree.limits == []
    assert seconds < 0.5
