"""engine/filetype.py and engine/archive.py: true file types from content, zip listings from the central directory, hostile archives."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import struct
import tarfile
import zipfile

import pytest

from smtpfilter.engine.archive import list_zip
from smtpfilter.engine.filetype import detect
from smtpfilter.engine.mime import walk
from tests.support.mime import encrypted_zip, ole2, ooxml, pe_bytes, raw_attachment, zip_bytes


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    return out.getvalue()


def _iso() -> bytes:
    data = bytearray(0x9000)
    data[0x8000:0x8006] = b"\x01CD001"
    return bytes(data)


def _rar4(header_flags: int = 0, file_flags: int = 0) -> bytes:
    main = struct.pack("<HBHH", 0, 0x73, header_flags, 13) + b"\x00" * 6
    file = struct.pack("<HBHH", 0, 0x74, file_flags, 32) + b"\x00" * 25
    return b"Rar!\x1a\x07\x00" + main + file


def _rar5(encrypted_headers: bool) -> bytes:
    # header CRC32, vint size, vint type (1 main, 4 archive encryption)
    return b"Rar!\x1a\x07\x01\x00" + b"\x00" * 4 + bytes([3, 4 if encrypted_headers else 1, 0, 0])


def _sevenzip(aes: bool) -> bytes:
    header = b"\x17\x06" + (b"\x06\xf1\x07\x01" if aes else b"\x03\x01\x01") + b"\x00" * 10
    start = b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 4 + struct.pack("<QQ", 100, len(header)) + b"\x00" * 4
    return start + b"\x00" * 100 + header


def _fat(count: int) -> bytes:
    return b"\xca\xfe\xba\xbe" + struct.pack(">I", count) + b"\x00" * 64


def _volume(fs: bytes) -> bytes:
    sector = bytearray(512)
    sector[510:512] = b"\x55\xaa"
    if fs == b"FAT32":
        sector[82:87] = fs
    else:
        sector[54:59] = fs
    return bytes(sector)


CASES = [
    ("pe", pe_bytes(4096), "pe", {"executable"}),
    ("dos", b"MZ" + b"\x00" * 100, "mz", {"executable"}),
    ("elf", b"\x7fELF\x02\x01\x01" + b"\x00" * 60, "elf", {"executable"}),
    ("macho", b"\xcf\xfa\xed\xfe" + b"\x00" * 60, "macho", {"executable"}),
    ("macho-fat", _fat(2), "macho_fat", {"executable"}),
    ("java-class", _fat(52), "java_class", set()),
    ("lnk", b"L\x00\x00\x00\x01\x14\x02\x00" + b"\x00" * 70, "lnk", {"executable"}),
    ("shebang", b"#!/bin/sh\nrm -rf ~\n", "shebang", {"script"}),
    ("wsh", b"var s = new ActiveXObject('WScript.Shell');\ns.Run('calc');\n", "script", {"script"}),
    ("powershell", b"powershell -NoP -EncodedCommand SQBFAFgA\n", "script", {"script"}),
    ("bat", b"@echo off\r\ndel /q *\r\n", "bat", {"script"}),
    ("hta", b"<html><head><HTA:APPLICATION id=x></head></html>", "script", {"script"}),
    ("html", b"\xef\xbb\xbf\n <!DOCTYPE html><html><body>login</body></html>", "html", {"html"}),
    ("svg-script", b'<?xml version="1.0"?><svg xmlns="x"><script>location="x"</script></svg>', "svg", {"html"}),
    ("svg-plain", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "svg", set()),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "pdf", {"document"}),
    ("rtf", b"{\\rtf1\\ansi hello}", "rtf", {"document"}),
    ("zip", zip_bytes({"a.txt": b"hello"}), "zip", {"archive"}),
    ("zip-encrypted", encrypted_zip({"a.exe": b"MZ"}), "zip", {"archive", "encrypted_archive"}),
    ("docx", ooxml(macro=False), "ooxml", {"document"}),
    ("docm", ooxml(macro=True), "ooxml_macro", {"document", "macro_document"}),
    ("jar", zip_bytes({"META-INF/MANIFEST.MF": b"x", "a/B.class": b"\xca\xfe\xba\xbe"}), "jar", {"executable", "archive"}),
    ("doc-macros", ole2(("Macros", "VBA")), "ole_macro", {"document", "macro_document"}),
    ("xls-macros", ole2(("_VBA_PROJECT_CUR", "VBA")), "ole_macro", {"document", "macro_document"}),
    ("doc", ole2(("ObjectPool",), "WordDocument"), "ole2", {"document"}),
    ("msi", ole2(("Store",), "x", clsid=bytes.fromhex("84100c0000000000c000000000000046")), "msi", {"executable"}),
    ("ole-broken", ole2()[:1500], "ole2", {"document"}),
    ("rar4", _rar4(), "rar", {"archive"}),
    ("rar4-headers-encrypted", _rar4(header_flags=0x0080), "rar", {"archive", "encrypted_archive"}),
    ("rar4-file-encrypted", _rar4(file_flags=0x0004), "rar", {"archive", "encrypted_archive"}),
    ("rar5", _rar5(False), "rar5", {"archive"}),
    ("rar5-encrypted", _rar5(True), "rar5", {"archive", "encrypted_archive"}),
    ("7z", _sevenzip(False), "7z", {"archive"}),
    ("7z-aes", _sevenzip(True), "7z", {"archive", "encrypted_archive"}),
    ("gzip", gzip.compress(b"x" * 100), "gzip", {"archive"}),
    ("bzip2", bz2.compress(b"x" * 100), "bzip2", {"archive"}),
    ("xz", lzma.compress(b"x" * 100), "xz", {"archive"}),
    ("cab", b"MSCF\x00\x00\x00\x00" + b"\x00" * 40, "cab", {"archive"}),
    ("tar", _tar(), "tar", {"archive"}),
    ("iso", _iso(), "iso", {"disk_image"}),
    ("vhdx", b"vhdxfile" + b"\x00" * 100, "vhdx", {"disk_image"}),
    ("vhd-fixed", b"\x00" * 2048 + b"conectix" + b"\x00" * 504, "vhd", {"disk_image"}),
    ("dmg", b"\x00" * 2048 + b"koly" + b"\x00" * 508, "dmg", {"disk_image"}),
    ("img-fat", _volume(b"FAT12"), "img", {"disk_image"}),
    ("img-fat32", _volume(b"FAT32"), "img", {"disk_image"}),
    ("text", b"Dear customer,\nplease find the invoice.\n", None, set()),
    ("random", bytes(random.Random(1).randbytes(5000)), None, set()),
]


@pytest.mark.parametrize("content, name, families", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_type_comes_from_the_content_whatever_the_name_says(content, name, families):
    # Declared as a harmless PDF with a harmless name: only the content counts.
    part = walk(raw_attachment('filename="harmless.pdf"', content, ctype="application/pdf")).parts[-1]
    detection = detect(part)
    assert (detection.type.name if detection.type else None) == name
    assert detection.families == families


def test_zip_members_are_listed_and_typed_down_to_zips_in_zips():
    inner = zip_bytes({"payload.exe": pe_bytes(1000), "readme.txt": b"hi"})
    outer = zip_bytes({"docs/inner.zip": inner, "a.txt": b"x"})
    part = walk(raw_attachment('filename="outer.zip"', outer)).parts[-1]
    detection = detect(part, archives=True)
    members = {path: (t.name if t else None) for path, t in detection.members}
    assert members == {"docs/inner.zip": "zip", "docs/inner.zip/payload.exe": "pe",
                       "docs/inner.zip/readme.txt": None, "a.txt": None}
    assert "executable" in detection.families
    assert detect(part, archives=True, max_depth=1).limits == ["archive depth"]


def _eocd_claiming(entries: int, cd_size: int) -> bytes:
    return b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, entries & 0xFFFF, entries & 0xFFFF, cd_size, 0, 0)


@pytest.mark.parametrize(
    "data, limit",
    [
        (b"PK\x03\x04" + b"\x00" * 100 + _eocd_claiming(60_000, 46 * 60_000), "entries"),
        (b"PK\x03\x04" + b"\x00" * 100 + _eocd_claiming(5, 0xFFFFFF00), "directory"),
    ],
    ids=["many-entries", "huge-directory"],
)
def test_zip_claims_beyond_the_limits_are_limits_not_work(data, limit):
    listing = list_zip(lambda n: data[-n:], len(data))
    assert listing.limit == limit and listing.entries == []


def test_a_zip_bomb_is_listed_not_inflated():
    # 1,000 entries each claiming 4 GB uncompressed: only the directory is read.
    data = bytearray(zip_bytes({f"f{i}": b"" for i in range(1000)}, zipfile.ZIP_STORED))
    position = data.find(b"PK\x01\x02")
    while position >= 0:
        data[position + 24 : position + 28] = struct.pack("<L", 0xFFFFFFFE)
        position = data.find(b"PK\x01\x02", position + 4)
    listing = list_zip(lambda n: bytes(data[-n:]), len(data))
    assert len(listing.entries) == 1000
    assert listing.claimed_size == 1000 * 0xFFFFFFFE


@pytest.mark.parametrize("seed", range(200))
def test_broken_zips_are_broken_listings_never_exceptions(seed):
    rnd = random.Random(seed)
    data = bytearray(zip_bytes({f"dir/file{i}.exe": rnd.randbytes(rnd.randrange(0, 300)) for i in range(5)}))
    for _ in range(rnd.randrange(1, 12)):
        position = rnd.randrange(len(data))
        data[position] = rnd.randrange(256)
    if rnd.random() < 0.3:
        del data[rnd.randrange(len(data)) :]
    listing = list_zip(lambda n: bytes(data[-n:]) if n else b"", max(len(data), 1))
    assert listing.broken is None or isinstance(listing.broken, str)
