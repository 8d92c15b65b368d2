"""DNS for the rules: one resolver, one cache, one zone-health monitor.

The DNS list checks (A and TXT) and sender authentication (engine/auth/: TXT, A, AAAA, MX, PTR)
ask through the same cache.

One :class:`DnsService` serves the whole process: every session and every rule shares its cache,
and it survives SIGHUP reloads. It is plain in-process asyncio state: no file, no lock, nothing
that can fail under concurrency (postscreen's btree cache needs an exclusive file lock and dies
with "unable to get exclusive lock" when two processes meet; see shared/seeds).

- :class:`Resolver` is the protocol: ``await query(name, rdtype) -> Lookup``. It never raises for
  DNS trouble; a timeout or SERVFAIL is a :class:`Lookup` with ``error`` set. Two implementations:
  :class:`DnspythonResolver` (dnspython's asyncio stub resolver, nameservers from the config or
  /etc/resolv.conf) and :class:`StaticResolver` (a table, for pure unit tests).
- :class:`DnsCache` keeps answers for their TTL, clamped like postscreen's
  ``postscreen_dnsbl_min_ttl`` (60 s) and ``postscreen_dnsbl_max_ttl`` (1 h); NXDOMAIN and NODATA
  are cached too, for the SOA's negative TTL (RFC 2308 §5). Errors are not cached: the next message
  asks again. Concurrent requests for the same name share one query (request coalescing): fifty
  sessions from one client send one query per zone, not fifty.
- :class:`ZoneHealth` probes each zone's RFC 5782 §5 test points at start and periodically:
  127.0.0.2 (or the name ``test`` for domain lists) must be listed, 127.0.0.1 (``invalid``) must
  not. A zone that fails, or that answers with an error code during normal lookups
  (:func:`error_answer`), is disabled and logged at ERROR until a probe passes again. A disabled
  zone is not asked at all and counts as "not listed".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from smtpfilter.config.settings import DnsConfig, HostPort

__all__ = [
    "DnsCache",
    "DnsService",
    "DnspythonResolver",
    "Lookup",
    "Resolver",
    "StaticResolver",
    "ZoneHealth",
    "error_answer",
]

log = logging.getLogger(__name__)

# Without an SOA in a negative answer there is no negative TTL; dnspython uses 300 s as many
# resolvers do. Clamped like every other TTL below.
_NEGATIVE_TTL_WITHOUT_SOA = 300.0
# How often one zone's lookup errors are logged at WARNING (the rest go to DEBUG): a DNS outage
# must be visible without writing a line per message and zone.
_ERROR_LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Lookup:
    """One DNS answer: the records (A addresses or TXT strings), or why there are none.

    ``records == ()`` and ``error is None``: the name does not exist (NXDOMAIN, ``nxdomain``) or
    has no record of that type (NODATA); for a DNS list both mean "not listed", and so they do
    for SPF's void lookups (RFC 7208 §4.6.4). Records are the rdata in presentation form: an
    address for A/AAAA, ``10 mx.example.org.`` for MX, ``host.example.org.`` for PTR, and for
    TXT the strings of one record joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
    """

    name: str
    rdtype: str
    records: tuple[str, ...] = ()
    ttl: float = 0.0
    error: str | None = None  # "timeout", "SERVFAIL", ...: no usable answer
    # NXDOMAIN rather than NODATA: DMARCbis (RFC 9989) np= tells them apart.
    nxdomain: bool = False

    @property
    def found(self) -> bool:
        return bool(self.records) and self.error is None


class Resolver(Protocol):
    async def query(self, name: str, rdtype: str) -> Lookup: ...


# --- error answers ---------------------------------------------------------------------------
_LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
_SPAMHAUS_ERRORS = ipaddress.ip_network("127.255.255.0/24")
_SPAMHAUS_REASONS = {
    # Spamhaus's documented DNSBL return codes: 127.255.255.0/24 answers are about the *query*
    # (shared/POSTFIX-FACTS.md §5), never about the address queried.
    "127.255.255.252": "typo in the DNSBL zone name (Spamhaus 127.255.255.252)",
    "127.255.255.254": "query via a public/open resolver refused (Spamhaus 127.255.255.254); "
    "use a local caching resolver",
    "127.255.255.255": "too many queries (Spamhaus 127.255.255.255)",
}
_DNSWL_BLOCKED = "127.0.0.255"  # list.dnswl.org: "your queries are blocked" (too many, or public resolver)
_DBL_IP_QUERY = "127.0.1.255"  # Spamhaus DBL: an IP address was queried as a domain


def error_answer(address: str, *, domain_list: bool = False) -> str | None:
    """Why ``address`` is an error code rather than a listing, or None for a real listing.

    Treating these as listings has rejected all mail at sites whose resolver got blocked
    (shared/POSTFIX-FACTS.md §5), so they are errors, never scores.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"answer {address!r} is not an IPv4 address"
    if ip.version != 4 or ip not in _LOOPBACK_NET:
        # RFC 5782 §2.3: DNSxL answers are in 127.0.0.0/8; anything else is a wildcard, a
        # hijacking resolver ("search assistance" pages) or an expired list's domain.
        return f"answer {address} is outside 127.0.0.0/8 (RFC 5782 §2.3)"
    if ip in _SPAMHAUS_ERRORS:
        return _SPAMHAUS_REASONS.get(address, f"error code {address} (Spamhaus 127.255.255.0/24)")
    if address == _DNSWL_BLOCKED:
        return "queries blocked (dnswl 127.0.0.255): too many, or via a public resolver"
    if domain_list and address == _DBL_IP_QUERY:
        return "IP address queried as a domain (Spamhaus DBL 127.0.1.255)"
    return None


