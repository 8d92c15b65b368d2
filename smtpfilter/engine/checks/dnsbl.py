"""The ``dnsbl`` and ``rhsbl`` rule kinds: DNS list scores computed the way postscreen does.

```yaml
- name: DNSBL
  check: dnsbl
  sites: "zen.spamhaus.org=127.0.0.[2..11]*3, bl.spamcop.net*2, list.dnswl.org=127.0.[0..255].[2..3]*-4"
  threshold: 3               # listed at >= (postscreen_dnsbl_threshold)
  allowlist_threshold: -1    # optional: <= this accepts and skips the remaining rules
  action: reject
  text: "5.7.1 Service unavailable; client [$1] blocked using $2"
```

``sites`` is postscreen_dnsbl_sites (postconf(5)), pasted from main.cf: entries separated by
commas or whitespace, each ``domain[=d.d.d.d][*weight]``. A filter field is a number or
``[a;b;c..d]`` (Postfix's ip_match syntax); an entry without a filter matches any listing; the
weight defaults to 1 and is negative for allowlists. Each entry adds its weight once when any
answer of its domain matches its filter; the score is the sum. A domain named in several entries
is asked once. (postscreen_dnsbl.c, psc_dnsbl_add_site / psc_dnsbl_receive.)

What is looked up:

- ``dnsbl``: the client that connected to Postfix, from XFORWARD ADDR: IPv4 as reversed octets,
  IPv6 as 32 reversed nibbles (RFC 5782 §2.1, §2.4). No ADDR (local submission through pickup)
  means no lookup; loopback, private and other non-public addresses are never looked up.
  ``received_hop: 1`` (off by default) takes the address from the topmost ``Received:`` header
  (the one our own Postfix added) when XFORWARD gave none: for setups without XFORWARD.
- ``rhsbl``: domain names (RFC 5782 §2.2), chosen with ``lookup``: ``sender`` (envelope sender
  domain, Postfix's reject_rhsbl_sender), ``helo`` (reject_rhsbl_helo), ``client`` (the client's
  verified host name, reject_rhsbl_client), ``from`` (the From: header's domain). Each domain is
  scored on its own; the highest score counts.

Answers that are error codes (:func:`smtpfilter.engine.resolver.error_answer`: 127.255.255.0/24, dnswl's
127.0.0.255, anything outside 127.0.0.0/8) are errors, never listings; the zone is disabled until
its health probe passes. A timeout or DNS failure counts as "not listed" and is logged; with
``dns.on_error: tempfail`` the message gets 451 instead when the error could change the outcome.

Findings: ``LISTED`` (score >= threshold; the rule's action and score apply), ``ALLOWLISTED``
(score <= allowlist_threshold: accept, skip the remaining rules), ``DNS_ERROR`` (only with
``dns.on_error: tempfail``: 451). Reply text groups: ``$1`` the address or domain, ``$2`` the
lists that listed it, ``$3`` their TXT reason (sanitised; omit ``$3`` to never quote it), ``$4``
the score.

``reply_map`` hides keyed zone names (Spamhaus DQS ``<key>.zen.dq.spamhaus.net``) in replies,
headers and logs, like postscreen_dnsbl_reply_map: ``{"<key>.zen.dq.spamhaus.net":
"zen.spamhaus.org"}``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence
from typing import Mapping as TMapping

from smtpfilter.config.options import Options
from smtpfilter.config.yamlfile import Mapping
from smtpfilter.core.envelope import without_ipv6_prefix
from smtpfilter.core.fields import received_address
from smtpfilter.core.message import MessageContext
from smtpfilter.core.text import snippet
from smtpfilter.core.verdict import Action, Finding
from smtpfilter.engine.resolver import DnsService, Lookup, Zone, error_answer

__all__ = [
    "DnsblCheck",
    "ReplyFilter",
    "RhsblCheck",
    "Site",
    "client_address",
    "parse_sites",
    "reverse_ip",
    "sanitise_txt",
]

log = logging.getLogger(__name__)

# --- postscreen_dnsbl_sites ------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_SEQUENCE_MEMBER = re.compile(rf"^({_OCTET})(?:\.\.({_OCTET}))?$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True, slots=True)
class ReplyFilter:
    """``d.d.d.d`` where a field is a number or ``[a;b;c..d]`` (Postfix ip_match(3))."""

    text: str
    fields: tuple[tuple[tuple[int, int], ...], ...]  # per octet: the allowed (low, high) ranges

    @classmethod
    def parse(cls, text: str) -> "ReplyFilter":
        pattern = text
        # ip_match_parse strips one pair of [] around the whole pattern.
        if pattern.startswith("[") and pattern.endswith("]") and pattern.count("[") == 1:
            pattern = pattern[1:-1]
        # Split at the dots outside [] (a "[1..3]" range has dots of its own).
        fields_text = [""]
        depth = 0
        for char in pattern:
            if char == "[":
                depth += 1
                if depth > 1:
                    raise ValueError(f"filter {text!r}: [] cannot nest")
            elif char == "]":
                depth -= 1
                if depth < 0:
                    raise ValueError(f"filter {text!r}: ']' without '['")
            if char == "." and depth == 0:
                fields_text.append("")
            else:
                fields_text[-1] += char
        if depth:
            raise ValueError(
                f"filter {text!r}: missing ']' (inside [] numbers are separated by ';': "
                f"a comma separates sites)"
            )
        if len(fields_text) != 4:
            raise ValueError(f"filter {text!r}: need four fields d.d.d.d")
        fields = []
        for field_text in fields_text:
            if field_text.startswith("[") and field_text.endswith("]"):
                members = field_text[1:-1].split(";")
            elif "[" in field_text or "]" in field_text:
                raise ValueError(f"filter {text!r}: field {field_text!r} mixes a number and []")
            elif not field_text:
                raise ValueError(f"filter {text!r}: empty field")
            else:
                members = [field_text]
            ranges = []
            for member in members:
                match = _SEQUENCE_MEMBER.match(member)
                if match is None:
                    raise ValueError(
                        f"filter {text!r}: {member!r} is not a number 0..255 or a range a..b"
                    )
                low = int(match.group(1))
                high = int(match.group(2)) if match.group(2) is not None else low
                if low > high:
                    raise ValueError(f"filter {text!r}: range {member!r} runs backwards")
                ranges.append((low, high))
            fields.append(tuple(ranges))
        return cls(text, tuple(fields))

    def matches(self, address: str) -> bool:
        octets = address.split(".")
        if len(octets) != 4:
            return False
        try:
            values = [int(o) for o in octets]
        except ValueError:
            return False
        return all(
            any(low <= value <= high for low, high in ranges)
            for value, ranges in zip(values, self.fields)
        )


@dataclass(frozen=True, slots=True)
class Site:
    """One postscreen_dnsbl_sites entry."""

    zone: str
    filter: ReplyFilter | None = None
    weight: int = 1

    def __str__(self) -> str:
        text = self.zone
        if self.filter is not None:
            text += "=" + self.filter.text
        if self.weight != 1:
            text += f"*{self.weight}"
        return text

    def matches(self, addresses: Iterable[str]) -> bool:
        if self.filter is None:
            return True
        return any(self.filter.matches(a) for a in addresses)


def valid_domain(name: str) -> bool:
    """A DNS name of letters, digits, "-" and "_" labels (Postfix valid_hostname, plus the
    "_" some lists use), at most 253 characters."""
    if not name or len(name) > 253:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def parse_sites(items: Iterable[str]) -> list[Site]:
    """Entries from one or more strings in postscreen_dnsbl_sites syntax; ValueError names the
    entry at fault."""
    sites = []
    for item in items:
        for entry in re.split(r"[\s,]+", item.strip()):
            if not entry:
                continue
            # postscreen splits at the first "*" (the weight), then at "=" (the filter).
            rest, star, weight_text = entry.partition("*")
            weight = 1
            if star:
                if not re.fullmatch(r"[+-]?[0-9]{1,6}", weight_text):
                    raise ValueError(f"{entry!r}: weight {weight_text!r} is not a whole number")
                weight = int(weight_text)
            zone, eq, filter_text = rest.partition("=")
            zone = zone.lower().rstrip(".")
            if not valid_domain(zone) or "." not in zone:
                raise ValueError(f"{entry!r}: {zone!r} is not a DNS list domain")
            try:
                reply_filter = ReplyFilter.parse(filter_text) if eq else None
            except ValueError as error:
                raise ValueError(f"{entry!r}: {error}") from None
            sites.append(Site(zone, reply_filter, weight))
    return sites


# --- what is looked up -----------------------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def reverse_ip(ip: IPAddress) -> str:
    """RFC 5782 §2.1: IPv4 octets reversed; §2.4: IPv6 as 32 nibbles, reversed."""
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def _parse_ip(text: str) -> IPAddress | None:
    # XFORWARD_README and Postfix's Received: lines write "IPv6:...".
    text = without_ipv6_prefix(text.strip())
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:192.0.2.7 is an IPv4 client
    return ip


def client_address(msg: MessageContext, received_hop: int | None = None) -> tuple[IPAddress | None, str]:
    """The address to look up and where it came from, or None and why not."""
    text, source = msg.client.addr, "XFORWARD"
    if text is None and received_hop:
        text, source = received_address(msg.headers, received_hop), f"Received #{received_hop}"
    if text is None:
        return None, "no client address (local submission, or no XFORWARD ADDR)"
    ip = _parse_ip(text)
    if ip is None:
        return None, f"client address \"{snippet(text, 60)}\" ({source}) is not an IP address"
    if not ip.is_global:
        # Loopback, RFC 1918/4193 private, link-local, documentation, CGNAT...: no DNS list
        # has an opinion on them, and asking leaks internal addresses.
        return None, f"client address {ip} is not a public address"
    return ip, source


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def normalise_domain(text: str | None) -> str | None:
    """A lookup-ready domain (lower case, IDNA, no trailing dot), or None when it is not one."""
    if not text:
        return None
    name = text.strip().rstrip(".").lower()
    if not name or name.startswith("[") or _parse_ip(name) is not None:
        return None  # an address literal is not a domain
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if "." not in name or not valid_domain(name):
        return None
    return name


def from_header_domain(msg: MessageContext) -> str | None:
    headers = msg.headers.get_all("from")
    if not headers:
        return None
    for _name, address in email.utils.getaddresses([headers[0].text]):
        domain = _domain_of(address)
        if domain:
            return domain
    return None


# --- TXT -------------------------------------------------------------------------------------
_TXT_PART_LIMIT = 255  # one TXT character-string, RFC 1035 §3.3
_TXT_LIMIT = 500  # Postfix smtpd: the joined reason text is cut at 500 characters


def sanitise_txt(text: str, limit: int = _TXT_PART_LIMIT) -> str:
    """A DNS list's TXT record, fit to quote in an SMTP reply, a header and a log line.

    The text comes from whoever controls the zone (or spoofs it), so it is never trusted:
    controls (CR, LF, NUL, TAB, DEL, C1) become spaces, anything beyond printable ASCII
    becomes "?", whitespace collapses and the length is capped.
    """
    cleaned = []
    for char in text:
        if char < " " or "\x7f" <= char <= "\x9f":
            cleaned.append(" ")
        elif char > "~":
            cleaned.append("?")
        else:
            cleaned.append(char)
    result = " ".join("".join(cleaned).split())
    return result if len(result) <= limit else result[: limit - 3] + "..."


# --- scoring ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ZoneResult:
    """One zone's answer about one subject, and what its entries made of it."""

    zone: str
    shown: str
    addresses: tuple[str, ...] = ()
    weight: int = 0  # sum of the matching entries' weights
    matched: bool = False
    error: str | None = None
    disabled: bool = False

    def token(self) -> str:
        """``zen.spamhaus.org=127.0.0.4(+3)`` for logs and headers."""
        if self.disabled:
            value = "disabled"
        elif self.error is not None:
            value = "error:" + _short_error(self.error)
        elif not self.addresses:
            value = "-"
        else:
            value = ",".join(self.addresses)
            value += f"({self.weight:+d})" if self.matched else "(filtered)"
        return f"{self.shown}={value}"


