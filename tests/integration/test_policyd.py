"""frontdoors/policyd.py over a real loopback socket, speaking the protocol as Postfix's smtpd
does (SMTPD_POLICY_README): the daemon in process (an injected clock slides the window), and
``smtpfilter policy`` as a child process with its counters in a real redis-server."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from smtpfilter.config.settings import load_config
from smtpfilter.engine.rules import RuleEnv, load_rules
from smtpfilter.engine.state import StateService
from smtpfilter.frontdoors.policyd import PolicyDaemon
from tests.support import loglines
from tests.support.redisserver import redis_server  # noqa: F401  (fixture)
from tests.support.service import FilterProcess, free_port
from tests.support.sink import wait_until
from tests.unit.test_ratelimit_state import FakeClock

RULES = """
rules:
  - {name: OLD_DATE, check: date, older_than: 30d, action: reject}   # not a policy rule
  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 3/1h, action: tempfail}
  - {name: DOMAIN_RATE, check: ratelimit, key: recipient_domain, rate: 4/1h, action: reject}
  - {name: SASL_RATE, check: ratelimit, key: sasl_user, rate: 2/1d, action: quarantine}
  - name: SENDER_RATE
    check: ratelimit
    key: sender
    rate: 1/1d
    action: reject
    mode: warn
    text: "5.7.1 Sender $1 over $3 per $4"
"""


class PolicyClient:
    """One Postfix smtpd's policy connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seq = 0

    async def __aenter__(self) -> "PolicyClient":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()

    async def ask(self, **attrs: str) -> str:
        lines = ["request=smtpd_access_policy", *(f"{k}={v}" for k, v in attrs.items()), "", ""]
        self.writer.write("\n".join(lines).encode())
        async with asyncio.timeout(5):
            line = await self.reader.readline()
            assert await self.reader.readline() == b"\n"
        assert line.startswith(b"action="), line
        return line[len("action="):].decode().rstrip("\n")

    async def message(self, rcpts=("rcpt@example.org",), *, client="192.0.2.1", sasl="",
                      sender=None, end=True) -> list[str]:
        self.seq += 1
        common = dict(protocol_name="ESMTP", helo_name="client.example.net",
                      sender=sender or f"s{self.seq}@sender.test", client_address=client,
                      sasl_username=sasl, instance=f"1a2b.{id(self)}.{self.seq}",
                      queue_id="")
        answers = [await self.ask(protocol_state="RCPT", recipient=r, **common) for r in rcpts]
        if end:
            answers.append(await self.ask(protocol_state="END-OF-MESSAGE", recipient="", **common))
        return answers


