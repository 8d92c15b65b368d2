"""Wire form and xtext helpers."""

from __future__ import annotations

import pytest

from smtpfilter.core import wire
from smtpfilter.core.text import is_xtext, xtext_decode, xtext_encode
from smtpfilter.frontdoors.smtp.session import parse_path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", b""),
        (b"a\nb", b"a\r\nb\r\n"),
        (b".x\n..y\n.\n", b"..x\r\n...y\r\n..\r\n"),
        (b"a\rb\r\nc", b"a\r\nb\r\nc\r\n"),
    ],
)
def test_to_wire(content, expected):
    assert wire.to_wire(content) == expected


@pytest.mark.parametrize(
    ("data", "bare"),
    [(b"a\r\nb\r\n", False), (b"a\nb\r\n", True), (b"a\rb\r\n", True), (b"", False), (b"\r\r\n", True)],
)
def test_bare_line_ends(data, bare):
    assert wire.has_bare_line_ends(data) is bare


@pytest.mark.parametrize(
    "payload",
    [b"x\n.\nMAIL", b"x\r.\rMAIL", b"x\n.\r\nMAIL", b"x\r\n.\nMAIL", b"x\r\n.\rMAIL", b"x\r.\r\nMAIL", b"x\n.\x00\nMAIL"],
)
def test_normalise_never_leaves_a_lone_dot_line(payload):
    out = wire.normalise(payload + b"\r\n")
    assert not wire.has_bare_line_ends(out)
    assert b"\r\n.\r\n" not in b"\r\n" + out


def test_xtext_round_trip():
    for value in ["plain", "a+b=c d", "café", "[UNAVAILABLE]", "\x01"]:
        assert xtext_decode(xtext_encode(value)) == value
        assert is_xtext(xtext_encode(value))
    assert not is_xtext("a b") and not is_xtext("a+zz")


@pytest.mark.parametrize(
    ("arg", "address", "path", "params"),
    [
        ("FROM:<a@b.example>", "a@b.example", "a@b.example", []),
        ("from: <a@b.example> SIZE=10 BODY=8BITMIME", "a@b.example", "a@b.example", ["SIZE=10", "BODY=8BITMIME"]),
        ("FROM:<>", "", "", []),
        ('FROM:<"odd >name"@b.example> RET=FULL', '"odd >name"@b.example', '"odd >name"@b.example', ["RET=FULL"]),
        ("FROM:<@relay.example:a@b.example>", "a@b.example", "@relay.example:a@b.example", []),
        ("FROM:a@b.example", "a@b.example", "a@b.example", []),
    ],
)
def test_parse_path(arg, address, path, params):
    assert parse_path(arg, "FROM:") == (address, path, params)


@pytest.mark.parametrize("arg", ["TO:<a@b>", "FROM:<a@b", "FROM:<a@b>junk"])
def test_parse_path_errors(arg):
    with pytest.raises(ValueError):
        parse_path(arg, "FROM:")


@pytest.mark.parametrize("data", [b"a\r.\nb", b"a\n.\rb", b"\r\n\n\r", b"x\rx\nx"])
def test_bare_line_ends_are_not_fooled_by_a_byte_between(data):
    assert wire.has_bare_line_ends(data)
