"""Rate-limit benchmark: CPU and latency per message with two ratelimit rules, side by side.

    .venv/bin/python bench/ratelimit_bench.py            # from the repository root; about a minute
    .venv/bin/python bench/ratelimit_bench.py --quick    # smaller counts: a smoke test

Configurations, interleaved round by round in one run (a noisy neighbour hits all alike):

- ``none``: no ratelimit rule;
- ``memory``: two rules (client_ip 30/1m, sender 100/1h burst 20), counters in this process;
- ``redis``: the same two rules, counters in a redis-server on loopback (started here, on a
  free port; Debian's redis-server, or SMTPFILTER_REDIS_SERVER).

Every message has its own client address and one of 5000 senders, so nothing is limited: the
common case, where keys are new or small and every message is counted.

Two measurements:

1. The check alone, as the pipeline and a front door drive it: every rule's observe started at
   once, then the settle (confirm). Latency per message one at a time, our CPU per message,
   Redis's CPU per message (INFO used_cpu_*), and throughput with 50 messages at once.
2. Through the whole filter: SMTP client → ``smtpfilter`` (in process) → recording 10026 sink,
   one message at a time: the time from MAIL to the reply to ".", and the process's CPU per
   message (client and sink included: the same for every configuration, so the difference is
   the rate limits' cost).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smtpfilter.config.settings import StateConfig, load_config  # noqa: E402
from smtpfilter.core.envelope import Client as MsgClient  # noqa: E402
from smtpfilter.core.message import HeaderBlock, MessageContext  # noqa: E402
from smtpfilter.engine.rules import RuleEnv, load_rules  # noqa: E402
from smtpfilter.engine.state import StateService  # noqa: E402
from smtpfilter.frontdoors.smtp.server import Server  # noqa: E402
from tests.support.client import send_message  # noqa: E402
from tests.support.messages import message  # noqa: E402
from tests.support.redisserver import RedisServer  # noqa: E402
from tests.support.sink import Sink  # noqa: E402

RULES = """
rules:
  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 30/1m, action: tempfail}
  - {name: SENDER_BURST, check: ratelimit, key: sender, rate: 100/1h, burst: 20, action: quarantine}
