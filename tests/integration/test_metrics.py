"""The Prometheus endpoint of a live filter, scraped over HTTP after real traffic."""

from __future__ import annotations

import asyncio
import re

from tests.support.client import send_message
from tests.support.dnsserver import DnsServer, serve_test_lists
from tests.support.messages import message
from tests.support.sink import wait_until

RULES = r"""
rules:
  - name: DNSBL
    check: dnsbl
    sites: "zen.dnsbl.test=127.0.0.[2..11]*3, world.dnsbl.test*1"
    threshold: 3
    action: reject
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: '^MaxBulk'
    action: discard
  - name: TRIAL
    check: header
    header: Subject
    match: 'trial'
    action: reject
    mode: warn
"""


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def canonical(sample: str) -> str:
    """``name{b="2",a="1"}`` → ``name{a="1",b="2"}``: the order of labels means nothing in the
    exposition format (prometheus_client writes them sorted)."""
    name, brace, labels = sample.partition("{")
    if not brace:
        return sample
    pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(pairs)) + "}"


class Samples(dict):
    """Samples by name and labels, looked up whatever order the labels are written in."""

    def __getitem__(self, key: str) -> float:
        return super().__getitem__(canonical(key))


def samples(body: bytes) -> Samples:
    found = Samples()
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[canonical(name)] = float(value)
    return found


async def test_metrics_after_real_traffic(start_filter, sink):
    dns = await DnsServer().start()
    serve_test_lists(dns)
    try:
        server = await start_filter(
            rules=RULES,
            config=f'dns: {{nameservers: ["127.0.0.1:{dns.port}"], timeout: 1s, '
            f"message_timeout: 2s}}\nmetrics: {{listen: 127.0.0.1:0}}\n",
        )
        xforward = ("XFORWARD ADDR=1.2.3.4 NAME=x.example",)
        assert (await send_message(server.port, message("Subject: hi"))).code == 250
        assert (await send_message(server.port, message("Subject: trial run"))).code == 250
        assert (await send_message(server.port, message("X-Mailer: MaxBulk"))).code == 250
        assert (await send_message(server.port, message("Subject: x"), xforward=xforward)).code == 550
        sink.script = lambda verb, line, txn: "451 4.3.0 busy" if verb == "DATA" else None
        assert (await send_message(server.port, message("Subject: later"))).code == 451
        sink.script = None
        # world.dnsbl.test lists everything, 127.0.0.1 included: its probe disables it.
        await wait_until(lambda: not server.env.dns.health.usable("world.dnsbl.test"))

        status, headers, body = await http(server.metrics.port, b"GET /metrics HTTP/1.1\r\n"
                                           b"Host: localhost\r\n\r\n")
    finally:
        await dns.stop()

    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert int(headers["Content-Length"]) == len(body)
    got = samples(body)
    assert got['smtpfilter_messages_total{action="accept",frontdoor="smtp"}'] == 3
    assert got['smtpfilter_messages_total{action="discard",frontdoor="smtp"}'] == 1
    assert got['smtpfilter_messages_total{action="reject",frontdoor="smtp"}'] == 1
    assert got['smtpfilter_replies_total{code="250",frontdoor="smtp"}'] == 3
    assert got['smtpfilter_replies_total{code="451",frontdoor="smtp"}'] == 1
    assert got['smtpfilter_replies_total{code="550",frontdoor="smtp"}'] == 1
    assert got['smtpfilter_rule_findings_total{rule="DNSBL",finding="LISTED"}'] == 1
    assert got['smtpfilter_rule_decisions_total{rule="SPAM_MAILER",action="discard"}'] == 1
    assert got['smtpfilter_would_total{action="reject",rule="TRIAL"}'] == 1
    assert got['smtpfilter_message_seconds_count{frontdoor="smtp"}'] == 5
    assert got['smtpfilter_message_seconds_bucket{frontdoor="smtp",le="+Inf"}'] == 5
    assert got['smtpfilter_message_seconds_bucket{frontdoor="smtp",le="60"}'] == 5
    buckets = [v for k, v in got.items() if k.startswith("smtpfilter_message_seconds_bucket")]
    assert buckets == sorted(buckets)  # cumulative
    assert got["smtpfilter_downstream_errors_total"] == 0  # a 451 relayed is 10026 talking
    assert got['smtpfilter_dns_zone_up{zone="zen.dnsbl.test"}'] == 1
    assert got['smtpfilter_dns_zone_up{zone="world.dnsbl.test"}'] == 0
    assert got["smtpfilter_sessions"] == 0 and got["smtpfilter_rules"] == 3
    assert re.search(rb"# TYPE smtpfilter_message_seconds histogram\n", body)