def _short_error(error: str) -> str:
    for word in ("timeout", "SERVFAIL", "REFUSED"):
        if word in error:
            return word
    match = re.search(r"127\.\d+\.\d+\.\d+", error)
    if match:
        return match.group(0)
    return error.split(" ", 1)[0][:40]


@dataclass(frozen=True, slots=True)
class Scored:
    subject: str  # the address or domain looked up
    label: str  # "client 192.0.2.7", "sender domain example.com"
    name: str  # the query prefix (reversed address or the domain)
    total: int
    zones: tuple[ZoneResult, ...]

    @property
    def errors(self) -> list[ZoneResult]:
        return [z for z in self.zones if z.error is not None]

    @property
    def detail(self) -> str:
        return " ".join([z.token() for z in self.zones] + [f"total={self.total}"])


class _DnsListCheck:
    """What dnsbl and rhsbl share: sites, scoring, TXT, reply_map, zone health."""

    kind = ""
    zone_kind = "ip"
    needs_env = True  # rules.load_rules passes the shared RuleEnv (for the DnsService)

    def __init__(
        self,
        sites: Sequence[Site],
        dns: DnsService,
        *,
        threshold: float = 1,
        allowlist_threshold: float | None = None,
        txt: bool = True,
        reply_map: TMapping[str, str] | None = None,
        probe: bool = True,
    ) -> None:
        self.sites = tuple(sites)
        self.dns = dns
        self.threshold = threshold
        self.allowlist_threshold = allowlist_threshold
        self.txt = txt
        self.reply_map = dict(reply_map or {})
        self.probe = probe
        self.by_zone: dict[str, list[Site]] = {}
        for site in self.sites:
            self.by_zone.setdefault(site.zone, []).append(site)

    # --- options -------------------------------------------------------------------------
    @staticmethod
    def _common_options(opts: Options) -> dict:
        items = opts.str_list("sites", required=True) or []
        sites: list[Site] = []
        try:
            sites = parse_sites(items)
        except ValueError as error:
            opts.problem("sites", str(error))
        else:
            if items and not sites:
                opts.problem("sites", "names no DNS list")
        threshold = opts.number("threshold", 1)
        if threshold <= 0:
            # Every client no list knows scores 0: it would be "listed" and rejected.
            opts.problem("threshold", "must be above 0, or every client no list knows is listed")
            threshold = 1
        reply_map: dict[str, str] = {}
        raw_map = opts.raw("reply_map")
        if raw_map is not None:
            if not isinstance(raw_map, Mapping):
                opts.problem("reply_map", "expected a mapping of zone: name to show")
            else:
                zones = {s.zone for s in sites}
                for key, value in raw_map.items():
                    zone = str(key).lower().rstrip(".")
                    if not isinstance(value, str) or not valid_domain(value.lower()):
                        opts.problem("reply_map", f"{key}: {value!r} is not a domain name")
                    elif zone not in zones:
                        opts.problem("reply_map", f"{key} is not one of the sites")
                    else:
                        reply_map[zone] = value.lower()
        return {
            "sites": sites,
            "threshold": threshold,
            "txt": opts.bool("txt", True),
            "reply_map": reply_map,
            "probe": opts.bool("probe", True),
        }

    def _describe_sites(self) -> str:
        shown = ", ".join(self._show(str(s)) for s in self.sites)
        text = f"{shown}; listed at score >= {self.threshold:g}"
        if self.allowlist_threshold is not None:
            text += f", allowlisted at <= {self.allowlist_threshold:g}"
        return text

    # --- zones ---------------------------------------------------------------------------
    def shown(self, zone: str) -> str:
        return self.reply_map.get(zone, zone)

    def _show(self, text: str) -> str:
        """``text`` with every keyed zone name replaced by its reply_map name."""
        for zone, safe in self.reply_map.items():
            text = re.sub(re.escape(zone), safe, text, flags=re.IGNORECASE)
        return text

    def zones(self) -> list[Zone]:
        """What the DnsService health monitor probes for this rule."""
        if not self.probe:
            return []
        return [Zone(z, self.zone_kind, self.shown(z)) for z in self.by_zone]

    # --- scoring -------------------------------------------------------------------------
    async def _score_many(
        self, subjects: Sequence[tuple[str, str, str]], deadline: float
    ) -> list[Scored]:
        """Look up every (subject, label, name prefix) in every usable zone at once; score."""
        health = self.dns.health
        usable = [z for z in self.by_zone if health.usable(z)]
        queries = [(f"{name}.{zone}", "A") for _s, _l, name in subjects for zone in usable]
        answers = await self.dns.lookup_all(queries, deadline) if queries else {}
        results = []
        for subject, label, name in subjects:
            zones = []
            total = 0
            for zone, entries in self.by_zone.items():
                if zone not in usable:
                    zones.append(ZoneResult(zone, self.shown(zone), disabled=True))
                    continue
                lookup = answers[(f"{name}.{zone}", "A")]
                zones.append(self._zone_result(zone, entries, lookup))
                total += zones[-1].weight
            results.append(Scored(subject, label, name, total, tuple(zones)))
        return results

    def _zone_result(self, zone: str, entries: list[Site], lookup: Lookup) -> ZoneResult:
        shown = self.shown(zone)
        if lookup.error is not None:
            self.dns.note_error(shown, f"lookup of {self._show(lookup.name)} failed: {lookup.error}")
            return ZoneResult(zone, shown, error=lookup.error)
        addresses = tuple(lookup.records)
        problems = [
            p for p in (error_answer(a, domain_list=self.zone_kind == "domain") for a in addresses) if p
        ]
        if problems:
            # An answer about our query, not about the client: the zone is unusable for now.
            self.dns.health.fail(zone, problems[0], shown)
            return ZoneResult(zone, shown, addresses, error=problems[0])
        if not addresses:
            return ZoneResult(zone, shown)
        weight = 0
        matched = False
        for site in entries:
            if site.matches(addresses):
                weight += site.weight  # once per entry, however many answers match
                matched = True
        return ZoneResult(zone, shown, addresses, weight, matched)

    def _uncertain(self, scored: Scored) -> bool:
        """Whether a zone that failed could have changed the outcome (listed or not)."""
        if not scored.errors:
            return False
        low = high = scored.total
        for zone in scored.errors:
            weights = [s.weight for s in self.by_zone[zone.zone]]
            low += sum(w for w in weights if w < 0)
            high += sum(w for w in weights if w > 0)
        listed = scored.total >= self.threshold
        return (low >= self.threshold) != listed or (high >= self.threshold) != listed

    async def _txt(self, scored: Scored, deadline: float) -> str:
        """The TXT reasons of the zones that listed, sanitised, joined as Postfix does."""
        zones = [z.zone for z in scored.zones if z.matched and z.weight > 0]
        if not zones or not self.txt or self.dns.clock() >= deadline:
            return ""
        names = [(f"{scored.name}.{zone}", "TXT") for zone in zones]
        answers = await self.dns.lookup_all(names, deadline)
        texts = []
        for name in names:
            lookup = answers[name]
            for record in lookup.records:
                texts.append(sanitise_txt(self._show(record)))
        joined = " / ".join(t for t in texts if t)
        return joined if len(joined) <= _TXT_LIMIT else joined[: _TXT_LIMIT - 3] + "..."

    async def _finding(self, scored: Scored, deadline: float) -> Finding | None:
        log.debug("%s %s: %s", self.kind, scored.label, self._show(scored.detail))
        listing = [z.shown for z in scored.zones if z.matched and z.weight > 0]
        tempfail = self.dns.config.on_error == "tempfail"
        if scored.total >= self.threshold and not (tempfail and self._uncertain(scored)):
            txt = await self._txt(scored, deadline)
            reason = (
                f"{scored.label} listed: score {scored.total} >= {self.threshold:g} "
                f"({', '.join(z.token() for z in scored.zones if z.matched)})"
            )
            if txt:
                reason += f"; {txt}"
            return Finding(
                "LISTED",
                reason,
                (scored.subject, ", ".join(listing), txt, str(scored.total)),
                scored.detail,
            )
        if self.allowlist_threshold is not None and scored.total <= self.allowlist_threshold:
            return Finding(
                "ALLOWLISTED",
                f"{scored.label} allowlisted: score {scored.total} <= "
                f"{self.allowlist_threshold:g} "
                f"({', '.join(z.token() for z in scored.zones if z.matched)})",
                (scored.subject, "", "", str(scored.total)),
                scored.detail,
                action=Action.ACCEPT,
            )
        if tempfail and self._uncertain(scored):
            failed = ", ".join(z.token() for z in scored.errors)
            return Finding(
                "DNS_ERROR",
                f"{scored.label}: DNS lists failed ({failed}); deferring (dns.on_error: tempfail)",
                (scored.subject, "", "", str(scored.total)),
                scored.detail,
                action=Action.TEMPFAIL,
            )
        return None


