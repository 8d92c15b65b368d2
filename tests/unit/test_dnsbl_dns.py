"""smtpfilter.engine.resolver: the resolver, the shared cache and error answers, against a real DNS server."""

from __future__ import annotations

import asyncio
import time

import pytest

from smtpfilter.config.settings import DnsConfig, HostPort
from smtpfilter.engine.resolver import (
    DnsCache,
    DnspythonResolver,
    DnsService,
    Lookup,
    StaticResolver,
    Zone,
    error_answer,
)
from tests.support.dnsserver import DnsServer, Fault


@pytest.fixture
async def server():
    dns = await DnsServer().start()
    dns.add_zone(
        "zen.dnsbl.test",
        """
        2.0.0.127   A    127.0.0.2
        4.3.2.1     A    127.0.0.4
                    A    127.0.0.10
                    TXT  "one " "two"
        """,
        negative_ttl=120,
    )
    yield dns
    await dns.stop()


def resolver(server: DnsServer, timeout: float = 1.0) -> DnspythonResolver:
    return DnspythonResolver((HostPort("127.0.0.1", server.port),), timeout)


async def test_resolver_answers_records_nxdomain_and_errors(server):
    r = resolver(server)
    listed = await r.query("4.3.2.1.zen.dnsbl.test", "A")
    assert sorted(listed.records) == ["127.0.0.10", "127.0.0.4"] and listed.ttl == 300
    txt = await r.query("4.3.2.1.zen.dnsbl.test", "TXT")
    assert txt.records == ("one two",)  # a TXT record's strings are joined
    missing = await r.query("9.9.9.9.zen.dnsbl.test", "A")
    assert missing.records == () and missing.error is None and missing.ttl == 120  # SOA minimum
    nodata = await r.query("4.3.2.1.zen.dnsbl.test", "AAAA")
    assert nodata.records == () and nodata.error is None
    refused = await r.query("1.2.3.4.elsewhere.test", "A")
    assert refused.error == "REFUSED"


async def test_a_silent_server_is_a_timeout_within_the_lifetime(server):
    server.fault("zen.dnsbl.test", Fault.DROP)
    started = time.monotonic()
    lookup = await resolver(server, timeout=0.3).query("4.3.2.1.zen.dnsbl.test", "A")
    assert lookup.error == "timeout"
    assert time.monotonic() - started < 0.3 + 0.5
    # Two tries within the lifetime: one lost datagram does not lose the lookup.
    assert server.count("4.3.2.1.zen.dnsbl.test") == 2


# Issue 10 item 7: dnspython gave each try timeout/2, so with dns.timeout: 2s an answer after
# 1.0 s was a "timeout" and the health probe disabled the list. The configured timeout is the
# time an answer may take; a lost datagram is still retried within it.
async def test_an_answer_within_the_timeout_is_an_answer(server):
    server.fault("4.3.2.1.zen.dnsbl.test", delay=1.2)
    lookup = await resolver(server, timeout=2.0).query("4.3.2.1.zen.dnsbl.test", "A")
    assert lookup.error is None and sorted(lookup.records) == ["127.0.0.10", "127.0.0.4"]


async def test_a_server_that_never_answers_is_a_timeout_within_the_bound(server):
    server.fault("zen.dnsbl.test", Fault.DROP)
    started = time.monotonic()
    lookup = await resolver(server, timeout=1.0).query("4.3.2.1.zen.dnsbl.test", "A")
    elapsed = time.monotonic() - started
    assert lookup.error == "timeout"
    assert 0.9 <= elapsed < 1.0 + 1.0  # the whole timeout is waited for, and not much more


async def test_one_lost_datagram_is_retried_within_the_timeout(server):
    server.fault("4.3.2.1.zen.dnsbl.test", Fault.DROP, times=1)
    lookup = await resolver(server, timeout=2.0).query("4.3.2.1.zen.dnsbl.test", "A")
    assert lookup.found
    first, second = [q for q in server.queries if q.name == "4.3.2.1.zen.dnsbl.test"]
    assert second.at - first.at < 2.0  # the retry went out within the timeout