# --- resolvers -------------------------------------------------------------------------------
dns = None  # dnspython, imported by the first DnspythonResolver: ~3 MB not paid without DNS rules


def _import_dnspython() -> None:
    global dns
    import dns.asyncresolver
    import dns.exception
    import dns.nameserver
    import dns.resolver


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


class DnspythonResolver:
    """dnspython's asyncio stub resolver; an answer counts if it arrives within ``timeout``.

    Nameservers from the config (``dns.nameservers``) or /etc/resolv.conf. Use a local caching
    resolver (unbound, systemd-resolved): Spamhaus refuses queries arriving through public
    resolvers (127.255.255.254). dnspython's own cache stays off: ours clamps TTLs and coalesces.

    One lookup is two overlapping queries, not two consecutive tries. dnspython gives each try
    its own timeout and forgets a try that timed out, so splitting ``timeout`` into two tries
    made an answer arriving after half of it a "timeout" (issue 10: with dns.timeout: 2s, an
    answer after 1.0 s, and the health probe then disabled the list). Instead, the first query
    is listened for during the whole ``timeout``; if it has not been answered after half of it
    (one lost datagram, or a first nameserver that is down), a second query goes out, on a new
    socket and starting with the next nameserver, and the first answer from either counts.
    That is what RFC 1035 §7.2 asks of a resolver (keep listening while retransmitting) and
    costs one extra query only for slow or lost answers.
    """

    def __init__(self, nameservers: Sequence[HostPort] = (), timeout: float = 2.0) -> None:
        _import_dnspython()
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers
            ]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()  # reads /etc/resolv.conf
            except dns.resolver.NoResolverConfiguration:
                log.warning("no nameserver in /etc/resolv.conf; using 127.0.0.1 for DNS lists")
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1"]
        resolver.cache = None
        # One try per query may take the whole lookup time: the retry is ours (see above).
        resolver.lifetime = timeout
        resolver.timeout = timeout
        # Larger UDP answers (several TXT strings) without falling back to TCP; 1232 bytes is
        # the DNS Flag Day 2020 size that avoids IP fragmentation.
        resolver.use_edns(0, 0, 1232)
        # The retry's resolver: the same settings, nameservers rotated by one, so a dead first
        # nameserver costs half the timeout, not all of it (glibc's resolv.conf "rotate").
        retry = dns.asyncresolver.Resolver(configure=False)
        retry.cache = None
        retry.lifetime = retry.timeout = timeout
        retry.use_edns(0, 0, 1232)
        servers = list(resolver.nameservers)
        retry.nameservers = servers[1:] + servers[:1]
        self._resolver = resolver
        self._retry = retry
        self.timeout = timeout
        self.retry_after = timeout / 2
        self.nameservers = tuple(_nameserver_text(ns) for ns in resolver.nameservers)

    async def query(self, name: str, rdtype: str) -> Lookup:
        try:
            # dnspython's lifetime is checked between tries; a back-off can overshoot it, so
            # the whole lookup also runs under a hard deadline.
            async with asyncio.timeout(self.timeout):
                answer = await self._resolve(_absolute(name), rdtype)
        except dns.resolver.NXDOMAIN as nx:
            return Lookup(name, rdtype, (), _negative_ttl(nx), nxdomain=True)
        except (TimeoutError, dns.exception.Timeout):
            return Lookup(name, rdtype, error="timeout")
        except dns.resolver.NoNameservers as failure:
            return Lookup(name, rdtype, error=_failure_text(failure))
        except dns.exception.DNSException as other:
            return Lookup(name, rdtype, error=type(other).__name__)
        except OSError as other:  # e.g. no route to the configured nameserver
            return Lookup(name, rdtype, error=f"network error: {other.strerror or other}")
        rrset = answer.rrset
        ttl = float(answer.chaining_result.minimum_ttl)
        if rrset is None:
            return Lookup(name, rdtype, (), ttl)  # NODATA
        if rdtype == "TXT":
            records = tuple(
                b"".join(rd.strings).decode("utf-8", "replace") for rd in rrset  # type: ignore[attr-defined]
            )
        else:
            records = tuple(rd.to_text() for rd in rrset)
        return Lookup(name, rdtype, records, ttl)

    async def _resolve(self, qname: str, rdtype: str) -> "dns.resolver.Answer":
        """The first answer (or NXDOMAIN) of up to two overlapping queries (class docstring).

        An error (SERVFAIL from every nameserver, a timeout) counts only once no query is left
        that could still bring an answer."""

        def start(resolver: "dns.asyncresolver.Resolver", lifetime: float) -> asyncio.Task:
            return asyncio.ensure_future(
                resolver.resolve(
                    qname, rdtype, raise_on_no_answer=False, search=False, lifetime=lifetime
                )
            )

        started = time.monotonic()
        running = {start(self._resolver, self.timeout)}
        retried = False
        failures: list[BaseException] = []
        try:
            while running:
                wait = None if retried else max(0.0, started + self.retry_after - time.monotonic())
                done, running = await asyncio.wait(
                    running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    error = task.exception()
                    if error is None or isinstance(error, dns.resolver.NXDOMAIN):
                        return task.result()  # an answer, "no such name" included, is final
                    failures.append(error)
                if not done and not retried:  # half the time gone and nothing yet: retry
                    retried = True
                    running.add(start(self._retry, self.timeout - (time.monotonic() - started)))
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        # What a nameserver said (SERVFAIL, REFUSED) tells more than a timeout.
        failures.sort(key=lambda error: isinstance(error, dns.exception.Timeout))
        raise failures[0]


def _nameserver_text(nameserver: object) -> str:
    """``127.0.0.1:5353`` rather than dnspython's ``Do53:127.0.0.1@5353``."""
    address = getattr(nameserver, "address", None)
    if address is None:
        return str(nameserver)
    return str(HostPort(address, getattr(nameserver, "port", 53)))


def _negative_ttl(nx: dns.resolver.NXDOMAIN) -> float:
    """RFC 2308 §5: an NXDOMAIN may be cached for min(SOA TTL, SOA minimum)."""
    try:
        for response in nx.responses().values():
            return float(response.resolve_chaining().minimum_ttl)
    except Exception:  # a malformed authority section: fall back
        pass
    return _NEGATIVE_TTL_WITHOUT_SOA


def _failure_text(failure: dns.resolver.NoNameservers) -> str:
    """"SERVFAIL", "REFUSED"... from dnspython's per-nameserver error list."""
    errors = failure.kwargs.get("errors") or []
    texts = []
    for entry in errors:
        error = entry[3] if len(entry) > 3 else entry
        texts.append(error if isinstance(error, str) else type(error).__name__)
    return ", ".join(dict.fromkeys(texts)) or "no nameserver answered"


class StaticResolver:
    """Answers from a table, for unit tests of pure logic (no sockets).

    ``records[(name, rdtype)]`` is a tuple of records, a Lookup, or an error text ("timeout");
    anything else is NXDOMAIN. ``queries`` lists what was asked, in order.
    """

    def __init__(
        self, records: Mapping[tuple[str, str], object] | None = None, *, ttl: float = 300.0
    ) -> None:
        self.records = dict(records or {})
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []

    async def query(self, name: str, rdtype: str) -> Lookup:
        name = name.lower().rstrip(".")
        self.queries.append((name, rdtype))
        value = self.records.get((name, rdtype))
        if isinstance(value, Lookup):
            return value
        if isinstance(value, str):
            return Lookup(name, rdtype, error=value)
        if value is None:
            return Lookup(name, rdtype, (), self.ttl, nxdomain=True)
        return Lookup(name, rdtype, tuple(value), self.ttl)  # type: ignore[arg-type]


# --- cache -----------------------------------------------------------------------------------
@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0  # a query was sent
    coalesced: int = 0  # joined a query already under way


class DnsCache:
    """Answers by (name, type) until their TTL runs out; one query per name at a time.

    Only the event loop's thread touches it and nothing awaits between reading and writing an
    entry, so it needs no lock; a waiter that is cancelled (its message hit the time limit) does
    not cancel the shared query, whose answer still lands in the cache for the next message.
    """

    def __init__(
        self,
        resolver: Callable[[], Resolver],
        *,
        min_ttl: float = 60.0,
        max_ttl: float = 3600.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.size = size
        self.clock = clock
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[str, str], tuple[float, Lookup]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[Lookup]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clamp(self, ttl: float) -> float:
        return min(max(ttl, self.min_ttl), self.max_ttl)

    def peek(self, name: str, rdtype: str) -> Lookup | None:
        """A fresh cached answer, without asking anyone. A hit makes it the most recently used:
        every message's lookups take their hits here (DnsService.lookup_all), so an answer in
        use must not be evicted in insertion order."""
        key = (name.lower().rstrip("."), rdtype)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def query(self, name: str, rdtype: str) -> Lookup:
        name = name.lower().rstrip(".")
        key = (name, rdtype)
        cached = self.peek(name, rdtype)
        if cached is not None:
            self.stats.hits += 1
            return cached
        future = self._inflight.get(key)
        if future is None:
            self.stats.misses += 1
            future = asyncio.ensure_future(self._fetch(key))
            self._inflight[key] = future
            future.add_done_callback(lambda done, key=key: self._landed(key, done))
        else:
            self.stats.coalesced += 1
        return await asyncio.shield(future)

    async def _fetch(self, key: tuple[str, str]) -> Lookup:
        lookup = await self._resolver().query(*key)
        if lookup.error is None:
            self._entries[key] = (self.clock() + self.clamp(lookup.ttl), lookup)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)  # least recently used
        return lookup

    def _landed(self, key: tuple[str, str], future: asyncio.Future[Lookup]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if not future.cancelled():
            future.exception()  # retrieved: no "exception was never retrieved" if all waiters left

    async def aclose(self) -> None:
        """Cancel the queries still under way (shutdown)."""
        pending = list(self._inflight.values())
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def clear(self) -> None:
        self._entries.clear()


# --- zone health -----------------------------------------------------------------------------
@dataclass(slots=True)
class ZoneState:
    failing: bool = False
    reason: str = ""
    checked_at: float | None = None  # last probe (monotonic), None before the first one


@dataclass(frozen=True, slots=True)
class Zone:
    """A DNS list zone to watch: ``kind`` is "ip" or "domain" (which test points apply);
    ``shown`` is the name for logs (postscreen_dnsbl_reply_map's "safe" name for keyed zones)."""

    name: str
    kind: str
    shown: str


class ZoneHealth:
    """Which zones are usable. Transitions are logged loudly: ERROR when a zone is disabled,
    WARNING when it comes back."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.states: dict[str, ZoneState] = {}

    def usable(self, zone: str) -> bool:
        state = self.states.get(zone)
        return state is None or not state.failing

    def reason(self, zone: str) -> str:
        state = self.states.get(zone)
        return state.reason if state is not None else ""

    def fail(self, zone: str, reason: str, shown: str | None = None) -> None:
        state = self.states.setdefault(zone, ZoneState())
        if not state.failing or state.reason != reason:
            log.error(
                "DNS list %s disabled: %s; it counts as 'not listed' until a health probe "
                "passes again",
                shown or zone,
                reason,
            )
        state.failing = True
        state.reason = reason

    def ok(self, zone: str, shown: str | None = None) -> None:
        state = self.states.setdefault(zone, ZoneState())
        if state.failing:
            log.warning("DNS list %s healthy again: re-enabled", shown or zone)
        state.failing = False
        state.reason = ""


# The RFC 5782 §5 test points: (name under the zone, must it be listed?).
_TEST_POINTS = {
    "ip": (("2.0.0.127", True), ("1.0.0.127", False)),
    "domain": (("test", True), ("invalid", False)),
}


class DnsService:
    """Resolver + cache + zone health, shared by every rule and session of the process."""

    def __init__(
        self,
        config: DnsConfig | None = None,
        *,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or DnsConfig()
        self._fixed_resolver = resolver
        self._resolver: Resolver | None = resolver
        self.clock = clock
        self.cache = DnsCache(
            self._current_resolver,
            min_ttl=self.config.min_ttl,
            max_ttl=self.config.max_ttl,
            size=self.config.cache_size,
            clock=clock,
        )
        self.health = ZoneHealth(clock)
        self._watchers: weakref.WeakSet = weakref.WeakSet()
        self._wake: asyncio.Event | None = None
        self._error_logged: dict[str, float] = {}

    # --- configuration ---------------------------------------------------------------------
    def configure(self, config: DnsConfig) -> None:
        """Apply new settings (SIGHUP). The cache is kept: answers do not depend on settings."""
        if config == self.config:
            return
        self.config = config
        self.cache.min_ttl, self.cache.max_ttl = config.min_ttl, config.max_ttl
        self.cache.size = config.cache_size
        self._resolver = self._fixed_resolver  # rebuilt from the new settings on next use

    def _current_resolver(self) -> Resolver:
        if self._resolver is None:
            resolver = DnspythonResolver(self.config.nameservers, self.config.timeout)
            log.info(
                "DNS lists use nameservers %s (timeout %gs per lookup, %gs per message)",
                ", ".join(resolver.nameservers) or "-",
                self.config.timeout,
                self.config.message_timeout,
            )
            self._resolver = resolver
        return self._resolver

    @property
    def resolver(self) -> Resolver:
        return self._current_resolver()

    # --- lookups ---------------------------------------------------------------------------
    async def lookup(self, name: str, rdtype: str = "A") -> Lookup:
        return await self.cache.query(name, rdtype)

    async def lookup_all(
        self, queries: Iterable[tuple[str, str]], deadline: float
    ) -> dict[tuple[str, str], Lookup]:
        """Every query at once; what has not answered by ``deadline`` (monotonic) is a timeout."""
        keys = list(dict.fromkeys((n.lower().rstrip("."), t) for n, t in queries))
        results: dict[tuple[str, str], Lookup] = {}
        tasks: dict[asyncio.Future[Lookup], tuple[str, str]] = {}
        for key in keys:
            cached = self.cache.peek(*key)
            if cached is not None:  # no task for a cache hit: most messages take this path
                self.cache.stats.hits += 1
                results[key] = cached
            else:
                tasks[asyncio.ensure_future(self.cache.query(*key))] = key
        if tasks:
            remaining = max(0.0, deadline - self.clock())
            try:
                done, pending = await asyncio.wait(tasks, timeout=remaining)
            finally:
                # At the time limit, and when the message itself is cancelled (scan_timeout, the
                # client left), only our waits end: the shared queries go on and fill the cache.
                for future in tasks:
                    if not future.done():
                        future.cancel()
            for future in done:
                results[tasks[future]] = future.result()
            for future in pending:
                name, rdtype = tasks[future]
                results[(name, rdtype)] = Lookup(name, rdtype, error="timeout (dns.message_timeout)")
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return results

    def note_error(self, shown: str, what: str) -> None:
        """Log a lookup error: WARNING once a minute per zone, DEBUG otherwise."""
        now = self.clock()
        last = self._error_logged.get(shown)
        if last is None or now - last >= _ERROR_LOG_INTERVAL:
            self._error_logged[shown] = now
            log.warning(
                "DNS list %s: %s; counted as not listed (dns.on_error: %s)",
                shown,
                what,
                self.config.on_error,
            )
        else:
            log.debug("DNS list %s: %s", shown, what)

    # --- zone health -----------------------------------------------------------------------
    def watch(self, owner: object) -> None:
        """Probe the zones of ``owner`` (a check with ``zones() -> Iterable[Zone]``) for as long
        as it exists: a reload that drops a rule stops probing its zones."""
        self._watchers.add(owner)
        if self._wake is not None:
            self._wake.set()

    def watched(self) -> dict[str, Zone]:
        zones: dict[str, Zone] = {}
        for owner in list(self._watchers):
            for zone in owner.zones():  # type: ignore[attr-defined]
                zones.setdefault(zone.name, zone)
        return zones

    async def probe(self, zone: Zone) -> str | None:
        """Why ``zone`` fails its RFC 5782 §5 test points, or None when it passes.

        Probes go to the resolver directly, not through the cache, so a zone that breaks is
        noticed within one interval.
        """
        resolver = self.resolver
        points = _TEST_POINTS[zone.kind]
        lookups = await asyncio.gather(
            *(resolver.query(f"{label}.{zone.name}", "A") for label, _ in points)
        )
        for (label, must_list), lookup in zip(points, lookups):
            if lookup.error is not None:
                return f"test point {label} got no answer ({lookup.error})"
            errors = [e for e in (error_answer(a, domain_list=zone.kind == "domain")
                                  for a in lookup.records) if e]
            if errors:
                return f"test point {label}: {errors[0]}"
            if must_list and not lookup.records:
                return f"test point {label} is not listed (RFC 5782 §5: it must be)"
            if not must_list and lookup.records:
                return (
                    f"test point {label} is listed as {', '.join(lookup.records)}: the list "
                    f"answers for everything (RFC 5782 §5)"
                )
        return None

    async def check_zones(self, zones: Iterable[Zone]) -> None:
        zones = list(zones)
        results = await asyncio.gather(*(self.probe(z) for z in zones), return_exceptions=True)
        now = self.clock()
        for zone, result in zip(zones, results):
            if isinstance(result, BaseException):
                log.error("health probe of %s failed unexpectedly", zone.shown, exc_info=result)
                continue
            if result is None:
                self.health.ok(zone.name, zone.shown)
            else:
                self.health.fail(zone.name, result, zone.shown)
            self.health.states[zone.name].checked_at = now

    async def health_loop(self) -> None:
        """Probe watched zones now and every ``dns.health_interval``; failing zones every
        minute (or sooner), so a list that recovers is back quickly. Runs until cancelled."""
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            interval = self.config.health_interval
            retry = min(interval, 60.0)
            now = self.clock()
            due = []
            for zone in self.watched().values():
                state = self.health.states.get(zone.name)
                if state is None or state.checked_at is None:
                    due.append(zone)
                elif now - state.checked_at >= (retry if state.failing else interval):
                    due.append(zone)
            if due:
                try:
                    await self.check_zones(due)
                except Exception:  # a bug of ours must not end health checking for good
                    log.exception("DNS list health probes failed; retrying in %gs", retry)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(retry, interval))

    async def aclose(self) -> None:
        await self.cache.aclose()