class DnsblCheck(_DnsListCheck):
    """``check: dnsbl``: the connecting client's address in IP-based lists."""

    kind = "dnsbl"
    zone_kind = "ip"

    def __init__(self, sites: Sequence[Site], dns: DnsService, *, received_hop: int | None = None, **kw) -> None:
        super().__init__(sites, dns, **kw)
        self.received_hop = received_hop

    @classmethod
    def from_options(cls, opts: Options, env) -> "DnsblCheck":
        common = cls._common_options(opts)
        allowlist = opts.number("allowlist_threshold")
        if allowlist is not None:
            if allowlist >= 0:
                # postscreen_dnsbl_allowlist_threshold: "specify a negative value to enable";
                # 0 would accept every client no list knows, skipping all other rules.
                opts.problem("allowlist_threshold", "must be negative (an allowlist score)")
                allowlist = None
        received_hop = opts.integer("received_hop", minimum=1)
        check = cls(
            common.pop("sites"),
            env.dns,
            allowlist_threshold=allowlist,
            received_hop=received_hop,
            **common,
        )
        env.dns.watch(check)
        return check

    def describe(self) -> str:
        source = "client address"
        if self.received_hop:
            source += f" (or Received #{self.received_hop})"
        return f"{source} in {self._describe_sites()}"

    async def observe(self, msg: MessageContext) -> Finding | None:
        ip, source = client_address(msg, self.received_hop)
        if ip is None:
            log.debug("%s: not looked up: %s", self.kind, source)
            return None
        deadline = self.dns.clock() + self.dns.config.message_timeout
        label = f"client {ip}" if source == "XFORWARD" else f"client {ip} ({source})"
        [scored] = await self._score_many([(str(ip), label, reverse_ip(ip))], deadline)
        return await self._finding(scored, deadline)


