"""The dnsbl and rhsbl rule kinds against a real DNS server on loopback (tests/support/dnsserver)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from smtpfilter.config.options import Options
from smtpfilter.config.settings import DnsConfig, HostPort
from smtpfilter.config.yamlfile import load_text
from smtpfilter.core.envelope import Client
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Action
from smtpfilter.core.wire import to_wire
from smtpfilter.engine.checks.dnsbl import DnsblCheck, RhsblCheck
from smtpfilter.engine.resolver import DnsService, StaticResolver
from smtpfilter.engine.rules import RuleEnv
from tests.support import corpus
from tests.support.dnsserver import IPV6_LISTED, SITES, Fault


@pytest.fixture
def service(dns_server):
    config = DnsConfig(
        nameservers=(HostPort("127.0.0.1", dns_server.port),), timeout=1.0, message_timeout=2.0
    )
    return DnsService(config)


def build(kind, yaml: str, service: DnsService):
    problems: list = []
    opts = Options(load_text(yaml, "rule.yaml"), problems, rule="T")
    check = kind.from_options(opts, RuleEnv(dns=service))
    opts.finish(("name", "check", "action", "score", "text", "mode"))
    assert [str(p) for p in problems] == []
    return check


def dnsbl(service: DnsService, extra: str = "") -> DnsblCheck:
    return build(DnsblCheck, f'sites: "{SITES}"\nthreshold: 3\n{extra}', service)


def msg(addr: str | None = None, *headers: str, mail_from: str = "a@example.org", helo: str | None = None) -> MessageContext:
    lines = list(headers) or ["Subject: hi"]
    data = to_wire(("\n".join(lines) + "\n\nbody\n").encode())
    return MessageContext.build(
        data,
        received_at=datetime.now(timezone.utc),
        mail_from=mail_from,
        client=Client(addr=addr, name="unknown", helo=helo),
    )


async def test_listed_ipv4_client_scores_each_site_once_and_quotes_txt(service, dns_server):
    check = dnsbl(service)
    finding = await check.observe(msg("1.2.3.4"))
    assert finding is not None and finding.code == "LISTED" and finding.action is None
    assert finding.detail == (
        "zen.dnsbl.test=127.0.0.4(+3) bl.dnsbl.test=127.0.0.2(+2) list.dnswl.test=- total=5"
    )
    client, lists, txt, total = finding.groups
    assert (client, lists, total) == ("1.2.3.4", "zen.dnsbl.test, bl.dnsbl.test", "5")
    assert txt == (
        "https://zen.dnsbl.test/query/ip/1.2.3.4 / Blocked - see https://bl.dnsbl.test/1.2.3.4"
    )
    assert "score 5 >= 3" in finding.reason
    # TXT only for the lists that listed: none for dnswl.
    assert dns_server.count("4.3.2.1.list.dnswl.test", "TXT") == 0
    assert dns_server.count("4.3.2.1.zen.dnsbl.test", "TXT") == 1


async def test_listed_ipv6_client_by_its_reversed_nibbles(service, dns_server):
    finding = await dnsbl(service).observe(msg(IPV6_LISTED))
    assert finding is not None and finding.code == "LISTED"
    assert finding.detail.startswith("zen.dnsbl.test=127.0.0.3(+3) ")
    assert dns_server.count_under("zen.dnsbl.test", "A") == 1
    [query] = [q for q in dns_server.queries if q.name.endswith("zen.dnsbl.test") and q.rdtype == "A"]
    assert query.name.startswith("e.0.0.2.0.0.0.0.0.0.0.0.0.0.0.0.a.2.8.0.1.0.0.4.0.5.4.1.0.0.a.2.")


async def test_a_return_code_outside_the_filter_does_not_count(service):
    check = dnsbl(service)
    assert await check.observe(msg("1.2.3.5")) is None
    scored = (await check._score_many([("1.2.3.5", "c", "5.3.2.1")], time.monotonic() + 2))[0]
    assert scored.detail == "zen.dnsbl.test=127.0.0.20(filtered) bl.dnsbl.test=- list.dnswl.test=- total=0"


async def test_below_threshold_is_no_finding(service):
    assert await dnsbl(service).observe(msg("1.2.3.7")) is None  # bl only: 2 < 3


async def test_negative_weight_allowlist_cancels_a_listing(service):
    # zen says +3, dnswl says -4: -1 is below the threshold, so not listed...
    assert await dnsbl(service).observe(msg("1.2.3.8")) is None


async def test_allowlist_threshold_accepts_and_skips_the_other_rules(service):
    check = dnsbl(service, "allowlist_threshold: -1\n")
    finding = await check.observe(msg("1.2.3.8"))
    assert finding is not None and finding.code == "ALLOWLISTED"
    assert finding.action is Action.ACCEPT
    assert "list.dnswl.test=127.0.5.3(-4)" in finding.detail and finding.detail.endswith("total=-1")
    assert (await check.observe(msg("1.2.3.9"))).code == "ALLOWLISTED"
    assert await check.observe(msg("1.2.3.7")) is None


async def test_no_client_address_or_a_private_one_sends_no_query(service, dns_server):
    check = dnsbl(service)
    for addr in (None, "127.0.0.1", "10.0.0.1", "::1", "192.168.1.20"):
        assert await check.observe(msg(addr)) is None
    assert dns_server.queries == []


async def test_spamhaus_public_resolver_answer_is_an_error_and_disables_the_zone(service, dns_server, caplog):
    check = dnsbl(service)
    with caplog.at_level(logging.ERROR, logger="smtpfilter.engine.resolver"):
        finding = await check.observe(msg("1.2.3.6"))
    assert finding is None  # an error is never a listing
    assert "DNS list zen.dnsbl.test disabled" in caplog.text
    assert "public/open resolver" in caplog.text
    assert not service.health.usable("zen.dnsbl.test")
    # The next message does not ask zen at all; it shows as disabled.
    before = dns_server.count_under("zen.dnsbl.test")
    scored = (await check._score_many([("1.2.3.4", "c", "4.3.2.1")], time.monotonic() + 2))[0]
    assert dns_server.count_under("zen.dnsbl.test") == before
    assert scored.detail.startswith("zen.dnsbl.test=disabled bl.dnsbl.test=127.0.0.2(+2)")
    # A passing health probe brings it back.
    await service.check_zones(check.zones())
    assert service.health.usable("zen.dnsbl.test")


async def test_error_answer_with_tempfail_defers_instead_of_guessing(service):
    service.configure(replace(service.config, on_error="tempfail"))
    finding = await dnsbl(service).observe(msg("1.2.3.6"))
    assert finding is not None and finding.code == "DNS_ERROR" and finding.action is Action.TEMPFAIL
    assert "zen.dnsbl.test=error:127.255.255.254" in finding.detail


async def test_health_probes_disable_broken_zones_and_reenable_them(service, dns_server, caplog):
    sites = "zen.dnsbl.test*3, world.dnsbl.test, empty.dnsbl.test, dead.dnsbl.test"
    dns_server.add_zone("dead.dnsbl.test", "2.0.0.127 A 127.0.0.2\n")
    dns_server.fault("dead.dnsbl.test", Fault.DROP)
    check = build(DnsblCheck, f'sites: "{sites}"\nthreshold: 3\n', service)
    with caplog.at_level(logging.WARNING, logger="smtpfilter.engine.resolver"):
        await service.check_zones(check.zones())
    usable = {z.name: service.health.usable(z.name) for z in check.zones()}
    assert usable == {
        "zen.dnsbl.test": True,
        "world.dnsbl.test": False,
        "empty.dnsbl.test": False,
        "dead.dnsbl.test": False,
    }
    assert "world.dnsbl.test disabled: test point 1.0.0.127 is listed" in caplog.text
    assert "empty.dnsbl.test disabled: test point 2.0.0.127 is not listed" in caplog.text
    assert "dead.dnsbl.test disabled: test point 2.0.0.127 got no answer (timeout)" in caplog.text
    assert all(r.levelname == "ERROR" for r in caplog.records if "disabled" in r.message)
    # Disabled zones are not asked during normal lookups.
    before = len(dns_server.queries)
    await check.observe(msg("1.2.3.4"))
    assert {q.name.split(".", 4)[-1] for q in dns_server.queries[before:]} == {"zen.dnsbl.test"}
    # The dead one recovers: re-enabled, logged.
    dns_server.clear_faults()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="smtpfilter.engine.resolver"):
        await service.check_zones(check.zones())
    assert service.health.usable("dead.dnsbl.test")
    assert "dead.dnsbl.test healthy again" in caplog.text


async def test_a_list_that_never_answers_costs_at_most_the_time_limit(dns_server, caplog):
    dns_server.fault("bl.dnsbl.test", Fault.DROP)
    config = DnsConfig(
        nameservers=(HostPort("127.0.0.1", dns_server.port),), timeout=0.4, message_timeout=0.6
    )
    service = DnsService(config)
    check = dnsbl(service)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="smtpfilter.engine.resolver"):
        finding = await check.observe(msg("1.2.3.4"))
    elapsed = time.monotonic() - started
    # zen (+3) still lists it; the silent list counts as not listed and is logged.
    assert finding is not None and finding.code == "LISTED"
    assert "bl.dnsbl.test=error:timeout" in finding.detail and finding.detail.endswith("total=3")
    assert elapsed < 0.6 + 0.5, elapsed  # margin for a busy 2-core machine
    assert "DNS list bl.dnsbl.test" in caplog.text and "timeout" in caplog.text


async def test_the_message_time_limit_bounds_everything(dns_server):
    dns_server.fault("zen.dnsbl.test", delay=5)
    config = DnsConfig(
        nameservers=(HostPort("127.0.0.1", dns_server.port),), timeout=3.0, message_timeout=0.3
    )
    check = dnsbl(DnsService(config))
    started = time.monotonic()
    scored = (await check._score_many([("1.2.3.4", "c", "4.3.2.1")], time.monotonic() + 0.3))[0]
    assert time.monotonic() - started < 0.3 + 0.5
    assert "zen.dnsbl.test=error:timeout" in scored.detail
    assert "bl.dnsbl.test=127.0.0.2(+2)" in scored.detail
    await check.dns.aclose()


async def test_timeout_with_tempfail_defers_only_when_it_could_matter(dns_server):
    dns_server.fault("zen.dnsbl.test", Fault.DROP)
    config = DnsConfig(
        nameservers=(HostPort("127.0.0.1", dns_server.port),),
        timeout=0.3,
        message_timeout=0.5,
        on_error="tempfail",
    )
    check = dnsbl(DnsService(config))
    # 1.2.3.4: bl +2, zen unknown (could be +3): the outcome depends on the failed list.
    finding = await check.observe(msg("1.2.3.4"))
    assert finding is not None and finding.code == "DNS_ERROR"
    assert finding.action is Action.TEMPFAIL
    # With zen answering but dnswl silent, a listing that an allowlist could cancel is deferred;
    # one it could not cancel stands.
    dns_server.clear_faults()
    dns_server.fault("list.dnswl.test", Fault.DROP)
    check.dns.cache.clear()
    assert (await check.observe(msg("1.2.3.4"))).code == "DNS_ERROR"  # 5 - 4 = 1 < 3 possible
    assert await check.observe(msg("1.2.3.7")) is None  # 2, and dnswl can only lower it


async def test_servfail_is_an_error_and_truncated_answers_retry_over_tcp(service, dns_server):
    dns_server.fault("bl.dnsbl.test", Fault.SERVFAIL)
    dns_server.fault("zen.dnsbl.test", Fault.TRUNCATE)
    finding = await dnsbl(service).observe(msg("1.2.3.4"))
    assert finding is not None and finding.code == "LISTED"
    assert "bl.dnsbl.test=error:SERVFAIL" in finding.detail
    assert "zen.dnsbl.test=127.0.0.4(+3)" in finding.detail
    transports = [q.transport for q in dns_server.queries if q.name == "4.3.2.1.zen.dnsbl.test"]
    assert transports[:2] == ["udp", "tcp"]


async def test_answers_are_cached_for_their_ttl_no_second_query(service, dns_server):
    check = dnsbl(service)
    first = await check.observe(msg("1.2.3.4"))
    queries = len(dns_server.queries)
    second = await check.observe(msg("1.2.3.4"))
    assert second == first
    assert len(dns_server.queries) == queries  # A and TXT both from the cache
    # Negative answers too.
    assert await check.observe(msg("5.5.5.5")) is None
    queries = len(dns_server.queries)
    assert await check.observe(msg("5.5.5.5")) is None
    assert len(dns_server.queries) == queries
    assert service.cache.stats.hits >= 5


async def test_fifty_concurrent_messages_from_one_client_send_one_query_per_list(service, dns_server):
    dns_server.fault("dnsbl.test", delay=0.05)  # answers slower than the sessions arrive
    dns_server.fault("dnswl.test", delay=0.05)
    check = dnsbl(service)
    findings = await asyncio.gather(*(check.observe(msg("1.2.3.4")) for _ in range(50)))
    assert {f.code for f in findings} == {"LISTED"}
    for zone in ("zen.dnsbl.test", "bl.dnsbl.test", "list.dnswl.test"):
        assert dns_server.count(f"4.3.2.1.{zone}", "A") == 1
    assert service.cache.stats.coalesced >= 49 * 3


async def test_ttls_are_clamped_like_postscreen(dns_server):
    dns_server.add_zone("short.dnsbl.test", "2.2.2.2 5 A 127.0.0.2\n", negative_ttl=1)
    dns_server.add_zone("long.dnsbl.test", "2.2.2.2 86400 A 127.0.0.2\n", negative_ttl=86400)
    now = [1000.0]
    config = DnsConfig(nameservers=(HostPort("127.0.0.1", dns_server.port),), timeout=1.0)
    service = DnsService(config, clock=lambda: now[0])
    names = [("2.2.2.2.short.dnsbl.test", "A"), ("3.3.3.3.short.dnsbl.test", "A"),
             ("2.2.2.2.long.dnsbl.test", "A"), ("3.3.3.3.long.dnsbl.test", "A")]
    for name in names:
        await service.lookup(*name)
    asked = len(dns_server.queries)
    now[0] += 59  # the 5 s and 1 s TTLs were raised to 60 s (postscreen_dnsbl_min_ttl)
    for name in names:
        await service.lookup(*name)
    assert len(dns_server.queries) == asked
    now[0] += 2  # past 60 s: the short ones are asked again
    for name in names:
        await service.lookup(*name)
    assert len(dns_server.queries) == asked + 2
    now[0] += 3600  # a day's TTL was cut to an hour (postscreen_dnsbl_max_ttl)
    for name in names:
        await service.lookup(*name)
    assert len(dns_server.queries) == asked + 6


async def test_hostile_txt_is_sanitised_before_any_reply_or_header(service):
    finding = await dnsbl(service).observe(msg("1.2.3.10"))
    assert finding is not None and finding.code == "LISTED"
    txt = finding.groups[2]
    assert txt == "Listed 250 2.0.0 Ok forged [31m second part"
    assert all(" " <= c <= "~" for c in finding.reason + finding.detail)


async def test_txt_lookup_can_be_turned_off(service, dns_server):
    finding = await dnsbl(service, "txt: false\n").observe(msg("1.2.3.4"))
    assert finding.groups[2] == ""
    assert dns_server.count(rdtype="TXT") == 0


async def test_reply_map_hides_a_keyed_zone_everywhere(dns_server):
    dns_server.add_zone(
        "secretkey123.zen.dq.dnsbl.test",
        '4.3.2.1 A 127.0.0.2\n        TXT "see secretkey123.zen.dq.dnsbl.test/why"\n',
    )
    config = DnsConfig(nameservers=(HostPort("127.0.0.1", dns_server.port),), timeout=1.0)
    service = DnsService(config)
    check = build(
        DnsblCheck,
        'sites: "secretkey123.zen.dq.dnsbl.test*3"\nthreshold: 3\n'
        'reply_map: {secretkey123.zen.dq.dnsbl.test: zen.spamhaus.org}\n',
        service,
    )
    finding = await check.observe(msg("1.2.3.4"))
    everything = " ".join([finding.reason, finding.detail, *finding.groups, check.describe()])
    assert "secretkey123" not in everything
    assert finding.groups[1] == "zen.spamhaus.org"
    assert "see zen.spamhaus.org/why" in finding.groups[2]
    assert [z.shown for z in check.zones()] == ["zen.spamhaus.org"]


async def test_rhsbl_looks_up_sender_helo_and_from_domains(service, dns_server):
    check = build(
        RhsblCheck, 'sites: "dbl.rhsbl.test*3"\nthreshold: 3\nlookup: [sender, helo, from]\n', service
    )
    listed = await check.observe(msg("1.2.3.4", "From: <x@spam.example>", mail_from="a@clean.example", helo="mx.clean.example"))
    assert listed is not None and listed.code == "LISTED"
    assert listed.groups[0] == "spam.example" and "From" not in listed.reason
    assert "from domain spam.example listed" in listed.reason
    assert "dbl.rhsbl.test/query/dbl?domain=spam.example" in listed.groups[2]
    asked = {q.name for q in dns_server.queries if q.rdtype == "A"}
    assert asked == {"clean.example.dbl.rhsbl.test", "mx.clean.example.dbl.rhsbl.test", "spam.example.dbl.rhsbl.test"}
    sender_only = build(RhsblCheck, 'sites: "dbl.rhsbl.test*3"\nthreshold: 3\n', service)
    assert await sender_only.observe(msg(None, "From: <x@spam.example>", mail_from="")) is None
    assert (await sender_only.observe(msg(None, mail_from="bounce@SPAM.example."))).code == "LISTED"


async def test_rhsbl_health_uses_the_domain_test_points(service, dns_server):
    check = build(RhsblCheck, 'sites: "dbl.rhsbl.test, zen.dnsbl.test"\n', service)
    await service.check_zones(check.zones())
    assert service.health.usable("dbl.rhsbl.test")
    assert not service.health.usable("zen.dnsbl.test")  # an IP list has no "test" name
    assert {q.name for q in dns_server.queries} >= {"test.dbl.rhsbl.test", "invalid.dbl.rhsbl.test"}


@pytest.mark.parametrize(
    "yaml, problem",
    [
        ("threshold: 3\n", "sites: is required"),
        ('sites: "zen.dnsbl.test*x"\n', "weight 'x' is not a whole number"),
        ('sites: "zen.dnsbl.test"\nallowlist_threshold: 0\n', "must be negative"),
        ('sites: "zen.dnsbl.test"\nthreshold: 0\n', "must be above 0"),
        ('sites: "zen.dnsbl.test"\nthreshold: 1\nallowlist_threshold: -0.5\n', None),
        ('sites: "zen.dnsbl.test"\nreply_map: {other.test: x.test}\n', "is not one of the sites"),
        ('sites: "zen.dnsbl.test"\nreceived_hop: 0\n', "must be at least 1"),
        ('sites: "zen.dnsbl.test"\nthreshhold: 3\n', "did you mean 'threshold'"),
    ],
)
def test_option_problems_name_the_rule(yaml, problem):
    problems: list = []
    opts = Options(load_text(yaml, "rule.yaml"), problems, rule="T")
    DnsblCheck.from_options(opts, RuleEnv(dns=DnsService(resolver=StaticResolver())))
    opts.finish(("name", "check", "action", "score", "text", "mode"))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in str(p) and "rule T" in str(p) for p in problems), problems


def test_rhsbl_refuses_an_allowlist_on_forgeable_names():
    problems: list = []
    opts = Options(load_text('sites: "dbl.rhsbl.test"\nallowlist_threshold: -1\n'), problems, rule="T")
    RhsblCheck.from_options(opts, RuleEnv(dns=DnsService(resolver=StaticResolver())))
    assert any("forgeable" in str(p) for p in problems)


async def test_static_resolver_for_pure_scoring():
    resolver = StaticResolver({
        ("4.3.2.1.zen.dnsbl.test", "A"): ("127.0.0.2", "127.0.0.3", "127.0.0.4"),
        ("4.3.2.1.bl.dnsbl.test", "A"): "timeout",
    })
    service = DnsService(resolver=resolver)
    check = build(
        DnsblCheck,
        'sites: "zen.dnsbl.test=127.0.0.[2..4]*2, zen.dnsbl.test=127.0.0.3*5, bl.dnsbl.test"\n'
        "threshold: 7\ntxt: false\n",
        service,
    )
    finding = await check.observe(msg("1.2.3.4"))
    # Three answers match the first entry: it still adds 2 once; the second entry adds 5.
    assert finding.detail == (
        "zen.dnsbl.test=127.0.0.2,127.0.0.3,127.0.0.4(+7) bl.dnsbl.test=error:timeout total=7"
    )
    assert resolver.queries == [("4.3.2.1.zen.dnsbl.test", "A"), ("4.3.2.1.bl.dnsbl.test", "A")]


async def test_the_health_loop_probes_at_start_and_again_until_a_zone_recovers(dns_server):
    config = DnsConfig(
        nameservers=(HostPort("127.0.0.1", dns_server.port),), timeout=0.5, health_interval=0.2
    )
    service = DnsService(config)
    check = build(DnsblCheck, 'sites: "zen.dnsbl.test, empty.dnsbl.test"\n', service)
    loop = asyncio.ensure_future(service.health_loop())
    try:
        deadline = time.monotonic() + 5
        while "empty.dnsbl.test" not in service.health.states and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not service.health.usable("empty.dnsbl.test")
        assert service.health.usable("zen.dnsbl.test")
        # The list fixes its test point; the next round of probes re-enables it.
        dns_server.add_zone("empty.dnsbl.test", "2.0.0.127 A 127.0.0.2\n")
        while not service.health.usable("empty.dnsbl.test") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert service.health.usable("empty.dnsbl.test")
        assert dns_server.count("2.0.0.127.zen.dnsbl.test") >= 2  # healthy zones are re-probed too
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert check.zones()  # the service watches checks weakly: this one lived through the test


# --- the golden corpus (tests/corpus/) -------------------------------------------------------
@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_findings_of_the_dns_list_kinds(name, dns_server):
    """Every corpus message through the corpus's dnsbl and rhsbl rules, against the test lists
    on a real DNS server: their findings, as expected."""
    rules = corpus.ruleset(["dnsbl", "rhsbl"], dns_port=dns_server.port)
    assert {rule.kind for rule in rules.rules} == {"dnsbl", "rhsbl"}
    try:
        assert await corpus.findings(name, rules) == corpus.expected_findings(name, rules)
    finally:
        await rules.env.dns.aclose()
