"""Every SMTP reply smtpfilter sends, in one place.

The reply to Postfix's final "." is the whole contract of an after-queue filter
(FILTER_README): 2xx and Postfix forgets the message, 4xx and it keeps it and retries, 5xx and it
bounces it to the (often forged) sender. So:

| situation                                         | reply                                  |
|---------------------------------------------------|----------------------------------------|
| delivered (accept, tag, warn): 10026 took it       | 10026's own reply, relayed             |
| 10026 answered 4xx, refused, timed out, dropped    | 4xx (451 4.4.x unless 10026 said more) |
| 10026 answered 5xx                                 | that 5xx, relayed                      |
| rule decided reject                                | 550 5.7.1 with the rule's text         |
| rule decided discard                               | 250, nothing sent to 10026             |
| rule decided quarantine, the copy is on disk       | 250, nothing sent to 10026             |
| rule decided quarantine, storing failed            | 451 (Postfix keeps the message)        |
| rule decided tempfail, scan timed out, our bug     | 451                                    |

Texts follow Postfix's own wording where Postfix has a reply for the same situation, so that
log-watching tools already know them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from smtpfilter.core.text import reply_text
from smtpfilter.core.verdict import Action, Decision


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code and text (continuation lines joined by "\\n")."""

    code: int
    text: str

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.text}".replace("\n", " / ")



