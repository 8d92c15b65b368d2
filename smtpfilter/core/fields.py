"""What some header fields say, read the same way by the rules and by the tools: the date of a
Date (or of a Received line), and the client address Postfix wrote into a Received line.

The parsing rules for dates, all from RFC 5322 §3.3 and §4.3 where the standard library differs:

- two-digit years: 00-49 → 20xx, 50-99 → 19xx (Python pivots at 68/69);
- three-digit years: + 1900 (Python reads ``124`` as the year 124);
- no zone, ``-0000`` and unknown zone names mean UTC (Python returns a naive datetime, which
  cannot be compared with an aware one).

Part of ``core``, the shared vocabulary (imports nothing else of smtpfilter but core).
"""

from __future__ import annotations

import email.utils
import re
from datetime import datetime, timedelta, timezone

from smtpfilter.core.message import Header, HeaderBlock

__all__ = ["parse_date", "received_address", "received_date"]

_YEAR_AFTER_MONTH = re.compile(
    r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?[\s,]+(\d{1,4})\b"
)
_YEAR_BEFORE_TIME = re.compile(r"\b(\d{1,4})\s+\d{1,2}:\d{2}")


def _rfc5322_year(value: str, year: int) -> int:
    """Correct the library's year for RFC 5322 §4.3 obsolete two- and three-digit years."""
    match = _YEAR_AFTER_MONTH.search(value) or _YEAR_BEFORE_TIME.search(value)
    if match is None:
        return year
    digits = match.group(1)
    short = int(digits)
    # Only when those digits are what the library took for the year ("Jan 15 2023" has a day
    # after the month, not a year).
    if len(digits) == 2 and year in (1900 + short, 2000 + short):
        return 2000 + short if short < 50 else 1900 + short
    if len(digits) == 3 and year == short:
        return 1900 + short
    if len(digits) == 1 and year in (short, 2000 + short):
        raise ValueError("a one-digit year is not a year (RFC 5322 §3.3)")
    return year


def parse_date(value: str) -> datetime | None:
    """An aware UTC datetime from an RFC 5322 date, or None for anything unusable."""
    try:
        parts = email.utils.parsedate_tz(value)
    except Exception:  # the parser raises assorted errors on garbage
        return None
    if parts is None:
        return None
    year, month, day, hour, minute, second = parts[:6]
    offset = parts[9] or 0  # None: no zone or an unknown one, RFC 5322 §4.3 says treat as -0000
    try:
        year = _rfc5322_year(value, year)
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
        return moment - timedelta(seconds=offset)
    except (ValueError, OverflowError, TypeError):
        return None


def received_date(header: Header) -> datetime | None:
    """RFC 5322 §3.6.7: a Received field ends with ";" and the date-time it was added."""
    _, sep, tail = header.text.rpartition(";")
    return parse_date(tail.strip()) if sep else None


_RECEIVED_FROM_ADDR = re.compile(r"\[((?:IPv6:)?[0-9A-Fa-f:.]+)\]")


def received_address(headers: HeaderBlock, hop: int) -> str | None:
    """The client address in the ``hop``-th Received: header from the top, as Postfix writes it:
    ``from helo (name [192.0.2.7]) by ...``; None when that header names no address (local
    submission: ``by host (Postfix, from userid 1000)``)."""
    received = headers.get_all("received")
    if len(received) < hop:
        return None
    text = received[hop - 1].text
    if not text.lower().startswith("from "):
        return None
    head = re.split(r"\s+by\s+", text, maxsplit=1)[0]
    match = _RECEIVED_FROM_ADDR.search(head)
    return match.group(1) if match else None
