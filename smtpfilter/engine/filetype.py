"""True file types of attachments, from their decoded content, never from the declared type.

A small documented table of our own, not a library: puremagic 1.30 calls every zip ``.docx`` and a
Mach-O fat binary ``.class`` (fixed in 2.x, which needs Python >= 3.12) at ~176 us a call;
``filetype`` knows no Mach-O, LNK, ISO or VHD and is dormant since 2022; libmagic parses hostile
input in C (its OLE parser had heap overflows, CVE-2019-18218) and answers free text. This
table: ~3 us a call, the exact families rules use (issue 14 research, 47 samples). Each entry
names the bytes it looks for and where, with the format's own reference. Families,
the words rules use in ``types:``:

| family            | what                                                                      |
|-------------------|---------------------------------------------------------------------------|
| executable        | programs a double-click runs: PE/MZ (Windows), ELF, Mach-O (and fat),      |
|                   | MSI installers, Windows shortcuts (LNK), CHM help, JAR/APK/MSIX/APPX       |
| script            | interpreted text: ``#!`` scripts, batch files, HTA, WSF, and text with     |
|                   | Windows Script Host or PowerShell launch idioms (a short list, below)     |
| macro_document    | OOXML with vbaProject.bin or XLM macro sheets; OLE2 (doc/xls/ppt) with    |
|                   | a Macros, _VBA_PROJECT_CUR or VBA storage                                  |
| encrypted_archive | zip with an encrypted entry; RAR with encrypted headers (RAR4 and RAR5);  |
|                   | 7z whose header names the AES coder                                       |
| archive           | zip, rar, 7z, gzip, bzip2, xz, zstd, lz4, lzip, compress, cab, tar, cpio,   |
|                   | ar, arj, ace, lzh (office documents and JARs are zips but not "archive")   |
| disk_image        | ISO 9660 and UDF, VHD, VHDX, VMDK, QCOW, DMG, FAT/NTFS/exFAT volume images |
| html              | HTML documents, SVG with script                                           |
| document          | PDF, RTF, OLE2 and OOXML/ODF office files (informative)                   |

Detection reads :data:`HEAD_SIZE` decoded bytes (ISO 9660 puts its signature at 0x8001), and for
zips, 7z, VHD and DMG also the tail of the content (the zip central directory and the others'
trailers are at the end). Script detection is a heuristic and says so in its detail: names
(``*.js``) remain the primary defence for scripts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from smtpfilter.engine.archive import ZipListing, list_zip, member_head

__all__ = ["FAMILIES", "HEAD_SIZE", "Detection", "FileType", "detect", "sniff"]

FAMILIES = (
    "executable", "script", "macro_document", "encrypted_archive", "archive", "disk_image",
    "html", "document",
)
HEAD_SIZE = 0x9006  # covers the third ISO 9660 descriptor slot (0x9001 + "CD001")
# A central directory entry is 46 bytes plus name, extra field and comment: a directory claiming
# more than 2 KB per allowed entry is refused before zipfile reads it.
DIRECTORY_BYTES_PER_ENTRY = 2048


@dataclass(frozen=True, slots=True)
class FileType:
    name: str  # short format name: pe, elf, zip, docm, iso...
    families: frozenset[str] = frozenset()
    detail: str = ""


@dataclass(slots=True)
class Detection:
    """What one attachment is, and for archives what they hold."""

    type: FileType | None
    families: set[str] = field(default_factory=set)
    members: list[tuple[str, FileType | None]] = field(default_factory=list)  # archive paths
    listing: ZipListing | None = None
    limits: list[str] = field(default_factory=list)  # archive limits reached
    notes: list[str] = field(default_factory=list)


def _t(name: str, *families: str, detail: str = "") -> FileType:
    return FileType(name, frozenset(families), detail)


# --- first bytes ------------------------------------------------------------------------------
# (offset, magic, type). Checked in order; the first match wins. Sources: the formats' own
# specifications where public (PE/COFF, ELF, APPNOTE.TXT, ECMA-119, RAR, 7z, RFC 1952/1950,
# xz-file-format, MS-CAB, POSIX ustar, RFC 8878 zstd), else file(1)'s magic database (5.44).
_MAGIC: tuple[tuple[int, bytes, FileType], ...] = (
    (0, b"\x7fELF", _t("elf", "executable")),
    (0, b"\xfe\xed\xfa\xce", _t("macho", "executable")),
    (0, b"\xfe\xed\xfa\xcf", _t("macho", "executable")),
    (0, b"\xce\xfa\xed\xfe", _t("macho", "executable")),
    (0, b"\xcf\xfa\xed\xfe", _t("macho", "executable")),
    (0, b"dex\n", _t("dex", "executable")),
    (0, b"L\x00\x00\x00\x01\x14\x02\x00", _t("lnk", "executable", detail="Windows shortcut")),
    (0, b"ITSF\x03\x00\x00\x00", _t("chm", "executable", detail="compiled HTML help")),
    (0, b"Rar!\x1a\x07\x01\x00", _t("rar5", "archive")),
    (0, b"Rar!\x1a\x07\x00", _t("rar", "archive")),
    (0, b"7z\xbc\xaf\x27\x1c", _t("7z", "archive")),
    (0, b"\x1f\x8b\x08", _t("gzip", "archive")),
    (0, b"\xfd7zXZ\x00", _t("xz", "archive")),
    (0, b"\x28\xb5\x2f\xfd", _t("zstd", "archive")),
    (0, b"\x04\x22\x4d\x18", _t("lz4", "archive")),
    (0, b"LZIP", _t("lzip", "archive")),
    (0, b"\x1f\x9d", _t("compress", "archive")),
    (0, b"MSCF\x00\x00\x00\x00", _t("cab", "archive")),
    (0, b"!<arch>\n", _t("ar", "archive")),
    (0, b"070707", _t("cpio", "archive")),
    (0, b"070701", _t("cpio", "archive")),
    (0, b"070702", _t("cpio", "archive")),
    (0, b"\x60\xea", _t("arj", "archive")),
    (7, b"**ACE**", _t("ace", "archive")),
    (257, b"ustar", _t("tar", "archive")),
    (0, b"vhdxfile", _t("vhdx", "disk_image")),
    (0, b"conectix", _t("vhd", "disk_image")),
    (0, b"KDMV", _t("vmdk", "disk_image")),
    (0, b"# Disk DescriptorFile", _t("vmdk", "disk_image")),
    (0, b"QFI\xfb", _t("qcow", "disk_image")),
    (0x8001, b"CD001", _t("iso", "disk_image")),
    (0x8801, b"CD001", _t("iso", "disk_image")),
    (0x9001, b"CD001", _t("iso", "disk_image")),
    (0x8001, b"BEA01", _t("udf", "disk_image")),
    (0, b"{\\rtf", _t("rtf", "document")),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", _t("ole2", "document")),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

# Scripts: text whose first bytes hold a launch idiom. Lower-case substrings; each one is
# something a document or a normal text attachment has no reason to contain.
_SCRIPT_MARKERS = (
    (b"wscript.shell", "Windows Script Host"),
    (b"wscript.createobject", "Windows Script Host"),
    (b"activexobject(", "JScript ActiveX"),
    (b"scripting.filesystemobject", "Windows Script Host"),
    (b"shell.application", "Windows Shell automation"),
    (b"<hta:application", "HTA"),
    (b"-encodedcommand", "PowerShell"),
    (b"frombase64string(", "PowerShell/.NET"),
    (b"invoke-expression", "PowerShell"),
    (b"downloadstring(", "PowerShell/.NET"),
    (b"new-object net.webclient", "PowerShell"),
)


def _is_text(head: bytes) -> bool:
    sample = head[:1024]
    return b"\x00" not in sample.lstrip(b"\xff\xfe\xef\xbb\xbf")


def _pe(head: bytes) -> FileType:
    """MZ: a PE image when e_lfanew points at "PE\\0\\0" (PE/COFF spec §3), else DOS."""
    if len(head) >= 0x40:
        (e_lfanew,) = struct.unpack_from("<I", head, 0x3C)
        if e_lfanew + 24 <= len(head) and head[e_lfanew : e_lfanew + 4] == b"PE\x00\x00":
            (characteristics,) = struct.unpack_from("<H", head, e_lfanew + 22)
            kind = "dll" if characteristics & 0x2000 else "exe"
            return _t("pe", "executable", detail=f"Windows PE {kind}")
    return _t("mz", "executable", detail="DOS/MZ executable")


def _fat_or_java(head: bytes) -> FileType | None:
    """0xCAFEBABE: a Mach-O universal binary holds few architectures, a Java class file has a
    version >= 45 in the same place (file(1) uses the same test)."""
    if len(head) < 8:
        return None
    (count,) = struct.unpack_from(">I", head, 4)
    if 0 < count < 45:
        return _t("macho_fat", "executable", detail="Mach-O universal binary")
    return _t("java_class", detail="Java class file")


def _rar_encrypted(head: bytes, rar5: bool) -> bool:
    """RAR4: main header flag 0x0080 (MHD_PASSWORD), or the first file header's 0x0004.
    RAR5: an archive encryption header (type 4) right after the signature. (RAR5 per-file
    encryption is an extra record of each file header: not read here.)"""
    try:
        if rar5:
            position = 8 + 4  # signature, header CRC32
            _, position = _vint(head, position)  # header size
            kind, _ = _vint(head, position)
            return kind == 4
        if head[9:10] != b"\x73":
            return False
        (flags, size) = struct.unpack_from("<HH", head, 10)
        if flags & 0x0080:
            return True
        file_header = 7 + size
        if head[file_header + 2 : file_header + 3] == b"\x74":
            (file_flags,) = struct.unpack_from("<H", head, file_header + 3)
            return bool(file_flags & 0x0004)
    except (struct.error, IndexError):
        return False
    return False


def _vint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise IndexError("vint too long")


def _volume(head: bytes) -> FileType | None:
    """A FAT/NTFS/exFAT volume image (.img, .ima): boot sector signature 55 AA at 510 and the
    file system's name where its boot sector keeps it."""
    if head[510:512] != b"\x55\xaa":
        return None
    if head[54:59] in (b"FAT12", b"FAT16") or head[82:87] == b"FAT32":
        return _t("img", "disk_image", detail="FAT volume")
    if head[3:11] in (b"NTFS    ", b"EXFAT   "):
        return _t("img", "disk_image", detail=head[3:8].decode().strip() + " volume")
    return None


