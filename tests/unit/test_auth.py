"""Sender authentication without sockets: the config section, the rule kinds' options and
findings (over a StaticResolver), the record parsers, the Authentication-Results text, and which
incoming fields are cut out. The same logic over real DNS is in tests/integration/test_auth.py."""

from __future__ import annotations

import re
import textwrap

import authres
import pytest

from smtpfilter.config.options import ConfigError
from smtpfilter.config.settings import AuthenticationConfig, load_config
from smtpfilter.core.verdict import Action, Decision, Finding, Verdict
from smtpfilter.core.wire import outgoing
from smtpfilter.engine.auth import Authenticator
from smtpfilter.engine.auth import dkim as dkim_module
from smtpfilter.engine.auth.dmarc import DmarcSyntaxError
from smtpfilter.engine.auth.dmarc import parse_record as parse_dmarc
from smtpfilter.engine.auth.header import authserv_id_of, carries_id
from smtpfilter.engine.auth.spf import SpfSyntaxError
from smtpfilter.engine.auth.spf import parse_record as parse_spf
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.resolver import DnsService, StaticResolver
from smtpfilter.engine.rules import RuleEnv, load_rules
from smtpfilter.config.settings import HeadersConfig, PolicyConfig
from tests.support.auth import BAD_IP, GOOD_IP, context, message, rsa_key, sign


# --- config ------------------------------------------------------------------------------------
def load(tmp_path, text):
    path = tmp_path / "smtpfilter.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_authentication_defaults_add_no_header():
    config = load_config(None)
    assert config.authentication == AuthenticationConfig()
    assert config.authentication.authserv_id is None
    assert Policy.for_config(config).authserv_id is None


def test_authentication_section(tmp_path):
    (tmp_path / "psl.dat").write_text("com\n")
    config = load(tmp_path, """\
        authentication:
          authserv_id: mx.example.org
          timeout: 5s
          psl_file: psl.dat
          dkim: {min_key_bits: 2048, max_signatures: 3, partial_body: pass}
        """)
    assert config.authentication == AuthenticationConfig(
        "mx.example.org", 5.0, tmp_path / "psl.dat", 2048, 3, "pass"
    )
    assert Policy.for_config(config).authserv_id == "mx.example.org"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("authentication: {authserv_id: 'mx example'}", "authentication.authserv_id: 'mx example' is not a host name"),
        ("authentication: {authserv_id: 'mx;x'}", "is not a host name"),
        ("authentication: {psl_file: nope.dat}", "nope.dat does not exist"),
        ("authentication: {timeout: 60s}", "authentication.timeout (60s) must be shorter than limits.scan_timeout (60s)"),
        ("authentication: {dkim: {partial_body: yes}}", "authentication.dkim.partial_body: 'yes' is not one of policy, pass"),
        ("authentication: {dkim: {min_key_bits: 256}}", "authentication.dkim.min_key_bits: must be at least 512"),
        ("authentication: {dkim: {min_bits: 2048}}", "unknown key 'authentication.dkim.min_bits'; did you mean 'authentication.dkim.min_key_bits'?"),
        ("authentication: {authserv: x}", "unknown key 'authentication.authserv'; did you mean 'authentication.authserv_id'?"),
    ],
)
def test_authentication_problems_name_file_line_and_key(tmp_path, text, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text + "\n")
    assert problem in str(caught.value)
    assert "smtpfilter.yaml:1" in str(caught.value)


# --- rule options --------------------------------------------------------------------------------
def rules(tmp_path, text, env=None):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return load_rules([path], env)


def test_the_issue_rules_load(tmp_path):
    ruleset = rules(tmp_path, """\
        rules:
          - name: SPF_FAIL
            check: spf
            results: [fail]
            action: tag
            score: 3
          - name: DKIM_BROKEN
            check: dkim
            results: [fail]
            action: tag
            score: 2
          - name: DMARC_REJECT
            check: dmarc
            policy: [reject]
            action: quarantine
        """)
    assert [(r.name, r.kind, r.is_async) for r in ruleset.rules] == [
        ("SPF_FAIL", "spf", True), ("DKIM_BROKEN", "dkim", True), ("DMARC_REJECT", "dmarc", True)
    ]
    assert {r.check.auth for r in ruleset.rules} == {ruleset.env.auth}  # one, shared
    assert ruleset.rules[2].check.describe() == "DMARC fail with policy reject"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("{name: R, check: spf, results: [fial], score: 1}",
         "rule R: results: 'fial' is not one of pass, fail, softfail, neutral, none, temperror, permerror"),
        ("{name: R, check: spf, score: 1}", "rule R: results: is required"),
        ("{name: R, check: dkim, results: fail, score: 1, policy: [reject]}",
         "rule R: unknown key 'policy'"),
        ("{name: R, check: dmarc, score: 1}", "rule R: a dmarc rule needs policy: [...] or results: [...]"),
        ("{name: R, check: dmarc, policy: [rejected], score: 1}",
         "rule R: policy: 'rejected' is not one of none, quarantine, reject"),
    ],
)
def test_rule_problems_name_file_line_and_rule(tmp_path, rule, problem):
    with pytest.raises(ConfigError) as caught:
        rules(tmp_path, f"rules:\n  - {rule}\n")
    assert f"rules.yaml:2: {problem}" in str(caught.value)


