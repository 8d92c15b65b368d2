"""SPF, DKIM and DMARC over real DNS (the loopback DNS server), with messages signed here by
dkimpy: engine/auth/ as the rules and the Authentication-Results header use it."""

from __future__ import annotations

import asyncio
import logging

import authres
import pytest

from smtpfilter.config.settings import AuthenticationConfig, HostPort
from smtpfilter.core.wire import fold_header, outgoing
from smtpfilter.engine.auth import Authenticator, MessageDns
from smtpfilter.engine.auth.dkim import verify_message
from smtpfilter.engine.auth.spf import SpfLimits, check_message
from smtpfilter.engine.resolver import DnsCache, DnspythonResolver
from tests.support import corpus
from tests.support.auth import (
    AUTHSERV_ID,
    BAD_IP,
    GOOD_IP,
    context,
    message,
    rsa_key,
    serve_auth_zones,
    sign,
    wire,
)


@pytest.fixture
async def zones(dns_server):
    serve_auth_zones(dns_server)
    return dns_server


@pytest.fixture
async def cache(zones):
    """Our DnsCache over dnspython, asking only the test server (1 s per lookup)."""
    resolver = DnspythonResolver([HostPort("127.0.0.1", zones.port)], timeout=1.0)
    cache = DnsCache(lambda: resolver)
    yield cache
    await cache.aclose()


@pytest.fixture
def auth(cache):
    settings = AuthenticationConfig(authserv_id=AUTHSERV_ID, timeout=3.0)
    return Authenticator(cache.query, settings, sample=lambda: 0.5)


# --- DKIM ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("canon", "algorithm", "selector"),
    [
        ((b"relaxed", b"relaxed"), b"rsa-sha256", "sel"),
        ((b"simple", b"simple"), b"rsa-sha256", "sel"),
        ((b"relaxed", b"simple"), b"rsa-sha256", "sel"),
        ((b"relaxed", b"relaxed"), b"ed25519-sha256", "ed"),
    ],
    ids=["relaxed", "simple", "relaxed-simple", "ed25519"],
)
async def test_dkim_signed_message_passes(cache, zones, canon, algorithm, selector):
    signed = sign(message(), selector=selector, canon=canon, algorithm=algorithm)
    outcome = await verify_message(wire(signed), query=cache.query)
    assert outcome.result == "pass", outcome
    [signature] = outcome.signatures
    assert (signature.domain, signature.selector) == ("sender.test", selector)


@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple")], ids=["relaxed", "simple"])
async def test_dkim_body_changed_after_signing_fails(cache, zones, canon):
    signed = sign(message(), canon=canon)
    tampered = signed.replace(b"Bye.", b"Buy!")
    outcome = await verify_message(wire(tampered), query=cache.query)
    assert outcome.result == "fail"
    assert outcome.signatures[0].reason == "body hash mismatch"


async def test_dkim_header_changed_after_signing_fails(cache, zones):
    signed = sign(message(subject="Invoice"))
    outcome = await verify_message(wire(signed.replace(b"Subject: Invoice", b"Subject: Invoice 2")),
                                   query=cache.query)
    assert outcome.result == "fail"
    assert outcome.signatures[0].reason == "signature did not verify"


async def test_dkim_relaxed_survives_whitespace_changes_simple_does_not(cache, zones):
    relaxed = sign(message(), canon=(b"relaxed", b"relaxed")).replace(b"Subject: Test", b"Subject:   Test")
    simple = sign(message(), canon=(b"simple", b"simple")).replace(b"Subject: Test", b"Subject:   Test")
    assert (await verify_message(wire(relaxed), query=cache.query)).result == "pass"
    assert (await verify_message(wire(simple), query=cache.query)).result == "fail"


@pytest.mark.parametrize(
    ("selector", "result", "reason"),
    [
        ("nokey", "permerror", "no key at nokey._domainkey.sender.test"),
        ("garbage", "permerror", "key garbage._domainkey.sender.test"),
        ("dsa", "permerror", "unknown algorithm"),
        ("short", "permerror", "fewer than 1024"),
        ("sha1only", "permerror", "h= does not allow rsa-sha256"),
        ("revoked", "permerror", "key revoked._domainkey.sender.test"),
    ],
)
async def test_dkim_bad_keys(cache, zones, selector, result, reason):
    private = rsa_key(512)[0] if selector == "short" else None
    signed = sign(message(), selector=selector, private=private)
    outcome = await verify_message(wire(signed), query=cache.query)
    assert outcome.result == result
    assert reason in outcome.signatures[0].reason


