"""Looking inside messages, through the live filter over loopback: what crossed the wire to 10026
(and what did not), for each of the issue's rule shapes and each kind of hostile MIME."""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest

from smtpfilter.cli import main
from tests.support import loglines
from tests.support.client import send_message
from tests.support.mime import (
    MIME_RULES,
    attach,
    encrypted_zip,
    message,
    ole2,
    ooxml,
    pe_bytes,
    raw_attachment,
    wire,
    zip_bytes,
)

QUARANTINE = "quarantine: {directory: q}\n"


def _rich() -> bytes:
    """A multipart message with everything: text, html, a zip, a docx, an attached message,
    QP and base64, a dot-stuffed line."""
    m = message("rich", "Hello,\n.this line starts with a dot\nplease do the wire transfer today\n")
    m.add_alternative("<p>Hello <b>there</b></p>", subtype="html")
    attach(m, zip_bytes({"photos/1.jpg": b"\xff\xd8\xff" + b"\x00" * 100}), "photos.zip",
           "application/zip")
    attach(m, ooxml(macro=False), "notes.docx", "application/octet-stream")
    m.add_attachment(message("fwd", "forwarded\n"))
    return wire(m)


async def test_tagged_multipart_reaches_10026_byte_exact_apart_from_added_headers(
    start_filter, sink, caplog
):
    server = await start_filter(rules=MIME_RULES)
    data = _rich()
    assert b"\r\n..this line" in data  # dot-stuffed on the wire
    with caplog.at_level(logging.INFO, logger="smtpfilter.engine.judge"):
        reply = await send_message(server.port, data)
    assert reply.code == 250, reply
    [delivered] = await sink.wait_for_messages(1)
    # The body rule tagged it: our headers were prepended, everything after them is unchanged.
    assert delivered.data.endswith(data)
    added = delivered.data[: len(delivered.data) - len(data)]
    assert b"rules=WIRE_FRAUD(MATCH)" in added
    [line] = loglines.from_caplog(caplog)
    assert (line["action"], line["score"], line["rules"]) == ("tag", "4", "WIRE_FRAUD(MATCH)")


async def test_disguised_executable_is_quarantined_and_nothing_reaches_10026(
    start_filter, sink, caplog
):
    server = await start_filter(rules=MIME_RULES, config=QUARANTINE)
    m = attach(message(), pe_bytes(4096), "invoice.pdf", "application/pdf")
    with caplog.at_level(logging.INFO, logger="smtpfilter.engine.judge"):
        reply = await send_message(server.port, wire(m))
    assert reply.code == 250 and "quarantined" in reply.text, reply
    assert "DISGUISED_EXECUTABLE" in reply.text
    assert sink.messages == []
    assert "rules=DISGUISED_EXECUTABLE(invoice.pdf)" in caplog.text  # the one summary line


@pytest.mark.parametrize(
    "params, label",
    [
        ('filename="invoice.pdf.exe"', "invoice.pdf.exe"),
        ("filename*=UTF-8''%E2%82%ACinvoice.EXE", "?invoice.EXE"),  # RFC 2231, not ASCII
        ('filename="=?utf-8?B?Zm9vLnZicw==?="', "foo.vbs"),  # RFC 2047 in a quoted name
        ('filename="setup.scr. "', "setup.scr"),  # Windows drops trailing dots and spaces
    ],
    ids=["double-extension", "rfc2231", "rfc2047", "trailing-dot"],
)
async def test_banned_names_are_quarantined_as_decoded(start_filter, sink, caplog, params, label):
    server = await start_filter(rules=MIME_RULES, config=QUARANTINE)
    with caplog.at_level(logging.INFO, logger="smtpfilter.engine.judge"):
        reply = await send_message(server.port, raw_attachment(params, b"harmless text"))
    assert reply.code == 250 and "(BANNED_ATTACHMENT)" in reply.text, reply
    assert f"rules=BANNED_ATTACHMENT({label})" in caplog.text
    assert sink.messages == []


async def test_banned_name_inside_a_zip_in_a_zip_is_quarantined(start_filter, sink, caplog):
    server = await start_filter(rules=MIME_RULES, config=QUARANTINE)
    inner = zip_bytes({"docs/readme.txt": b"x", "docs/run.vbs": b"x"})
    m = attach(message(), zip_bytes({"inner.zip": inner}), "docs.zip", "application/zip")
    with caplog.at_level(logging.INFO, logger="smtpfilter.engine.judge"):
        reply = await send_message(server.port, wire(m))
    assert reply.code == 250 and "(BANNED_ATTACHMENT)" in reply.text, reply
    assert "rules=BANNED_ATTACHMENT(run.vbs)" in caplog.text
    assert sink.messages == []


async def test_part_header_reject_is_a_550_with_nothing_sent(start_filter, sink):
    server = await start_filter(rules=MIME_RULES)
    data = raw_attachment('filename="a.bin"', b"x", ctype="application/x-msdownload")
    reply = await send_message(server.port, data)
    assert reply.code == 550, reply
    assert sink.messages == []


