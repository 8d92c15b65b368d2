"""Client text in replies, logs and the quarantine: never raw, never lost (issue 10, items 6, 8).

A hostile or 8-bit client must not forge reply lines or log lines (raw CR, LF, NUL, ESC, DEL),
and bytes that are not UTF-8 (Postfix passes 8-bit MAIL FROM, RCPT TO and XFORWARD values on as
received when smtputf8_enable = no) must neither lose a syslog line nor make the quarantine
answer 451 forever.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from smtpfilter.cli import main
from tests.integration.conftest import start
from tests.support.messages import message

# RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
#                             Reply-code [ SP textstring ] CRLF; textstring is printable ASCII.
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][ -~]*\r\n")
# Every control character but the line feed that ends a log line.
LOG_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")

HOSTILE_COMMANDS = [
    b"X\x1b[31m",  # unknown command with an ANSI colour sequence: aiosmtpd echoes it
    b"FOO\rBAR",  # a CR not followed by LF stays inside the line
    b"\x00",
    b"NO\x7fOP",
    b"GET\x1b]0;owned\x07 /",
    b"HELP \x1b[2J",
    b"VRFY <\x1b\xff",  # VRFY echoes an argument it cannot parse
    b"VRFY \xff\xfe\r\x00",
    b"EHLO \x1b[1m\xff",
    b"HELO a\rb",
    b"AUTH PLAIN \x1b",
    b"STARTTLS \x1b",
    b"MAIL FROM:<a\x1b@example.org>",
    b"MAIL FROM:<a@example.org> X\xff\x1b=1",
    b"XFORWARD NAME=\x1b",
    b"XFORWARD \xff\x1b=1",
    b"\xff\xfe",
    b"NOOP \x1b",
    b"EXPN \x1b",
    b"QUIT \x1b[0m",
]


async def raw_reply(reader: asyncio.StreamReader) -> list[bytes]:
    """The lines of one reply, exactly as they crossed the wire (LF-terminated)."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), 10)
        lines.append(line)
        if line[3:4] != b"-":
            return lines


async def hostile_session(port: int, command: bytes) -> list[bytes]:
    """Banner, EHLO, the hostile command, QUIT: every reply line received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        received = await raw_reply(reader)
        for line in (b"EHLO client.test", command, b"QUIT"):
            writer.write(line + b"\r\n")
            received += await raw_reply(reader)
            if received[-1].startswith((b"221", b"421")):
                break
        return received
    finally:
        writer.close()


@pytest.mark.parametrize("command", HOSTILE_COMMANDS, ids=lambda c: repr(c)[2:-1])
async def test_every_reply_line_is_printable_ascii(start_filter, command):
    server = await start_filter()
    received = await hostile_session(server.port, command)
    assert len(received) >= 3  # banner, EHLO, the command's own reply
    bad = [line for line in received if not REPLY_LINE.fullmatch(line)]
    assert bad == []


XFORWARD_HOSTILE = (
    # xtext lets any octet through: ESC, CR, LF and a byte that is not UTF-8
    b"XFORWARD NAME=evil+1B[31m+0D+0Aforged ADDR=192.0.2.7 PORT=25",
    b"XFORWARD PROTO=ESMTP HELO=h+1B[2J IDENT=Q+00+FF SOURCE=REMOTE",
)


async def postfix_8bit_session(port: int, wire: bytes, *, mail_from: bytes, rcpts: list[bytes]) -> list[bytes]:
    """A transaction as Postfix's smtp client sends 8-bit envelope data with smtputf8_enable = no:
    the bytes as they came, no SMTPUTF8 parameter. Every reply, raw."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = [await raw_reply(reader)]
        for line in (b"EHLO postfix.test", *XFORWARD_HOSTILE, b"MAIL FROM:<" + mail_from + b">",
                     *(b"RCPT TO:<" + rcpt + b">" for rcpt in rcpts), b"DATA"):
            writer.write(line + b"\r\n")
            replies.append(await raw_reply(reader))
        writer.write(wire + b".\r\n")
        replies.append(await raw_reply(reader))
        writer.write(b"QUIT\r\n")
        replies.append(await raw_reply(reader))
        return replies
    finally:
        writer.close()


SPAM = message("X-Mailer: MaxBulk.Mailer \x1b[31m12", "Subject: caf\u00e9 \x1b]0;owned\x07")