# --- findings over a static resolver ---------------------------------------------------------------
KEY_NAME = ("sel._domainkey.reject.test", "TXT")


def static_env() -> RuleEnv:
    public = rsa_key()[1]
    resolver = StaticResolver({
        ("reject.test", "TXT"): ("v=spf1 ip4:192.0.2.0/24 -all",),
        ("_dmarc.reject.test", "TXT"): ("v=DMARC1; p=reject",),
        KEY_NAME: (f"v=DKIM1; k=rsa; p={public}",),
    })
    env = RuleEnv(dns=DnsService(resolver=resolver))
    env.auth.configure(AuthenticationConfig(authserv_id="mx.receiver.test"))
    return env


ISSUE_RULES = """\
    rules:
      - {name: SPF_FAIL, check: spf, results: [fail], action: tag, score: 3}
      - {name: DKIM_BROKEN, check: dkim, results: [fail], action: tag, score: 2}
      - {name: DMARC_REJECT, check: dmarc, policy: [reject], action: quarantine}
    """


async def test_a_forged_ceo_mail_is_named_by_all_three(tmp_path):
    ruleset = rules(tmp_path, ISSUE_RULES, static_env())
    forged = sign(message(from_="CEO <ceo@reject.test>"), domain="reject.test")
    msg = context(forged.replace(b"Bye.", b"Pay!"), mail_from="ceo@reject.test", addr=BAD_IP)
    found = {rule.name: await rule.check.observe(msg) for rule in ruleset.rules}
    labels = [Verdict(name, finding).label for name, finding in found.items()]
    assert labels == [
        "SPF_FAIL(fail reject.test)",
        "DKIM_BROKEN(fail d=reject.test)",
        "DMARC_REJECT(fail p=reject reject.test)",
    ]
    assert [f.code for f in found.values()] == ["FAIL", "FAIL", "FAIL"]  # what metrics count
    assert found["DMARC_REJECT"].groups == ("fail", "reject.test", "reject")


async def test_genuine_mail_fires_nothing_and_asks_each_name_once(tmp_path):
    env = static_env()
    ruleset = rules(tmp_path, ISSUE_RULES, env)
    msg = context(sign(message(from_="a@reject.test"), domain="reject.test"),
                  mail_from="a@reject.test", addr=GOOD_IP)
    assert [await rule.check.observe(msg) for rule in ruleset.rules] == [None, None, None]
    asked = env.dns.resolver.queries  # type: ignore[attr-defined]
    assert sorted(asked) == sorted(set(asked)) and KEY_NAME in asked


# --- records ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 ip4:192.0.2 -all", "v=spf1 frob -all", "v=spf1 a:%{z}.example.org", "v=spf1 mx/40",
        "v=spf1 ip4:1.2.3.4/33", "v=spf1 include", "v=spf1 redirect=a.example redirect=b.example",
        "v=spf1 a:example.org/024", "v=spf1 exists:%{c}.example.org", "v=spf1 -all \u00e9",
        "v=spf1 all:x", "v=spf1 ip6:2001:db8::%eth0",
    ],
)
def test_spf_syntax_errors(record):
    with pytest.raises(SpfSyntaxError):
        parse_spf(record)


def test_spf_record_terms():
    record = parse_spf("v=spf1 a/24//64 mx:%{d}.example.org ~ip4:192.0.2.0/24 ra=x exp=e.%{d} -all")
    assert [(d.qualifier, d.mechanism) for d in record.directives] == [
        ("+", "a"), ("+", "mx"), ("~", "ip4"), ("-", "all")
    ]
    assert (record.directives[0].cidr4, record.directives[0].cidr6) == (24, 64)
    assert record.exp is not None and record.redirect is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DMARC1; p=reject", ("reject", None, "r", "r", 100, False)),
        ("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20;t=y;", ("quarantine", "none", "s", "s", 20, True)),
        ("v=DMARC1; p=NONE; pct=250; adkim=x", ("none", None, "r", "r", 100, False)),
        ("v=DMARC1; p=bogus; rua=mailto:d@example.org", ("none", None, "r", "r", 100, False)),
    ],
)
def test_dmarc_records(text, expected):
    record = parse_dmarc(text)
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct, record.testing) == expected


