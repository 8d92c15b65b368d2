"""Sender authentication in tests: DKIM keys made here, messages signed here with dkimpy, and the
zones the SPF, DKIM and DMARC tests serve from the loopback DNS server (RFC 2606 .test names).

Clients: 192.0.2.10 (GOOD_IP) is an authorised sender of sender.test and of every DMARC test
domain; 203.0.113.5 (BAD_IP) is nobody's.
"""

from __future__ import annotations

import base64
import functools
import subprocess
from datetime import datetime, timezone

import dkim
import nacl.encoding
import nacl.signing

from smtpfilter.core.envelope import Client
from smtpfilter.core.message import MessageContext
from tests.support.dnsserver import DnsServer, Fault

GOOD_IP = "192.0.2.10"
BAD_IP = "203.0.113.5"
AUTHSERV_ID = "mx.receiver.test"


# --- keys and signatures ------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    """(PEM private key for dkimpy, base64 public key for p=), made by openssl once per run
    (openssl still makes keys under 1024 bits, for the "key too short" tests, RFC 8301 §3.2)."""
    private = subprocess.run(
        ["openssl", "genrsa", "-traditional", str(bits)], capture_output=True, check=True
    ).stdout
    public = subprocess.run(
        ["openssl", "rsa", "-pubout", "-outform", "DER"], input=private, capture_output=True,
        check=True,
    ).stdout
    return private, base64.b64encode(public).decode()


@functools.lru_cache(maxsize=None)
def ed25519_key() -> tuple[bytes, str]:
    key = nacl.signing.SigningKey.generate()
    private = key.encode(encoder=nacl.encoding.Base64Encoder)
    public = key.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    return private, public


def key_record(public: str, kind: str = "rsa", extra: str = "") -> str:
    """A zone-file TXT rdata for a DKIM key, split into 255-character strings."""
    text = f"v=DKIM1; k={kind}; {extra}p={public}"
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


def message(
    from_: str = "Alice <alice@sender.test>",
    body: str = "Hello.\r\n.A line that starts with a dot\r\n\r\nBye.\r\n",
    subject: str = "Test",
    extra: str = "",
) -> bytes:
    """Message content (not dot-stuffed), CRLF lines."""
    return (
        f"From: {from_}\r\nTo: bob@receiver.test\r\nSubject: {subject}\r\n"
        f"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n{extra}"
        f"\r\n{body}"
    ).encode()


def sign(
    content: bytes,
    domain: str = "sender.test",
    selector: str = "sel",
    *,
    canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
    algorithm: bytes = b"rsa-sha256",
    private: bytes | None = None,
    **kw,
) -> bytes:
    """``content`` with a DKIM-Signature made by dkimpy on top."""
    if private is None:
        private = ed25519_key()[0] if algorithm == b"ed25519-sha256" else rsa_key()[0]
    header = dkim.sign(
        content, selector.encode(), domain.encode(), private, canonicalize=canon,
        signature_algorithm=algorithm, **kw,
    )
    return header + content


def wire(content: bytes) -> bytes:
    """SMTP DATA form: dot-stuffed (RFC 5321 §4.5.2), as the filter receives it."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def context(
    content: bytes,
    *,
    mail_from: str = "alice@sender.test",
    addr: str | None = GOOD_IP,
    helo: str = "mail.sender.test",
) -> MessageContext:
    return MessageContext.build(
        wire(content),
        received_at=datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc),
        mail_from=mail_from,
        rcpt_to=("bob@receiver.test",),
        client=Client(addr=addr, name="mail.sender.test", helo=helo),
    )


# --- zones ---------------------------------------------------------------------------------------
# Every DMARC test domain authorises 192.0.2.0/24 by SPF and publishes the RSA key as "sel".
DMARC_DOMAINS: dict[str, str | tuple[str, ...] | None] = {
    "reject.test": "v=DMARC1; p=reject",
    "quarantine.test": "v=DMARC1; p=quarantine",
    "none.test": "v=DMARC1; p=none",
    "parent.test": "v=DMARC1; p=reject; sp=quarantine",
    "nosp.test": "v=DMARC1; p=reject",
    "pct.test": "v=DMARC1; p=reject; pct=20",
    "testing.test": "v=DMARC1; p=reject; t=y",
    "junk.test": "v=DMARC1; p=bogus",
    "junkrua.test": "v=DMARC1; p=bogus; rua=mailto:x@junkrua.test",
    "nosemi.test": "v=DMARC1 p=reject",
    "strict.test": "v=DMARC1; p=reject; adkim=s; aspf=s",
    "nodmarc.test": None,
    "twodmarc.test": ("v=DMARC1; p=reject", "v=DMARC1; p=none"),
    "tempdmarc.test": "v=DMARC1; p=reject",
}


