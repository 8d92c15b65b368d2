"""SMTP smuggling (CVE-2023-51764 and relatives): end-of-data ambiguities must not let a second,
hidden message reach the 10026 smtpd, which trusts 127.0.0.0/8 and is excluded from Postfix's
own bare-newline defence (shared/POSTFIX-FACTS.md §6).

Each published variant is embedded in a message, followed by a smuggled MAIL/RCPT/DATA and a
message from a forged sender, then the real end of data. Exactly one message must reach 10026,
its sender must be the real one, and nothing we emit may contain a bare CR or LF.
"""

from __future__ import annotations

import pytest

from tests.support.client import Client

VARIANTS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "CRLF.LF": b"\r\n.\n",
    "LF.CR": b"\n.\r",
    "CR.LF": b"\r.\n",
    "CRLF.NUL.CRLF": b"\r\n.\x00\r\n",
    "CRLF.NUL.LF": b"\r\n.\x00\n",
    "LF.NUL.LF": b"\n.\x00\n",
    "CRLF.NUL-dot.CRLF": b"\r\n\x00.\r\n",
}

SMUGGLED = (
    b"MAIL FROM:<smuggled@evil.example>\r\n"
    b"RCPT TO:<victim@example.com>\r\n"
    b"DATA\r\n"
    b"From: CEO <ceo@example.com>\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"pay the invoice\r\n"
)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
async def test_smuggling_variant_yields_one_message_from_the_real_sender(start_filter, sink, variant):
    server = await start_filter(rules="rules: []\n")
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<real@example.org>")).code == 250
    assert (await client.cmd("RCPT TO:<rcpt@example.com>")).code == 250
    assert (await client.cmd("DATA")).code == 354
    client.send(
        b"From: <real@example.org>\r\nSubject: innocent\r\n\r\nhello"
        + VARIANTS[variant]
        + SMUGGLED
        + b"\r\n.\r\n"
    )
    reply = await client.reply()
    # Whatever follows must be a command of our own session, never a hidden message.
    assert (await client.cmd("QUIT")).code == 221
    await client.close()

    assert reply.code == 250
    [delivered] = sink.messages
    assert delivered.mail == b"MAIL FROM:<real@example.org>\r\n"
    data = delivered.data
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"), "bare CR or LF sent on"
    assert b"\r\n.\r\n" not in b"\r\n" + data  # no lone "." line inside what we sent
    # Nothing but one MAIL ever crossed to 10026.
    mails = [line for c in sink.connections for line in c.lines if line.startswith(b"MAIL")]
    assert mails == [b"MAIL FROM:<real@example.org>\r\n"]


@pytest.mark.parametrize("junk", [b"\r", b"\x00", b"\x1b"], ids=["CR", "NUL", "ESC"])
async def test_control_characters_inside_a_command_line_are_refused(start_filter, sink, junk):
    server = await start_filter(rules="rules: []\n")
    client = await Client.connect(server.port)
    await client.ehlo()
    client.send(b"MAIL FROM:<a@example.org>" + junk + b"RCPT TO:<victim@example.com>\r\n")
    reply = await client.reply()
    await client.close()
    assert reply.code == 501
    assert all(not line.startswith(b"MAIL") for c in sink.connections for line in c.lines)


async def test_bare_lf_ends_a_command_line_and_never_hides_one(start_filter, sink):
    # aiosmtpd, like Postfix's smtpd before 3.9, reads a bare LF as the end of a command line.
    # That is harmless here: we build our own command lines for 10026, each ending in CRLF.
    server = await start_filter(rules="rules: []\n")
    client = await Client.connect(server.port)
    await client.ehlo()
    client.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.com>\r\n")
    assert (await client.reply()).code == 250
    assert (await client.reply()).code == 250
    await client.close()
    lines = [line for c in sink.connections for line in c.lines]
    assert b"MAIL FROM:<a@example.org>\r\n" in lines and b"RCPT TO:<b@example.com>\r\n" in lines