async def test_a_dead_first_nameserver_does_not_cost_the_lookup(server):
    silent = await DnsServer().start()  # a nameserver that answers nothing
    silent.fault("test", Fault.DROP)
    try:
        both = DnspythonResolver(
            (HostPort("127.0.0.1", silent.port), HostPort("127.0.0.1", server.port)), 2.0
        )
        lookup = await both.query("4.3.2.1.zen.dnsbl.test", "A")
    finally:
        await silent.stop()
    assert lookup.found and silent.count() == 1 and server.count() == 1


async def test_health_probe_keeps_a_list_whose_answers_take_most_of_the_timeout(server):
    server.fault("zen.dnsbl.test", delay=1.2)
    service = DnsService(DnsConfig(nameservers=(HostPort("127.0.0.1", server.port),), timeout=2.0))
    zone = Zone("zen.dnsbl.test", "ip", "zen.dnsbl.test")
    await service.check_zones([zone])
    assert service.health.usable("zen.dnsbl.test"), service.health.reason("zen.dnsbl.test")
    await service.aclose()


@pytest.mark.parametrize(
    "address, error",
    [
        ("127.0.0.2", None),
        ("127.0.0.11", None),
        ("127.0.10.3", None),  # dnswl's trust levels
        ("127.255.255.252", "typo in the DNSBL zone name"),
        ("127.255.255.254", "public/open resolver"),
        ("127.255.255.255", "too many queries"),
        ("127.255.255.1", "Spamhaus 127.255.255.0/24"),
        ("127.0.0.255", "dnswl"),
        ("192.0.2.1", "outside 127.0.0.0/8"),
        ("::1", "outside 127.0.0.0/8"),
    ],
)
def test_error_answers_are_never_listings(address, error):
    result = error_answer(address)
    assert (result is None) if error is None else (error in result)


def test_dbl_ip_query_code_is_an_error_for_domain_lists_only():
    assert error_answer("127.0.1.255", domain_list=True) is not None
    assert error_answer("127.0.1.255") is None


async def test_errors_are_not_cached_answers_are(server):
    service = DnsService(DnsConfig(nameservers=(HostPort("127.0.0.1", server.port),), timeout=0.3))
    server.fault("zen.dnsbl.test", Fault.SERVFAIL)
    assert (await service.lookup("4.3.2.1.zen.dnsbl.test")).error == "SERVFAIL"
    server.clear_faults()
    assert (await service.lookup("4.3.2.1.zen.dnsbl.test")).found
    assert (await service.lookup("4.3.2.1.zen.dnsbl.test")).found
    assert server.count("4.3.2.1.zen.dnsbl.test") == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_query(server):
    server.fault("zen.dnsbl.test", delay=0.2)
    service = DnsService(DnsConfig(nameservers=(HostPort("127.0.0.1", server.port),), timeout=1.0))
    impatient = asyncio.ensure_future(service.lookup("4.3.2.1.zen.dnsbl.test"))
    await server.arrived.wait()
    impatient.cancel()
    patient = await service.lookup("4.3.2.1.zen.dnsbl.test")  # joins the query under way
    assert patient.found
    assert server.count("4.3.2.1.zen.dnsbl.test") == 1
    assert service.cache.stats.coalesced == 1


async def test_cache_keeps_the_most_recently_used_answers():
    static = StaticResolver({(f"{n}.zen.test", "A"): ("127.0.0.2",) for n in range(5)})
    cache = DnsCache(lambda: static, size=3)
    for n in range(4):
        await cache.query(f"{n}.zen.test", "A")
    assert len(cache) == 3 and cache.peek("0.zen.test", "A") is None
    await cache.query("1.zen.test", "A")  # a hit: 1 becomes the most recent
    await cache.query("4.zen.test", "A")  # evicts 2, the least recently used
    assert cache.peek("1.zen.test", "A") is not None and cache.peek("2.zen.test", "A") is None


