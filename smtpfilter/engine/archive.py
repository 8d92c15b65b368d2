"""Zip listings from the central directory alone: names, sizes and flags, never extracting.

The central directory sits at the END of a zip (APPNOTE.TXT §4.3.6), so only the tail of the
decoded attachment is needed. We read the end-of-central-directory record ourselves (20 lines:
it tells how many entries and how many bytes the directory claims, so a zip claiming a million
entries is refused before anything is parsed), then let the stdlib's ``zipfile`` parse the
directory from a file object that holds only that tail (``zipfile`` reads nothing else when it
opens an archive). zipfile does the hard parts (zip64, CP437/UTF-8 names, extra fields).

A hostile zip can make zipfile raise many things (BadZipFile, ValueError, struct.error,
OverflowError, UnicodeDecodeError, EOFError, NotImplementedError, seen on 5,000 mutated zips
in the issue 14 research): every one is a
``broken`` listing here, never an exception.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

__all__ = ["ZipEntry", "ZipListing", "list_zip", "EOCD_SEARCH"]

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
# The EOCD record is 22 bytes plus a comment of up to 65,535 bytes.
EOCD_SEARCH = 22 + 65535


@dataclass(frozen=True, slots=True)
class ZipEntry:
    name: str
    size: int  # uncompressed, as claimed
    compressed: int
    method: int
    encrypted: bool
    offset: int  # of its local header, in the archive


@dataclass(slots=True)
class ZipListing:
    entries: list[ZipEntry] = field(default_factory=list)
    claimed_entries: int = 0
    claimed_size: int = 0  # sum of uncompressed sizes claimed
    encrypted: bool = False
    broken: str | None = None  # why the directory could not be read
    limit: str | None = None  # which limit stopped the listing

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]


class _Tail(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only the last ``len(tail)`` are known."""

    def __init__(self, tail: bytes, size: int) -> None:
        self._tail = tail
        self._size = size
        self._first = size - len(tail)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._position < self._first:
            raise OSError("zip listing: read before the decoded tail")
        start = self._position - self._first
        chunk = self._tail[start : start + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def _eocd(tail: bytes) -> tuple[int, int, int, int] | None:
    """(entries, directory size, directory offset, EOCD position in ``tail``), from the last
    EOCD record as zipfile finds it, with the zip64 record's values when it has them."""
    position = tail.rfind(_EOCD)
    if position < 0 or position + 22 > len(tail):
        return None
    _, _, _, _, entries, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", tail[position : position + 22])
    if 0xFFFF == entries or 0xFFFFFFFF in (cd_size, cd_offset):
        record = position - 20 - 56
        if (
            record >= 0
            and tail[position - 20 : position - 16] == _EOCD64_LOCATOR
            and tail[record : record + 4] == b"PK\x06\x06"
        ):
            entries, cd_size, cd_offset = struct.unpack("<QQQ", tail[record + 32 : record + 56])
    return entries, cd_size, cd_offset, position


def list_zip(
    read_tail,
    size: int,
    *,
    max_entries: int = 10_000,
    max_directory: int = 4 * 1024 * 1024,
) -> ZipListing:
    """List a zip of ``size`` bytes given ``read_tail(n) -> bytes`` (its last n bytes).

    ``max_entries``: more claimed entries is a limit, not a listing (``limit='entries'``).
    ``max_directory``: a central directory claiming more bytes is a limit too.
    """
    listing = ZipListing()
    tail = read_tail(min(size, EOCD_SEARCH))
    found = _eocd(tail)
    if found is None:
        listing.broken = "no end of central directory"
        return listing
    entries, cd_size, cd_offset, position = found
    listing.claimed_entries = entries
    if entries > max_entries:
        listing.limit = "entries"
        return listing
    if cd_size > max_directory:
        listing.limit = "directory"
        return listing
    need = (len(tail) - position) + cd_size + 20 + 56  # EOCD and comment, directory, zip64 records
    if need > len(tail):
        tail = read_tail(min(size, need))
    try:
        with zipfile.ZipFile(_Tail(tail, size)) as archive:  # type: ignore[arg-type]
            infos = archive.infolist()
    except Exception as error:  # BadZipFile, ValueError, struct.error, OSError, ...
        listing.broken = f"{type(error).__name__}: {error}"[:200]
        return listing
    if len(infos) > max_entries:
        listing.limit = "entries"
        infos = infos[:max_entries]
    for info in infos:
        encrypted = bool(info.flag_bits & 0x1)
        listing.entries.append(ZipEntry(
            info.filename, info.file_size, info.compress_size, info.compress_type, encrypted,
            info.header_offset,
        ))
        listing.claimed_size += info.file_size
        listing.encrypted = listing.encrypted or encrypted
    return listing


def member_head(
    archive_bytes: bytes, entry: ZipEntry, size: int, *, max_input: int = 1 << 20
) -> bytes | None:
    """The first ``size`` uncompressed bytes of one member of a zip held whole in memory, for
    type sniffing inside archives; None when it cannot be had cheaply (encrypted, unknown
    method, broken). Decompression is bounded by ``size`` output and ``max_input`` input, so a
    bomb costs nothing."""
    if entry.encrypted:
        return None
    header = archive_bytes[entry.offset : entry.offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = entry.offset + 30 + name_length + extra_length
    data = archive_bytes[start : start + min(entry.compressed, max_input)]
    if entry.method == zipfile.ZIP_STORED:
        return data[:size]
    if entry.method == zipfile.ZIP_DEFLATED:
        try:
            return zlib.decompressobj(-15).decompress(data, size)
        except zlib.error:
            return None
    return None
