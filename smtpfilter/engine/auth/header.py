"""The Authentication-Results header field (RFC 8601): the one we add, and the forged ones we cut.

We write ``authserv-id; method=result ptype.property=value ...`` with one resinfo per SPF
identity, per DKIM signature and for DMARC, or ``authserv-id; none`` when nothing was checked
(RFC 8601 §2.2). Property values are written bare when they are RFC 2045 tokens or
``local-part@domain``, else as quoted strings; comments carry a sanitised reason. The value is
ASCII only: domains are A-labels and untrusted text (DNS, signatures) goes through
:func:`_comment`/:func:`_value`, so :func:`smtpfilter.core.wire.fold_header` never has to
replace anything.

RFC 8601 §5: an incoming A-R field carrying our authserv-id MUST be removed (or renamed) before
delivery, else a forger could claim our "pass". :func:`forged` says which ones; every front
door cuts them out by their offsets (core.wire.outgoing), other ids' fields stay.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from smtpfilter.core.message import parse_header_block

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.core.message import Header, HeaderBlock, MessageContext
    from smtpfilter.engine.auth.dkim import DkimOutcome
    from smtpfilter.engine.auth.dmarc import DmarcOutcome
    from smtpfilter.engine.auth.spf import SpfOutcome

__all__ = ["NAME", "authentication_results", "carries_id", "forged"]

NAME = "Authentication-Results"

# RFC 2045 token: any CHAR except SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# local-part "@" domain with a dot-atom local part (RFC 5322 §3.2.3 atext).
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9.-]+")
_HEADER_B_LENGTH = 12  # RFC 6008: enough of b= to tell signatures apart (8 is its minimum)


def _value(text: str) -> str:
    """A pvalue: bare when the grammar allows, else a quoted-string of printable ASCII."""
    if _TOKEN.fullmatch(text) or _ADDRESS.fullmatch(text):
        return text
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str, limit: int = 120) -> str:
    """A CFWS comment: printable ASCII without parentheses or backslashes, bounded."""
    clean = "".join(c if " " <= c <= "~" and c not in "()\\" else " " for c in text)
    clean = " ".join(clean.split())
    if len(clean) > limit:
        clean = clean[: limit - 3] + "..."
    return f" ({clean})" if clean else ""


def authentication_results(
    authserv_id: str,
    spf: "SpfOutcome | None",
    dkim: "DkimOutcome | None",
    dmarc: "DmarcOutcome | None",
    *,
    comments: bool = True,
) -> str:
    """The field value (no name, no folding) for these results; None: not checked."""
    entries = []
    if spf is not None:
        note = _comment(spf.reason) if comments and spf.result not in ("pass", "none") else ""
        if spf.identity == "helo":
            prop = f"smtp.helo={_value(spf.domain or '')}"
        else:
            sender = spf.sender
            prop = f"smtp.mailfrom={_value(sender if _ADDRESS.fullmatch(sender) else spf.domain)}"
        entries.append(f"spf={spf.result}{note} {prop}")
    if dkim is not None:
        if not dkim.signatures:
            entries.append("dkim=none")
        for signature in dkim.signatures:
            note = ""
            if comments:
                detail = signature.reason
                if signature.result == "pass" and signature.key_bits:
                    detail = f"{signature.key_bits}-bit key"
                note = _comment(detail)
            props = []
            if signature.domain:
                props.append(f"header.d={_value(signature.domain)}")
            if signature.selector:
                props.append(f"header.s={_value(signature.selector)}")
            if signature.algorithm:
                props.append(f"header.a={_value(signature.algorithm)}")
            if signature.b:
                props.append(f"header.b={_value(signature.b[:_HEADER_B_LENGTH])}")
            entries.append(" ".join([f"dkim={signature.result}{note}", *props]))
    if dmarc is not None:
        note = ""
        if comments:
            if dmarc.policy:
                detail = f"p={dmarc.policy}"
                if dmarc.disposition:
                    detail += f" dis={dmarc.disposition}"
                note = _comment(detail)
            elif dmarc.result != "none":
                note = _comment(dmarc.reason)
        prop = f" header.from={_value(dmarc.from_domain)}" if dmarc.from_domain else ""
        entries.append(f"dmarc={dmarc.result}{note}{prop}")
    return "; ".join([authserv_id, *entries]) if entries else f"{authserv_id}; none"


def _skip_cfws(text: str, i: int) -> int:
    """The index after any folding white space and comments at ``i``; comments nest and may
    hold quoted pairs (RFC 5322 §3.2.2), so "(a (b)) id" is the id "id", as a reader sees it."""
    while i < len(text):
        if text[i] in " \t\r\n":
            i += 1
        elif text[i] == "(":
            depth = 0
            while i < len(text):
                char = text[i]
                if char == "\\":
                    i += 2
                    continue
                if char == "(":
                    depth += 1
                elif char == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def authserv_id_of(value: str) -> str:
    """The authserv-id an A-R field value starts with (RFC 8601 §2.2: a token or a quoted
    string, after optional CFWS), lower case, without a final dot; "" when there is none."""
    i = _skip_cfws(value, 0)
    if value[i : i + 1] == '"':
        found = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            found.append(value[i])
            i += 1
        text = "".join(found)
    else:
        match = _TOKEN.match(value, i)
        text = match.group(0) if match else ""
    return text.strip().rstrip(".").lower()


def carries_id(value: str, authserv_id: str) -> bool:
    """Whether an A-R field value names ``authserv_id`` (case-insensitive; comments and
    whitespace before it, and quoting, ignored): RFC 8601 §5 says such a field from outside
    must not survive."""
    return authserv_id_of(value) == authserv_id.strip().rstrip(".").lower()


def forged(headers: "HeaderBlock", authserv_id: str | None) -> tuple["Header", ...]:
    """The incoming Authentication-Results fields of ``headers`` that name ``authserv_id``."""
    if not authserv_id:
        return ()
    return tuple(h for h in headers.get_all(NAME) if carries_id(h.text, authserv_id))


def forged_in(msg: "MessageContext", authserv_id: str | None) -> tuple["Header", ...]:
    """The incoming Authentication-Results fields of ``msg`` that name ``authserv_id``: to be
    removed, all of them. A header section longer than limits.header_size is read to its end
    for this (once, only for such a message): a forged field hidden past the limit must not
    survive either."""
    if not authserv_id:
        return ()
    headers = msg.headers
    if headers.truncated:
        headers = parse_header_block(msg.data, len(msg.data) + 1)
    return forged(headers, authserv_id)