def _markup(head: bytes) -> FileType | None:
    text = head[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"#!"):
        return _t("shebang", "script", detail=text[:40].split(b"\n", 1)[0].decode("ascii", "replace"))
    for marker, what in _SCRIPT_MARKERS:
        if marker in head[:4096].lower():
            return _t("script", "script", detail=f"heuristic: {what}")
    if text.startswith((b"@echo off", b"@echo on")):
        return _t("bat", "script", detail="batch file")
    if text.startswith(b"<job") or (b"<job" in text and b"<script" in text and b"language=" in text):
        return _t("wsf", "script", detail="Windows Script File")
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe",
                        b"<meta", b"<form")):
        return _t("html", "html")
    if b"<svg" in text:
        lower = head[:4096].lower()
        if b"<script" in lower or b"javascript:" in lower or b"<foreignobject" in lower:
            return _t("svg", "html", detail="SVG with script")
        return _t("svg")
    if text.startswith(b"%pdf-"):
        return _t("pdf", "document")
    return None


def sniff(head: bytes) -> FileType | None:
    """The type of content from its first bytes alone (zips are only "zip" here)."""
    if head[:2] == b"MZ":
        return _pe(head)
    if head[:4] in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"):
        return _fat_or_java(head)
    if head[:4] in _ZIP_MAGIC:
        return _t("zip", "archive")
    # bzip2: "BZh" + block size digit + the block magic (pi) or the end-of-stream magic (sqrt pi)
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) >= 10 and \
            head[4:10] in (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90"):
        return _t("bzip2", "archive")
    for offset, magic, filetype in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if filetype.name in ("rar", "rar5") and _rar_encrypted(head, filetype.name == "rar5"):
                return _t(filetype.name, "archive", "encrypted_archive", detail="encrypted")
            return filetype
    if b"%PDF-" in head[:1024]:  # Acrobat accepts junk before the header
        return _t("pdf", "document")
    volume = _volume(head)
    if volume is not None:
        return volume
    if _is_text(head):
        return _markup(head)
    return None


# --- what needs more than the first bytes -----------------------------------------------------
_MACRO_PARTS = ("vbaproject.bin", "/macrosheets/", "vbadata.xml")


def _zip_type(listing: ZipListing) -> FileType:
    names = [n.lower() for n in listing.names()]
    if "[content_types].xml" in names:
        if any(marker in name for name in names for marker in _MACRO_PARTS):
            return _t("ooxml_macro", "document", "macro_document", detail="vbaProject.bin")
        if "appxmanifest.xml" in names:
            return _t("msix", "executable", "archive", detail="app package")
        return _t("ooxml", "document")
    if names and names[0] == "mimetype" and "meta-inf/manifest.xml" in names:
        if any(n.startswith("basic/") for n in names):
            return _t("odf_macro", "document", "macro_document", detail="OpenDocument Basic macros")
        return _t("odf", "document")
    if "androidmanifest.xml" in names and "classes.dex" in names:
        return _t("apk", "executable", "archive")
    if "meta-inf/manifest.mf" in names and any(n.endswith(".class") for n in names):
        return _t("jar", "executable", "archive")
    if listing.encrypted:
        return _t("zip", "archive", "encrypted_archive", detail="encrypted entries")
    return _t("zip", "archive")


def _ole(content: bytes) -> FileType:
    """OLE2 compound file: macros and MSI from its directory (olefile; MS-CFB)."""
    import olefile  # imported on the first OLE2 attachment: most messages have none

    try:
        ole = olefile.OleFileIO(content)
    except Exception:  # olefile raises OSError, struct.error, IndexError... on broken files
        return _t("ole2", "document", detail="unreadable compound file")
    try:
        clsid = (ole.root.clsid or "").upper() if ole.root else ""
        if clsid in ("000C1084-0000-0000-C000-000000000046", "000C1086-0000-0000-C000-000000000046"):
            return _t("msi", "executable", detail="Windows Installer")
        storages = {"/".join(entry).lower() for entry in ole.listdir(streams=True, storages=True)}
        if any(s == "macros" or s.startswith("macros/") or s.startswith("_vba_project_cur")
               or s.endswith("/vba") or "/vba/" in s or s == "vba" for s in storages):
            return _t("ole_macro", "document", "macro_document", detail="VBA storage")
        return _t("ole2", "document")
    finally:
        ole.close()


def _sevenzip_encrypted(head: bytes, tail: bytes) -> bool:
    """7z: the AES-256 coder id 06 F1 07 01 in the (end) header. Seen when the header is
    stored plainly or when the header itself is encrypted; a header compressed with LZMA hides
    its coders (a known gap, README)."""
    try:
        offset, length = struct.unpack_from("<QQ", head, 12)
    except struct.error:
        return False
    if length == 0 or length > len(tail):
        return False
    return b"\x06\xf1\x07\x01" in tail[-length:]


def detect(part, *, archives: bool = False, member_types: bool = True, max_entries: int = 2000,
           max_depth: int = 2, content_limit: int = 16 * 1024 * 1024) -> Detection:
    """The type of one attachment (a mime.Part), and with ``archives`` its zip members.

    Listing a zip needs only the tail of the attachment. ``member_types`` also sniffs each
    member's first bytes and lists zips in zips: that decodes the whole attachment (within
    ``content_limit``), about 3 ms per MB of base64."""
    head = part.head(HEAD_SIZE)
    found = sniff(head)
    detection = Detection(found)
    if found is None:
        tail = part.tail(512)
        if tail[:8] == b"conectix":
            found = _t("vhd", "disk_image", detail="fixed VHD")
        elif tail[:4] == b"koly":
            found = _t("dmg", "disk_image")
        detection.type = found
    elif found.name == "zip":
        listing = list_zip(part.tail, max(part.size_estimate(), 1), max_entries=max_entries,
                           max_directory=max_entries * DIRECTORY_BYTES_PER_ENTRY)
        detection.listing = listing
        if listing.limit:
            detection.limits.append(f"zip {listing.limit}")
        if listing.broken:
            detection.notes.append(f"zip: {listing.broken}")
        found = _zip_type(listing)
        detection.type = found
        if archives and listing.entries and member_types:
            _members(part, listing, detection, "", max_entries, max_depth, content_limit)
        elif archives:
            detection.members = [(entry.name, None) for entry in listing.entries]
            if listing.encrypted:
                detection.families.add("encrypted_archive")
    elif found.name == "7z":
        tail = part.tail(64 * 1024)
        if _sevenzip_encrypted(head, tail):
            found = _t("7z", "archive", "encrypted_archive", detail="AES coder")
            detection.type = found
    elif found.name == "ole2":
        content = part.content(content_limit)
        if len(content) >= content_limit:
            detection.limits.append("content")
        found = _ole(content)
        detection.type = found
    if found is not None:
        detection.families |= found.families
    return detection


def _members(content, listing: ZipListing, detection: Detection, prefix: str, max_entries: int,
             depth_left: int, content_limit: int) -> None:
    """Member names, and for members we can read cheaply their type; zips inside zips are
    listed down to ``depth_left`` levels (each inner zip decompressed within the content
    limit, never further). ``content``: the archive's bytes, or the mime.Part holding it."""
    whole: bytes | None = content if isinstance(content, bytes) else None
    for index, entry in enumerate(listing.entries[:max_entries]):
        path = prefix + entry.name
        member_type = None
        if not entry.name.endswith("/") and not entry.encrypted:
            if whole is None:
                whole = content.content(content_limit)
                if len(whole) >= content_limit:
                    detection.limits.append("content")
                # The first listing came from the tail with an estimated size; offsets of
                # local headers need the exact one.
                listing = list_zip(lambda n, data=whole: data[-n:], len(whole), max_entries=max_entries)
                if index >= len(listing.entries):
                    break
                entry = listing.entries[index]
            head = member_head(whole, entry, HEAD_SIZE)
            if head is not None:
                member_type = sniff(head)
                if member_type is not None and member_type.name == "zip":
                    if depth_left > 1:
                        inner = _inner_zip(whole, entry, content_limit)
                        if inner is None:
                            detection.limits.append("content")
                        else:
                            inner_listing = list_zip(lambda n, data=inner: data[-n:], len(inner),
                                                     max_entries=max_entries)
                            if inner_listing.limit:
                                detection.limits.append(f"zip {inner_listing.limit}")
                            member_type = _zip_type(inner_listing)
                            detection.members.append((path, member_type))
                            detection.families |= member_type.families
                            _members(inner, inner_listing, detection, path + "/", max_entries,
                                     depth_left - 1, content_limit)
                            continue
                    else:
                        detection.limits.append("archive depth")
        detection.members.append((path, member_type))
        if member_type is not None:
            detection.families |= member_type.families
        if entry.encrypted:
            detection.families.add("encrypted_archive")


def _inner_zip(whole: bytes, entry, limit: int) -> bytes | None:
    import zlib

    header = whole[entry.offset : entry.offset + 30]
    if len(header) < 30 or entry.size > limit:
        return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = entry.offset + 30 + name_length + extra_length
    data = whole[start : start + entry.compressed]
    if entry.method == 0:
        return data
    if entry.method == 8:
        try:
            out = zlib.decompressobj(-15)
            inner = out.decompress(data, limit)
            return None if out.unconsumed_tail else inner
        except zlib.error:
            return None
    return None
