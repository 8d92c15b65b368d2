"""Text for humans: the tables and summaries the operator commands print.

Functions here return strings; only :mod:`smtpfilter.cli` prints them. Values that come from a
message (Subject, From...) are shown decoded (RFC 2047) and with control characters replaced, so
a hostile header cannot move the cursor or forge lines in an admin's terminal.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterable

from .message import HeaderBlock

if TYPE_CHECKING:  # pragma: no cover
    from .quarantine import Entry, Quarantine

__all__ = ["clean", "header_value", "quarantine_list", "quarantine_show", "table"]


def clean(text: str, limit: int = 200) -> str:
    """One printable line: controls become "?", long values end in "..."."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_value(headers: HeaderBlock, name: str, limit: int = 200) -> str:
    found = headers.get_all(name)
    return clean(found[0].decoded, limit) if found else ""


def table(rows: Iterable[Iterable[str]], header: Iterable[str]) -> str:
    """Left-aligned columns; the last column is not padded."""
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


# --- quarantine ------------------------------------------------------------------------------
def _recipients(entry: "Entry") -> str:
    rcpts = [r.get("address", "") for r in entry.envelope.get("recipients", [])]
    if not rcpts:
        return "-"
    return clean(rcpts[0], 40) + (f" (+{len(rcpts) - 1})" if len(rcpts) > 1 else "")


def quarantine_list(store: "Quarantine", entries: list["Entry"]) -> str:
    if not entries:
        return f"{store.directory}: empty\n"
    rows = []
    for entry in entries:
        headers = store.header_block(entry)
        received = entry.meta.get("received_at", "")[:19].replace("T", " ")
        sender = entry.envelope.get("mail_from")
        rows.append([
            entry.id,
            received or "-",
            entry.verdict.get("rule") or "-",
            f"<{clean(sender, 40)}>" if sender is not None else "-",
            _recipients(entry),
            header_value(headers, "subject", 60),
        ])
    count = f"{len(entries)} message{'s' if len(entries) != 1 else ''} in {store.directory}\n"
    return table(rows, ["ID", "RECEIVED (UTC)", "RULE", "FROM", "TO", "SUBJECT"]) + count


def quarantine_show(store: "Quarantine", entry: "Entry") -> str:
    headers = store.header_block(entry)
    env = entry.envelope
    verdict = entry.verdict
    lines = [
        f"id:        {entry.id}",
        f"file:      {entry.path}",
        f"received:  {entry.meta.get('received_at', '-')}",
        f"queue id:  {entry.meta.get('queue_id') or '-'}",
        f"client:    {clean(entry.meta.get('client') or '-')}",
        f"from:      <{clean(env.get('mail_from', ''))}>"
        + "".join(f" {clean(t)}" for t in env.get("mail_params", {}).values()),
    ]
    for rcpt in env.get("recipients", []):
        params = "".join(f" {clean(p)}" for p in rcpt.get("params", []))
        lines.append(f"to:        <{clean(rcpt.get('path', ''))}>{params}")
    for address in entry.meta.get("released_to", []):
        lines.append(f"released:  {clean(address)} (already delivered)")
    if verdict:
        lines.append(
            f"verdict:   {verdict.get('action')} by {verdict.get('rule') or 'score'}, "
            f"score {verdict.get('score', 0):g}"
        )
        lines.append(f"reason:    {clean(verdict.get('reason') or '-', 500)}")
        lines.append(f"rules:     {', '.join(verdict.get('rules', [])) or '-'}")
    lines.append(f"size:      {entry.meta.get('size', entry.path.stat().st_size)} bytes")
    lines.append("headers:")
    for header in headers:
        lines.append(f"  {header.name}: {clean(header.decoded, 300)}")
    return "\n".join(lines) + "\n\n"


def as_json(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
