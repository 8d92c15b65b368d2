"""Read our Postfix-shaped log lines (README "Log format") as a parser of mail.log would: the
queue id before the first ": ", fields split at ", ", each at its first "=", ``status=`` last
with everything after it. Tests assert on fields, not on substrings that happen to match."""

from __future__ import annotations

import re
from dataclasses import dataclass

# What the README promises a summary line starts with: a queue id (Postfix's, or NOQUEUE),
# then a first field (client= or from=; the policy service's policy=).
_LINE = re.compile(r"^(?P<queue_id>[0-9A-Za-z\\]+): (?P<fields>(?:client|from|policy)=.*)$")


@dataclass
class LogLine:
    queue_id: str
    fields: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        return next((value for key, value in self.fields if key == name), None)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(f"no {name}= in {self.fields}")
        return value

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]

    @property
    def names(self) -> list[str]:
        return [key for key, _ in self.fields]


def parse(line: str) -> LogLine | None:
    """A summary line (after any syslog tag or ``LEVEL logger: `` prefix), or None."""
    text = line
    for prefix in (re.compile(r"^<\d+>"), re.compile(r"^smtpfilter(?:/w\d+)?\[\d+\]: "),
                   re.compile(r"^(?:w\d+ )?[A-Z]+ smtpfilter[.\w]*: ")):
        text = prefix.sub("", text, count=1)
    match = _LINE.match(text)
    if match is None:
        return None
    body = match.group("fields")
    status = None
    if ", status=" in body:
        body, status = body.split(", status=", 1)
    elif body.startswith("status="):
        body, status = "", body[len("status="):]
    fields = []
    for item in body.split(", ") if body else []:
        name, sep, value = item.partition("=")
        assert sep, f"field without '=': {item!r} in {line!r}"
        fields.append((name, value))
    if status is not None:
        fields.append(("status", status))
    return LogLine(match.group("queue_id"), fields)


def summaries(lines) -> list[LogLine]:
    """The summary lines (those with action= and status=) among ``lines``."""
    found = []
    for line in lines:
        parsed = parse(line)
        if parsed is not None and parsed.get("action") and parsed.get("status"):
            found.append(parsed)
    return found


def from_caplog(caplog) -> list[LogLine]:
    """The engine's summary lines among the captured records."""
    return summaries(r.getMessage() for r in caplog.records if r.name == "smtpfilter.engine.judge")
