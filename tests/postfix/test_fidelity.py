"""Mail through a real Postfix and smtpfilter arrives as it would without the filter (issue 12).

A real Postfix 3.7 host built by the README delivered 360 real messages twice, once without
the filter and once through it; these tests pin down the differences it found, with private
instances configured from the shipped examples: lines over 998 octets (and the DKIM signatures
over them) and SMTP smuggling in front of us.
"""

from __future__ import annotations

import base64
import re
import socket
import subprocess

import dkim
import pytest

from tests.postfix.conftest import FILTERED_DOMAIN, SENDER, content
from tests.postfix.instance import program

pytestmark = pytest.mark.postfix

SELECTOR, DOMAIN = b"test", b"sender.test"


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    """(private key PEM, the DNS TXT record with its public key), made with openssl, which
    Postfix's own packages depend on (ssl-cert)."""
    openssl = program("openssl")
    assert openssl, "openssl is installed with Postfix (ssl-cert)"
    private = subprocess.run([openssl, "genrsa", "2048"], capture_output=True, check=True,
                             timeout=60).stdout
    public = subprocess.run([openssl, "rsa", "-pubout", "-outform", "DER"], input=private,
                            capture_output=True, check=True, timeout=60).stdout
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def verifies(message: bytes, record: bytes) -> bool:
    """dkimpy's verdict, with the signer's key given instead of asked of DNS."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == SELECTOR + b"._domainkey." + DOMAIN + b"."
        return record

    return dkim.verify(message, dnsfunc=dnsfunc)


@pytest.mark.parametrize("mode", ["after-queue", "before-queue"])
def test_a_signed_message_with_a_long_line_verifies_at_the_destination(mail_system, dkim_key, mode):
    # Issue 12: the scan transport's smtp(8) broke lines over 998 octets (smtp_line_length_limit)
    # on the way to smtpfilter, and 18 DKIM signatures that pass directly failed. The shipped
    # scan block now sets it to 0; the before-queue proxy never changed a line.
    private, record = dkim_key
    system = mail_system(mode)
    _, plain = content("a long line")
    long_line = b" ".join(b"word%04d" % n for n in range(170))  # 1,529 octets, no line break
    assert len(long_line) > 1000
    head, _, body = plain.partition(b"\n\n")
    message = head + b"\n\n" + body + long_line + b"\nthe end\n"
    signature = dkim.sign(message, SELECTOR, DOMAIN, private, canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                          linesep=b"\n")
    signed = signature + message
    assert verifies(signed, record)  # as it leaves the sender

    queue_id = system.submit(signed)
    if mode == "after-queue":
        [queue_id] = system.sent_onward(queue_id)
    system.delivered_finally(queue_id)
    [delivered] = system.delivered()
    assert verifies(delivered.data, record)
    assert long_line + b"\n" in delivered.data  # one line, as it was sent
    assert delivered.rcpts == [f"rcpt@{FILTERED_DOMAIN}"]


# The 9 distinct end-of-data sequences of the published checker (hannob/smtpsmug, after the
# SEC Consult research); only <CR><LF>.<CR><LF> ends DATA (RFC 5321 §4.1.1.4).
SMUGGLING = {
    "lflf": b"\n.\n",
    "crcr": b"\r.\r",
    "crlf": b"\r.\n",
    "lfcr": b"\n.\r",
    "lfcrlf": b"\n.\r\n",
    "crlflf": b"\r\n.\n",
    "crcrlf": b"\r.\r\n",
    "crlfcr": b"\r\n.\r",
    "nullbefore": b"\r\n\x00.\r\n",
}
EVIL = "smuggled@evil.example"


def smuggle(port: int, name: str, ending: bytes) -> list[bytes]:
    """One SMTP session to the port-25 smtpd that hides a second transaction behind ``ending``;
    every reply line it got, up to QUIT's."""
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=("127.0.0.2", 0)) as sock:
        reader = sock.makefile("rb")

        def replies() -> list[bytes]:
            lines = [reader.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(reader.readline())
            return lines

        got = replies()
        for command in (b"EHLO client.example.net", b"MAIL FROM:<" + SENDER.encode() + b">",
                        b"RCPT TO:<rcpt@" + FILTERED_DOMAIN.encode() + b">", b"DATA"):
            sock.sendall(command + b"\r\n")
            got += replies()
        sock.sendall(
            f"From: <{SENDER}>\r\nSubject: smuggling {name}\r\n\r\nhello".encode() + ending
            + f"MAIL FROM:<{EVIL}>\r\nRCPT TO:<ceo@{FILTERED_DOMAIN}>\r\nDATA\r\n".encode()
            + f"From: <ceo@{FILTERED_DOMAIN}>\r\nSubject: pay the invoice\r\n\r\nnow\r\n.\r\n".encode()
            + b"QUIT\r\n"
        )
        while not got[-1].startswith(b"221"):
            line = reader.readline()
            if not line:
                break
            got.append(line)
        return got


def test_the_main_cf_example_stops_smtp_smuggling_in_front_of_us(mail_system):
    # Issue 12: with Postfix 3.7's default (smtpd_forbid_bare_newline = no), 5 of these 9
    # became a second message at port 25; smtpfilter alone stops all 9, but behind Postfix it
    # only sees what Postfix queued. main.cf.example now sets "normalize". The clients here
    # are outside mynetworks, which the setting excludes, as the Internet is.
    system = mail_system("after-queue", rules="rules: []\n",
                         main_cf=f"mynetworks = 127.0.0.1/32\nrelay_domains = {FILTERED_DOMAIN}\n")
    assert system.postfix.check() == ""  # postfix check accepts the example as written
    queued = {}
    for name, ending in SMUGGLING.items():
        replies = smuggle(system.ports.smtp, name, ending)
        queued[name] = [r for r in replies if re.match(rb"250 2\.0\.0 Ok: queued as ", r)]
    assert {name: len(q) for name, q in queued.items()} == {name: 1 for name in SMUGGLING}

    for name, [reply] in queued.items():
        first = re.search(rb"queued as (\w+)", reply).group(1).decode()
        [onward] = system.sent_onward(first)
        system.delivered_finally(onward)
    delivered = system.delivered()
    assert sorted(d.header("Subject") for d in delivered) == sorted(
        f"smuggling {name}" for name in SMUGGLING)
    assert all(d.mail_from == SENDER for d in delivered)
