"""Mail through a real Postfix and smtpfilter arrives as it would without the filter (issue 12).

A real Postfix 3.7 host built by the README delivered 360 real messages twice, once without
the filter and once through it; these tests pin down the differences it found, with private
instances configured from the shipped examples: lines over 998 octets (and the DKIM signatures
over them) and SMTP smuggling in front of us.
"""

from __future__ import annotations

import base64
import subprocess

import dkim
import pytest

from tests.postfix.conftest import FILTERED_DOMAIN, content
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
