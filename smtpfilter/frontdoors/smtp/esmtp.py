"""The ESMTP grammar the filter accepts from Postfix: MAIL and RCPT paths and parameters,
XFORWARD attributes. Pure functions: text in, parsed values or the reply that refuses it out.

aiosmtpd upper-cases parameters (corrupting ENVID and ORCPT) and answers 555 to every DSN
parameter (shared/TRAPS.md), so MAIL and RCPT are parsed here from the raw argument, and every
parameter is kept exactly as received so that it reaches 10026 unchanged.
"""

from __future__ import annotations

import ipaddress
import re

from smtpfilter.core import replies
from smtpfilter.core.envelope import XFORWARD_NAMES, without_ipv6_prefix
from smtpfilter.core.text import is_xtext, xtext_decode

__all__ = [
    "COMMAND_LIMIT",
    "PATH_COMMAND_LIMIT",
    "XFORWARD_KEYWORD",
    "check_mail_params",
    "check_rcpt_params",
    "parse_path",
    "parse_xforward",
]

# RFC 5321 §4.5.3.1.4 (512), raised for MAIL/RCPT by the parameters of SIZE, DSN (ORCPT can be
# 500 characters, RFC 3461 §4.2) and SMTPUTF8; Postfix's own line_length_limit is 2048.
COMMAND_LIMIT = 512
PATH_COMMAND_LIMIT = 2048

# What EHLO announces to a client allowed to use XFORWARD (XFORWARD_README).
XFORWARD_KEYWORD = "XFORWARD " + " ".join(XFORWARD_NAMES)
_XFORWARD_MAX_VALUE = 255  # XFORWARD_README: values longer than 255 characters get 501

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[!-<>-~\x80-\U0010ffff]+")  # esmtp-value: printable except "=" (and UTF-8)
_NOTIFY = re.compile(r"(?i)NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*")
_ORCPT = re.compile(r"(?i)[A-Za-z0-9-]+;.+")


def parse_path(arg: str, keyword: str) -> tuple[str, str, list[str]]:
    """``FROM:<path> PARAM=x ...`` → (address, path as received, parameter tokens).

    Raises ValueError on syntax errors. The path is taken between "<" and the matching ">"
    (quoted local parts may hold ">" and spaces, RFC 5321 §4.1.2); a path without brackets is
    accepted the way Postfix does by default (smtpd_strict_rfc821_envelopes = no).
    """
    if arg[: len(keyword)].upper() != keyword:
        raise ValueError("keyword")
    rest = arg[len(keyword) :].lstrip(" ")
    if rest.startswith("<"):
        quoted = escaped = False
        end = -1
        for index in range(1, len(rest)):
            char = rest[index]
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = not quoted
            elif char == ">" and not quoted:
                end = index
                break
        if end < 0:
            raise ValueError("unterminated path")
        path, tail = rest[1:end], rest[end + 1 :]
        if tail and not tail.startswith(" "):
            raise ValueError("garbage after path")
    else:
        path, _, tail = rest.partition(" ")
    address = path
    if address.startswith("@"):  # RFC 5321 §4.1.2 source route "@a,@b:user@host": ignored
        address = address.partition(":")[2]
    return address, path, tail.split()


def check_mail_params(
    tokens: list[str], size_limit: int, values: dict[str, str | None], kept: dict[str, str]
) -> str | None:
    """MAIL parameters: None when all are good (each stored in ``values``, KEYWORD → value as
    received, and ``kept``, KEYWORD → token as received), else the reply that refuses them.

    RFC 1870 SIZE, 6152 8BITMIME, 6531 SMTPUTF8, 3461 RET/ENVID, and what Postfix's before-queue
    smtpd_proxy_filter passes on verbatim from its own client (it forwards the client's MAIL
    command line as received, smtpd.c): 4954 AUTH and Postfix's XVERP."""
    for token in tokens:
        keyword, eq, value = token.partition("=")
        upper = keyword.upper()
        if not _KEYWORD.fullmatch(keyword) or (eq and not _VALUE.fullmatch(value)):
            return replies.bad_parameter(token)
        if upper in values:
            return replies.bad_parameter(token)
        if upper == "SIZE":
            if not value.isdigit():
                return replies.bad_parameter(token)
            if size_limit and int(value) > size_limit:  # 0: no fixed maximum
                return replies.R552_SIZE_AT_MAIL
        elif upper == "BODY":
            if value.upper() not in ("7BIT", "8BITMIME"):
                return replies.R501_BODY
        elif upper == "SMTPUTF8":
            if eq:
                return replies.bad_parameter(token)
        elif upper == "RET":
            if value.upper() not in ("FULL", "HDRS"):
                return replies.bad_parameter(token)
        elif upper == "ENVID":
            if len(value) > 100 or not is_xtext(value):
                return replies.bad_parameter(token)
        elif upper == "AUTH":
            if not eq or not (value == "<>" or is_xtext(value)):
                return replies.bad_parameter(token)
        elif upper == "XVERP":
            pass  # XVERP or XVERP=+= (VERP_README)
        else:
            return replies.unsupported_parameter(keyword)
        values[upper] = value if eq else None
        kept[upper] = token
    return None


def check_rcpt_params(tokens: list[str]) -> str | None:
    """RCPT parameters (RFC 3461 NOTIFY and ORCPT): None when good, else the refusing reply."""
    seen: set[str] = set()
    for token in tokens:
        keyword, eq, value = token.partition("=")
        upper = keyword.upper()
        if not _KEYWORD.fullmatch(keyword) or upper in seen:
            return replies.bad_parameter(token)
        seen.add(upper)
        if upper == "NOTIFY":
            if not _NOTIFY.fullmatch(value):
                return replies.bad_parameter(token)
        elif upper == "ORCPT":
            if len(value) > 500 or not _ORCPT.fullmatch(value):
                return replies.bad_parameter(token)
        else:
            return replies.unsupported_parameter(keyword)
    return None


def parse_xforward(arg: str) -> dict[str, str] | str:
    """XFORWARD's ``name=value ...`` (XFORWARD_README) → decoded attributes, or the reply that
    refuses the command (nothing of it is then applied)."""
    updates = {}
    for token in arg.split():
        name, eq, value = token.partition("=")
        name = name.upper()
        if not eq:
            return replies.R501_XFORWARD_SYNTAX
        if name not in XFORWARD_NAMES:
            return replies.xforward_bad_name(name)
        if len(value) > _XFORWARD_MAX_VALUE or not _valid_xtext_escapes(value):
            return replies.xforward_bad_value(name)
        decoded = xtext_decode(value)
        if name == "ADDR" and not _valid_addr(decoded):
            return replies.xforward_bad_value(name)
        updates[name] = decoded
    return updates


def _valid_xtext_escapes(value: str) -> bool:
    index = value.find("+")
    while index >= 0:
        digits = value[index + 1 : index + 3]
        if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            return False
        index = value.find("+", index + 3)
    return True


def _valid_addr(value: str) -> bool:
    """XFORWARD ADDR: IPv4, "IPv6:..." (or bare IPv6), or [UNAVAILABLE]/[TEMPUNAVAIL]."""
    if value in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
        return True
    try:
        ipaddress.ip_address(without_ipv6_prefix(value))
    except ValueError:
        return False
    return True
