"""engine/checks/ratelimit.py: options, keys, the finding, and count-only-what-is-delivered,
through the engine as every front door calls it (Engine.judge, then Engine.settle)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from smtpfilter.config.options import Options
from smtpfilter.config.settings import Config
from smtpfilter.config.yamlfile import load_text
from smtpfilter.core.envelope import Client, Envelope, Recipient
from smtpfilter.core.message import HeaderBlock, MessageContext
from smtpfilter.core.verdict import Action
from smtpfilter.engine.checks.ratelimit import RatelimitCheck, parse_rate
from smtpfilter.engine.judge import Engine
from smtpfilter.engine.rules import RuleEnv, load_rules
from smtpfilter.engine.state import StateService
from tests.support import corpus
from tests.unit.test_ratelimit_state import FakeClock


def build(text: str, env: RuleEnv | None = None):
    problems: list = []
    env = env or RuleEnv(state=StateService(clock=FakeClock()))
    opts = Options(load_text(text), problems, rule="RULE")
    check = RatelimitCheck.from_options(opts, env)
    opts.finish()  # reports what is missing, unless something else was wrong (rules._rule)
    return check, [p.message for p in problems]


@pytest.mark.parametrize("text, problem", [
    ("{rate: 30/1m}", "key: is required"),
    ("{key: ip, rate: 30/1m}", "key: 'ip' is not one of"),
    ("{key: sender}", "rate: is required"),
    ("{key: sender, rate: 30}", "is not a rate such as 30/1m"),
    ("{key: sender, rate: 0/1m}", "must be more than zero"),
    ("{key: sender, rate: 30/1x}", "is not a duration"),
    ("{key: sender, rate: 30/1m, burst: 31}", "more than the rate's 30"),
    ("{key: sender, rate: 30/1m, burst: 0}", "burst: must be at least 1"),
    ("{key: sender, rate: 5000/1d, burst: 20}", "works with rates up to 1000"),
    ("{key: sender, rate: 30/1m, on_error: fail}", "on_error: 'fail' is not one of"),
], ids=lambda v: v if v.startswith("{") else "")
def test_bad_options_are_problems(text, problem):
    check, problems = build(text)
    assert check is None and any(problem in p for p in problems), problems


def test_rates():
    assert parse_rate("30/1m") == (30, 60.0)
    assert parse_rate("100/h") == (100, 3600.0)
    assert parse_rate(" 5 / 90s ") == (5, 90.0)


def context(mail_from="s@sender.test", rcpts=("r@example.org",), client=None) -> MessageContext:
    return MessageContext(
        received_at=datetime.now(timezone.utc), mail_from=mail_from, rcpt_to=tuple(rcpts),
        client=client or Client(), data=b"", headers=HeaderBlock([], 0), size=0,
    )


@pytest.mark.parametrize("key, msg, values", [
    ("client_ip", context(client=Client(addr="2001:db8:0:0::1")), {"2001:db8::1": 1}),
    ("client_ip", context(), {}),  # local submission: no XFORWARD ADDR
    ("client_ip", context(client=Client(addr="unknown")), {}),
    ("client_net", context(client=Client(addr="81.2.69.10")), {"81.2.69.0/24": 1}),
    ("client_net", context(client=Client(addr="2001:db8::1")), {"2001:db8::/64": 1}),
    ("sender", context("Alice@Example.ORG"), {"alice@example.org": 1}),
    ("sender", context(""), {}),  # bounces are not limited by sender
    ("sender_domain", context("alice@Example.ORG"), {"example.org": 1}),
    ("recipient_domain", context(rcpts=("a@x.test", "b@X.test", "c@y.test")), {"x.test": 2, "y.test": 1}),
    ("recipient", context(rcpts=("a@x.test", "A@x.test")), {"a@x.test": 2}),
    ("sasl_user", context(client=Client(sasl_user="alice")), {"alice": 1}),
    ("sasl_user", context(client=Client(addr="192.0.2.1")), {}),  # content filter: unknown
])
def test_key_values(key, msg, values):
    check, problems = build(f"{{key: {key}, rate: 3/1m}}")
    assert problems == [] and check.values(msg) == values


@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_findings(name):
    rules = corpus.ruleset(["ratelimit"])
    assert await corpus.findings(name, rules) == corpus.expected_findings(name, rules)


# --- through the engine: judge, then settle (what every front door does) ---------------------
RULES = """
rules:
  - {name: OLD_DATE, check: date, older_than: 30d, action: reject}
  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 3/1m, action: tempfail}