async def test_dkim_key_lookup_failure_is_temperror(cache, zones):
    signed = sign(message(), domain="broken.test")
    outcome = await verify_message(wire(signed), query=cache.query)
    assert outcome.result == "temperror"
    assert "SERVFAIL" in outcome.signatures[0].reason


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s.replace(b" b=", b" x=", 1),  # no b= tag
        lambda s: s.replace(b"a=rsa-sha256", b"a=rsa-md5"),
        lambda s: s.replace(b"v=1;", b"v=2;"),
        lambda s: s.replace(b"DKIM-Signature: ", b"DKIM-Signature: ;;=;", 1),
        lambda s: s.replace(b"d=sender.test", b"d=sender.test; i=@other.test"),
    ],
    ids=["no-b", "bad-algorithm", "bad-version", "garbage-tags", "i-outside-d"],
)
async def test_dkim_malformed_signature_is_permerror(cache, zones, mangle):
    outcome = await verify_message(wire(mangle(sign(message()))), query=cache.query)
    assert outcome.result == "permerror", outcome


async def test_dkim_rsa_sha1_is_permerror(cache, zones):
    signed = sign(message(), algorithm=b"rsa-sha1")
    outcome = await verify_message(wire(signed), query=cache.query)
    assert outcome.result == "permerror"
    assert "RFC 8301" in outcome.signatures[0].reason


async def test_dkim_partial_body_is_policy_unless_allowed(cache, zones):
    """l= signs part of the body: text appended after signing keeps a dkimpy "pass" (RFC 6376
    §8.2), so by default the result is policy; authentication.dkim.partial_body: pass allows it."""
    appended = sign(message(), length=True) + b"Appended by anyone: pay now.\r\n"
    outcome = await verify_message(wire(appended), query=cache.query)
    assert outcome.result == "policy"
    assert "RFC 6376 §8.2" in outcome.signatures[0].reason
    allowed = await verify_message(wire(appended), query=cache.query, accept_partial_body=True)
    assert allowed.result == "pass"
    exact = sign(message(), length=True)  # l= covering the whole body is just a signature
    assert (await verify_message(wire(exact), query=cache.query)).result == "pass"


async def test_dkim_unsigned_is_none_and_two_signatures_are_both_reported(cache, zones):
    assert (await verify_message(wire(message()), query=cache.query)).result == "none"
    twice = sign(sign(message(), selector="nokey"), selector="sel")
    outcome = await verify_message(wire(twice), query=cache.query)
    assert [s.result for s in outcome.signatures] == ["pass", "permerror"]
    assert outcome.result == "pass"


async def test_dkim_message_dkimpy_cannot_parse(cache, zones):
    signed = sign(message())
    broken = signed.replace(b"To: bob", b"Not a header line\r\nTo: bob")
    outcome = await verify_message(wire(broken), query=cache.query)
    assert outcome.result == "permerror"


async def test_dkim_big_message_verified_in_a_thread(cache, zones):
    body = "".join(f"line {i} of a long message, with some words in it\r\n" for i in range(20000))
    signed = sign(message(body=body))
    outcome = await verify_message(wire(signed), query=cache.query, thread_above=1024)
    assert outcome.result == "pass"


# --- SPF -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("domain", "ip", "result"),
    [
        ("pass", GOOD_IP, "pass"),
        ("pass", BAD_IP, "fail"),
        ("fail", GOOD_IP, "fail"),
        ("softfail", GOOD_IP, "softfail"),
        ("neutral", GOOD_IP, "neutral"),
        ("none", GOOD_IP, "none"),
        ("nxdomain", GOOD_IP, "none"),
        ("garbage", GOOD_IP, "permerror"),
        ("garbage2", GOOD_IP, "fail"),  # "a:bad..name" is valid syntax; the name matches nothing
        ("unknown", GOOD_IP, "permerror"),
        ("two", GOOD_IP, "permerror"),
        ("loop", GOOD_IP, "permerror"),
        ("loopa", GOOD_IP, "permerror"),
        ("many", GOOD_IP, "permerror"),
        ("ten", GOOD_IP, "pass"),
        ("void3", GOOD_IP, "permerror"),
        ("void2", GOOD_IP, "pass"),
        ("mx", GOOD_IP, "pass"),
        ("mx", BAD_IP, "fail"),
        ("incl", GOOD_IP, "pass"),
        ("incl", BAD_IP, "fail"),
        ("redir", GOOD_IP, "pass"),
        ("redirnone", GOOD_IP, "permerror"),
        ("tempinc", GOOD_IP, "temperror"),
        ("macro", GOOD_IP, "pass"),
        ("macro", BAD_IP, "fail"),
        ("ip6", "2001:db8::1", "pass"),
        ("ip6", "::ffff:192.0.2.10", "fail"),
        ("nullmx", GOOD_IP, "fail"),
    ],
)
async def test_spf_results(cache, zones, domain, ip, result):
    outcome = await check_message(ip, "mail.sender.test", f"alice@{domain}.spf.test", query=cache.query)
    assert outcome.result == result, outcome


