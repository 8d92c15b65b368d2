"""Property tests for sender authentication: no SPF record, DKIM-Signature, DKIM key, DMARC
record, From: value or client address makes an exception escape; the results are RFC 8601
words, and our Authentication-Results header stays ASCII and parses with authres whatever the
sender wrote.

DNS answers come from a StaticResolver (the same logic over real DNS is in
tests/integration/test_auth.py); ``pytest -m slow tests/property`` runs the nightly size.
"""

from __future__ import annotations

import asyncio

import authres
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpfilter.config.settings import AuthenticationConfig
from smtpfilter.engine.auth import AuthResults, Authenticator, DkimResult, DmarcResult, SpfResult
from smtpfilter.engine.auth.dmarc import DmarcSyntaxError, OrgDomains
from smtpfilter.engine.auth.dmarc import parse_record as parse_dmarc
from smtpfilter.engine.auth.header import carries_id
from smtpfilter.engine.auth.spf import SpfSyntaxError
from smtpfilter.engine.auth.spf import parse_record as parse_spf
from smtpfilter.engine.resolver import StaticResolver
from tests.support.auth import context, rsa_key

ORG = OrgDomains()  # the PSL, loaded once (as one Authenticator per process does)
FAST = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
NIGHTLY = settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))

SPF_TERMS = st.sampled_from([
    "ip4:192.0.2.0/24", "ip4:203.0.113.5", "ip6:2001:db8::/32", "a", "a:a.fuzz.test/24", "mx",
    "mx:fuzz.test//64", "include:fuzz.test", "include:other.fuzz.test", "exists:%{i}.fuzz.test",
    "ptr", "ptr:fuzz.test", "redirect=other.fuzz.test", "exp=exp.fuzz.test", "-all", "~all",
    "?all", "+all", "all", "%{l1r+-}", "a:%{d}", "a:%{z}", "ip4:300.1.1.1", "frob", "x=%{s}",
    "include", "a:bad..name", "mx/33", "-", "%", "%{", "a:\u00e9.test", "v=spf1",
])
WORDS = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=30)
SPF_RECORDS = st.one_of(
    st.lists(st.one_of(SPF_TERMS, WORDS), max_size=8).map(lambda t: " ".join(["v=spf1", *t])),
    WORDS,
)
CLIENTS = st.one_of(
    st.sampled_from(["192.0.2.10", "203.0.113.5", "2001:db8::1", "::ffff:192.0.2.10",
                     "IPv6:2001:db8::2", "not-an-ip", "", "999.1.1.1"]),
    WORDS,
)
DMARC_TAGS = st.sampled_from([
    "p=reject", "p=quarantine", "p=none", "p=bogus", "sp=none", "sp=x", "adkim=s", "aspf=r",
    "pct=20", "pct=x", "pct=-5", "t=y", "rua=mailto:d@fuzz.test", "fo=1", "=", ";", "v=DMARC1",
])
DMARC_RECORDS = st.one_of(
    st.lists(st.one_of(DMARC_TAGS, WORDS), max_size=6).map(lambda t: "; ".join(["v=DMARC1", *t])),
    WORDS,
)
SIG_TAGS = st.sampled_from([
    "v=1", "a=rsa-sha256", "a=ed25519-sha256", "a=rsa-sha1", "a=x", "d=fuzz.test", "d=",
    "s=sel", "s=a b", "s=\u00e9", "c=relaxed/simple", "c=bogus", "h=from:to", "h=", "bh=AAAA",
    "b=AAAA", "b=", "l=5", "l=x", "t=1", "x=1", "i=@fuzz.test", "i=@other.test", "q=dns/txt",
    ";", "=", "==",
])
SIGNATURES = st.lists(st.one_of(SIG_TAGS, WORDS), max_size=10).map("; ".join)
KEYS = st.one_of(
    st.sampled_from([
        f"v=DKIM1; k=rsa; p={rsa_key()[1]}", "v=DKIM1; k=rsa; p=", "v=DKIM1; k=dsa; p=AAAA",
        "v=DKIM1; p=!!!", "k=ed25519; p=AAAA", "v=DKIM1; s=other; p=AAAA", "h=md5; p=AAAA",
    ]),
    WORDS,
)


def _resolver(spf: str, dmarc: str, key: str) -> StaticResolver:
    return StaticResolver({
        ("fuzz.test", "TXT"): (spf,),
        ("other.fuzz.test", "TXT"): ("v=spf1 include:fuzz.test -all",),
        ("fuzz.test", "MX"): ("10 a.fuzz.test.", "0 ."),
        ("a.fuzz.test", "A"): ("192.0.2.10",),
        ("exp.fuzz.test", "TXT"): ("%{i} %{z} %{c} not allowed",),
        ("_dmarc.fuzz.test", "TXT"): (dmarc,),
        ("sel._domainkey.fuzz.test", "TXT"): (key,),
        ("10.2.0.192.in-addr.arpa", "PTR"): ("a.fuzz.test.",),
    })


def _check(spf, dmarc, key, signature, from_value, client, helo) -> None:
    try:
        parse_spf(spf)
    except SpfSyntaxError:
        pass
    try:
        parse_dmarc(dmarc)
    except DmarcSyntaxError:
        pass
    content = (
        f"DKIM-Signature: {signature}\r\nFrom: {from_value}\r\nTo: b@x.test\r\n\r\nbody\r\n"
    ).encode("utf-8", "surrogateescape")
    msg = context(content, mail_from="a@fuzz.test", addr=client or None, helo=helo)
    auth = Authenticator(
        _resolver(spf, dmarc, key).query, AuthenticationConfig(timeout=5.0), org=ORG
    )
    results: AuthResults = asyncio.run(auth.results(msg))
    assert results.spf is None or results.spf.result in set(SpfResult)
    assert results.dkim.result in set(DkimResult)
    assert results.dmarc is None or results.dmarc.result in set(DmarcResult)
    value = results.header_value("mx.receiver.test")
    assert value.isascii() and "\r" not in value and "\n" not in value
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert parsed.authserv_id == "mx.receiver.test"
    assert carries_id(value, "mx.receiver.test")
    carries_id(from_value, "mx.receiver.test")


@FAST
@given(SPF_RECORDS, DMARC_RECORDS, KEYS, SIGNATURES, WORDS, CLIENTS, WORDS)
def test_authentication_never_raises(spf, dmarc, key, signature, from_value, client, helo):
    _check(spf, dmarc, key, signature, from_value, client, helo)


@pytest.mark.slow
@NIGHTLY
@given(SPF_RECORDS, DMARC_RECORDS, KEYS, SIGNATURES, WORDS, CLIENTS, WORDS)
def test_authentication_never_raises_nightly(spf, dmarc, key, signature, from_value, client, helo):
    _check(spf, dmarc, key, signature, from_value, client, helo)