@pytest.fixture
async def policyd(tmp_path):
    daemons = []

    async def start(rules=RULES, config=""):
        (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
        path = tmp_path / "smtpfilter.yaml"
        path.write_text("rules: [rules.yaml]\n" + config)
        cfg = load_config(path).with_overrides(listen="127.0.0.1:0")
        clock = FakeClock()
        daemon = PolicyDaemon(cfg, load_rules(cfg.rules, RuleEnv(state=StateService(cfg.state, clock=clock))),
                              config_path=path, overrides={"listen": "127.0.0.1:0"})
        await daemon.start()
        daemon.clock = clock
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        await daemon.shutdown(deadline=2)


async def test_the_fourth_message_from_a_client_is_deferred(policyd, caplog):
    caplog.set_level("INFO", logger="smtpfilter")
    server = await policyd()
    async with PolicyClient(server.port) as client:
        for _ in range(3):
            assert await client.message() == ["DUNNO", "DUNNO"]
        answers = await client.message(end=False)
    assert answers == ["DEFER_IF_PERMIT 4.7.1 Rate limit exceeded: "
                       "CLIENT_RATE(192.0.2.1 4/3 per 1h), try again later"]
    lines = lambda: [line for line in map(loglines.parse, caplog.messages) if line]  # noqa: E731
    counted = [line for line in lines() if line.get("status") == "counted"]
    assert len(counted) == 3, caplog.messages  # one summary line per message
    assert counted[0].names == ["policy", "client", "from", "to", "rules", "delay", "status"]
    assert counted[0]["client"] == "unknown[192.0.2.1]" and counted[0]["policy"] == "message"
    # The deferred recipient's own line, at RCPT: what was decided and answered
    [deferred] = [line for line in lines() if line.get("policy") == "rcpt"]
    assert (deferred["action"], deferred["by"]) == ("tempfail", "CLIENT_RATE")
    assert deferred["status"] == ("answered (DEFER_IF_PERMIT 4.7.1 Rate limit exceeded: "
                                  "CLIENT_RATE(192.0.2.1 4/3 per 1h), try again later)")
    # ...and one for the message whose connection then closed
    await wait_until(lambda: any(line.get("status") == "refused" for line in lines()))
    [refused] = [line for line in lines() if line.get("status") == "refused"]
    assert refused["rules"] == "CLIENT_RATE(192.0.2.1 4/3 per 1h)"


async def test_aborted_messages_and_closed_connections_do_not_count(policyd):
    server = await policyd()
    async with PolicyClient(server.port) as client:
        for _ in range(5):  # RCPT, then RSET or QUIT: no END-OF-MESSAGE
            assert await client.message(end=False) == ["DUNNO"]
    for _ in range(3):  # a connection closed mid-message releases it
        async with PolicyClient(server.port) as client:
            assert await client.message(end=False) == ["DUNNO"]
    async with PolicyClient(server.port) as client:
        for _ in range(3):
            assert await client.message() == ["DUNNO", "DUNNO"]
        assert (await client.message(end=False))[0].startswith("DEFER_IF_PERMIT")


async def test_message_keys_count_once_and_recipient_keys_per_recipient(policyd):
    server = await policyd()
    async with PolicyClient(server.port) as client:
        # one message, three recipients at example.org: client_ip counts 1, the domain 3
        assert await client.message(["a@example.org", "b@example.org", "c@example.org"]) == ["DUNNO"] * 4
        answers = await client.message(["d@example.org", "e@example.org", "f@other.test"])
        assert answers == ["DUNNO", "REJECT 5.7.1 Rate limit exceeded: DOMAIN_RATE(example.org 5/4 per 1h)",
                           "DUNNO", "DUNNO"]
        # the refused recipient gave its reservation back: example.org has 4, other.test 1
        assert (await client.message(["g@example.org"], client="192.0.2.9"))[0].startswith("REJECT")
        assert (await client.message(["h@other.test"] * 3, client="192.0.2.9")) == ["DUNNO"] * 4


async def test_sasl_user_limit_holds_the_message(policyd):
    server = await policyd()
    async with PolicyClient(server.port) as client:
        for n in range(2):
            assert await client.message(client=f"192.0.2.{n + 10}", sasl="alice") == ["DUNNO", "DUNNO"]
        answers = await client.message(client="192.0.2.99", sasl="alice", end=False)
    assert answers == ["HOLD rate limit SASL_RATE(alice 3/2 per 1d)"]


async def test_warn_mode_logs_and_lets_it_through(policyd):
    server = await policyd()
    async with PolicyClient(server.port) as client:
        assert await client.message(sender="bulk@sender.test") == ["DUNNO", "DUNNO"]
        answers = await client.message(sender="bulk@sender.test", client="192.0.2.2")
    assert answers == ["WARN rate limit SENDER_RATE(bulk@sender.test 2/1 per 1d)", "DUNNO"]


async def test_the_window_slides_with_the_injected_clock(policyd):
    server = await policyd()
    async with PolicyClient(server.port) as client:
        for _ in range(3):
            await client.message()
        assert (await client.message(end=False))[0].startswith("DEFER_IF_PERMIT")
        server.clock.advance(3599.9)
        assert (await client.message(end=False))[0].startswith("DEFER_IF_PERMIT")
        server.clock.advance(0.1)
        assert await client.message() == ["DUNNO", "DUNNO"]


async def test_count_at_rcpt_counts_without_end_of_message(policyd):
    server = await policyd(config="policy_service: {count_at: rcpt}\n")
    async with PolicyClient(server.port) as client:
        for _ in range(3):
            assert await client.message(end=False) == ["DUNNO"]
        assert (await client.message(end=False))[0].startswith("DEFER_IF_PERMIT")


@pytest.mark.parametrize("garbage", [
    b"this is not a policy request\n\n",
    b"\n",
    b"".join(b"n%d=v\n" % i for i in range(200)) + b"\n",
    b"x=" + b"y" * 70000 + b"\n\n",
], ids=["no-equals", "empty", "too-many", "too-long"])
async def test_garbage_gets_no_answer_and_a_disconnect(policyd, garbage):
    server = await policyd()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(garbage)
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed without a reply: Postfix uses default_action
    writer.close()
    async with PolicyClient(server.port) as client:  # and the daemon goes on
        assert await client.message() == ["DUNNO", "DUNNO"]


async def test_smtpfilter_policy_process_with_redis(tmp_path, redis_server):  # noqa: F811
    """The README's command, as a child process: ready for systemd, answering from Redis."""
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(RULES))
    port = free_port()
    config = tmp_path / "smtpfilter.yaml"
    config.write_text(f"rules: [rules.yaml]\nstate: {{redis: '{redis_server.url}'}}\n")
    process = FilterProcess(config, command="policy", args=("--listen", f"127.0.0.1:{port}"))
    await asyncio.to_thread(process.start)
    try:
        async with PolicyClient(port) as client:
            for _ in range(3):
                assert await client.message() == ["DUNNO", "DUNNO"]
            assert (await client.message(end=False))[0].startswith("DEFER_IF_PERMIT 4.7.1")
    finally:
        await asyncio.to_thread(process.close)
    assert "Traceback" not in process.log()