async def test_downstream_errors_and_other_requests(start_filter, sink):
    server = await start_filter(config="metrics: {listen: 127.0.0.1:0}\n")
    await sink.stop()  # 10026 is gone: every message is a 451 and a downstream error
    assert (await send_message(server.port, message("Subject: x"))).code == 451
    port = server.metrics.port
    got = samples((await http(port, b"GET /metrics HTTP/1.0\r\n\r\n"))[2])
    assert got["smtpfilter_downstream_errors_total"] == 1

    assert (await http(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 404
    assert (await http(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
    assert (await http(port, b"nonsense\r\n\r\n"))[0] == 400
    status, headers, body = await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


async def test_metrics_are_off_by_default_and_a_taken_port_does_not_stop_mail(start_filter, sink):
    server = await start_filter()
    assert server.metrics is None
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    taken = blocker.sockets[0].getsockname()[1]
    try:
        second = await start_filter(config=f"metrics: {{listen: 127.0.0.1:{taken}}}\n")
        assert second.metrics is None  # logged at ERROR; the filter still serves mail
        assert (await send_message(second.port, message("Subject: x"))).code == 250
    finally:
        blocker.close()
        await blocker.wait_closed()


def test_large_values_stay_exact():
    """A counter past a million must not lose digits (1e+06), nor a timestamp its fraction."""
    from smtpfilter.config.settings import load_config
    from smtpfilter.delivery.downstream import DownstreamPool
    from smtpfilter.engine.rules import RuleSet
    from smtpfilter.service.metrics import Metrics
    from smtpfilter.service.runtime import Runtime

    config = load_config(None)
    runtime = Runtime(config, RuleSet((), ()), DownstreamPool.for_config(config))
    metrics = Metrics(runtime, started_at=1709632800.25)
    metrics.downstream_errors.inc(1_234_567)
    got = samples(metrics.render())
    assert got["smtpfilter_downstream_errors_total"] == 1_234_567
    assert got["smtpfilter_start_time_seconds"] == 1709632800.25


async def test_workers_report_their_totals_on_one_port(service, sink, tmp_path, monkeypatch):
    """serve --workers 2: one metrics port, the sum of both workers (prometheus_client's
    multiprocess mode), in a private directory that is gone after the supervisor ends."""
    from tests.integration.conftest import start
    from tests.support.service import free_port

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the supervisor makes its directory
    metrics_port = free_port()
    rules = "rules:\n  - {name: SPAM_MAILER, check: header, header: X-Mailer, match: MaxBulk, action: discard}\n"
    process = service(rules=rules, config=f"metrics: {{listen: 127.0.0.1:{metrics_port}}}\n")
    process.args = ("--workers", "2")
    await start(process)
    [directory] = tmp_path.glob("smtpfilter-metrics-*")
    assert directory.stat().st_mode & 0o777 == 0o700
    # Each message on a connection of its own: SO_REUSEPORT spreads them over both workers
    # (all 20 on one worker: one chance in half a million).
    for _ in range(20):
        assert (await send_message(process.port, message("Subject: hi"))).code == 250
    got = samples((await http(metrics_port, b"GET /metrics HTTP/1.0\r\n\r\n"))[2])
    assert got['smtpfilter_messages_total{action="accept",frontdoor="smtp"}'] == 20
    assert got['smtpfilter_replies_total{code="250",frontdoor="smtp"}'] == 20
    assert got['smtpfilter_message_seconds_count{frontdoor="smtp"}'] == 20
    assert got["smtpfilter_rules"] == 1  # the largest of the workers' counts, not their sum
    assert await asyncio.to_thread(process.stop) == 0
    assert not directory.exists()
