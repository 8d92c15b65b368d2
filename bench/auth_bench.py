"""Sender authentication benchmark: CPU and added latency per message with SPF, DKIM and DMARC.

    .venv/bin/python bench/auth_bench.py               # from the repository root; about a minute
    .venv/bin/python bench/auth_bench.py --quick       # a smoke test: a few messages per variant

Each message goes through ``Engine.judge``, the one engine call every front door makes (header
parse, rules, policy, the Authentication-Results header), with the shipped rules, in three
variants side by side in one run (interleaved round by round, so a noisy neighbour affects all
alike):

- ``today``: the shipped rules only (the figure before this feature);
- ``auth, cached``: the shipped rules + spf/dkim/dmarc rules + ``authentication.authserv_id``,
  every DNS answer already in the process's cache (a steady stream from known senders);
- ``auth, uncached``: the same with an empty cache for every message (a new sender each time:
  every lookup goes to the DNS server over loopback UDP).

The message: 10 KB, DKIM-signed (RSA-2048, relaxed/relaxed), from a domain whose SPF record
takes 5 DNS-querying terms over two include levels (8 queries) and whose DMARC record says
p=reject, sent by an authorised client: everything passes, every check runs to the end. The
DNS server (tests/support/dnsserver.py) runs in a child process so its CPU is not counted.
CPU is this process's ``process_time``; latency is the wall time of ``judge``.
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

from smtpfilter.config.settings import load_config  # noqa: E402
from smtpfilter.core.envelope import Client, Envelope, Recipient  # noqa: E402
from smtpfilter.engine.judge import Engine  # noqa: E402
from smtpfilter.engine.rules import rules_for  # noqa: E402
from tests.support.auth import key_record, message, rsa_key, sign, wire  # noqa: E402
from tests.support.dnsserver import DnsServer  # noqa: E402

ZONE = """
@               TXT "v=spf1 include:_spf.bench.test include:_mx.bench.test ~all"
_spf            TXT "v=spf1 include:_n1.bench.test include:_n2.bench.test ~all"
_n1             TXT "v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.0/24 ~all"
_n2             TXT "v=spf1 ip4:192.0.2.0/24 ~all"
_mx             TXT "v=spf1 mx a ~all"
@               MX  10 mx.bench.test.
mx              A   198.51.100.1
sel._domainkey  TXT {key}
_dmarc          TXT "v=DMARC1; p=reject; rua=mailto:d@bench.test"
"""

AUTH_RULES = """
rules:
  - {name: SPF_FAIL, check: spf, results: [fail], action: tag, score: 3}
  - {name: DKIM_BROKEN, check: dkim, results: [fail], action: tag, score: 2}
  - {name: DMARC_REJECT, check: dmarc, policy: [reject], action: quarantine}
"""


# --- the DNS server process ----------------------------------------------------------------
async def serve_dns(zone_file: str) -> None:
    server = await DnsServer().start()
    server.add_zone("bench.test", Path(zone_file).read_text())
    print(server.port, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the parent closes our stdin
    await server.stop()


# --- engines ---------------------------------------------------------------------------------
def engine(directory: Path, port: int, with_auth: bool) -> Engine:
    shipped = REPO / "rules"
    rules = [str(shipped)]
    config = f'dns: {{nameservers: ["127.0.0.1:{port}"], timeout: 2s}}\n'
    if with_auth:
        (directory / "auth.yaml").write_text(textwrap.dedent(AUTH_RULES))
        rules.append("auth.yaml")
        config += "authentication: {authserv_id: mx.bench.test}\n"
    path = directory / ("auth.conf.yaml" if with_auth else "today.conf.yaml")
    path.write_text(f"rules: {rules!r}\n" + config)
    loaded = load_config(path)
    return Engine(loaded, rules_for(loaded))


def body_of(size: int) -> str:
    line = "The quick brown fox jumps over the lazy dog; 0123456789 abcdefghij\r\n"
    return line * max(1, size // len(line))


async def judge_once(eng: Engine, data: bytes) -> tuple[float, float, str]:
    envelope = Envelope("news@bench.test", "news@bench.test", {}, [Recipient("b@example.com", "b@example.com", [])])
    client = Client(addr="192.0.2.10", name="mail.bench.test", helo="mail.bench.test")
    c0, w0 = time.process_time(), time.perf_counter()
    _msg, decision, failure = await eng.judge(envelope, client, data, received_at=datetime.now(timezone.utc))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert decision is not None, failure
    header = dict(decision.headers).get("Authentication-Results", "")
    return cpu, wall, header


def summary(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return (f"{statistics.mean(values) * 1000:7.2f} {statistics.median(values) * 1000:7.2f} "
            f"{p95 * 1000:7.2f}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        zone = directory / "bench.zone"
        zone.write_text(ZONE.format(key=key_record(rsa_key()[1])))
        dns = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve-dns", str(zone),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        try:
            port = int(await asyncio.wait_for(dns.stdout.readline(), 30))
            signed = sign(message(from_="News <news@bench.test>", body=body_of(args.size)),
                          domain="bench.test")
            data = wire(signed)
            today = engine(directory, port, with_auth=False)
            auth = engine(directory, port, with_auth=True)
            # Warm up: imports (dkimpy), the Public Suffix List, the cache of the cached variant.
            _, _, header = await judge_once(auth, data)
            assert "spf=pass" in header and "dkim=pass" in header and "dmarc=pass" in header, header
            await judge_once(today, data)
            results: dict[str, tuple[list[float], list[float]]] = {
                name: ([], []) for name in ("today", "auth, cached", "auth, uncached")
            }
            for _round in range(args.rounds):
                for name in results:
                    for _ in range(args.messages):
                        if name == "auth, uncached":
                            auth.ruleset.env.dns.cache.clear()
                        eng = today if name == "today" else auth
                        cpu, wall, _ = await judge_once(eng, data)
                        results[name][0].append(cpu)
                        results[name][1].append(wall)
        finally:
            dns.stdin.close()
            await asyncio.wait_for(dns.wait(), 30)
    print(f"Engine.judge, {len(data)} bytes DKIM-signed (RSA-2048 relaxed), SPF 8 queries over 2 "
          f"include levels, DMARC p=reject; {args.rounds} rounds x {args.messages} messages, "
          f"{'uvloop' if args.uvloop else 'asyncio'}")
    print(f"{'variant':16s} {'CPU ms: mean  median    p95':>28s}   {'latency ms: mean median p95':>28s}")
    base_cpu = statistics.mean(results["today"][0])
    base_wall = statistics.median(results["today"][1])
    for name, (cpu, wall) in results.items():
        print(f"{name:16s} {summary(cpu):>28s}   {summary(wall):>28s}")
    for name in ("auth, cached", "auth, uncached"):
        cpu, wall = results[name]
        print(f"added by authentication, {name.split(', ')[1]}: CPU {(statistics.mean(cpu) - base_cpu) * 1000:.2f} "
              f"ms/msg, latency (median) {(statistics.median(wall) - base_wall) * 1000:.2f} ms")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-dns":
        asyncio.run(serve_dns(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100, help="per variant and round")
    parser.add_argument("--size", type=int, default=10240, help="message body bytes")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10: a smoke test")
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.messages = 2, 10
    if arguments.uvloop:
        try:
            import uvloop
        except ImportError:
            arguments.uvloop = False
    if arguments.uvloop:
        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