async def test_quoted_printable_body_is_matched_decoded(start_filter, sink):
    server = await start_filter(rules=MIME_RULES)
    m = message("qp", "")
    m.set_content("Please do the wire trans=\nfer t=C3=B6day... no: today.\n", cte="7bit")
    data = wire(m).replace(b"Content-Transfer-Encoding: 7bit",
                           b"Content-Transfer-Encoding: quoted-printable")
    reply = await send_message(server.port, data)
    assert reply.code == 250, reply
    [delivered] = await sink.wait_for_messages(1)
    assert delivered.data.endswith(data) and b"WIRE_FRAUD(MATCH)" in delivered.data


def _hostile() -> dict[str, bytes]:
    """Each hostile case of the issue, as a whole message in wire form."""
    head = "From: a@b\nSubject: hostile\nContent-Type: multipart/mixed; boundary=\"B\"\n\n"
    deep = "".join(f"--L{i}\nContent-Type: multipart/mixed; boundary=\"L{i + 1}\"\n\n"
                   for i in range(100))
    many = "".join(f"--B\nContent-Type: text/plain\n\n{i}\n" for i in range(10_000)) + "--B--\n"
    bomb = bytearray(zip_bytes({f"f{i}": b"" for i in range(1000)}, 0))
    position = bomb.find(b"PK\x01\x02")
    while position >= 0:  # every entry claims 4 GB uncompressed
        bomb[position + 24 : position + 28] = (0xFFFFFFFE).to_bytes(4, "little")
        position = bomb.find(b"PK\x01\x02", position + 4)
    return {
        "unterminated": wire(head + "--B\nContent-Type: text/plain\n\nno end, no close\n"),
        "10000-parts": wire(head + many),
        "100-deep": wire(head.replace('"B"', '"L0"') + deep + "--L100\n\ndeep\n"),
        "endless-boundary": wire(head.replace('"B"', '"' + "b" * 50_000 + '"')
                                 + "--" + "b" * 50_000 + "x" * 200_000),
        "bad-base64": wire(head + "--B\nContent-Type: application/octet-stream; name=x.bin\n"
                           "Content-Transfer-Encoding: base64\n\nTVqQ!!!!AAMA====AAAE===\nA\n--B--\n"),
        "zip-bomb": raw_attachment('filename="bomb.zip"', bytes(bomb), "application/zip"),
        "encrypted-zip": raw_attachment('filename="secret.zip"', encrypted_zip({"a.txt": b"x"}),
                                        "application/zip"),
        "wrong-charset": wire(head + "--B\nContent-Type: text/plain; charset=x-klingon\n"
                              "Content-Transfer-Encoding: base64\n\n"
                              + base64.b64encode(b"\xff\xfe bytes").decode() + "\n--B--\n"),
        "broken-ole": raw_attachment('filename="a.doc"', ole2()[:1500], "application/msword"),
    }


HOSTILE = _hostile()
HOSTILE_RULES = MIME_RULES.replace("action: reject", "score: 1") + """
  - {name: MACRO, check: attachment, types: [macro_document, encrypted_archive], archives: true, score: 1}
  - {name: TOO_COMPLEX, check: limits, limits: [mime], action: tag}
"""


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_mime_is_a_defined_outcome_never_a_4xx_or_5xx_of_ours(
    start_filter, sink, caplog, name
):
    server = await start_filter(rules=HOSTILE_RULES, config=QUARANTINE)
    data = HOSTILE[name]
    with caplog.at_level(logging.INFO, logger="smtpfilter"):
        reply = await send_message(server.port, data)
    assert reply.code == 250, reply
    [delivered] = await sink.wait_for_messages(1)
    assert delivered.data.endswith(data)  # unchanged but for the headers a rule adds
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text
    limited = name in ("10000-parts", "100-deep")  # a boundary is cut as Postfix cuts it
    assert ("TOO_COMPLEX(MIME_LIMIT)" in caplog.text) == limited, caplog.text
    if limited:  # logged whether or not a rule watches it
        assert "the rules did not read the rest" in caplog.text


async def test_shipped_rules_quarantine_and_release_a_false_positive(
    start_filter, sink, tmp_path, capsys
):
    """README, "Attachments": what to do when a shipped rule quarantined a wanted message."""
    server = await start_filter(shipped=True, config=QUARANTINE)
    m = attach(message("the installer you asked for"), pe_bytes(3000), "setup.exe",
               "application/octet-stream")
    data = wire(m)
    reply = await send_message(server.port, data)
    assert reply.code == 250 and "(BANNED_ATTACHMENT)" in reply.text, reply
    entry_id = reply.text.split(" as ", 1)[1].split(" ", 1)[0]
    assert sink.messages == []
    config = str(server.config_path)
    assert await asyncio.to_thread(main, ["quarantine", "list", "--config", config]) == 0
    assert "BANNED_ATTACHMENT" in capsys.readouterr().out
    assert await asyncio.to_thread(
        main, ["quarantine", "release", "--config", config, entry_id]) == 0
    [released] = await sink.wait_for_messages(1)
    assert released.data == data
