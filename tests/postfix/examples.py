"""Read the shipped master.cf.example and main.cf.example the way an admin uses them.

Each file is divided into blocks (``# >>> name`` ... ``# <<< name``). Inside a block, a line
that is a Postfix setting commented out in Postfix's own style (``#smtp inet ...``,
``#    -o name=value``, ``#content_filter = ...``) is uncommented; prose comments (``# text``)
stay comments. The tests then build private Postfix instances from these blocks, with only
what must differ on a test machine rewritten (ports, paths, the pipe user, chroot), so the
examples are exactly what has been tested.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["REPO", "blocks", "merge_master_cf", "no_chroot", "substitute"]

REPO = Path(__file__).resolve().parents[2]

_BEGIN = re.compile(r"^# >>> (\S+)\s*$")
_END = re.compile(r"^# <<< (\S+)\s*$")
# "#smtp      inet ...", "#content_filter = ...", "#example.com  FILTER ...": a setting that is off.
_SETTING = re.compile(r"^#(?=[^\s#])")
# "#    -o name=value", "#    check_recipient_access ...": its continuation lines.
_CONTINUATION = re.compile(r"^#(?=\s{2,}\S)")


def blocks(path: Path) -> dict[str, str]:
    """``{name: text}`` for every block of ``path``, settings uncommented."""
    result: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            if current is not None:
                raise ValueError(f"{path}:{number}: block {begin[1]} inside block {current}")
            current, lines = begin[1], []
        elif end:
            if end[1] != current:
                raise ValueError(f"{path}:{number}: end of {end[1]} but block {current} is open")
            result[current] = "\n".join(lines) + "\n"
            current = None
        elif current is not None:
            if _SETTING.match(line) or _CONTINUATION.match(line):
                line = line[1:]
            lines.append(line)
    if current is not None:
        raise ValueError(f"{path}: block {current} is never closed")
    return result


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Plain text replacements, longest key first (so "127.0.0.1:10026" beats "10026")."""
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    return text


_ENTRY = re.compile(r"^(\S+)\s+(inet|unix|unix-dgram|fifo|pass)\s")
_CHROOT = re.compile(r"^(\S+\s+(?:inet|unix|unix-dgram|fifo|pass)\s+\S+\s+\S+\s+)y(\s)")


def no_chroot(master_cf: str) -> str:
    """chroot "n" everywhere: a chroot jail needs a prepared /var/spool/postfix tree, which a
    private instance in a temporary directory does not have (shared/TRAPS.md)."""
    return "\n".join(_CHROOT.sub(r"\1n\2", line) for line in master_cf.splitlines()) + "\n"


def _entries(master_cf: str) -> list[tuple[tuple[str, str] | None, list[str]]]:
    """master.cf as (service/type key or None for comments, lines) in order (master(5):
    a logical line starts with non-whitespace text; whitespace continues it)."""
    entries: list[tuple[tuple[str, str] | None, list[str]]] = []
    for line in master_cf.splitlines():
        match = _ENTRY.match(line)
        if match:
            entries.append(((match[1], match[2]), [line]))
        elif line[:1].isspace() and line.strip() and entries and entries[-1][0] is not None:
            entries[-1][1].append(line)
        else:
            entries.append((None, [line]))
    return entries


def merge_master_cf(base: str, *additions: str) -> str:
    """``base`` with ``additions`` appended; an added entry replaces the base entry of the same
    service name and type, which is what master(5) does ("only the last one is remembered")
    and what the README tells admins to do by hand."""
    added = [entry for text in additions for entry in _entries(text)]
    replaced = {key for key, _ in added if key is not None}
    lines: list[str] = []
    for key, entry_lines in _entries(base):
        if key is None or key not in replaced:
            lines.extend(entry_lines)
    for _, entry_lines in added:
        lines.extend(entry_lines)
    return "\n".join(lines) + "\n"
