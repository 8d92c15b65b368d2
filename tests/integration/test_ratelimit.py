"""Rate limits through a real filter (SMTP in, the recording sink as 10026), counters in a real
redis-server: the limit, the reply, the log line and the metrics; the window sliding with an
injected clock; Redis killed or stopped mid-run (fail open within state.timeout, or 451 with
on_error: tempfail) and the limit resuming when Redis is back."""

from __future__ import annotations

import logging
import textwrap
import time

import pytest

from smtpfilter.config.settings import load_config
from smtpfilter.engine.rules import RuleEnv, load_rules
from smtpfilter.engine.state import RedisStore, StateService
from smtpfilter.frontdoors.smtp.server import Server
from tests.integration.test_metrics import http, samples
from tests.support.client import send_message
from tests.support.messages import message
from tests.support.redisserver import redis_server  # noqa: F401  (fixture)
from tests.unit.test_ratelimit_state import FakeClock

RULES = """
rules:
  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 3/1m, action: tempfail}
"""


@pytest.fixture
async def start(sink, tmp_path):
    """``await start(redis_url, clock=..., rules=..., state=...)``: a filter whose counters are
    in that Redis, read with ``clock`` (None: Redis TIME)."""
    servers = []

    async def start_one(url, *, clock=None, rules=RULES, state="", config=""):
        (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
        path = tmp_path / f"config{len(servers)}.yaml"
        path.write_text(
            f"listen: 127.0.0.1:0\nforward: 127.0.0.1:{sink.port}\nhostname: filter.test\n"
            f"rules: [rules.yaml]\nstate: {{redis: '{url}'{state}}}\n" + config
        )
        cfg = load_config(path)
        ruleset = load_rules(cfg.rules, RuleEnv(state=StateService(cfg.state, clock=clock)))
        server = Server(cfg, ruleset, config_path=path)
        await server.start()
        servers.append(server)
        return server

    yield start_one
    for server in servers:
        await server.shutdown(deadline=2)


async def send(server, addr="81.2.69.10"):
    started = time.monotonic()
    reply = await send_message(server.port, message("Subject: hi"),
                               xforward=(f"XFORWARD ADDR={addr}",))
    return reply, time.monotonic() - started


async def test_the_fourth_message_gets_451_and_the_window_slides(start, sink, redis_server, caplog):  # noqa: F811
    clock = FakeClock()
    server = await start(redis_server.url, clock=clock)
    caplog.set_level(logging.INFO, logger="smtpfilter")
    for _ in range(3):
        assert (await send(server))[0].code == 250
    reply, _ = await send(server)
    assert reply.code == 451 and reply.text.startswith("4.7.1"), reply
    assert "rules=CLIENT_RATE(81.2.69.10 4/3 per 1m)" in caplog.text  # the summary line
    assert (await send(server, "81.2.69.11"))[0].code == 250  # another client
    assert len(sink.messages) == 4
    clock.advance(59.9)
    assert (await send(server))[0].code == 451
    clock.advance(0.1)  # the first three are one minute old: out of the window
    assert [(await send(server))[0].code for _ in range(4)] == [250, 250, 250, 451]


async def test_redis_killed_fails_open_within_the_bound_and_the_limit_resumes(
    start, sink, redis_server, caplog  # noqa: F811
):
    server = await start(redis_server.url, state=", timeout: 300ms, retry: 200ms",
                         config="metrics: {listen: 127.0.0.1:0}\n")
    for _ in range(3):
        assert (await send(server))[0].code == 250
    assert (await send(server))[0].code == 451
    redis_server.kill()
    caplog.set_level(logging.DEBUG, logger="smtpfilter.engine.state")
    results = [await send(server) for _ in range(6)]
    assert [reply.code for reply, _ in results] == [250] * 6  # fail open: delivered
    assert max(elapsed for _, elapsed in results) < 0.3 + 0.5  # state.timeout + SMTP
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "smtpfilter.engine.state"]
    assert len(warnings) == 1 and "redis" in warnings[0].getMessage()  # once a minute
    got = samples((await http(server.metrics.port, b"GET /metrics HTTP/1.0\r\n\r\n"))[2])
    assert got["smtpfilter_ratelimit_unchecked_total"] == 6
    assert got["smtpfilter_ratelimit_store_errors_total"] >= 1

    redis_server.start()  # the same port, empty (no persistence): counting starts again
    deadline = time.monotonic() + 10
    codes: list[int] = []
    while codes[-4:] != [250, 250, 250, 451]:  # messages pass while retry runs out, then count
        assert time.monotonic() < deadline, codes
        codes.append((await send(server))[0].code)


async def test_stopped_redis_costs_one_timeout_then_nothing(start, sink, redis_server):  # noqa: F811
    server = await start(redis_server.url, state=", timeout: 300ms, retry: 30s")
    assert (await send(server))[0].code == 250
    redis_server.pause()  # SIGSTOP: connections stay open, nobody answers
    try:
        (first, first_elapsed), (second, second_elapsed) = await send(server), await send(server)
    finally:
        redis_server.resume()
    assert first.code == 250 and 0.3 <= first_elapsed < 0.3 + 0.5
    assert second.code == 250 and second_elapsed < 0.25  # not asked again within state.retry


async def test_on_error_tempfail_answers_451_never_5xx(start, sink, redis_server):  # noqa: F811
    server = await start(redis_server.url, state=", timeout: 300ms, on_error: tempfail")
    redis_server.kill()
    reply, elapsed = await send(server)
    assert reply.code == 451 and "4.3.0 Rate limit service unavailable" in reply.text, reply
    assert elapsed < 0.3 + 0.5
    assert sink.messages == []


async def test_a_message_10026_refuses_is_not_counted(start, sink, redis_server):  # noqa: F811
    server = await start(redis_server.url)
    refuse = {"left": 5}

    def script(verb, line, txn):
        if verb == "DOT" and refuse["left"]:
            refuse["left"] -= 1
            return "451 4.3.0 try again"
        return None

    sink.script = script
    assert [(await send(server))[0].code for _ in range(5)] == [451] * 5  # 10026's deferrals
    assert [(await send(server))[0].code for _ in range(4)] == [250, 250, 250, 451]


async def test_pipe_counts_in_redis_before_it_exits(tmp_path, sink, redis_server):  # noqa: F811
    """pipe(8) runs one process per message: each settles its reservation (confirm) inside its
    event loop before exiting, so the third message of a client over 2/1h is deferred (75)."""
    from tests.integration.test_pipe import run_pipe

    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 2/1h, action: tempfail}\n")
    config = tmp_path / "smtpfilter.yaml"
    config.write_text(f"forward: 127.0.0.1:{sink.port}\nhostname: filter.test\nrules: [rules.yaml]\n"
                      f"state: {{redis: '{redis_server.url}'}}\n")
    args = (f"--config={config}", "--client-address=192.0.2.7", "--sender=a@example.org", "--",
            "b@example.com")
    statuses = [(await run_pipe(*args))[0] for _ in range(3)]
    assert statuses == [0, 0, 75]
    assert len(sink.messages) == 2
    store = RedisStore(redis_server.url)
    try:  # counted, not merely reserved (a pending entry would vanish after state.hold)
        usage = await store.show("CLIENT_RATE:192.0.2.7", 3600)
    finally:
        await store.close()
    assert [entry.pending for entry in usage.entries] == [False, False]
