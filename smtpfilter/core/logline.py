"""The pieces of a Postfix-shaped log line, shared by the engine's summary line, the front doors'
warnings and the policy service (README "Log format").

Postfix writes ``QUEUEID: name=value, name=value, ..., status=sent (reply)`` (smtp(8),
qmgr(8)) and ``QUEUEID: warning: text`` (msg(3)); ``NOQUEUE`` where no queue id exists yet
(smtpd(8)). Tools that read mail.log (pflogsumm, fail2ban, logwatch, a grep) split a line at
``", "`` and each field at its first ``"="``, so no value here may contain ``", "``: values that
come from outside (addresses, Message-ID, rule findings quoting a file name) have their commas
written ``\\x2c``, the escape the log already uses for control characters (service/logs.py).
Only the last field, ``status=``, quotes a reply as it was given, commas and all: a parser takes
everything after ``status=`` as the status, exactly as for Postfix's own lines.

Part of ``core``: imports nothing else of smtpfilter but core.
"""

from __future__ import annotations

from typing import Iterable

from smtpfilter.core.envelope import Client
from smtpfilter.core.verdict import Decision

__all__ = [
    "NOQUEUE", "PER_MESSAGE", "addresses", "client_field", "decision_fields", "peer", "queue_id",
    "reply_shown", "value",
]

# smtpd(8)'s word for "no queue file yet" (e.g. "NOQUEUE: reject: RCPT from ...").
NOQUEUE = "NOQUEUE"
# ``extra=`` of a warning about one message whose text starts with ``QUEUEID: ``: the syslog
# formatter puts Postfix's severity after the queue id (``918CF20C401: warning: ...``, as
# cleanup(8) logs a header_checks WARN), so ``grep 918CF20C401 mail.log`` finds it.
PER_MESSAGE = {"per_message": True}
# Postfix shortens a logged reply too (smtp(8) keeps the first line and a bounded text).
_REPLY_LIMIT = 300


def queue_id(client: Client) -> str:
    """The upstream Postfix queue id (XFORWARD IDENT, the milter's macro ``i``, the policy
    request's queue_id), ``NOQUEUE`` when Postfix did not tell us one."""
    return value(client.ident) if client.ident else NOQUEUE


def client_field(client: Client) -> str | None:
    """``name[addr]`` as Postfix logs a client (``unknown[addr]`` without a name), or None
    when no address is known (local submission through pickup): the field is then left out,
    as Postfix leaves out what it does not know."""
    if client.addr is None:
        return None if client.name is None else f"{value(client.name)}[unknown]"
    return f"{value(client.name or 'unknown')}[{value(client.addr)}]"


def value(text: str) -> str:
    """A field value that cannot end its field early: a comma becomes ``\\x2c``."""
    return text.replace(",", "\\x2c") if "," in text else text


def addresses(name: str, items: Iterable[str]) -> list[str]:
    """``to=<a>``, ``to=<b>``: one field per address, as Postfix repeats ``to=``."""
    return [f"{name}=<{value(item)}>" for item in items]


def decision_fields(decision: Decision) -> list[str]:
    """``action=``, ``by=``, ``score=``, ``rules=`` and, when observing only, ``would=`` and
    ``would_by=``: what the rules decided, alike in the summary line and the policy service's."""
    fields = [f"action={decision.action.value}"]
    if decision.rule:
        fields.append(f"by={value(decision.rule)}")
    fields.append(f"score={decision.score:g}")
    labels = "+".join(value(verdict.label) for verdict in decision.verdicts)
    fields.append(f"rules={labels or '-'}")
    if decision.intended is not None and decision.intended is not decision.action:
        fields.append(f"would={decision.intended.value}")
        if decision.intended_rule:
            fields.append(f"would_by={value(decision.intended_rule)}")
    return fields


def peer(address: object) -> str:
    """A socket address as Postfix writes one: ``127.0.0.1:10025``, ``[::1]:10025``, a unix
    socket's path; never a Python tuple."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode("utf-8", "replace")
    return str(address) if address else "unix"


def reply_shown(reply: str) -> str:
    """A (possibly multi-line) SMTP reply on one line: the continuation lines' codes dropped
    and the lines joined with " / " (how Postfix joins a multi-line reply in its logs)."""
    lines = reply.split("\r\n")
    shown = " / ".join(line[4:] if i else line for i, line in enumerate(lines) if line)
    return shown if len(shown) <= _REPLY_LIMIT else shown[:_REPLY_LIMIT] + "..."