"""
NONE = "rules: []\n"
CONFIGS = ("none", "memory", "redis")


def address(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def ruleset(tmp: Path, name: str, redis_url: str | None):
    path = tmp / f"{name}.yaml"
    path.write_text(NONE if name == "none" else textwrap.dedent(RULES))
    state = StateConfig(redis=redis_url if name == "redis" else None)
    return load_rules([path], RuleEnv(state=StateService(state)))


# --- 1. the check alone ------------------------------------------------------------------
async def one(rules, i: int) -> None:
    msg = MessageContext(
        received_at=datetime.now(timezone.utc), mail_from=f"user{i % 5000}@sender{i % 50}.test",
        rcpt_to=("r@example.org",), client=MsgClient(addr=address(i)), data=b"",
        headers=HeaderBlock([], 0), size=0,
    )
    started = [asyncio.ensure_future(rule.check.observe(msg)) for rule in rules.rules]
    for task in started:
        assert await task is None
    rules.settle(msg, None, True)


async def redis_cpu(probe) -> float:
    if probe is None:
        return 0.0
    info = await probe.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


async def check_alone(rules, n: int, start: int, probe) -> dict[str, float]:
    for i in range(50):  # warm up: connections, script cache
        await one(rules, 90_000_000 + start + i)
    cpu0, r0, t0 = time.process_time(), await redis_cpu(probe), time.perf_counter()
    for i in range(n):
        await one(rules, start + i)
    wall = time.perf_counter() - t0
    cpu, rcpu = time.process_time() - cpu0, await redis_cpu(probe) - r0
    t1 = time.perf_counter()
    for base in range(0, n, 50):
        await asyncio.gather(*(one(rules, 50_000_000 + start + base + j) for j in range(50)))
    at_once = n / (time.perf_counter() - t1)
    await asyncio.gather(*rules.env.state._settling)  # the confirms of the last ones
    return {"latency_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6,
            "redis_cpu_us": rcpu / n * 1e6 if probe else float("nan"), "at_once": at_once}


# --- 2. through the filter ----------------------------------------------------------------
async def through_filter(tmp: Path, rules, sink: Sink, n: int, start: int) -> dict[str, float]:
    config_path = tmp / "filter.yaml"
    config_path.write_text(f"listen: 127.0.0.1:0\nforward: 127.0.0.1:{sink.port}\n"
                           "hostname: filter.test\nrules: []\nlog: {level: warning}\n"
                           # SENDER_BURST quarantines: into the bench's scratch, never the
                           # system's default /var/lib/smtpfilter/quarantine.
                           f"quarantine: {{directory: {tmp / 'quarantine'}}}\n")
    server = Server(load_config(config_path), rules, config_path=config_path)
    await server.start()
    body = message("Subject: bench", body=b"x" * 2000 + b"\n")
    try:
        for i in range(20):
            await send_message(server.port, body, xforward=(f"XFORWARD ADDR={address(80_000_000 + start + i)}",))
        times = []
        cpu0 = time.process_time()
        for i in range(n):
            t = time.perf_counter()
            reply = await send_message(
                server.port, body, mail_from=f"user{i % 5000}@sender{i % 50}.test",
                xforward=(f"XFORWARD ADDR={address(start + i)}",))
            times.append(time.perf_counter() - t)
            assert reply.code == 250, reply
        cpu = time.process_time() - cpu0
    finally:
        await server.shutdown(deadline=2)
    return {"p50_ms": statistics.median(times) * 1000,
            "p99_ms": sorted(times)[int(len(times) * 0.99) - 1] * 1000,
            "cpu_ms": cpu / n * 1000}


async def main(args: argparse.Namespace) -> None:
    import logging

    import redis.asyncio as redis_asyncio

    logging.basicConfig(level=logging.WARNING)
    server = RedisServer().start()
    probe = redis_asyncio.Redis.from_url(server.url)
    checks: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    filters: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    sink = await Sink().start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            tmp = Path(scratch)
            for round_ in range(args.rounds):
                order = CONFIGS if round_ % 2 == 0 else CONFIGS[::-1]
                for name in order:
                    base = (round_ * 10 + CONFIGS.index(name)) * 1_000_000
                    rules = ruleset(tmp, name, server.url)
                    checks[name].append(await check_alone(
                        rules, args.messages, base, probe if name == "redis" else None))
                    await rules.env.state.aclose()
                    rules = ruleset(tmp, name, server.url)
                    filters[name].append(await through_filter(
                        tmp, rules, sink, args.filter_messages, base + 500_000))
                    sink.messages.clear()
    finally:
        await sink.stop()
        await probe.aclose()
        server.stop()

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(f"\n1. The check alone ({args.messages} messages x {args.rounds} rounds, medians): "
          f"two rules = client_ip 30/1m + sender 100/1h burst 20")
    print(f"{'configuration':<14} {'latency':>10} {'our CPU':>10} {'Redis CPU':>10} {'50 at once':>14}")
    for name in CONFIGS:
        rows = checks[name]
        redis_cpu_text = f"{med(rows, 'redis_cpu_us'):>8.0f}us" if name == "redis" else f"{'-':>10}"
        print(f"{name:<14} {med(rows, 'latency_us'):>8.0f}us {med(rows, 'cpu_us'):>8.0f}us "
              f"{redis_cpu_text} {med(rows, 'at_once'):>9.0f} msg/s")
    print(f"\n2. Through the filter, one message at a time ({args.filter_messages} x "
          f"{args.rounds} rounds; CPU includes the client and the sink, alike for all)")
    print(f"{'configuration':<14} {'p50':>9} {'p99':>9} {'CPU/msg':>9} {'added CPU':>10}")
    base_cpu = med(filters["none"], "cpu_ms")
    for name in CONFIGS:
        rows = filters[name]
        print(f"{name:<14} {med(rows, 'p50_ms'):>7.2f}ms {med(rows, 'p99_ms'):>7.2f}ms "
              f"{med(rows, 'cpu_ms'):>7.2f}ms {med(rows, 'cpu_ms') - base_cpu:>+8.2f}ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000, help="per round, check alone")
    parser.add_argument("--filter-messages", type=int, default=500, help="per round, filter")
    options = parser.parse_args()
    if options.quick:
        options.rounds, options.messages, options.filter_messages = 1, 300, 60
    asyncio.run(main(options))
