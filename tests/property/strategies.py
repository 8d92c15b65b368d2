"""Hypothesis strategies for what a hostile or broken sender can put in a header section."""

from __future__ import annotations

import base64

from hypothesis import strategies as st

NAMES = ["Date", "X-Mailer", "Subject", "From", "To", "Received", "X-Spam-Flag", "Message-ID", "Content-Type"]

# Dates people (and spamware) really write, plus garbage around them.
date_text = st.one_of(
    st.from_regex(
        r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)?,? ?\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|Foo) "
        r"\d{1,6} \d{1,2}:\d{1,2}(:\d{1,2})? ?([+-]\d{4}|GMT|UT|EST|PDT|XYZ|-0000)?( \(\w*\))?",
        fullmatch=True,
    ),
    st.text(max_size=60),
)

raw_bytes = st.binary(max_size=200)
encoded_word = st.builds(
    lambda charset, enc, payload: f"=?{charset}?{enc}?{payload}?=",
    st.sampled_from(["utf-8", "iso-8859-1", "bogus", "UTF-8", "us-ascii", ""]),
    st.sampled_from(["B", "Q", "b", "q", "X"]),
    st.one_of(
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        st.text(alphabet="=_?ABCabc012 \t", max_size=30),
    ),
)
value = st.one_of(
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
    raw_bytes,
    date_text.map(str.encode),
    encoded_word.map(str.encode),
    st.sampled_from([b"MaxBulk.Mailer 12", b"Avalanche", b"\x00\x00", b"", b" ", b"=?", b"\t"]),
)


@st.composite
def header_line(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind <= 5:  # a header field, sometimes folded
        name = draw(st.sampled_from(NAMES) | st.from_regex(r"[!-9;-~]{1,20}", fullmatch=True))
        body = draw(value)
        if draw(st.booleans()):
            body = body + b"\n" + draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(value)
        return name.encode() + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + body
    if kind == 6:  # malformed: no colon, or a space in the name
        return draw(st.sampled_from([b"no colon here", b"Bad Name: x", b":empty", b" leading"]))
    if kind == 7:  # a huge header
        return b"X-Huge: " + b"h" * draw(st.integers(900, 20000))
    if kind == 8:  # control characters and odd line ends inside
        return b"X-Ctl: " + draw(st.binary(max_size=30)).replace(b"\n", b"\r")
    return b"." + draw(value)  # a line starting with a dot


@st.composite
def message_bytes(draw) -> bytes:
    """Raw message content (any line endings); the wire form is made by the caller."""
    lines = draw(st.lists(header_line(), max_size=25))
    body = draw(st.binary(max_size=300))
    separator = draw(st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n", b""]))
    return b"\n".join(lines) + separator + body