def serve_auth_zones(server: DnsServer) -> None:
    rsa_public = rsa_key()[1]
    short_public = rsa_key(512)[1]
    ed_public = ed25519_key()[1]
    spf = '"v=spf1 ip4:192.0.2.0/24 -all"'
    server.add_zone(
        "sender.test",
        f"""
        @                  TXT {spf}
        sel._domainkey     TXT {key_record(rsa_public)}
        ed._domainkey      TXT {key_record(ed_public, "ed25519")}
        short._domainkey   TXT {key_record(short_public)}
        garbage._domainkey TXT "v=DKIM1; k=rsa; p=!!!not-base64!!!"
        dsa._domainkey     TXT "v=DKIM1; k=dsa; p=AAAAB3NzaC1kc3M="
        sha1only._domainkey TXT {key_record(rsa_public, extra="h=sha1; ")}
        revoked._domainkey TXT "v=DKIM1; k=rsa; p="
        _dmarc             TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:dmarc@sender.test"
        mail               A   192.0.2.10
                           TXT "v=spf1 a -all"
        news               TXT {spf}
        """,
    )
    server.add_zone(
        "spf.test",
        """
        pass     TXT "v=spf1 ip4:192.0.2.10 -all"
        fail     TXT "v=spf1 -all"
        softfail TXT "v=spf1 ~all"
        neutral  TXT "v=spf1 ?all"
        none     TXT "just some text"
        garbage  TXT "v=spf1 ip4:300.1.1.1 -all"
        garbage2 TXT "v=spf1 a:bad..name -all"
        unknown  TXT "v=spf1 frobnicate -all"
        two      TXT "v=spf1 -all"
                 TXT "v=spf1 +all"
        loop     TXT "v=spf1 include:loop.spf.test -all"
        loopa    TXT "v=spf1 include:loopb.spf.test -all"
        loopb    TXT "v=spf1 include:loopa.spf.test -all"
        many     TXT "v=spf1 a:h1.spf.test a:h2.spf.test a:h3.spf.test a:h4.spf.test a:h5.spf.test" " a:h6.spf.test a:h7.spf.test a:h8.spf.test a:h9.spf.test a:h10.spf.test a:h11.spf.test ip4:192.0.2.10 -all"
        ten      TXT "v=spf1 a:h1.spf.test a:h2.spf.test a:h3.spf.test a:h4.spf.test a:h5.spf.test" " a:h6.spf.test a:h7.spf.test a:h8.spf.test a:h9.spf.test a:h10.spf.test ip4:192.0.2.10 -all"
        void3    TXT "v=spf1 a:nx1.spf.test a:nx2.spf.test a:nx3.spf.test ip4:192.0.2.10 -all"
        void2    TXT "v=spf1 a:nx1.spf.test a:nx2.spf.test ip4:192.0.2.10 -all"
        mx       TXT "v=spf1 mx -all"
                 MX  10 mx1.spf.test.
        mx1      A   192.0.2.10
        nullmx   TXT "v=spf1 mx -all"
                 MX  0 .
        incl     TXT "v=spf1 include:pass.spf.test -all"
        redir    TXT "v=spf1 redirect=pass.spf.test"
        redirnone TXT "v=spf1 redirect=none.spf.test"
        exp      TXT "v=spf1 -all exp=why.spf.test"
        why      TXT "%{i} is not one of %{d}'s senders"
        tempinc  TXT "v=spf1 include:x.down.test -all"
        slowinc  TXT "v=spf1 include:x.slow.test -all"
        macro    TXT "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all"
        10.2.0.192.alice._spf.macro A 127.0.0.2
        ip6      TXT "v=spf1 ip6:2001:db8::/32 -all"
"""
        + "".join(f"        h{i} A 198.51.100.{i}\n" for i in range(1, 12)),
    )
    server.add_zone("down.test", 'x TXT "v=spf1 +all"\n')
    server.fault("down.test", Fault.SERVFAIL)
    server.add_zone("slow.test", 'x TXT "v=spf1 +all"\n')
    server.fault("slow.test", Fault.DROP)
    for domain, record in DMARC_DOMAINS.items():
        lines = [
            f"@ TXT {spf}",
            f"sel._domainkey TXT {key_record(rsa_public)}",
            f"mail TXT {spf}",
            f"sub TXT {spf}",
        ]
        records = record if isinstance(record, tuple) else (record,) if record else ()
        lines += [f'_dmarc TXT "{r}"' for r in records]
        server.add_zone(domain, "\n".join(lines) + "\n")
    server.fault("_dmarc.tempdmarc.test", Fault.SERVFAIL)
    # A DKIM key server that fails.
    server.add_zone("broken.test", "")
    server.fault("sel._domainkey.broken.test", Fault.SERVFAIL)
