"""The ``date`` rule kind: a Date header that is missing, unparseable, too old or in the future.

The age is measured against the time we received the message (the final "."), not the wall clock
when a rule runs: that is what rspamd's DATE_IN_PAST does and what makes ``smtpfilter test`` on a
stored message agree with what happened at delivery time.

Findings: ``MISSING``, ``INVALID``, ``IN_PAST``, ``IN_FUTURE``, ``DUPLICATE``.

Every Date header is judged, not only the first: RFC 5322 §3.6 allows exactly one, but a message
can carry several, and Postfix's header_checks try each of them. With only the first judged,
``Date: <now>`` above ``Date: <2011>`` passed every date rule (issue 12). A rule reports the first
Date that its options find fault with, in message order; ``duplicate: true`` makes more than one
Date header a finding of its own.

The date is read by :func:`smtpfilter.core.fields.parse_date`, shared with the tools, whose
docstring lists where it corrects the standard library (RFC 5322 §3.3 and §4.3).
"""

from __future__ import annotations

from datetime import timedelta

from smtpfilter.config.options import Options
from smtpfilter.core.fields import parse_date
from smtpfilter.core.message import MessageContext
from smtpfilter.core.text import snippet
from smtpfilter.core.verdict import Finding

__all__ = ["DateCheck", "parse_date"]


def _human(delta: timedelta) -> str:
    seconds = abs(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


class DateCheck:
    kind = "date"

    def __init__(
        self,
        *,
        older_than: float | None = None,
        in_future: float | None = None,
        missing: bool = False,
        invalid: bool = False,
        duplicate: bool = False,
    ) -> None:
        self.older_than = timedelta(seconds=older_than) if older_than is not None else None
        self.in_future = timedelta(seconds=in_future) if in_future is not None else None
        self.missing = missing
        self.invalid = invalid
        self.duplicate = duplicate

    @classmethod
    def from_options(cls, opts: Options) -> "DateCheck":
        check = cls(
            older_than=opts.duration("older_than", positive=True),
            in_future=opts.duration("in_future", positive=True),
            missing=opts.bool("missing"),
            invalid=opts.bool("invalid"),
            duplicate=opts.bool("duplicate"),
        )
        if not (check.older_than or check.in_future or check.missing or check.invalid
                or check.duplicate):
            opts.need(
                "a date rule needs at least one of older_than, in_future, missing: true, "
                "invalid: true, duplicate: true",
            )
        return check

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append("missing")
        if self.invalid:
            parts.append("invalid")
        if self.older_than:
            parts.append(f"older than {_human(self.older_than)}")
        if self.in_future:
            parts.append(f"more than {_human(self.in_future)} in the future")
        if self.duplicate:
            parts.append("more than once")
        return "Date " + " or ".join(parts)

    def observe(self, msg: MessageContext) -> Finding | None:
        headers = msg.headers.get_all("date")
        if not headers:
            return Finding("MISSING", "message has no Date header") if self.missing else None
        dates = msg.memo.get("dates")
        if dates is None:  # parsed once per message, shared by every date rule
            dates = msg.memo["dates"] = tuple((h.text, parse_date(h.text)) for h in headers)
        count = len(dates)
        for number, (value, moment) in enumerate(dates, 1):
            which = f"Date #{number} of {count}" if count > 1 else "Date"
            if moment is None:
                if self.invalid:
                    return Finding(
                        "INVALID", f"{which} header is not a date: \"{snippet(value, 80)}\""
                    )
                continue
            age = msg.received_at - moment
            if self.older_than is not None and age > self.older_than:
                return Finding(
                    "IN_PAST", f"{which} is {_human(age)} before receipt ({value[:60]})", (value,)
                )
            if self.in_future is not None and -age > self.in_future:
                return Finding(
                    "IN_FUTURE", f"{which} is {_human(age)} after receipt ({value[:60]})", (value,)
                )
        if self.duplicate and count > 1:
            # RFC 5322 §3.6: "orig-date" occurs exactly once.
            return Finding("DUPLICATE", f"{count} Date headers (RFC 5322 allows one): "
                           + " / ".join(value[:40] for value, _ in dates[:3]), (dates[0][0],))
        return None