@pytest.mark.parametrize("text", ["v=DMARC1; p=bogus", "v=DMARC1", "p=reject; v=DMARC1", "v=DMARC1 p=reject", "v=DMARC1; sp=x; p=none"])
def test_dmarc_records_that_cannot_be_used(text):
    with pytest.raises(DmarcSyntaxError):
        parse_dmarc(text)


# --- Authentication-Results -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "ours"),
    [
        ("mx.receiver.test; spf=pass", True),
        ("MX.Receiver.Test.; dkim=pass", True),
        ("(c) mx.receiver.test; spf=pass", True),
        ("(nested (comment) \\) here) mx.receiver.test; spf=pass", True),
        ('"mx.receiver.test"; dmarc=pass', True),
        ('"mx.rec\\eiver.test"; dmarc=pass', True),
        ("mx.receiver.test(comment); spf=pass", True),
        ("mx.receiver.test 1; spf=pass", True),  # authres-version 1
        ("mx.receiver.test.evil.test; spf=pass", False),
        ("evil.mx.receiver.test; spf=pass", False),
        ("other.test; spf=pass (mx.receiver.test)", False),
        ("", False),
        ("(mx.receiver.test) other.test; spf=pass", False),
    ],
)
def test_which_fields_carry_our_id(value, ours):
    assert carries_id(value, "mx.receiver.test") is ours


def test_authserv_id_matches_what_authres_reads():
    for value in ("(a (b)) MX.receiver.test; spf=pass", "mx.receiver.test 1; spf=pass"):
        parsed = authres.AuthenticationResultsHeader.parse_value(value)
        assert authserv_id_of(value) == parsed.authserv_id.lower()


def test_outgoing_drops_the_given_fields_only(tmp_path):
    forged = ("Authentication-Results: mx.receiver.test; spf=pass\r\n"
              "Authentication-Results: other.test; spf=fail\r\n"
              "Authentication-Results: (x)\r\n mx.receiver.test; dkim=pass\r\n")
    msg = context(message(extra=forged + "X-Spam-Flag: YES\r\n"))
    doomed = Authenticator.forged(msg, "mx.receiver.test")
    assert [h.start for h in doomed] == [h.start for h in msg.headers.get_all("authentication-results")][::2]
    sent = b"".join(bytes(p) for p in outgoing(msg, (("Authentication-Results", "mx.receiver.test; none"),), ("X-Spam-Flag",), drop=doomed))
    assert sent == (
        b"Authentication-Results: mx.receiver.test; none\r\n"
        + bytes(msg.data).replace(forged.encode() + b"X-Spam-Flag: YES\r\n",
                                  b"Authentication-Results: other.test; spf=fail\r\n")
    )


def test_policy_puts_our_header_first_on_delivered_and_quarantined_mail():
    policy = Policy(PolicyConfig(), HeadersConfig(), authserv_id="mx.receiver.test")
    tagged = policy.decide([Verdict("R", Finding("FAIL", "x"), 1.0, Action.TAG)])
    assert policy.wants_authentication(tagged)
    final = policy.authenticated(tagged, "mx.receiver.test; none", ())
    assert [name for name, _ in final.headers] == [
        "Authentication-Results", "X-Spam-Flag", "X-Smtpfilter-Status"
    ]
    for action in (Action.QUARANTINE, Action.ACCEPT):
        assert policy.wants_authentication(Decision(action, 0))
    for action in (Action.REJECT, Action.DISCARD, Action.TEMPFAIL):
        assert not policy.wants_authentication(Decision(action, 0))
    assert not Policy(PolicyConfig(), HeadersConfig()).wants_authentication(tagged)


# --- dkimpy's relaxed canonicalisation, made faster --------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [b"", b"a b", b"a  b", b"a\tb", b" \t \t", b"x \r\n\t y\t\t\r\n", b"\t", b"  ", b"a \t b  c\t"],
)
def test_fast_relaxed_whitespace_is_dkimpys(text):
    assert dkim_module._compress_whitespace(text) == re.sub(b"[\t ]+", b" ", text)