"""
FRESH = b"Date: %s\r\nSubject: hi\r\n\r\nbody\r\n"
OLD = b"Date: Mon, 04 Mar 2019 10:00:00 +0000\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    clock = FakeClock()
    ruleset = load_rules([path], RuleEnv(state=StateService(clock=clock)))
    return Engine(Config(rules=(path,)), ruleset)


async def message(engine: Engine, data: bytes = b"", *, reply: str | None = None,
                  addr: str = "81.2.69.10"):
    """One message through the engine; ``reply``: what the front door answered (default: 250
    when the decision delivers, else the decision's own reply)."""
    from email.utils import formatdate

    data = data or FRESH % formatdate(usegmt=True).encode()
    envelope = Envelope("s@sender.test", "s@sender.test", recipients=[Recipient("r@example.org", "r@example.org")])
    client = Client(addr=addr)
    msg, decision, failure = await engine.judge(envelope, client, data, received_at=datetime.now(timezone.utc))
    if reply is None:
        reply = "250 2.0.0 Ok: queued" if decision and decision.delivers else (failure or "451 4.7.1 x")
    engine.settle(envelope, client, len(data), decision, reply, time.monotonic(), msg=msg)
    return decision


async def test_the_finding_names_the_key_and_how_far_over(engine, caplog):
    caplog.set_level("INFO")
    for _ in range(3):
        assert (await message(engine)).action is Action.ACCEPT
    decision = await message(engine)
    assert decision.action is Action.TEMPFAIL
    [verdict] = decision.verdicts
    assert verdict.label == "CLIENT_RATE(81.2.69.10 4/3 per 1m)"  # the format
    assert verdict.finding.code == "LIMITED"  # metrics count by code
    assert verdict.finding.groups == ("81.2.69.10", "4", "3", "1m", "60")
    assert "rules=CLIENT_RATE(81.2.69.10 4/3 per 1m)" in caplog.text  # the summary line


async def test_only_delivered_messages_count(engine):
    for _ in range(5):  # rejected by another rule: their reservations are given back
        assert (await message(engine, OLD)).action is Action.REJECT
    for _ in range(5):  # 10026 answered 4xx: deferred, not delivered
        assert (await message(engine, reply="451 4.3.0 10026 failed")).action is Action.ACCEPT
    for _ in range(3):
        assert (await message(engine)).action is Action.ACCEPT
    assert (await message(engine)).action is Action.TEMPFAIL


async def test_a_limited_message_does_not_count_and_the_window_slides(engine):
    for _ in range(3):
        await message(engine)
    for _ in range(5):
        assert (await message(engine)).action is Action.TEMPFAIL
    clock = engine.ruleset.env.state.clock
    clock.advance(59.999)
    assert (await message(engine)).action is Action.TEMPFAIL
    clock.advance(0.001)  # the first three are exactly 1m old: out of the window
    assert [(await message(engine)).action for _ in range(4)] == [Action.ACCEPT] * 3 + [Action.TEMPFAIL]


async def test_a_message_cancelled_in_the_engine_gives_its_reservation_back(tmp_path):
    """The client went away while the rules ran (a DNS list that never answers: nothing
    listens on its port): Engine.judge is cancelled after the rate limit reserved, the front
    door never gets the message to settle, so the engine gives the reservation back itself."""
    from smtpfilter.config.settings import DnsConfig, HostPort
    from smtpfilter.engine.resolver import DnsService
    from tests.support.service import free_port

    path = tmp_path / "rules.yaml"
    path.write_text("""
rules:
  - {name: DNSBL, check: dnsbl, sites: zen.dnsbl.test, score: 1}
  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 3/1m, action: tempfail}
""")
    dns = DnsConfig(nameservers=(HostPort("127.0.0.1", free_port()),), timeout=5, message_timeout=5)
    state = StateService(clock=FakeClock())
    engine = Engine(Config(rules=(path,)), load_rules([path], RuleEnv(dns=DnsService(dns), state=state)))
    envelope = Envelope("s@sender.test", recipients=[Recipient("r@example.org", "r@example.org")])
    judging = asyncio.ensure_future(engine.judge(
        envelope, Client(addr="81.2.69.10"), FRESH % b"Mon, 04 Mar 2024 10:00:00 +0000",
        received_at=datetime.now(timezone.utc)))
    async with asyncio.timeout(5):
        while (await state.show("CLIENT_RATE:81.2.69.10", 60)).count == 0:
            await asyncio.sleep(0.01)  # until the rate limit has reserved (DNS still waiting)
    judging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await judging
    await engine.ruleset.env.dns.aclose()
    assert (await state.show("CLIENT_RATE:81.2.69.10", 60)).count == 0
