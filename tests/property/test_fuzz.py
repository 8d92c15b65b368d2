"""Property tests: no header block, Date or X-Mailer value makes an exception escape, and through
the whole filter every message gets a reply that is never 5xx unless a rule decided it.

The default run tries a few thousand cases; ``pytest -m slow tests/property`` runs the nightly
size (100,000 rule evaluations).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings

from smtpfilter.config.settings import Config, HeadersConfig, PolicyConfig, shipped_rules_dir
from smtpfilter.core.fields import parse_date
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Action
from smtpfilter.core.wire import has_bare_line_ends, outgoing, to_wire
from smtpfilter.engine.pipeline import evaluate
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import load_rules
from smtpfilter.frontdoors.smtp.server import Server
from tests.conftest import ISSUE_RULES
from tests.property.strategies import date_text, message_bytes
from tests.support.sink import Sink

SHIPPED = load_rules([shipped_rules_dir()])
POLICY = Policy(PolicyConfig(((5.0, Action.TAG), (15.0, Action.REJECT))), HeadersConfig())
FAST = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NIGHTLY = settings(max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))


def _judge(raw: bytes) -> None:
    data = to_wire(raw)
    msg = MessageContext.build(data, received_at=datetime.now(timezone.utc), header_limit=4096)
    # The shipped rule kinds are synchronous: call them directly (an event loop per case
    # would cost more than the rules).
    findings = [(rule, rule.check.observe(msg)) for rule in SHIPPED.rules]
    decision = POLICY.decide([rule.verdict(f) for rule, f in findings if f is not None])
    edits = HeadersConfig().incoming(decision.headers)  # strip and rename, as on delivery
    sent = b"".join(bytes(p) for p in outgoing(msg, decision.headers, *edits))
    assert not has_bare_line_ends(sent)
    for header in msg.headers:
        assert isinstance(header.decoded, str) and isinstance(header.line, str)


@FAST
@given(message_bytes())
def test_rules_never_raise(raw):
    _judge(raw)


@pytest.mark.slow
@NIGHTLY
@given(message_bytes())
def test_rules_never_raise_nightly(raw):
    _judge(raw)


@settings(max_examples=1000, deadline=None)
@given(date_text)
def test_dates_parse_or_are_none(text):
    moment = parse_date(text)
    assert moment is None or moment.tzinfo is not None


# --- through the whole filter -----------------------------------------------------------------
class LiveFilter:
    """A sink and a filter with the issue's reject/discard rules, on a loop in a thread."""

    def __init__(self, rules_path) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(rules_path,), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self, rules_path) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.sink = await Sink().start()
            config = Config(hostname="fuzz.test", rules=(rules_path,))
            config = config.with_overrides(listen="127.0.0.1:0", forward=f"127.0.0.1:{self.sink.port}")
            self.ruleset = load_rules(config.rules)
            self.policy = Policy(config.policy, config.headers)
            self.server = Server(config, self.ruleset)
            await self.server.start()
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        async def stop() -> None:
            await self.server.shutdown(deadline=1)
            await self.sink.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def expected(self, data: bytes) -> tuple[Action, bytes]:
        """What the filter should decide, and the bytes 10026 should then receive."""
        msg = MessageContext.build(data, received_at=datetime.now(timezone.utc))
        future = asyncio.run_coroutine_threadsafe(evaluate(self.ruleset, msg, self.policy), self.loop)
        decision = future.result(10)
        edits = self.server.config.headers.incoming(decision.headers)
        return decision.action, b"".join(bytes(p) for p in outgoing(msg, decision.headers, *edits))


def _transaction(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def reply() -> int:
            while True:
                line = reader.readline()
                assert line, "connection closed without a reply"
                if line[3:4] != b"-":
                    return int(line[:3])

        assert reply() == 220
        for command in (b"EHLO fuzz.client", b"MAIL FROM:<f@example.org>", b"RCPT TO:<r@example.com>", b"DATA"):
            sock.sendall(command + b"\r\n")
            code = reply()
        assert code == 354
        sock.sendall(data + b".\r\n")
        final = reply()
        sock.sendall(b"QUIT\r\n")
        return final, data


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "rules.yaml"
    path.write_text(ISSUE_RULES)
    instance = LiveFilter(path)
    yield instance
    instance.stop()


def _through_filter(live, raw: bytes) -> None:
    data = to_wire(raw)
    before = len(live.sink.messages)
    code, _ = _transaction(live.server.port, data)
    expected, expected_bytes = live.expected(data)
    if expected is Action.REJECT:
        assert code == 550
    else:
        assert code == 250, (code, expected)
    delivered = live.sink.messages[before:]
    if expected in (Action.ACCEPT, Action.TAG):
        assert len(delivered) == 1 and delivered[0].data == expected_bytes
    else:
        assert delivered == []


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=message_bytes())
def test_every_message_gets_the_decided_reply(live, raw):
    _through_filter(live, raw)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=message_bytes())
def test_every_message_gets_the_decided_reply_nightly(live, raw):
    _through_filter(live, raw)