async def test_hits_on_the_message_path_keep_an_answer_in_the_cache(server):
    """lookup_all (what every message's DNS lists use) takes hits from the cache without a
    query: such a hit must make the answer the most recently used, or the "LRU" evicts the
    hottest answers in insertion order and they are asked again (issue 11, dns.py:474)."""
    server.add_zone("lru.dnsbl.test", "1 A 127.0.0.2\n2 A 127.0.0.2\n3 A 127.0.0.2\n")
    config = DnsConfig(nameservers=(HostPort("127.0.0.1", server.port),), timeout=1.0,
                       cache_size=2)
    service = DnsService(config)
    deadline = time.monotonic() + 5

    async def look(n: int) -> None:
        results = await service.lookup_all([(f"{n}.lru.dnsbl.test", "A")], deadline)
        assert results[(f"{n}.lru.dnsbl.test", "A")].found

    await look(1)
    await look(2)
    await look(1)  # a hit: 1 is now the most recently used
    await look(3)  # the cache is full: 2, the least recently used, goes
    await look(1)  # still cached: no second query on the wire
    assert server.count("1.lru.dnsbl.test", "A") == 1
    await look(2)
    assert server.count("2.lru.dnsbl.test", "A") == 2
    await service.aclose()


async def test_lookup_all_returns_what_answered_and_times_out_the_rest(server):
    server.fault("slow.zen.dnsbl.test", delay=2)
    server.add_zone("slow.zen.dnsbl.test", "1 A 127.0.0.2\n")
    service = DnsService(DnsConfig(nameservers=(HostPort("127.0.0.1", server.port),), timeout=3.0))
    results = await service.lookup_all(
        [("4.3.2.1.zen.dnsbl.test", "A"), ("1.slow.zen.dnsbl.test", "A")], time.monotonic() + 0.3
    )
    assert results[("4.3.2.1.zen.dnsbl.test", "A")].found
    assert results[("1.slow.zen.dnsbl.test", "A")].error == "timeout (dns.message_timeout)"
    await service.aclose()


async def test_static_resolver_kinds_of_answer():
    static = StaticResolver({
        ("a.test", "A"): ("127.0.0.2",),
        ("b.test", "A"): "SERVFAIL",
        ("c.test", "A"): Lookup("c.test", "A", ("127.0.0.3",), 5),
    })
    assert (await static.query("A.test.", "A")).records == ("127.0.0.2",)
    assert (await static.query("b.test", "A")).error == "SERVFAIL"
    assert (await static.query("c.test", "A")).ttl == 5
    assert not (await static.query("d.test", "A")).found


def test_nameservers_must_be_addresses(tmp_path):
    from smtpfilter.config.options import ConfigError
    from smtpfilter.config.settings import load_config

    path = tmp_path / "c.yaml"
    path.write_text('dns: {nameservers: ["localhost", "127.0.0.1:99999"], timeout: 9s}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "'localhost' is not an IP address" in text
    assert "'99999' is not a port number" in text
    assert "timeout: is longer than message_timeout (5s)" in text


async def test_a_cancelled_message_leaves_the_shared_query_running(server):
    server.fault("zen.dnsbl.test", delay=0.2)
    service = DnsService(DnsConfig(nameservers=(HostPort("127.0.0.1", server.port),), timeout=1.0))
    message = asyncio.ensure_future(
        service.lookup_all([("4.3.2.1.zen.dnsbl.test", "A")], time.monotonic() + 5)
    )
    await server.arrived.wait()
    message.cancel()  # e.g. limits.scan_timeout, or Postfix closed the connection
    with pytest.raises(asyncio.CancelledError):
        await message
    # The query still lands in the cache for the next message.
    assert (await service.lookup("4.3.2.1.zen.dnsbl.test")).found
    assert server.count("4.3.2.1.zen.dnsbl.test") == 1
