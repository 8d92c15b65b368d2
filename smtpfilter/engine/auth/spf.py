"""SPF (RFC 7208): ``check_host()`` on our own resolver and cache, asynchronously.

Written here rather than taken from pyspf because pyspf does its own DNS synchronously
(a module-global ``DNSLookup`` on dnspython's blocking resolver, 20 s per query) and has had no
release since 2020; running it in a thread would park a thread per message behind slow DNS and
still bypass our cache. RFC 7208 is small and exactly specified, and the openspf test suite
(rfc7208-tests.yml, the one pyspf and Mail::SPF run) checks us; Mail::SPF and libspf2 check us
again on generated cases (tests/test_differential.py).

What is implemented, section by section:

- §4.3 initial processing: a malformed or single-label domain is ``none``; an empty local-part
  becomes "postmaster".
- §4.4-4.5 record lookup: TXT only (type SPF was dropped by RFC 7208 §3.1); exactly one record
  starting ``v=spf1``; DNS trouble is ``temperror``.
- §4.6 the whole record is parsed before anything is evaluated, so a syntax error anywhere is
  ``permerror`` even behind a matching ``all``. Unknown modifiers are ignored; ``redirect`` and
  ``exp`` at most once each.
- §5 mechanisms all, include, a, mx, ptr, ip4, ip6, exists; dual CIDR; IPv4-mapped IPv6 clients
  are IPv4.
- §4.6.4 limits: 10 terms that cause DNS lookups (include, a, mx, ptr, exists, redirect), 2 void
  lookups (NXDOMAIN or no answer; counted per query like pyspf and Mail::SPF do), at most 10 MX
  names per ``mx`` (more is ``permerror``) and 10 PTR names per ``ptr`` (the rest ignored). A total
  deadline per check (``SpfLimits.timeout``) and the per-message DNS budget bound the rest.
- §6.2 ``exp=`` explanation for ``fail``; its lookups do not count and its errors are ignored.
- §7 macros, with transformers and URL escaping; ``c``, ``r``, ``t`` only in ``exp`` text; an
  expanded name over 253 characters loses labels on the left (§7.3).

Not implemented: the ``p`` macro does the validated-PTR walk of §5.5 (it is "discouraged" by §7.3
but still valid); DNS type SPF (99); RFC 6652 SPF failure reports (``ra=``/``rp=``/``rr=`` are
unknown modifiers, ignored).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from smtpfilter.core.text import snippet
from smtpfilter.engine.resolver import Lookup

__all__ = [
    "SpfLimits",
    "SpfOutcome",
    "SpfResult",
    "check_host",
    "check_message",
    "parse_record",
    "SpfSyntaxError",
]

log = logging.getLogger(__name__)

Query = Callable[[str, str], Awaitable[Lookup]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SpfResult(enum.StrEnum):
    """RFC 7208 §2.6 results, spelled as in RFC 8601 Authentication-Results."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


_QUALIFIERS = {
    "+": SpfResult.PASS,
    "-": SpfResult.FAIL,
    "~": SpfResult.SOFTFAIL,
    "?": SpfResult.NEUTRAL,
}


@dataclass(frozen=True, slots=True)
class SpfLimits:
    """RFC 7208 §4.6.4 processing limits (the defaults are the RFC's)."""

    max_lookups: int = 10  # terms causing DNS queries
    max_void_lookups: int = 2
    max_mx: int = 10  # MX names per "mx" mechanism (more: permerror)
    max_ptr: int = 10  # PTR names per "ptr" mechanism or %{p} (the rest are ignored)
    # §4.6.4: "MAY ... limit the total amount of time"; 20 s is the minimum it asks for when
    # one is imposed, and ours is still capped by the per-message DNS deadline.
    timeout: float = 20.0


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """The result of one ``check_host()`` for one identity."""

    result: SpfResult
    identity: str  # "mailfrom" or "helo" (RFC 8601 smtp.mailfrom / smtp.helo)
    domain: str  # the domain checked ("" when there was none to check)
    sender: str  # the <sender> of check_host (postmaster@helo for a null reverse-path)
    reason: str  # the matching term, or the error, for logs and A-R comments
    explanation: str = ""  # from exp= on fail (untrusted text: sanitise before showing)
    lookups: int = 0  # DNS-causing terms evaluated
    void_lookups: int = 0
    queries: int = 0  # DNS queries asked (cache hits included)


