"""The issue 14 workloads as messages (content with LF lines, as smtp-source -F reads them):
10 KB text+html; 1 MB with a 700 KB attachment and 200 KB of text; 25 MB with ten attachments
of ~1.8 MB, one a zip of 50 stored members. Built with the email package, random content from
a fixed seed, so every run and every peer gets the same bytes."""

from __future__ import annotations

import io
import random
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

WORDS = ("invoice payment account transfer meeting report please review attached the a of to "
         "and we you today tomorrow regards thanks project update schedule").split()


def text(size: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    lines, total = [], 0
    while total < size:
        line = " ".join(rnd.choice(WORDS) for _ in range(12))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _message(subject: str) -> EmailMessage:
    m = EmailMessage(policy=SMTP)
    m["From"] = "Alice <alice@example.org>"
    m["To"] = "bob@example.net"
    m["Subject"] = subject
    m["Date"] = "Wed, 02 Dec 2026 07:00:00 +0000"
    m["Message-ID"] = "<bench@example.org>"
    return m


def _lf(m: EmailMessage) -> bytes:
    return m.as_bytes().replace(b"\r\n", b"\n")


def mail_10k() -> bytes:
    m = _message("10 KB text")
    body = text(5 * 1024)
    m.set_content(body)
    m.add_alternative("<html><body><p>" + body.replace("\n", "<br>\n") + "</p></body></html>",
                      subtype="html")
    return _lf(m)


def mail_1m() -> bytes:
    rnd = random.Random(2)
    m = _message("1 MB with a 700 KB attachment")
    m.set_content(text(200 * 1024))
    m.add_attachment(b"%PDF-1.4\n" + rnd.randbytes(700 * 1024), maintype="application",
                     subtype="pdf", filename="report.pdf")
    return _lf(m)


def mail_25m() -> bytes:
    rnd = random.Random(3)
    m = _message("25 MB with 10 attachments")
    m.set_content(text(20 * 1024))
    for n in range(10):
        if n == 3:
            data = zip_bytes({f"doc{i}.txt": rnd.randbytes(36 * 1024) for i in range(50)},
                             zipfile.ZIP_STORED)
            name, sub = "archive.zip", ("application", "zip")
        else:
            data, name, sub = rnd.randbytes(1_850_000), f"file{n}.bin", ("application", "octet-stream")
        m.add_attachment(data, maintype=sub[0], subtype=sub[1], filename=name)
    return _lf(m)


MESSAGES = {"10k": mail_10k, "1m": mail_1m, "25m": mail_25m}