async def test_spf_explanation_on_fail(cache, zones):
    outcome = await check_message(BAD_IP, "h", "alice@exp.spf.test", query=cache.query)
    assert outcome.result == "fail"
    assert outcome.explanation == "203.0.113.5 is not one of exp.spf.test's senders"


async def test_spf_dns_that_never_answers_is_temperror_within_the_deadline(cache, zones):
    dns = MessageDns(cache.query, timeout=0.5, max_queries=50)
    outcome = await check_message(GOOD_IP, "h", "alice@slowinc.spf.test", query=dns.query)
    assert outcome.result == "temperror"


async def test_spf_query_budget_is_temperror(cache, zones):
    dns = MessageDns(cache.query, timeout=5, max_queries=3)
    outcome = await check_message(GOOD_IP, "h", "alice@ten.spf.test", query=dns.query)
    assert outcome.result == "temperror"
    assert "DNS queries" in outcome.reason


async def test_spf_null_sender_checks_helo(cache, zones):
    outcome = await check_message(GOOD_IP, "mail.sender.test", "", query=cache.query)
    assert (outcome.result, outcome.identity, outcome.sender) == ("pass", "helo", "postmaster@mail.sender.test")
    outcome = await check_message(BAD_IP, "mail.sender.test", "", query=cache.query)
    assert outcome.result == "fail"


@pytest.mark.parametrize("addr", [None, "127.0.0.1", "::1"])
async def test_spf_and_dmarc_not_for_local_submissions(auth, addr):
    msg = context(message(), addr=addr)
    assert await auth.spf(msg) is None
    assert await auth.dmarc(msg) is None
    assert (await auth.dkim(msg)).result == "none"  # DKIM is verified all the same


async def test_spf_limits_are_configurable(cache, zones):
    outcome = await check_message(GOOD_IP, "h", "alice@void3.spf.test", query=cache.query,
                                  limits=SpfLimits(max_void_lookups=3))
    assert outcome.result == "pass"


# --- DMARC -----------------------------------------------------------------------------------
def _msg(from_domain, *, sign_as=None, mail_from=None, ip=GOOD_IP, selector="sel"):
    data = message(from_=f"Alice <alice@{from_domain}>")
    if sign_as:
        data = sign(data, domain=sign_as, selector=selector)
    return context(data, mail_from=mail_from if mail_from is not None else f"bounce@{from_domain}", addr=ip)


@pytest.mark.parametrize(
    ("kwargs", "result", "policy", "disposition", "aligned"),
    [
        (dict(from_domain="reject.test", sign_as="reject.test", ip=BAD_IP), "pass", "reject", "none", "dkim"),
        (dict(from_domain="reject.test", ip=GOOD_IP), "pass", "reject", "none", "spf"),
        (dict(from_domain="reject.test", mail_from="b@mail.reject.test"), "pass", "reject", "none", "spf"),
        (dict(from_domain="sub.reject.test", sign_as="reject.test", ip=BAD_IP), "pass", "reject", "none", "dkim"),
        (dict(from_domain="reject.test", ip=BAD_IP), "fail", "reject", "reject", ""),
        (dict(from_domain="reject.test", sign_as="sender.test", ip=BAD_IP), "fail", "reject", "reject", ""),
        (dict(from_domain="reject.test", mail_from="b@sender.test"), "fail", "reject", "reject", ""),
        (dict(from_domain="quarantine.test", ip=BAD_IP), "fail", "quarantine", "quarantine", ""),
        (dict(from_domain="none.test", ip=BAD_IP), "fail", "none", "none", ""),
        (dict(from_domain="sub.parent.test", ip=BAD_IP), "fail", "quarantine", "quarantine", ""),
        (dict(from_domain="sub.nosp.test", ip=BAD_IP), "fail", "reject", "reject", ""),
        (dict(from_domain="pct.test", ip=BAD_IP), "fail", "reject", "quarantine", ""),
        (dict(from_domain="testing.test", ip=BAD_IP), "fail", "reject", "quarantine", ""),
        (dict(from_domain="sub.strict.test", sign_as="strict.test", mail_from="b@strict.test"), "fail", "reject", "reject", ""),
        (dict(from_domain="junkrua.test", ip=BAD_IP), "fail", "none", "none", ""),
        (dict(from_domain="junk.test", ip=BAD_IP), "permerror", "", "", ""),
        (dict(from_domain="nosemi.test", ip=BAD_IP), "permerror", "", "", ""),
        (dict(from_domain="nodmarc.test", ip=BAD_IP), "none", "", "", ""),
        (dict(from_domain="twodmarc.test", ip=BAD_IP), "none", "", "", ""),
        (dict(from_domain="tempdmarc.test", ip=BAD_IP), "temperror", "", "", ""),
        (dict(from_domain="reject.test", sign_as="broken.test", ip=BAD_IP), "fail", "reject", "reject", ""),
    ],
    ids=[
        "dkim-aligned", "spf-aligned", "spf-relaxed", "dkim-relaxed", "reject", "dkim-unaligned",
        "spf-unaligned", "quarantine", "none", "sp", "no-sp", "pct-sampled-out", "t=y", "strict",
        "junk-with-rua", "junk", "junk-no-semicolon", "no-record", "two-records", "dns-error",
        "unaligned-temperror-is-fail",
    ],
)
async def test_dmarc(auth, kwargs, result, policy, disposition, aligned):
    outcome = await auth.dmarc(_msg(**kwargs))
    assert (outcome.result, outcome.policy, outcome.disposition) == (result, policy, disposition), outcome
    assert outcome.dkim_aligned == (aligned == "dkim")
    assert outcome.spf_aligned == (aligned == "spf")


