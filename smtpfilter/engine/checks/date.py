"""The ``date`` rule kind: a Date header that is missing, unparseable, too old or in the future.

The age is measured against the time we received the message (the final "."), not the wall clock
when a rule runs: that is what rspamd's DATE_IN_PAST does and what makes ``smtpfilter test`` on a
stored message agree with what happened at delivery time.

Findings: ``MISSING``, ``INVALID``, ``IN_PAST``, ``IN_FUTURE``.

The date is read by :func:`smtpfilter.core.fields.parse_date`, shared with the tools, whose
docstring lists where it corrects the standard library (RFC 5322 §3.3 and §4.3).
"""

from __future__ import annotations

from datetime import timedelta

from smtpfilter.config.options import Options
from smtpfilter.core.fields import parse_date
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Finding

__all__ = ["DateCheck", "parse_date"]

_UNSET = object()

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
    ) -> None:
        self.older_than = timedelta(seconds=older_than) if older_than is not None else None
        self.in_future = timedelta(seconds=in_future) if in_future is not None else None
        self.missing = missing
        self.invalid = invalid

    @classmethod
    def from_options(cls, opts: Options) -> "DateCheck":
        check = cls(
            older_than=opts.duration("older_than", positive=True),
            in_future=opts.duration("in_future", positive=True),
            missing=opts.bool("missing"),
            invalid=opts.bool("invalid"),
        )
        if not (check.older_than or check.in_future or check.missing or check.invalid):
            opts.problem(
                None,
                "a date rule needs at least one of older_than, in_future, missing: true, "
                "invalid: true",
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
        return "Date " + " or ".join(parts)

    def observe(self, msg: MessageContext) -> Finding | None:
        dates = msg.headers.get_all("date")
        if not dates:
            return Finding("MISSING", "message has no Date header") if self.missing else None
        value = dates[0].text
        moment = msg.memo.get("date", _UNSET)
        if moment is _UNSET:
            moment = msg.memo["date"] = parse_date(value)
        if moment is None:
            if self.invalid:
                return Finding("INVALID", f"Date header is not a date: {value[:80]!r}")
            return None
        age = msg.received_at - moment
        if self.older_than is not None and age > self.older_than:
            return Finding(
                "IN_PAST", f"Date is {_human(age)} before receipt ({value[:60]})", (value,)
            )
        if self.in_future is not None and -age > self.in_future:
            return Finding(
                "IN_FUTURE", f"Date is {_human(age)} after receipt ({value[:60]})", (value,)
            )
        return None