# RFC 3463 §2: class.subject.detail, at the start of a reply text; followed by a blank or the
# end. The one pattern for every place that reads one (rule texts, header_checks REJECT texts,
# the texts of 10026's replies).
ENHANCED_STATUS = re.compile(r"(\d)\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


# --- connection --------------------------------------------------------------------------
R421_TOO_MANY_SESSIONS = "421 4.7.0 Error: too many connections, try again later"
R421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing transmission channel"
R421_TIMEOUT = "421 4.4.2 Error: timeout exceeded"
# To the longest-idle session when a new one needs its slot (RFC 5321 §4.5.3.2: a server may
# close an idle session; Postfix's smtp client tests a cached connection with RSET before
# reusing it and opens a new one if it is gone, CONNECTION_CACHE_README).
R421_IDLE_CLOSED = "421 4.4.2 Error: idle session closed, too many connections"
R554_ACCESS_DENIED = "554 5.7.1 Error: access denied"

# --- command syntax and sequence (RFC 5321 §4.2, Postfix smtpd wording) ------------------
R250_OK = "250 2.0.0 Ok"
R250_RSET = "250 2.0.0 Ok"
R221_BYE = "221 2.0.0 Bye"
R501_MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address>"
R501_RCPT_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address>"
R501_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
R501_CONTROL_CHARS = "501 5.5.2 Syntax error: control characters in command"
R501_BODY = "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"
R501_DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
R501_RSET_SYNTAX = "501 5.5.4 Syntax: RSET"
R503_NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
R503_NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
R503_NEED_MAIL = "503 5.5.1 Error: need MAIL command"
R503_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
R554_NO_VALID_RECIPIENTS = "554 5.5.1 Error: no valid recipients"
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
R552_SIZE_AT_MAIL = "552 5.3.4 Message size exceeds fixed limit"
R552_TOO_BIG = "552 5.3.4 Error: message file too big"
R354_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"


def unsupported_parameter(param: str) -> str:
    return f"555 5.5.4 Unsupported option: {reply_text(param)[:60]}"


def bad_parameter(param: str) -> str:
    return f"501 5.5.4 Bad parameter syntax: {reply_text(param)[:60]}"


# --- XFORWARD (XFORWARD_README; Postfix smtpd.c wording) ---------------------------------
R550_XFORWARD_DENIED = "550 5.7.0 Error: insufficient authorization"
R503_XFORWARD_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
R501_XFORWARD_SYNTAX = "501 5.5.4 Syntax: XFORWARD attribute=value..."


def xforward_bad_name(name: str) -> str:
    return f"501 5.5.4 Bad XFORWARD attribute name: {reply_text(name)[:40]}"


def xforward_bad_value(name: str) -> str:
    return f"501 5.5.4 Bad XFORWARD attribute value for {reply_text(name)[:40]}"


# --- our trouble: always 4xx, Postfix keeps the message ---------------------------------
R451_LOCAL_ERROR = "451 4.3.0 Error: content filter failure, try again later"
R451_SCAN_TIMEOUT = "451 4.4.7 Error: content filter timed out, try again later"
R451_QUARANTINE_FAILED = "451 4.3.0 Error: cannot store the message in quarantine, try again later"
R451_SMTPUTF8_UNSUPPORTED = (
    "451 4.6.7 Error: SMTPUTF8 required but the after-filter server does not support it"
)


def downstream_failure(stage: str) -> str:
    """10026 unreachable, silent or gone. 4.4.1: no answer; 4.4.2: bad connection."""
    code = "4.4.1" if stage in ("connect", "EHLO") else "4.4.2"
    return f"451 {code} Error: after-filter server failed at {stage}, try again later"


# --- EHLO ---------------------------------------------------------------------------------
def ehlo_lines(hostname: str, keywords: Iterable[str]) -> str:
    lines = [hostname, *keywords]
    return "\r\n".join(
        f"250{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines)
    )


# --- decisions ----------------------------------------------------------------------------
_GROUP_REF = re.compile(r"\$(?:\{(\d)\}|(\d))")



def encode_reply(status: str | bytes) -> bytes:
    """A reply as it goes on the wire: every line printable ASCII, each ended by CRLF.

    The last defence for every reply we send, ours and aiosmtpd's alike: aiosmtpd echoes client
    text (the unknown command in ``500 Error: command "..." not recognized``, VRFY's argument),
    and a CR, LF, NUL, ESC or 8-bit byte there would forge or break reply lines. Lines of a
    multi-line reply are joined by CRLF by the caller; anything else becomes "?".
    """
    if isinstance(status, bytes):
        status = status.decode("ascii", "surrogateescape")
    return "\r\n".join(map(reply_text, status.split("\r\n"))).encode("ascii") + b"\r\n"


def render_text(template: str, groups: tuple[str, ...], rule: str | None) -> str:
    """``$1``/``${1}`` as in Postfix header_checks(5); ``$rule`` is not expanded, on purpose."""

    def group(match: re.Match[str]) -> str:
        index = int(match.group(1) or match.group(2))
        return groups[index - 1] if 0 < index <= len(groups) else ""

    return reply_text(_GROUP_REF.sub(group, template))[:400]


def starts_with_status(text: str, classes: str = "245") -> str | None:
    """The class digit of the enhanced status code ``text`` starts with, when that class is one
    of ``classes``; None otherwise."""
    match = ENHANCED_STATUS.match(text)
    return match.group(1) if match and match.group(1) in classes else None


def _with_code(code: str, default_enhanced: str, text: str) -> str:
    if starts_with_status(text):
        return f"{code} {text}"
    return f"{code} {default_enhanced} {text}"


def for_decision(decision: Decision) -> str | None:
    """The reply for a decision that does not deliver; None when the message goes to 10026."""
    rule = decision.rule or "score"
    if decision.action is Action.REJECT:
        text = decision.text or f"Message content rejected ({rule})"
        return _with_code("550", "5.7.1", text)
    if decision.action is Action.TEMPFAIL:
        text = decision.text or f"Message content deferred ({rule}), try again later"
        return _with_code("451", "4.7.1", text)
    if decision.action is Action.DISCARD:
        return f"250 2.0.0 Ok: discarded by content filter ({rule})"
    if decision.action is Action.QUARANTINE:
        return quarantined(rule, None)
    return None


def quarantined(rule: str, entry_id: str | None) -> str:
    """250 only once the copy is safely on disk; the id is what `smtpfilter quarantine` takes."""
    where = f" as {entry_id}" if entry_id else ""
    return f"250 2.0.0 Ok: quarantined{where} by content filter ({rule})"


def relay(reply: Reply) -> str:
    """10026's own reply, passed on: its text (e.g. "queued as 4F2B1") lets an admin follow a
    message across both Postfix passes. Never 421 upstream: our session with Postfix is fine
    even when 10026 closed its side, so that becomes 451."""
    code = reply.code
    if code == 421:
        code = 451
    lines = [reply_text(line) for line in reply.text.split("\n")] or [""]
    return "\r\n".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines)
    )