_RHSBL_SOURCES = ("sender", "helo", "client", "from")


class RhsblCheck(_DnsListCheck):
    """``check: rhsbl``: domain names (sender, HELO, client name, From:) in domain lists."""

    kind = "rhsbl"
    zone_kind = "domain"

    def __init__(self, sites: Sequence[Site], dns: DnsService, *, lookup: Sequence[str] = ("sender",), **kw) -> None:
        super().__init__(sites, dns, **kw)
        self.lookup = tuple(lookup)

    @classmethod
    def from_options(cls, opts: Options, env) -> "RhsblCheck":
        common = cls._common_options(opts)
        lookup = opts.str_list("lookup", ["sender"]) or ["sender"]
        for item in lookup:
            if item not in _RHSBL_SOURCES:
                opts.problem("lookup", f"{item!r} is not one of {', '.join(_RHSBL_SOURCES)}")
        if opts.has("allowlist_threshold"):
            opts.raw("allowlist_threshold")
            # Sender, HELO and From: are whatever the client says: an allowlist on them would
            # let anyone skip every other rule by naming a well-reputed domain.
            opts.problem(
                "allowlist_threshold",
                "not for rhsbl: sender, HELO and From: domains are forgeable",
            )
        check = cls(common.pop("sites"), env.dns, lookup=lookup, **common)
        env.dns.watch(check)
        return check

    def describe(self) -> str:
        return f"{', '.join(self.lookup)} domain in {self._describe_sites()}"

    def _domains(self, msg: MessageContext) -> list[tuple[str, str]]:
        found: dict[str, str] = {}
        for source in self.lookup:
            if source == "sender":
                raw = _domain_of(msg.mail_from)
            elif source == "helo":
                raw = msg.client.helo
            elif source == "client":
                raw = msg.client.name if msg.client.name != "unknown" else None
            else:
                raw = from_header_domain(msg)
            domain = normalise_domain(raw)
            if domain is None:
                continue
            if len(domain) + 1 + max(len(z) for z in self.by_zone) > 253:
                log.debug("%s: %s domain %s is too long to look up", self.kind, source, domain)
                continue
            found.setdefault(domain, f"{source} domain {domain}")
        return list(found.items())

    async def observe(self, msg: MessageContext) -> Finding | None:
        domains = self._domains(msg)
        if not domains:
            log.debug("%s: no %s domain to look up", self.kind, "/".join(self.lookup))
            return None
        deadline = self.dns.clock() + self.dns.config.message_timeout
        scored = await self._score_many([(d, label, d) for d, label in domains], deadline)
        # Each domain on its own, as Postfix's separate reject_rhsbl_* restrictions do: the
        # highest score speaks first.
        for result in sorted(scored, key=lambda s: s.total, reverse=True):
            finding = await self._finding(result, deadline)
            if finding is not None:
                return finding
        return None