async def test_log_lines_escape_control_characters_and_8bit_bytes(service):
    # At debug level aiosmtpd logs every command line, and rule details quote header values.
    process = await start(service(config="log: {level: debug}\n"))
    for command in HOSTILE_COMMANDS:
        await hostile_session(process.port, command)
    replies = await postfix_8bit_session(
        process.port, SPAM, mail_from=b"caf\xe9@example.org", rcpts=[b"b\xfcr@example.com"]
    )
    assert replies[-2][0].startswith(b"250 2.0.0 Ok: discarded by content filter (SPAM_MAILER)")
    process.wait_log(r"action=discard")

    log = process.log_path.read_bytes()
    assert LOG_CONTROL.search(log) is None, log
    log.decode("utf-8")  # strict: no raw byte that is not UTF-8 either
    text = log.decode()
    # Nothing dropped: the client's characters are there, visibly escaped.
    assert r'unrecognised: X\x1b[31M' in text  # aiosmtpd's own warning
    summary = next(line for line in text.splitlines() if "action=discard" in line)
    assert r"from=<caf\xe9@example.org>, to=<b\xfcr@example.com>, " in summary
    assert r"client=evil\x1b[31m\x0d\x0aforged[192.0.2.7], " in summary
    assert r"Q\x00\xff: client=" in summary


async def test_syslog_keeps_lines_with_8bit_envelope_data(service, syslog):
    """SysLogHandler encodes as UTF-8 and raised on the surrogate of a byte that is not UTF-8:
    the one line of a discarded message was lost. It arrives, the byte escaped."""
    process = await start(service(config=syslog.config))
    assert b"smtpfilter listening on" in await syslog.datagram()

    replies = await postfix_8bit_session(
        process.port, SPAM, mail_from=b"caf\xe9@example.org", rcpts=[b"b\xfcr@example.com"]
    )
    assert replies[-2][0].startswith(b"250 2.0.0 Ok: discarded")

    datagram = await syslog.datagram()
    assert datagram.startswith(f"<22>smtpfilter[{process.pid}]: ".encode())
    assert LOG_CONTROL.search(datagram) is None
    line = datagram.decode("utf-8")
    assert r"from=<caf\xe9@example.org>, to=<b\xfcr@example.com>, " in line
    assert ", action=discard, " in line and ", rules=SPAM_MAILER(MATCH), " in line
    assert process.log() == ""  # no "--- Logging error ---" on stderr


QUARANTINE_RULES = r"""
rules:
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: '^MaxBulk\.Mailer'
    action: quarantine
"""


async def test_quarantine_stores_and_releases_8bit_envelope_exactly(start_filter, sink, capsys):
    server = await start_filter(rules=QUARANTINE_RULES, config="quarantine: {directory: q}\n")
    replies = await postfix_8bit_session(
        server.port, SPAM, mail_from=b"caf\xe9@example.org",
        rcpts=[b"b\xfcr@example.com", b"plain@example.com"],
    )
    final = replies[-2][0].decode()
    assert final.startswith("250 2.0.0 Ok: quarantined as "), final  # was 451, forever
    entry_id = final.split(" as ", 1)[1].split(" ", 1)[0]
    assert sink.messages == []
    config = str(server.config_path)

    def cli(*args: str) -> int:
        return main(list(args))

    assert await asyncio.to_thread(cli, "quarantine", "list", "--config", config) == 0
    out = capsys.readouterr().out
    assert entry_id in out and r"<caf\xe9@example.org>" in out and r"b\xfcr@example.com (+1)" in out

    assert await asyncio.to_thread(cli, "quarantine", "show", "--config", config, entry_id) == 0
    out = capsys.readouterr().out
    assert r"from:      <caf\xe9@example.org>" in out
    assert r"to:        <b\xfcr@example.com>" in out
    assert r"client:    evil\x1b[31m\x0d\x0aforged[192.0.2.7]" in out
    assert r"queue id:  Q\x00\xff" in out
    assert LOG_CONTROL.search(out.encode()) is None

    assert await asyncio.to_thread(cli, "quarantine", "list", "--json", "--config", config) == 0
    assert entry_id in capsys.readouterr().out

    assert await asyncio.to_thread(cli, "quarantine", "release", "--config", config, entry_id) == 0
    out = capsys.readouterr().out
    assert rf"released to b\xfcr@example.com, plain@example.com: 250 2.0.0 Ok" in out
    [released] = sink.messages
    # Exactly the bytes Postfix sent, as a live delivery would have passed them on.
    assert released.mail == b"MAIL FROM:<caf\xe9@example.org>\r\n"
    assert released.rcpts == [b"RCPT TO:<b\xfcr@example.com>\r\n", b"RCPT TO:<plain@example.com>\r\n"]
    assert released.data == SPAM
