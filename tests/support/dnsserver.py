"""A small authoritative DNS server for tests: real UDP and TCP on loopback, port 0.

The DNS list checks are tested against this server, never against the Internet and never with a
mocked resolver: what crosses the socket is real DNS (built with dnspython's ``dns.message`` and
``dns.zone``), so the resolver's own behaviour (retries, TCP fallback on a truncated answer,
SERVFAIL handling, lifetimes) is part of what the tests exercise.

```python
server = await DnsServer().start()
server.add_zone("zen.dnsbl.test", '''
    2.0.0.127   A   127.0.0.2
    4.3.2.1     A   127.0.0.4
                TXT "Listed, see https://example.test/lookup?1.2.3.4"
''')
server.fault("dead.dnsbl.test", Fault.DROP)      # never answer anything in that zone
server.count("4.3.2.1.zen.dnsbl.test", "A")     # how many such queries arrived
await server.stop()
```

Zone text is ordinary master-file syntax relative to the zone's origin; a SOA and NS are added
when the text has none (their TTL and the SOA minimum, ``negative_ttl``, give the negative-caching
TTL of RFC 2308). ``*`` wildcards match like RFC 4592's simple case (a name with no node of its
own, under the wildcard's parent).

Faults, per zone or per exact name: DROP (read the query, never answer), SERVFAIL, REFUSED,
TRUNCATE (UDP answers carry only the TC bit, so a resolver must retry over TCP), and a delay in
seconds before any answer; ``times=N`` limits a fault to the next N queries (``times=1`` with
DROP is one lost datagram); ``rdtype=`` limits it to queries of one type for one exact name (the
SPF test suite's "TIMEOUT": this type times out, others answer).

CNAMEs inside the served zones are followed as an authoritative server does (RFC 1034 §3.6.2).
``start(host, port)`` listens on a given address and port: the SPF and DKIM differential tests
run tools that read only /etc/resolv.conf (no port), so they need a server on port 53 of a
private loopback address.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import textwrap
import time
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

__all__ = ["DnsServer", "Fault", "Query"]


class Fault(enum.Enum):
    DROP = "drop"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    TRUNCATE = "truncate"


@dataclass(frozen=True)
class Query:
    name: str  # lower case, no trailing dot
    rdtype: str
    transport: str  # "udp" or "tcp"
    at: float  # time.monotonic() when it arrived


@dataclass
class _Behaviour:
    fault: Fault | None = None
    delay: float = 0.0
    times: int | None = None  # queries left that get this behaviour; None: every one


@dataclass
class _Zone:
    origin: dns.name.Name
    zone: dns.zone.Zone
    soa: dns.rrset.RRset


class DnsServer:
    """An authoritative server for the zones it is given; see the module docstring."""

    def __init__(self) -> None:
        self.queries: list[Query] = []
        self._zones: dict[dns.name.Name, _Zone] = {}
        self._behaviour: dict[str, _Behaviour] = {}
        self._typed: dict[tuple[str, str], _Behaviour] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._pending: set[asyncio.Task] = set()
        self.port = 0
        self.host = "127.0.0.1"
        self.arrived = asyncio.Event()  # set whenever a query arrives

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "DnsServer":
        """Listen on ``host`` (UDP and TCP, one port): a free port, or ``port``."""
        loop = asyncio.get_running_loop()
        self.host = host
        if port:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, port)
            except OSError:
                transport.close()
                raise
            self._udp = transport  # type: ignore[assignment]
            self.port = port
            return self
        # UDP and TCP must share one port number (a resolver falls back to TCP on the same
        # port). Take a free UDP port from the kernel, then try TCP on it; a few attempts cover
        # the rare case where another test holds that TCP port.
        for _attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, port)
            except OSError:
                transport.close()
                continue
            self._udp = transport  # type: ignore[assignment]
            self.port = port
            return self
        raise RuntimeError("no port free for both UDP and TCP")

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._tcp_writers):
                writer.close()
            await self._tcp.wait_closed()

    async def __aenter__(self) -> "DnsServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- content -------------------------------------------------------------------------
    def add_zone(
        self, origin: str, text: str = "", *, ttl: int = 300, negative_ttl: int = 300
    ) -> None:
        """Serve ``origin`` with the records in ``text`` (master-file syntax, relative names).

        ``ttl`` is the default TTL of records without one; ``negative_ttl`` becomes the SOA's
        TTL and minimum, which is what an NXDOMAIN may be cached for (RFC 2308 §5).
        """
        name = dns.name.from_text(origin)
        body = textwrap.dedent(text)
        head = f"$TTL {ttl}\n"
        if " SOA " not in body.upper():
            head += (
                f"@ {negative_ttl} IN SOA ns.{origin}. hostmaster.{origin}. "
                f"1 3600 600 86400 {negative_ttl}\n@ IN NS ns.{origin}.\n"
            )
        zone = dns.zone.from_text(head + body, origin=name, relativize=False, check_origin=False)
        soa = zone.find_rrset(name, dns.rdatatype.SOA)
        self._zones[name] = _Zone(name, zone, soa)

    def fault(
        self,
        where: str,
        fault: Fault | None = None,
        *,
        delay: float = 0.0,
        times: int | None = None,
        rdtype: str | None = None,
    ) -> None:
        """Misbehave for a zone (and every name under it) or one exact name; None clears.
        ``times``: only for the next that many queries, then behave again. ``rdtype``: only
        queries of that type for exactly that name."""
        key = where.lower().rstrip(".")
        if rdtype is not None:
            typed = (key, rdtype.upper())
            if fault is None and not delay:
                self._typed.pop(typed, None)
            else:
                self._typed[typed] = _Behaviour(fault, delay, times)
            return
        if fault is None and not delay:
            self._behaviour.pop(key, None)
        else:
            self._behaviour[key] = _Behaviour(fault, delay, times)

    def clear_faults(self) -> None:
        self._behaviour.clear()
        self._typed.clear()

    def clear_zones(self) -> None:
        self._zones.clear()

    # --- what arrived --------------------------------------------------------------------
    def count(self, name: str | None = None, rdtype: str | None = None) -> int:
        """Queries received for ``name`` (exact, case-insensitive) and/or ``rdtype``."""
        key = name.lower().rstrip(".") if name is not None else None
        return sum(
            1
            for q in self.queries
            if (key is None or q.name == key) and (rdtype is None or q.rdtype == rdtype)
        )

    def count_under(self, zone: str, rdtype: str | None = None) -> int:
        """Queries for any name in ``zone``."""
        suffix = "." + zone.lower().rstrip(".")
        return sum(
            1
            for q in self.queries
            if (q.name.endswith(suffix) or q.name == suffix[1:])
            and (rdtype is None or q.rdtype == rdtype)
        )

    # --- protocol ------------------------------------------------------------------------
    def _behaviour_for(self, qname: str) -> _Behaviour | None:
        name = qname
        while True:
            found = self._behaviour.get(name)
            if found is not None:
                if found.times is not None:
                    found.times -= 1
                    if found.times <= 0:
                        del self._behaviour[name]  # this query is the last one it applies to
                return found
            if "." not in name:
                return None
            name = name.split(".", 1)[1]

    def _record(self, query: dns.message.Message, transport: str) -> _Behaviour | None:
        # An RRset in the question section has no rdatas, so it is falsy: test for None.
        question = query.question[0] if len(query.question) == 1 else None
        qname = question.name.to_text(omit_final_dot=True).lower() if question is not None else ""
        rdtype = dns.rdatatype.to_text(question.rdtype) if question is not None else "?"
        self.queries.append(Query(qname, rdtype, transport, time.monotonic()))
        self.arrived.set()
        typed = self._typed.get((qname, rdtype))
        return typed if typed is not None else self._behaviour_for(qname)

    def _answer(self, query: dns.message.Message, behaviour: _Behaviour | None, transport: str) -> bytes | None:
        """The wire answer to ``query``, or None for no answer at all."""
        fault = behaviour.fault if behaviour else None
        if fault is Fault.DROP:
            return None
        response = dns.message.make_response(query)
        if fault is Fault.SERVFAIL:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if fault is Fault.REFUSED:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        if fault is Fault.TRUNCATE and transport == "udp":
            response.flags |= dns.flags.TC
            return response.to_wire()
        self._fill(query, response)
        # Over UDP, an answer too large for the client's buffer is truncated: the TC bit tells
        # the resolver to ask again over TCP (RFC 1035 §4.2.1, RFC 7766).
        limit = 65535 if transport == "tcp" else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            return truncated.to_wire()

    def _fill(self, query: dns.message.Message, response: dns.message.Message) -> None:
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return
        question = query.question[0]
        zone = self._zone_for(question.name)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)  # not authoritative, no recursion
            return
        response.flags |= dns.flags.AA
        node = zone.zone.get_node(question.name)
        if node is None:
            node = self._wildcard(zone, question.name)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(zone.soa)
            return
        name = question.name
        # Follow CNAMEs inside the zones we serve (RFC 1034 §3.6.2); a chain longer than 8
        # stops with what it has, which a resolver reports as an error.
        for _hop in range(8):
            rdataset = node.get_rdataset(question.rdclass, question.rdtype)
            cname = node.get_rdataset(question.rdclass, dns.rdatatype.CNAME)
            if rdataset is not None or cname is None or question.rdtype == dns.rdatatype.CNAME:
                break
            rrset = dns.rrset.RRset(name, cname.rdclass, cname.rdtype)
            rrset.update(cname)
            response.answer.append(rrset)
            name = cname[0].target
            target_zone = self._zone_for(name)
            node = target_zone.zone.get_node(name) if target_zone is not None else None
            if node is None:
                return
        if rdataset is None:
            if not response.answer:
                response.authority.append(zone.soa)  # NODATA: the name exists, not this type
            return
        rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
        rrset.update(rdataset)
        response.answer.append(rrset)

    def _zone_for(self, name: dns.name.Name) -> _Zone | None:
        best = None
        for origin, zone in self._zones.items():
            if name.is_subdomain(origin) and (best is None or len(origin) > len(best.origin)):
                best = zone
        return best

    def _wildcard(self, zone: _Zone, name: dns.name.Name):
        parent = name.parent()
        while parent.is_subdomain(zone.origin):
            node = zone.zone.get_node(dns.name.Name((b"*",) + parent.labels))
            if node is not None:
                return node
            if parent == zone.origin:
                return None
            parent = parent.parent()
        return None

    # --- transports ----------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _datagram(self, data: bytes, addr: tuple) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return  # not DNS: a real server drops it too
        behaviour = self._record(query, "udp")
        delay = behaviour.delay if behaviour else 0.0

        async def reply() -> None:
            if delay:
                await asyncio.sleep(delay)
            wire = self._answer(query, behaviour, "udp")
            if wire is not None and self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(wire, addr)

        if delay:
            self._spawn(reply())
        else:
            wire = self._answer(query, behaviour, "udp")
            if wire is not None and self._udp is not None:
                self._udp.sendto(wire, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._pending.add(task)  # stop() cancels a handler that sleeps or holds a query
        try:
            while True:
                try:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    query = dns.message.from_wire(data)
                except Exception:
                    return
                behaviour = self._record(query, "tcp")
                if behaviour and behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                wire = self._answer(query, behaviour, "tcp")
                if wire is None:
                    await reader.read()  # DROP: hold the connection, never answer
                    return
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        finally:
            self._tcp_writers.discard(writer)
            if task is not None:
                self._pending.discard(task)
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.server._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP from a client that left
        pass


# --- the DNS lists the tests use --------------------------------------------------------------
# Shaped like the real ones (zen.spamhaus.org, bl.spamcop.net, list.dnswl.org, dbl.spamhaus.org),
# under the reserved .test TLD (RFC 2606). Clients:
#   1.2.3.4   zen 127.0.0.4 (+TXT), bl 127.0.0.2         → listed, score 5
#   1.2.3.5   zen 127.0.0.20 only                        → outside zen's filter [2..11]: 0
#   1.2.3.6   zen 127.255.255.254                        → an error answer (public resolver)
#   1.2.3.7   bl only                                    → score 2, below 3
#   1.2.3.8   zen 127.0.0.2, dnswl 127.0.5.3             → 3 - 4 = -1: allowlisted
#   1.2.3.9   dnswl 127.0.5.2 only                       → -4
#   1.2.3.10  zen 127.0.0.2 with a hostile TXT record    → listed, TXT must be sanitised
#   2a00:1450:4001:82a::200e   zen 127.0.0.3             → listed (IPv6)
# And the sender-authentication records of two corpus messages (22-dkim-signed.eml,
# 23-forged-dmarc.eml): SPF, the DKIM key "corpus" that signed them (its private key was used
# once to sign them and thrown away), DMARC p=reject.
SITES = (
    "zen.dnsbl.test=127.0.0.[2..11]*3, bl.dnsbl.test*2, "
    "list.dnswl.test=127.0.[0..255].[2..3]*-4"
)
IPV6_LISTED = "2a00:1450:4001:82a::200e"


CORPUS_DKIM_KEY = (
    "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtuYj6ptxh0+ZdHKzd3wHkNN3vfYB"
    "iBRjHiEaOeBQj4YNXyJI503i34/Eet/p2+OCl7K+rtACvYs6ykJ+K2buIJ2n35JnovgXmS4EqiPbcg4zsb9QDjC2rk"
    "ibk/33kI265nDfzXP/O8Vm5AUt7+HyOYrSMatCyKYAEskEN4Zxat6Fyo7AXeYCDNGIUfkyPPkeaubod34Q/WOWv3PG"
    "MQIkxL03kmNw5yVeJTKdnmSXK65Ty+EUGohKjWteGk5/0RbT6sa339qcrRN1Uioj97/IxoOEOMwpnvEvalYVXvWXSA"
    "KYVBHQmAQ6en06XEjwXry0yBZTH6qkcL/hcgFzO3xLVwIDAQAB"
)


def serve_test_lists(server: DnsServer) -> None:
    """Add the test lists above (and the broken ones the health tests need) and the corpus's
    authentication records to ``server``."""
    key = " ".join(f'"{CORPUS_DKIM_KEY[i:i + 255]}"' for i in range(0, len(CORPUS_DKIM_KEY), 255))
    for domain, network in (("signed.example", "192.0.2.0/24"), ("bank.example", "198.51.100.0/24")):
        server.add_zone(
            domain,
            f"""
            @                TXT  "v=spf1 ip4:{network} -all"
            corpus._domainkey TXT {key}
            _dmarc           TXT  "v=DMARC1; p=reject; rua=mailto:dmarc@{domain}"
            """,
        )
    v6 = ".".join(reversed(ipaddress.ip_address(IPV6_LISTED).exploded.replace(":", "")))
    server.add_zone(
        "zen.dnsbl.test",
        f"""
        2.0.0.127   A    127.0.0.2
                    TXT  "https://zen.dnsbl.test/test-point"
        4.3.2.1     A    127.0.0.4
                    TXT  "https://zen.dnsbl.test/query/ip/1.2.3.4"
        5.3.2.1     A    127.0.0.20
        6.3.2.1     A    127.255.255.254
        8.3.2.1     A    127.0.0.2
        10.3.2.1    A    127.0.0.2
                    TXT  "Listed\\013\\010250 2.0.0 Ok\\000 forged" "\\027[31m second part"
        {v6}        A    127.0.0.3
        """,
    )
    server.add_zone(
        "bl.dnsbl.test",
        """
        2.0.0.127   A    127.0.0.2
        4.3.2.1     A    127.0.0.2
                    TXT  "Blocked - see https://bl.dnsbl.test/1.2.3.4"
        7.3.2.1     A    127.0.0.2
        """,
    )
    server.add_zone(
        "list.dnswl.test",
        """
        2.0.0.127   A    127.0.10.0
        8.3.2.1     A    127.0.5.3
        9.3.2.1     A    127.0.5.2
        """,
    )
    # Lists everything, 127.0.0.1 included: RFC 5782 §5 says it must not.
    server.add_zone("world.dnsbl.test", "*  A  127.0.0.2\n")
    # Does not list its 127.0.0.2 test point (an expired or mistyped list).
    server.add_zone("empty.dnsbl.test", "")
    # A domain list, like dbl.spamhaus.org: "test" listed, "invalid" not (RFC 5782 §5).
    server.add_zone(
        "dbl.rhsbl.test",
        """
        test          A    127.0.1.2
        spam.example  A    127.0.1.2
                      TXT  "https://dbl.rhsbl.test/query/dbl?domain=spam.example"
        1.2.3.4       A    127.0.1.255
        """,
    )