# --- record syntax ----------------------------------------------------------------------------
class SpfSyntaxError(ValueError):
    """The record breaks RFC 7208's grammar: check_host() is permerror."""


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])([0-9]*)(r?)([.\-+,/_=]*)\}|%|_|-)", re.I)
# macro-literal = %x21-24 / %x26-7E: visible ASCII except "%".
_LITERAL = re.compile(r"[\x21-\x24\x26-\x7e]+")
# toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])")
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf"{_QNUM}\.{_QNUM}\.{_QNUM}\.{_QNUM}")
# dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]; no leading zeros.
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?$")
_CIDR = re.compile(r"/(0|[1-9][0-9]{0,2})$")
_EXP_ONLY = frozenset("crt")


@dataclass(frozen=True, slots=True)
class MacroString:
    """A parsed macro-string: literal text and (letter, digits, reverse, delimiters) parts."""

    parts: tuple[str | tuple[str, int | None, bool, str], ...]
    text: str
    ends_with_expand: bool = False  # the last token is a macro-expand (%{..}, %%, %_, %-)

    @property
    def has_macros(self) -> bool:
        return any(not isinstance(p, str) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Directive:
    qualifier: str
    mechanism: str  # all include a mx ptr ip4 ip6 exists
    domain: MacroString | None = None
    network4: ipaddress.IPv4Network | None = None
    network6: ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128
    text: str = ""

    @property
    def causes_lookup(self) -> bool:
        return self.mechanism in ("include", "a", "mx", "ptr", "exists")


@dataclass(frozen=True, slots=True)
class Record:
    directives: tuple[Directive, ...]
    redirect: MacroString | None = None
    exp: MacroString | None = None


def _parse_macro_string(text: str, *, exp: bool = False) -> MacroString:
    parts: list[str | tuple[str, int | None, bool, str]] = []
    position = 0
    last_expand = False
    while position < len(text):
        last_expand = text[position] == "%"
        if last_expand:
            match = _MACRO.match(text, position)
            if match is None:
                raise SpfSyntaxError(f"bad macro at {text[position:position + 12]!r}")
            token = match.group(0)
            if token == "%%":
                parts.append("%")
            elif token == "%_":
                parts.append(" ")
            elif token == "%-":
                parts.append("%20")
            else:
                letter, digits, reverse, delimiters = match.groups()
                if letter.lower() in _EXP_ONLY and not exp:
                    raise SpfSyntaxError(f"macro %{{{letter}}} is only allowed in exp= text")
                count = int(digits) if digits else None
                if count == 0:
                    # RFC 7208 §7.1: "the value ... must be nonzero" (transformers).
                    raise SpfSyntaxError(f"macro {token!r}: zero labels")
                parts.append((letter, count, bool(reverse), delimiters or "."))
            position = match.end()
        else:
            match = _LITERAL.match(text, position)
            if match is None and not exp:
                raise SpfSyntaxError(f"bad character {text[position]!r} in {text!r}")
            if match is None:  # explanation text: any printable, spaces included
                parts.append(text[position])
                position += 1
            else:
                parts.append(match.group(0))
                position = match.end()
    return MacroString(tuple(parts), text, last_expand)


def _parse_domain_spec(text: str) -> MacroString:
    """domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) / macro-expand."""
    if not text:
        raise SpfSyntaxError("empty domain-spec")
    spec = _parse_macro_string(text)
    if spec.ends_with_expand:
        return spec
    # Ends with literal text: "." toplabel [ "." ].
    literal = text[:-1] if text.endswith(".") else text
    _head, dot, toplabel = literal.rpartition(".")
    if not dot or not _TOPLABEL.fullmatch(toplabel):
        raise SpfSyntaxError(f"domain-spec {text!r} does not end in a valid top label")
    return spec


@functools.lru_cache(maxsize=4096)
def parse_record(text: str) -> Record:
    """Parse a whole ``v=spf1`` record; :class:`SpfSyntaxError` on any error (RFC 7208 §4.6)."""
    if not text.isascii():
        raise SpfSyntaxError("record is not 7-bit ASCII (RFC 7208 §3.1)")
    terms = text.split(" ")
    if terms[0].lower() != "v=spf1":
        raise SpfSyntaxError("record does not start with v=spf1")
    directives: list[Directive] = []
    redirect = exp = None
    for term in terms[1:]:
        if not term:
            continue  # 1*SP between terms, and trailing spaces
        name_match = _NAME.match(term)
        if name_match and term[name_match.end():name_match.end() + 1] == "=":
            name = name_match.group(0).lower()
            value = term[name_match.end() + 1:]
            if name == "redirect":
                if redirect is not None:
                    raise SpfSyntaxError("more than one redirect= (RFC 7208 §6)")
                redirect = _parse_domain_spec(value)
            elif name == "exp":
                if exp is not None:
                    raise SpfSyntaxError("more than one exp= (RFC 7208 §6)")
                exp = _parse_domain_spec(value)
            else:
                _parse_macro_string(value)  # unknown-modifier = name "=" macro-string
            continue
        directives.append(_parse_directive(term))
    return Record(tuple(directives), redirect, exp)


_MECHANISM = re.compile(r"([A-Za-z][A-Za-z0-9]*)(.*)", re.S)


def _parse_directive(term: str) -> Directive:
    qualifier = "+"
    body = term
    if body[:1] in _QUALIFIERS:
        qualifier, body = body[0], body[1:]
    match = _MECHANISM.fullmatch(body)
    if match is None:
        raise SpfSyntaxError(f"bad term {term!r}")
    name, rest = match.group(1).lower(), match.group(2)
    if rest and rest[0] not in ":/":
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    has_domain = rest.startswith(":")
    argument = rest[1:] if has_domain else rest
    if name == "all":
        if rest:
            raise SpfSyntaxError(f"'all' takes no argument: {term!r}")
        return Directive(qualifier, "all", text=term)
    if name in ("include", "exists"):
        if not has_domain:
            raise SpfSyntaxError(f"{name} needs a domain: {term!r}")
        return Directive(qualifier, name, _parse_domain_spec(argument), text=term)
    if name in ("a", "mx"):
        cidr = _DUAL_CIDR.search(argument)
        domain_text = argument[: cidr.start()] if cidr else argument
        if not has_domain and domain_text:
            raise SpfSyntaxError(f"bad CIDR length in {term!r}")
        cidr4 = int(cidr.group(1)) if cidr and cidr.group(1) is not None else 32
        cidr6 = int(cidr.group(2)) if cidr and cidr.group(2) is not None else 128
        if cidr4 > 32 or cidr6 > 128:
            raise SpfSyntaxError(f"CIDR length out of range in {term!r}")
        domain = _parse_domain_spec(domain_text) if has_domain else None
        return Directive(qualifier, name, domain, cidr4=cidr4, cidr6=cidr6, text=term)
    if name == "ptr":
        if rest and not has_domain:
            raise SpfSyntaxError(f"ptr takes no CIDR: {term!r}")
        return Directive(qualifier, "ptr", _parse_domain_spec(argument) if has_domain else None, text=term)
    if name in ("ip4", "ip6"):
        if not has_domain:
            raise SpfSyntaxError(f"{name} needs an address: {term!r}")
        address, slash, length = argument.partition("/")
        top = 32 if name == "ip4" else 128
        if slash and (not _CIDR.fullmatch("/" + length) or int(length) > top):
            raise SpfSyntaxError(f"bad {name} CIDR length in {term!r}")
        try:
            if name == "ip4":
                if not _IP4.fullmatch(address):
                    raise ValueError
                return Directive(qualifier, "ip4", text=term, network4=ipaddress.IPv4Network(
                    f"{address}/{length or 32}", strict=False))
            if "%" in address:
                raise ValueError  # no zone ids
            return Directive(qualifier, "ip6", text=term, network6=ipaddress.IPv6Network(
                f"{address}/{length or 128}", strict=False))
        except ValueError:
            raise SpfSyntaxError(f"bad {name} address in {term!r}") from None
    raise SpfSyntaxError(f"unknown mechanism {term!r}")


# --- domain names ------------------------------------------------------------------------------
def valid_domain(name: str) -> bool:
    """RFC 7208 §4.3: a multi-label name, labels 1-63 octets, at most 253 in total."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or "." not in name:
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


def _fit(name: str) -> str:
    """RFC 7208 §7.3: drop labels on the left until the name is at most 253 characters."""
    name = name.rstrip(".")
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


# --- errors inside one evaluation ---------------------------------------------------------------
class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(slots=True)
class _State:
    """One check_host() tree: its inputs and the counters shared by every nested include."""

    ip: IPAddress
    sender: str
    local_part: str
    sender_domain: str
    helo: str
    query: Query
    limits: SpfLimits
    deadline: float
    receiver: str = "unknown"
    lookups: int = 0
    void_lookups: int = 0
    queries: int = 0
    validated_ptr: str | None = None  # %{p}, computed once
    trail: list[str] = field(default_factory=list)


def _reverse_ip(ip: IPAddress) -> tuple[str, str]:
    """(%{i} form, reverse-zone name): dotted quad / dotted nibbles (RFC 7208 §7.3)."""
    if ip.version == 4:
        text = str(ip)
        return text, ".".join(reversed(text.split("."))) + ".in-addr.arpa"
    nibbles = ip.exploded.replace(":", "")
    return ".".join(nibbles), ".".join(reversed(nibbles)) + ".ip6.arpa"


class _Evaluation:
    def __init__(self, state: _State) -> None:
        self.s = state

    # --- DNS ---------------------------------------------------------------------------
    async def _ask(self, name: str, rdtype: str, *, void_counts: bool) -> tuple[str, ...]:
        s = self.s
        if time.monotonic() >= s.deadline:
            raise _TempError("SPF evaluation ran out of time")
        s.queries += 1
        lookup = await s.query(name, rdtype)
        if lookup.error is not None:
            raise _TempError(f"DNS {rdtype} {name}: {lookup.error}")
        if not lookup.records and void_counts:
            s.void_lookups += 1
            if s.void_lookups > s.limits.max_void_lookups:
                raise _PermError(
                    f"more than {s.limits.max_void_lookups} void lookups (RFC 7208 §4.6.4)"
                )
        return lookup.records

    def _count_term(self, term: str) -> None:
        self.s.lookups += 1
        if self.s.lookups > self.s.limits.max_lookups:
            raise _PermError(
                f"more than {self.s.limits.max_lookups} DNS-querying terms at {term!r} "
                f"(RFC 7208 §4.6.4)"
            )

    async def _addresses(self, name: str) -> list[IPAddress]:
        rdtype = "A" if self.s.ip.version == 4 else "AAAA"
        records = await self._ask(name, rdtype, void_counts=True)
        found = []
        for record in records:
            try:
                found.append(ipaddress.ip_address(record))
            except ValueError:
                continue
        return found

    # --- record ------------------------------------------------------------------------
    async def record(self, domain: str) -> Record | None:
        """The domain's SPF record, None for "none"; errors raise."""
        records = await self._ask(domain, "TXT", void_counts=False)
        spf = [r for r in records if r[:6].lower() == "v=spf1" and (len(r) == 6 or r[6] == " ")]
        if not spf:
            return None
        if len(spf) > 1:
            raise _PermError(f"{domain} has {len(spf)} SPF records (RFC 7208 §4.5)")
        try:
            return parse_record(spf[0])
        except SpfSyntaxError as error:
            raise _PermError(f"{domain}: {error}") from None

    # --- macros --------------------------------------------------------------------------
    async def expand(self, spec: MacroString, domain: str, *, exp: bool = False) -> str:
        out = []
        for part in spec.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            letter, count, reverse, delimiters = part
            value = await self._macro_value(letter.lower(), domain)
            pieces = re.split("[" + re.escape(delimiters) + "]", value)
            if reverse:
                pieces.reverse()
            if count is not None:
                pieces = pieces[-count:]
            text = ".".join(pieces)
            if letter.isupper():
                # RFC 7208 §7.3: uppercase macro letters are URL-escaped (RFC 3986 unreserved kept).
                text = urllib.parse.quote(text, safe="-._~")
            out.append(text)
        result = "".join(out)
        return result if exp else _fit(result)

    async def _macro_value(self, letter: str, domain: str) -> str:
        s = self.s
        if letter == "s":
            return s.sender
        if letter == "l":
            return s.local_part
        if letter == "o":
            return s.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            return _reverse_ip(s.ip)[0]
        if letter == "v":
            return "in-addr" if s.ip.version == 4 else "ip6"
        if letter == "h":
            return s.helo
        if letter == "c":
            return str(s.ip)
        if letter == "r":
            return s.receiver
        if letter == "t":
            return str(int(time.time()))
        if letter == "p":
            if s.validated_ptr is None:
                s.validated_ptr = await self._validated_ptr(domain, any_domain=True) or "unknown"
            return s.validated_ptr
        raise _PermError(f"unknown macro letter {letter!r}")

    async def _validated_ptr(self, target: str, *, any_domain: bool = False) -> str | None:
        """RFC 7208 §5.5: a PTR name of the client that resolves back to it and is ``target`` or
        under it (any such name for %{p}); DNS errors on the forward lookups skip that name."""
        _, reverse = _reverse_ip(self.s.ip)
        try:
            names = await self._ask(reverse, "PTR", void_counts=True)
        except _TempError:
            return None  # §5.5: a PTR lookup error means "no match"
        target = target.lower().rstrip(".")
        exact = subdomain = other = None
        for name in names[: self.s.limits.max_ptr]:
            name = name.lower().rstrip(".")
            matches_target = name == target or name.endswith("." + target)
            if not matches_target and not any_domain:
                continue
            try:
                addresses = await self._addresses(name)
            except _TempError:
                continue
            if self.s.ip not in addresses:
                continue
            if name == target:
                exact = exact or name
            elif matches_target:
                subdomain = subdomain or name
            else:
                other = other or name
        return exact or subdomain or other

    # --- evaluation ----------------------------------------------------------------------
    async def check_host(self, domain: str) -> tuple[SpfResult, str, str]:
        """(result, reason, explanation) for ``domain``; raises only for include's use."""
        if not valid_domain(domain):
            return SpfResult.NONE, f"{domain!r} is not a valid domain (RFC 7208 §4.3)", ""
        domain = domain.rstrip(".").lower()
        record = await self.record(domain)
        if record is None:
            return SpfResult.NONE, f"no SPF record at {domain}", ""
        for directive in record.directives:
            if await self._matches(directive, domain):
                result = _QUALIFIERS[directive.qualifier]
                explanation = ""
                if result is SpfResult.FAIL and record.exp is not None:
                    explanation = await self._explanation(record.exp, domain)
                return result, f"{domain}: matched {directive.text}", explanation
        if record.redirect is not None:
            self._count_term("redirect=" + record.redirect.text)
            target = await self.expand(record.redirect, domain)
            self.s.trail.append(f"redirect {target}")
            result, reason, explanation = await self.check_host(target)
            if result is SpfResult.NONE:
                raise _PermError(f"redirect={target}: {reason} (RFC 7208 §6.1)")
            return result, reason, explanation
        return SpfResult.NEUTRAL, f"{domain}: no term matched (default neutral)", ""

    async def _matches(self, d: Directive, domain: str) -> bool:
        s = self.s
        if d.causes_lookup:
            self._count_term(d.text)
        mech = d.mechanism
        if mech == "all":
            return True
        if mech == "ip4":
            return s.ip.version == 4 and s.ip in d.network4  # type: ignore[operator]
        if mech == "ip6":
            return s.ip.version == 6 and s.ip in d.network6  # type: ignore[operator]
        target = await self.expand(d.domain, domain) if d.domain is not None else domain
        if mech == "include":
            s.trail.append(f"include {target}")
            result, reason, _ = await self.check_host(target)
            if result is SpfResult.PASS:
                return True
            if result in (SpfResult.FAIL, SpfResult.SOFTFAIL, SpfResult.NEUTRAL):
                return False
            if result is SpfResult.TEMPERROR:
                raise _TempError(reason)
            # permerror, and none: RFC 7208 §5.2 table.
            raise _PermError(f"include:{target}: {reason}")
        if not valid_domain(target):
            # An expanded name DNS cannot carry: like a void lookup, it matches nothing.
            s.void_lookups += 1
            if s.void_lookups > s.limits.max_void_lookups:
                raise _PermError(f"more than {s.limits.max_void_lookups} void lookups")
            return False
        if mech == "a":
            return self._in_networks(await self._addresses(target), d)
        if mech == "mx":
            records = await self._ask(target, "MX", void_counts=True)
            if len(records) > s.limits.max_mx:
                raise _PermError(
                    f"{target} has {len(records)} MX records, more than {s.limits.max_mx} "
                    f"(RFC 7208 §4.6.4)"
                )
            hosts = sorted(_mx_hosts(records))
            for _pref, host in hosts:
                if self._in_networks(await self._addresses(host), d):
                    return True
            return False
        if mech == "ptr":
            return await self._validated_ptr(target) is not None
        if mech == "exists":
            # RFC 7208 §5.7: always an A query, whatever the client's address family.
            return bool(await self._ask(target, "A", void_counts=True))
        raise _PermError(f"unknown mechanism {mech}")

    def _in_networks(self, addresses: list[IPAddress], d: Directive) -> bool:
        length = d.cidr4 if self.s.ip.version == 4 else d.cidr6
        for address in addresses:
            if address.version != self.s.ip.version:
                continue
            network = ipaddress.ip_network(f"{address}/{length}", strict=False)
            if self.s.ip in network:
                return True
        return False

    async def _explanation(self, spec: MacroString, domain: str) -> str:
        """RFC 7208 §6.2: any error here means "no explanation", never a different result."""
        try:
            target = await self.expand(spec, domain)
            if not valid_domain(target):
                return ""
            s = self.s
            lookup = await s.query(target, "TXT")
            s.queries += 1
            if lookup.error is not None or len(lookup.records) != 1:
                return ""
            text = lookup.records[0]
            if not text.isascii():
                return ""
            return await self.expand(_parse_macro_string(text, exp=True), domain, exp=True)
        except (SpfSyntaxError, _PermError, _TempError):
            return ""


def _mx_hosts(records: tuple[str, ...]) -> list[tuple[int, str]]:
    hosts = []
    for record in records:
        preference, _, host = record.partition(" ")
        host = host.rstrip(".")
        if not host:
            continue  # RFC 7505 null MX ("0 ."): the domain accepts no mail, names no host
        try:
            hosts.append((int(preference), host))
        except ValueError:
            continue
    return hosts


# --- entry points ------------------------------------------------------------------------------
def _parse_ip(text: str) -> IPAddress:
    text = text.strip()
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    ip = ipaddress.ip_address(text)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # RFC 7208 §5: IPv4-mapped IPv6 clients are IPv4 clients
    return ip


async def check_host(
    ip: str | IPAddress,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    query: Query,
    limits: SpfLimits = SpfLimits(),
    identity: str = "mailfrom",
    receiver: str = "unknown",
) -> SpfOutcome:
    """RFC 7208 §4 ``check_host(<ip>, <domain>, <sender>)``. Never raises for bad input or DNS."""
    client = _parse_ip(ip) if isinstance(ip, str) else ip
    if client.version == 6 and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    local, at, sender_domain = sender.rpartition("@")
    if not at:
        local, sender_domain = "postmaster", sender
    if not local:
        local = "postmaster"  # RFC 7208 §4.3
    state = _State(
        ip=client,
        sender=f"{local}@{sender_domain}",
        local_part=local,
        sender_domain=sender_domain,
        helo=helo,
        query=query,
        limits=limits,
        deadline=time.monotonic() + limits.timeout,
        receiver=receiver,
    )
    evaluation = _Evaluation(state)
    explanation = ""
    try:
        result, reason, explanation = await evaluation.check_host(domain)
    except _PermError as error:
        result, reason = SpfResult.PERMERROR, str(error)
    except _TempError as error:
        result, reason = SpfResult.TEMPERROR, str(error)
    return SpfOutcome(
        result, identity, domain.rstrip(".").lower(), state.sender, reason, explanation,
        state.lookups, state.void_lookups, state.queries,
    )


def _domain_part(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


async def check_message(
    client_ip: str | None,
    helo: str | None,
    mail_from: str,
    *,
    query: Query,
    limits: SpfLimits = SpfLimits(),
    receiver: str = "unknown",
) -> SpfOutcome | None:
    """The SPF result for one message: MAIL FROM, or HELO for a null reverse-path (RFC 7208
    §2.4). None when there is no client address (local submission: nothing to check)."""
    if not client_ip:
        return None
    try:
        ip = _parse_ip(client_ip)
    except ValueError:
        return SpfOutcome(
            SpfResult.NONE, "mailfrom", "", mail_from,
            f"client address \"{snippet(client_ip, 60)}\" is not an IP address",
        )
    helo = (helo or "").strip()
    if mail_from:
        domain = _domain_part(mail_from)
        return await check_host(
            ip, domain, mail_from, helo=helo, query=query, limits=limits, receiver=receiver
        )
    # RFC 7208 §2.4: with a null reverse-path the HELO identity is checked as postmaster@helo.
    if not helo or helo.startswith("["):
        return SpfOutcome(SpfResult.NONE, "helo", "", "", "null sender and no usable HELO name")
    return await check_host(ip, helo, f"postmaster@{helo}", helo=helo, query=query, limits=limits,
                            identity="helo", receiver=receiver)
