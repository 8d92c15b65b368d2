"""Test messages in wire form (CRLF, dot-stuffed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from smtpfilter.core.wire import to_wire


def date_header(days_ago: float = 0) -> str:
    moment = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return "Date: " + format_datetime(moment)


def message(*headers: str, body: bytes | str = b"Hello.\n", date: bool = True) -> bytes:
    """A message in wire form; a current Date header unless ``date=False`` or one is given."""
    lines = list(headers)
    if date and not any(h.lower().startswith("date:") for h in lines):
        lines.insert(0, date_header())
    if not any(h.lower().startswith("from:") for h in lines):
        lines.append("From: Sender <sender@example.org>")
    if isinstance(body, str):
        body = body.encode()
    head = "\n".join(lines).encode("utf-8") + b"\n\n"
    return to_wire(head + body)