async def test_dmarc_pct_inside_the_sample(cache, zones):
    auth = Authenticator(cache.query, sample=lambda: 0.1)  # 10 < pct=20
    outcome = await auth.dmarc(_msg("pct.test", ip=BAD_IP))
    assert (outcome.result, outcome.disposition) == ("fail", "reject")


async def test_dmarc_aligned_dkim_temperror_is_temperror(auth):
    outcome = await auth.dmarc(_msg("reject.test", ip=BAD_IP, sign_as="reject.test", selector="x"))
    assert outcome.result == "fail"  # a missing key is permerror, not a reason to hold back
    msg = context(sign(message(from_="a@broken.test"), domain="broken.test"), mail_from="b@broken.test", addr=BAD_IP)
    # broken.test has no DMARC record: none, whatever DKIM says.
    assert (await auth.dmarc(msg)).result == "none"


async def test_dmarc_several_from_domains_strictest_wins(auth):
    data = message(from_="a@none.test, b@reject.test")
    outcome = await auth.dmarc(context(data, mail_from="x@none.test", addr=BAD_IP))
    assert (outcome.result, outcome.disposition, outcome.from_domain) == ("fail", "reject", "reject.test")


async def test_dmarc_without_from_is_none(auth):
    data = b"To: bob@receiver.test\r\nSubject: x\r\n\r\nbody\r\n"
    outcome = await auth.dmarc(context(data, addr=BAD_IP))
    assert (outcome.result, outcome.reason) == ("none", "no From: header")


async def test_one_computation_per_message(auth, zones):
    msg = _msg("reject.test", sign_as="reject.test", ip=BAD_IP)
    before = len(zones.queries)
    results = [await auth.results(msg) for _ in range(3)]
    await auth.dmarc(msg)
    assert results[0] is not results[1] and results[0] == results[2]
    asked = [(q.name, q.rdtype) for q in zones.queries[before:]]
    assert len(asked) == len(set(asked)), asked  # nothing asked twice


# --- Authentication-Results --------------------------------------------------------------------
async def test_authentication_results_header_parses_with_authres(auth):
    msg = _msg("reject.test", sign_as="reject.test", ip=BAD_IP)
    results = await auth.results(msg)
    value = results.header_value(AUTHSERV_ID)
    folded = fold_header("Authentication-Results", value)
    assert all(len(line) <= 78 for line in folded.split(b"\r\n"))
    parsed = authres.AuthenticationResultsHeader.parse(folded.decode().replace("\r\n", ""))
    assert parsed.authserv_id == "mx.receiver.test"
    found = {(r.method, r.result): {f"{p.type}.{p.name}": p.value for p in r.properties} for r in parsed.results}
    assert found[("spf", "fail")] == {"smtp.mailfrom": "bounce@reject.test"}
    dkim_props = found[("dkim", "pass")]
    assert dkim_props["header.d"] == "reject.test" and dkim_props["header.s"] == "sel"
    assert results.dkim.signatures[0].b.startswith(dkim_props["header.b"])
    assert found[("dmarc", "pass")] == {"header.from": "reject.test"}


