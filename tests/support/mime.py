"""MIME messages for the tests, built with the email package or written by hand, in wire form;
and the attachments they carry: PE headers, zips (zipfile), encrypted zips, OOXML, OLE2."""

from __future__ import annotations

import base64
import io
import os
import struct
import zipfile
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP

from smtpfilter.core.message import MessageContext
from smtpfilter.core.wire import to_wire

RECEIVED = datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc)


def pe_bytes(size: int) -> bytes:
    """An MZ/PE header (PE/COFF: e_lfanew at 0x3C -> "PE\\0\\0") followed by random bytes."""
    head = bytearray(0x200)
    head[0:2] = b"MZ"
    head[0x3C:0x40] = (0x80).to_bytes(4, "little")
    head[0x80:0x84] = b"PE\x00\x00"
    head[0x84:0x86] = (0x14C).to_bytes(2, "little")  # i386
    return bytes(head) + os.urandom(max(0, size - len(head)))


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def message(subject: str = "test", text: str = "Hello.\n") -> EmailMessage:
    m = EmailMessage(policy=SMTP)
    m["From"] = "alice@example.org"
    m["To"] = "bob@example.net"
    m["Subject"] = subject
    m["Date"] = "Wed, 02 Dec 2026 06:00:00 +0000"
    m.set_content(text)
    return m


def wire(m: EmailMessage | str | bytes) -> bytes:
    if isinstance(m, EmailMessage):
        return to_wire(m.as_bytes())
    if isinstance(m, str):
        m = m.encode("utf-8")
    return to_wire(m)


def context(data: bytes) -> MessageContext:
    return MessageContext.build(data, received_at=RECEIVED, mail_from="alice@example.org",
                                rcpt_to=("bob@example.net",))


def raw_attachment(filename_params: str, data: bytes, ctype: str = "application/octet-stream",
                   cte: str = "base64") -> bytes:
    """A multipart/mixed message whose attachment headers are written by hand."""
    if cte == "base64":
        body = base64.encodebytes(data).decode()
    else:
        body = data.decode("latin-1")
    text = (
        "From: a@example.org\nTo: b@example.net\nSubject: hand made\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XX"\n\n'
        "--XX\nContent-Type: text/plain\n\nsee attachment\n"
        f"--XX\nContent-Type: {ctype}\nContent-Disposition: attachment; {filename_params}\n"
        f"Content-Transfer-Encoding: {cte}\n\n{body}\n--XX--\n"
    )
    return to_wire(text.encode("latin-1"))


def encrypted_zip(members: dict[str, bytes]) -> bytes:
    """A zip whose entries carry the "encrypted" flag (APPNOTE 4.4.4 bit 0). zipfile cannot
    encrypt, and listing only reads the flags: set bit 0 in every local and central header."""
    data = bytearray(zip_bytes(members, zipfile.ZIP_STORED))
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = data.find(signature)
        while position >= 0:
            data[position + flag_at] |= 0x01
            position = data.find(signature, position + 4)
    return bytes(data)


def ooxml(macro: bool) -> bytes:
    members = {"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"}
    if macro:
        members["word/vbaProject.bin"] = b"\xd0\xcf\x11\xe0" + b"\x00" * 100
    return zip_bytes(members)


def attach(m: EmailMessage, data: bytes, filename: str | None,
           ctype: str = "application/octet-stream") -> EmailMessage:
    main, sub = ctype.split("/")
    m.add_attachment(data, maintype=main, subtype=sub, filename=filename)
    return m


def ole2(storages: tuple[str, ...] = ("Macros", "VBA"), stream: str = "dir",
         clsid: bytes = b"\x00" * 16) -> bytes:
    """A minimal OLE2 compound file (MS-CFB v3, 512-byte sectors): root -> storages nested in
    order -> one 4,096-byte stream (at the mini-stream cutoff, so no mini stream is needed).
    Enough for olefile to list ``Macros/VBA/dir``; olefile itself cannot write files."""
    free, end, fat_sector = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
    names = ["Root Entry", *storages, stream]
    entries = b""
    for index, name in enumerate(names):
        kind = 5 if index == 0 else (2 if index == len(names) - 1 else 1)
        encoded = name.encode("utf-16-le") + b"\x00\x00"
        child = index + 1 if index < len(names) - 1 else free
        start, size = (2, 4096) if kind == 2 else (end, 0)
        entries += (encoded.ljust(64, b"\x00")
                    + struct.pack("<HBB3I", len(encoded), kind, 1, free, free, child)
                    + (clsid if index == 0 else b"\x00" * 16) + b"\x00" * 20
                    + struct.pack("<IQ", start, size))
    directory = entries.ljust(512 * ((len(entries) + 511) // 512), b"\x00")
    dir_sectors = len(directory) // 512
    stream_first = 1 + dir_sectors
    fat = [fat_sector] + [i + 2 for i in range(dir_sectors - 1)] + [end]
    fat += [stream_first + i + 1 for i in range(7)] + [end]
    fat += [free] * (128 - len(fat))
    entries_fixed = directory.replace(struct.pack("<IQ", 2, 4096),
                                      struct.pack("<IQ", stream_first, 4096))
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16
              + struct.pack("<HHHHH6xIIIIIIIII", 0x3E, 3, 0xFFFE, 9, 6, 0, 1, 1, 0, 4096, end,
                            0, end, 0)
              + struct.pack("<I", 0) + struct.pack("<108I", *([free] * 108)))
    return header + struct.pack("<128I", *fat) + entries_fixed + b"V" * 4096


# The four rule shapes, exactly as issue 14 writes them.
MIME_RULES = r"""
rules:
  - name: BANNED_ATTACHMENT
    check: attachment
    names: ['*.exe', '*.scr', '*.js', '*.vbs', '*.lnk']   # globs, case-insensitive, on the decoded
    archives: true                                       # file name (RFC 2231 / RFC 2047); also
    action: quarantine                                   # the names inside zip archives
  - name: DISGUISED_EXECUTABLE
    check: attachment
    types: [executable]      # detected from the content, whatever the name or Content-Type says
    action: quarantine
  - name: WIRE_FRAUD
    check: body
    match: ['wire transfer.*today']   # RE2, case-insensitive, on decoded text parts
    action: tag
    score: 4
  - name: PART_HEADER
    check: mime_header
    header: Content-Type
    match: ['application/x-msdownload']
    action: reject
"""