async def test_authentication_results_for_local_submission_and_unsigned(auth):
    results = await auth.results(context(message(), addr=None))
    value = results.header_value(AUTHSERV_ID)
    assert value == "mx.receiver.test; dkim=none"
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert [(r.method, r.result) for r in parsed.results] == [("dkim", "none")]


async def test_authentication_results_quotes_hostile_values(auth):
    msg = context(message(from_="x@reject.test"), mail_from='"odd local"@reject.test', addr=BAD_IP,
                  helo="evil; dkim=pass")
    value = (await auth.results(msg)).header_value(AUTHSERV_ID)
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "fail"), ("dkim", "none"), ("dmarc", "fail")
    ]


async def test_forged_authentication_results_with_our_id_are_removed(auth):
    forged = (
        "Authentication-Results: MX.Receiver.Test; dkim=pass header.d=bank.test\r\n"
        "Authentication-Results: (comment) mx.receiver.test;\r\n\tspf=pass\r\n"
        'Authentication-Results: "mx.receiver.test"; dmarc=pass\r\n'
        "Authentication-Results: mx.receiver.test.evil.test; spf=pass\r\n"
        "Authentication-Results: other.test; spf=pass\r\n"
    )
    msg = context(message(extra=forged), addr=BAD_IP)
    doomed = auth.forged(msg, AUTHSERV_ID)
    assert len(doomed) == 3
    result = b"".join(bytes(p) for p in outgoing(msg, (), (), drop=doomed))
    assert b"bank.test" not in result and b"dmarc=pass" not in result and b"(comment)" not in result
    assert b"mx.receiver.test.evil.test; spf=pass" in result and b"other.test; spf=pass" in result
    assert result == bytes(msg.data).replace(forged.encode(), b"".join(
        line.encode() + b"\r\n" for line in forged.split("\r\n") if "other" in line or "evil" in line
    ))


async def test_authentication_never_raises_on_hostile_input(auth, caplog):
    caplog.set_level(logging.DEBUG)
    nasty = (
        b"From: \xff\xfe@\xff.test, <@>, \"x\"@\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=\xff\xfe; s=\x00; b=; bh=; h=from\r\n"
        b"DKIM-Signature: \r\n"
        b"\r\nbody\r\n"
    )
    msg = context(nasty, mail_from="\udcff@[1.2.3.4]", helo="[1.2.3.4]", addr="not-an-ip")
    results = await auth.results(msg)
    assert results.spf.result == "none"
    assert results.dkim.result == "permerror"
    value = results.header_value(AUTHSERV_ID)
    assert value.isascii()
    authres.AuthenticationResultsHeader.parse_value(value)


async def test_a_bug_of_ours_is_temperror_not_an_exception(auth, caplog, monkeypatch):
    """The rules decide on temperror as for a DNS failure; the message never gets our 451 for
    a bug in one of the three, and the log has the traceback."""

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("smtpfilter.engine.auth.check_message", broken)
    results = await auth.results(context(message(), addr=BAD_IP))
    assert results.spf.result == "temperror" and results.dmarc.result == "fail"
    assert "SPF evaluation failed" in caplog.text and "RuntimeError: a bug" in caplog.text


async def test_finish_stops_what_still_runs_for_a_decided_message(cache, zones):
    """A message decided early (a forcing rule, the scan timeout) leaves no work behind."""
    auth = Authenticator(cache.query, AuthenticationConfig(timeout=30.0))
    msg = context(message(), mail_from="alice@slowinc.spf.test", addr=GOOD_IP)
    auth.begin(msg)
    await zones.arrived.wait()
    tasks = [msg.memo["auth"][k] for k in ("spf", "dkim", "dmarc")]
    auth.finish(msg)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tasks[0].cancelled() and tasks[2].cancelled()


# --- the golden corpus --------------------------------------------------------------------------
@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_auth_findings(name, dns_server):
    """The corpus's spf, dkim and dmarc rules on every corpus message (tests/corpus/)."""
    rules = corpus.ruleset(["spf", "dkim", "dmarc"], dns_port=dns_server.port)
    try:
        assert await corpus.findings(name, rules) == corpus.expected_findings(name, rules)
        results = await corpus.observe(rules, corpus.context(name), observe_all=True)
    finally:
        await rules.env.dns.aclose()
    labels = [rule.verdict(finding).label for rule, finding in results if finding is not None]
    if name == "23-forged-dmarc.eml":
        assert labels == [
            "SPF_FAIL(fail bank.example)",
            "DKIM_BROKEN(fail d=bank.example)",
            "DMARC_REJECT(fail p=reject bank.example)",
        ]
